/* qmp.c: QMP client: line splitting and message classification (pure),
 * then the connection: greeting, capabilities, commands with ids. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "backend/vm/qmp.h"
#include "backend/util/clock.h"
#include "backend/util/io.h"
#include "backend/vm/log.h"

/* --- line buffer ---------------------------------------------------------- */

int qmp_lines_feed(struct qmp_lines *l, const void *data, size_t n)
{
	/* Drop the lines already handed out before growing. */
	strbuf_remove(&l->text, 0, l->start);
	l->start = 0;
	if (l->text.len + n > QMP_LINE_MAX) {
		strbuf_reset(&l->text);
		return -E2BIG;
	}
	return strbuf_add(&l->text, data, n);
}

char *qmp_lines_next(struct qmp_lines *l, size_t *len)
{
	char *line, *nl;
	size_t n;

	if (l->start >= l->text.len)
		return NULL;
	line = l->text.buf + l->start;
	nl = memchr(line, '\n', l->text.len - l->start);
	if (!nl)
		return NULL;
	n = (size_t)(nl - line);
	l->start += n + 1;
	if (n > 0 && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	if (len)
		*len = n;
	return line;
}

void qmp_lines_release(struct qmp_lines *l)
{
	strbuf_release(&l->text);
	l->start = 0;
}

/* --- messages ------------------------------------------------------------- */

static const char *string_or_empty(json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));

	return s ? s : "";
}

int qmp_msg_parse(const char *line, size_t len, struct qmp_msg *m)
{
	json_t *root, *v, *id;

	memset(m, 0, sizeof(*m));
	root = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
	if (!root)
		return -EPROTO;
	if (!json_is_object(root))
		goto bad;

	id = json_object_get(root, "id");
	if (json_is_integer(id)) {
		m->has_id = true;
		m->id = json_integer_value(id);
	}
	if ((v = json_object_get(root, "return"))) {
		m->kind = QMP_RETURN;
		m->ret = v;
	} else if ((v = json_object_get(root, "error"))) {
		if (!json_is_object(v))
			goto bad;
		m->kind = QMP_ERROR;
		m->err_class = string_or_empty(v, "class");
		m->err_desc = string_or_empty(v, "desc");
	} else if ((v = json_object_get(root, "event"))) {
		if (!json_is_string(v))
			goto bad;
		m->kind = QMP_EVENT;
		m->event = json_string_value(v);
	} else if (json_is_object(json_object_get(root, "QMP"))) {
		m->kind = QMP_GREETING;
	} else {
		goto bad;
	}
	m->root = root;
	return 0;
bad:
	json_decref(root);
	memset(m, 0, sizeof(*m));
	return -EPROTO;
}

void qmp_msg_release(struct qmp_msg *m)
{
	json_decref(m->root);
	memset(m, 0, sizeof(*m));
}

/* --- connection ----------------------------------------------------------- */

struct qmp {
	int fd;
	struct qmp_lines in;
	json_int_t last_id;
	char err_class[64];
	char err_desc[512];
	json_t *events[QMP_EVENTS_KEPT];  /* ring of whole event messages */
	unsigned next_event;
};

/* A deadline (-1: none) for ms_left. */
static double deadline_after(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

static void remember_event(struct qmp *q, json_t *msg)
{
	unsigned i = q->next_event % QMP_EVENTS_KEPT;

	json_decref(q->events[i]);
	q->events[i] = json_incref(msg);
	q->next_event++;
}

const json_t *qmp_last_event(const struct qmp *q, const char *name)
{
	for (unsigned k = 1; k <= QMP_EVENTS_KEPT; k++) {
		const json_t *e = q->events[(q->next_event - k) % QMP_EVENTS_KEPT];
		const char *n = e ? json_string_value(json_object_get(e, "event")) : NULL;

		if (n && strcmp(n, name) == 0)
			return e;
	}
	return NULL;
}

void qmp_forget_events(struct qmp *q)
{
	for (unsigned i = 0; i < QMP_EVENTS_KEPT; i++) {
		json_decref(q->events[i]);
		q->events[i] = NULL;
	}
}

/* Read the next message, waiting until deadline.  A line that is not QMP
 * is consumed and reported as -EPROTO, so the stream stays usable. */
static int read_msg(struct qmp *q, struct qmp_msg *m, double deadline)
{
	char chunk[4096];

	for (;;) {
		size_t len;
		char *line = qmp_lines_next(&q->in, &len);
		ssize_t n;
		int r;

		if (line) {
			if (len == 0)
				continue;
			r = qmp_msg_parse(line, len, m);
			if (r < 0)
				vm_log(VM_LOG_HOST, "qmp: not a QMP message: %.200s", line);
			return r;
		}
		r = io_wait(q->fd, POLLIN, deadline);
		if (r < 0)
			return r;
		n = read(q->fd, chunk, sizeof(chunk));
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return errno == ECONNRESET ? -EPIPE : -errno;
		if (n == 0)
			return -EPIPE;
		r = qmp_lines_feed(&q->in, chunk, (size_t)n);
		if (r < 0)
			return r == -E2BIG ? -EPROTO : r;
	}
}

/* Send buf[0..len), the first byte carrying fd when fd >= 0. */
static int send_all(int sock, const char *buf, size_t len, int fd)
{
	size_t off = 0;

	while (off < len) {
		union {
			struct cmsghdr h;
			char space[CMSG_SPACE(sizeof(int))];
		} ctl;
		struct iovec iov = { .iov_base = (char *)buf + off, .iov_len = len - off };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;

		if (fd >= 0 && off == 0) {
			memset(&ctl, 0, sizeof(ctl));
			mh.msg_control = ctl.space;
			mh.msg_controllen = sizeof(ctl.space);
			ctl.h.cmsg_level = SOL_SOCKET;
			ctl.h.cmsg_type = SCM_RIGHTS;
			ctl.h.cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(&ctl.h), &fd, sizeof(int));
		}
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == ECONNRESET ? -EPIPE : -errno;
		off += (size_t)n;
	}
	return 0;
}

static int exchange(struct qmp *q, const char *name, json_t *args, int fd,
		    json_t **ret, int timeout_ms)
{
	double deadline = deadline_after(timeout_ms);
	json_int_t id = ++q->last_id;
	json_t *cmd = NULL;
	char *text = NULL;
	int r;

	q->err_class[0] = q->err_desc[0] = '\0';
	if (ret)
		*ret = NULL;
	cmd = json_pack("{s:s, s:I}", "execute", name, "id", (json_int_t)id);
	if (!cmd || (args && json_object_set(cmd, "arguments", args) < 0)) {
		r = -ENOMEM;
		goto out;
	}
	text = json_dumps(cmd, JSON_COMPACT);
	if (!text) {
		r = -ENOMEM;
		goto out;
	}
	r = send_all(q->fd, text, strlen(text), fd);
	if (r == 0)
		r = send_all(q->fd, "\n", 1, -1);
	if (r < 0)
		goto out;

	for (;;) {
		struct qmp_msg m;

		r = read_msg(q, &m, deadline);
		if (r < 0)
			goto out;
		if (m.kind == QMP_EVENT)
			remember_event(q, m.root);
		/* A reply with another id answers a command that timed out
		 * earlier; one without id answers a line QEMU could not parse,
		 * which can only be ours. */
		if (m.kind == QMP_EVENT || m.kind == QMP_GREETING || (m.has_id && m.id != id)) {
			qmp_msg_release(&m);
			continue;
		}
		if (m.kind == QMP_ERROR) {
			snprintf(q->err_class, sizeof(q->err_class), "%s", m.err_class);
			snprintf(q->err_desc, sizeof(q->err_desc), "%s", m.err_desc);
			r = -EREMOTEIO;
		} else if (ret) {
			*ret = json_incref(m.ret);
		}
		qmp_msg_release(&m);
		goto out;
	}
out:
	free(text);
	json_decref(cmd);
	json_decref(args);
	return r;
}

int qmp_command(struct qmp *q, const char *name, json_t *args, json_t **ret, int timeout_ms)
{
	return exchange(q, name, args, -1, ret, timeout_ms);
}

int qmp_send_fd(struct qmp *q, const char *fdname, int fd, int timeout_ms)
{
	json_t *args = json_pack("{s:s}", "fdname", fdname);

	if (!args)
		return -ENOMEM;
	return exchange(q, "getfd", args, fd, NULL, timeout_ms);
}

const char *qmp_error_class(const struct qmp *q)
{
	return q->err_class;
}

const char *qmp_error_desc(const struct qmp *q)
{
	return q->err_desc;
}

int qmp_open_fd(struct qmp **out, int fd, int timeout_ms)
{
	double deadline = deadline_after(timeout_ms);
	enum qmp_kind kind;
	struct qmp_msg m;
	struct qmp *q;
	int r;

	q = calloc(1, sizeof(*q));
	if (!q) {
		close(fd);
		return -ENOMEM;
	}
	q->fd = fd;
	/* Events may only follow the greeting, but skipping them costs nothing. */
	do {
		r = read_msg(q, &m, deadline);
		if (r < 0)
			goto fail;
		kind = m.kind;
		qmp_msg_release(&m);
		if (kind != QMP_GREETING && kind != QMP_EVENT) {
			r = -EPROTO;
			goto fail;
		}
	} while (kind != QMP_GREETING);
	r = qmp_command(q, "qmp_capabilities", NULL, NULL, ms_left(deadline));
	if (r < 0)
		goto fail;
	*out = q;
	return 0;
fail:
	qmp_close(q);
	return r;
}

int qmp_open(struct qmp **out, const char *path, int timeout_ms)
{
	double deadline = deadline_after(timeout_ms);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	for (;;) {
		int err;

		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		err = errno;
		close(fd);
		if (err != ENOENT && err != ECONNREFUSED && err != EAGAIN && err != EINTR)
			return -err;
		if (ms_left(deadline) == 0)
			return -ETIMEDOUT;
		nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000000 }, NULL);
	}
	return qmp_open_fd(out, fd, ms_left(deadline));
}

void qmp_close(struct qmp *q)
{
	if (!q)
		return;
	if (q->fd >= 0)
		close(q->fd);
	qmp_lines_release(&q->in);
	qmp_forget_events(q);
	free(q);
}
