/* agent.c: the host side of the guest agent's session (frames of
 * backend/agent/proto.h over the virtio-serial port's unix socket). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "backend/agent/fsproto.h"
#include "backend/agent/proto.h"
#include "backend/vm/vm.h"

int agent_connect(struct sandbox *s, double deadline)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	qemu_sock_path(s, "agent.sock", false, sa.sun_path);
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), err;

		if (fd < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			/* Non-blocking: every read and write has a deadline
			 * (proto.h), and a guest that stops reading cannot
			 * hold this thread in write(2). */
			if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
				err = -errno;
				close(fd);
				return err;
			}
			s->agent = fd;
			return 0;
		}
		err = errno;
		close(fd);
		if ((err != ENOENT && err != ECONNREFUSED && err != EINTR) || now_ms() > deadline) {
			vm_log(s->id, "%s/agent.sock: %s", s->dir, strerror(err));
			return -err;
		}
		sleep_ms(10);
	}
}

/* The agent stopped answering: say why, and fail this sandbox for good. */
static int agent_lost(struct sandbox *s, int r, const char *what)
{
	s->broken = true;
	if (!qemu_pid_is_ours(s->pid, s->qdir))
		qemu_log_died(s, "qemu exited");
	else
		vm_log(s->id, "agent %s: %s", what, strerror(-r));
	return -EIO;
}

/* The most the host takes of each frame the agent sends: it trusts no
 * size from the guest.  A RESULT holds each stream cut at output_max plus
 * the agent's notes. */
static uint32_t result_max(const struct sandbox *s)
{
	uint64_t stream = (uint64_t)s->b->output_max + AGENT_NOTES_MAX;

	return (uint32_t)(16 + 2 * stream);
}

static uint32_t frame_max(uint8_t type, const void *arg)
{
	switch (type) {
	case PROTO_PONG:
	case PROTO_RESEEDED:
		return 64;
	case PROTO_RESULT:
		return result_max(arg);
	case PROTO_FS_REPLY:
		return FS_REPLY_MAX;
	default:
		return 0;
	}
}

/* Read frames until one of type `type` arrives (for RESULT and FS_REPLY:
 * with run_id, the request's id);
 * anything else is stale (extra PONGs of a boot, results of runs
 * given up on) and dropped.  *buf holds the frame's bytes on success.
 * -ETIMEDOUT when no frame starts before idle or none ends before
 * deadline: a frame is never cut in the middle before the deadline, which
 * would leave the stream out of step. */
static int agent_wait(struct sandbox *s, uint8_t type, uint32_t run_id,
		      struct proto_frame *f, uint8_t **buf, double idle, double deadline)
{
	for (;;) {
		int r = io_wait(s->agent, POLLIN, idle < deadline ? idle : deadline);

		if (r < 0)
			return r;
		r = proto_read(s->agent, f, buf, deadline, frame_max, s);
		if (r < 0)
			return r;
		if (f->type == type && ((type != PROTO_RESULT && type != PROTO_FS_REPLY) ||
					(f->len >= 4 && proto_get_u32(f->payload) == run_id)))
			return 0;
		free(*buf);
		*buf = NULL;
	}
}

/* The version in a PONG ("worldfs-agent 2"); 1 for anything else. */
static unsigned pong_version(const struct proto_frame *f)
{
	static const char prefix[] = "worldfs-agent ";
	size_t k = sizeof(prefix) - 1;
	unsigned v = 0;

	if (f->len <= k || f->len > k + 4 || memcmp(f->payload, prefix, k) != 0)
		return 1;
	for (size_t i = k; i < f->len; i++) {
		if (f->payload[i] < '0' || f->payload[i] > '9')
			return 1;
		v = v * 10 + (f->payload[i] - '0');
	}
	return v ? v : 1;
}

/* The sessions the agent says are alive (PROTO_F_SESSION_* bits).  A
 * version 1 agent has its sh session and says nothing of it. */
static void sessions_set(struct sandbox *s, uint32_t bits)
{
	s->sessions = s->agent_version >= 2 ? bits & (PROTO_F_SESSION_SH | PROTO_F_SESSION_PYTHON)
					    : PROTO_F_SESSION_SH;
}

int agent_ping(struct sandbox *s, double deadline)
{
	struct proto_frame f;
	uint8_t *buf = NULL;
	int r;

	for (;;) {
		double retry = now_ms() + PING_RETRY_MS;

		r = proto_write(s->agent, PROTO_PING, NULL, 0, now_ms() + AGENT_WRITE_TIMEOUT_MS);
		if (r < 0)
			return agent_lost(s, r, "ping");
		/* Before the guest opens its port, PINGs wait in the socket
		 * or are dropped; resend until one is answered. */
		r = agent_wait(s, PROTO_PONG, 0, &f, &buf, retry, deadline);
		if (r == 0)
			break;
		if (r != -ETIMEDOUT)
			return agent_lost(s, r, "ping");
		if (!qemu_pid_is_ours(s->pid, s->qdir))
			return agent_lost(s, -ESRCH, "ping");
		if (now_ms() > deadline) {
			qemu_log_died(s, "the agent did not answer in time");
			return -ETIMEDOUT;
		}
	}
	s->agent_version = pong_version(&f);
	free(buf);
	return 0;
}

int agent_reseed(struct sandbox *s, double deadline, uint32_t flags)
{
	uint8_t seed[12 + RESEED_BYTES];
	struct proto_frame f;
	struct timespec ts;
	uint8_t *buf = NULL;
	/* RESEED2 carries the flags after the time; a version 1 agent only
	 * knows RESEED (time, entropy). */
	bool v2 = s->agent_version >= 2;
	size_t hdr = v2 ? 12 : 8;
	int r;

	clock_gettime(CLOCK_REALTIME, &ts);
	proto_put_u64(seed, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	proto_put_u32(seed + 8, flags);
	if (getrandom(seed + hdr, RESEED_BYTES, 0) != RESEED_BYTES)
		return -EIO;
	r = proto_write(s->agent, v2 ? PROTO_RESEED2 : PROTO_RESEED, seed, hdr + RESEED_BYTES,
			now_ms() + AGENT_WRITE_TIMEOUT_MS);
	if (r == 0)
		r = agent_wait(s, PROTO_RESEEDED, 0, &f, &buf, deadline, deadline);
	if (r == 0)
		sessions_set(s, f.len >= 4 ? proto_get_u32(f.payload) : 0);
	free(buf);
	return r < 0 ? agent_lost(s, r, "reseed") : 0;
}

/* RESULT: u32 run_id, i32 status, u32 flags, u32 stdout_len, stdout, stderr.
 * What the agent promises is checked, not believed: a status outside
 * 0..255 or a stream longer than output_max and the notes is -EPROTO. */
int agent_result_parse(const struct proto_frame *f, size_t stream_max, struct run_result *res,
		       uint32_t *flags_out)
{
	uint32_t flags, out_len;
	int32_t status;

	if (f->len < 16)
		return -EPROTO;
	out_len = proto_get_u32(f->payload + 12);
	if (out_len > f->len - 16 || out_len > stream_max || f->len - 16 - out_len > stream_max)
		return -EPROTO;
	status = (int32_t)proto_get_u32(f->payload + 4);
	if (status < 0 || status > 255)
		return -EPROTO;
	flags = proto_get_u32(f->payload + 8);
	res->status = status;
	res->timed_out = flags & PROTO_F_TIMED_OUT;
	res->truncated = flags & PROTO_F_TRUNCATED;
	res->session_reset = flags & PROTO_F_SESSION_RESET;
	*flags_out = flags;
	res->out_len = out_len;
	res->err_len = f->len - 16 - out_len;
	res->out = malloc(res->out_len + 1);
	res->err = malloc(res->err_len + 1);
	if (!res->out || !res->err) {
		run_result_release(res);
		return -ENOMEM;
	}
	memcpy(res->out, f->payload + 16, res->out_len);
	res->out[res->out_len] = '\0';
	memcpy(res->err, f->payload + 16 + out_len, res->err_len);
	res->err[res->err_len] = '\0';
	return 0;
}

int agent_exec(struct sandbox *s, const char *code, size_t len, uint32_t timeout_ms, struct run_result *res)
{
	uint32_t run_id = s->next_run++, flags = 0;
	uint32_t output_max = s->b->output_max > UINT32_MAX ? UINT32_MAX : (uint32_t)s->b->output_max;
	double deadline;
	uint8_t head[12], *buf = NULL;
	struct iovec iov[2] = {
		{ .iov_base = head, .iov_len = sizeof(head) },
		{ .iov_base = (void *)code, .iov_len = len },
	};
	struct proto_frame f;
	int r;

	memset(res, 0, sizeof(*res));
	if (!timeout_ms)
		timeout_ms = s->b->exec_timeout_s > UINT32_MAX / 1000 ? UINT32_MAX : s->b->exec_timeout_s * 1000u;
	deadline = now_ms() + timeout_ms + EXEC_GRACE_MS;
	if (s->broken || s->agent < 0)
		return -EIO;
	if (len > PROTO_FRAME_MAX - 1 - sizeof(head))
		return -E2BIG;
	proto_put_u32(head, run_id);
	proto_put_u32(head + 4, timeout_ms);
	proto_put_u32(head + 8, output_max);
	r = proto_writev(s->agent, PROTO_EXEC, iov, 2, now_ms() + AGENT_WRITE_TIMEOUT_MS);
	if (r < 0)
		return agent_lost(s, r, "exec");
	r = agent_wait(s, PROTO_RESULT, run_id, &f, &buf, deadline, deadline);
	if (r == -ETIMEDOUT) {
		vm_log(s->id, "the agent gave no result %u s after the run's time-out", EXEC_GRACE_MS / 1000);
		return agent_lost(s, r, "exec");
	}
	if (r < 0)
		return agent_lost(s, r, "exec");
	r = agent_result_parse(&f, s->b->output_max + AGENT_NOTES_MAX, res, &flags);
	if (r == 0)
		sessions_set(s, flags);
	free(buf);
	if (r == -EPROTO)
		return agent_lost(s, r, "result");
	return r;
}

int agent_fs(struct sandbox *s, const struct fs_req *req, uint8_t **reply, size_t *len)
{
	static const char too_old[] = "its agent predates the file protocol (a state of worldfs 0.2)";
	uint8_t head[FS_REQ_HDR + 4 + 2 * FS_PATH_MAX];
	struct fs_req r = *req;
	struct iovec iov[2];
	struct proto_frame f;
	uint8_t *buf = NULL;
	size_t n;
	int err;

	if (s->broken || s->agent < 0)
		return -EIO;
	if (s->agent_version < 3) {
		vm_log(s->id, "fs: %s", too_old);
		return -ENOTSUP;
	}
	r.id = s->next_run++;
	n = fs_req_head(&r, head, sizeof(head));
	if (!n)
		return -ENAMETOOLONG;
	iov[0] = (struct iovec){ .iov_base = head, .iov_len = n };
	iov[1] = (struct iovec){ .iov_base = (void *)r.data, .iov_len = r.data_len };
	err = proto_writev(s->agent, PROTO_FS, iov, 2, now_ms() + AGENT_WRITE_TIMEOUT_MS);
	if (err < 0)
		return agent_lost(s, err, "fs");
	err = agent_wait(s, PROTO_FS_REPLY, r.id, &f, &buf, now_ms() + FS_TIMEOUT_MS, now_ms() + FS_TIMEOUT_MS);
	if (err < 0)
		return agent_lost(s, err, "fs");
	/* The reply is the frame's payload: give the caller the buffer. */
	memmove(buf, f.payload, f.len);
	*reply = buf;
	*len = f.len;
	return 0;
}

int agent_mark(struct sandbox *s)
{
	struct fs_req req = { .op = FS_MARK, .path = "/", .path_len = 1 };
	const uint8_t *body;
	uint8_t *reply = NULL;
	size_t len, body_len;
	int r;

	if (s->agent_version < 4)
		return 0;  /* its W/diff is ENOTSUP anyway */
	if ((r = agent_fs(s, &req, &reply, &len)) < 0)
		return r;
	if ((r = fs_reply_status(reply, len, &body, &body_len)) < 0)
		vm_log(s->id, "W/diff: the guest could not record its files for the copies made now: %s",
		       strerror(-r));
	free(reply);
	return 0;
}
