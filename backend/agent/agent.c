/* agent.c: worldfs-agent, the guest's /init.  It mounts the basics, loads
 * the virtio modules, then serves the host's frames on the virtio-serial
 * port "agent", running code in one persistent sh session per world.
 *
 * Not as PID 1 (a test on the host), it skips the setup and takes
 *   --fd N     serve frames on fd N instead of the port; stop at its EOF
 *   --dir DIR  where the run files live (default /run/worldfs)
 *
 * How a run works.  The session is `busybox sh` reading commands from a
 * pipe; its stdout is a second pipe that only carries status lines.  For
 * each EXEC the agent writes the code to DIR/code, makes two FIFOs for the
 * run's stdout and stderr, and sends the session one line that sources the
 * code with those redirections and then prints
 * "worldfs-status SEQ STATUS".  The run ends at that line, not at EOF of
 * the FIFOs, so background processes may keep them open: the agent keeps
 * draining them instead of closing them under a writer (SIGPIPE).  The code
 * is not checked with `sh -n` first: a fork and exec per run costs more
 * than the rest of the run under TCG, and sourcing it gives script
 * semantics (a syntax error ends the run there, with status 2).
 *
 * Timeouts.  busybox ash without job control keeps every child in the
 * shell's process group and starts `&` children with SIGINT and SIGQUIT
 * ignored.  A non-interactive ash dies of an untrapped SIGINT, and runs a
 * trap only once its foreground child has exited.  So the session traps
 * SIGINT to unwind the code (see session_trap), and on a timeout the
 * agent sends SIGINT to the shell and to its foreground children (same
 * group, SIGINT not ignored), then every KILL_TICK_MS again, with SIGKILL
 * for children that outlived a tick.  A shell that still has not printed
 * its status after KILL_GRACE_MS is killed and replaced
 * (PROTO_F_SESSION_RESET). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/random.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend/agent/proto.h"

#define AGENT_NAME "worldfs-agent " PROTO_VERSION
#define SHELL_PATH "/bin/busybox"
#define PORT_NAME "agent"
#define RUN_DIR "/run/worldfs"
#define HOME_DIR "/root"
#define PORT_RETRY_MS 20
#define KILL_TICK_MS 50
#define KILL_GRACE_MS 1000
#define OUTPUT_CAP (16u << 20)   /* per stream; two fit in PROTO_FRAME_MAX */
#define QUEUE_MAX 8              /* EXECs waiting behind the current run */
#define DRAIN_MAX 64             /* old run FIFOs still held by background jobs */
#define STATUS_TAG "worldfs-status "
#define FG_MAX 64                /* foreground processes tracked per tick */
/* Reads from one pipe per wake-up: a writer that never pauses (`yes`) must
 * not keep the loop from its timers.  Not below the largest pipe buffer,
 * so that one call at the end of a run takes everything written before. */
#define READ_BURST (1u << 20)

struct buf {
	uint8_t *p;
	size_t len, cap;
};

/* One captured stream of a run: a FIFO read end and what it gave so far.
 * The agent also holds a write end (hold) for the length of the run, so
 * the shell closing its end at the end of the code wakes nobody: under TCG
 * each such wake-up (a hang-up per stream) costs a guest context switch.
 * The run ends at the status line; then hold is closed and one last read
 * tells whether a background job still writes there. */
struct stream {
	int fd;
	int hold;
	const char *name;     /* FIFO name inside the run dir */
	bool eof;             /* no writer now: stop polling until the end */
	struct buf data;
	uint64_t total;       /* bytes read, kept or not */
};

struct session {
	pid_t pid;            /* the sh, 0 when there is none */
	int ctl;              /* its stdin: we write commands */
	int status;           /* its stdout: status lines */
	struct buf line;      /* partial status line */
	char note[160];       /* why the previous session ended, for the next run */
};

struct run {
	bool active;
	uint32_t id, timeout_ms, output_max, flags;
	unsigned long seq;
	struct stream out, err;
	long long deadline, next_tick, give_up;
	bool killing, killed_shell;
	pid_t fg[FG_MAX];     /* sent SIGINT last tick: SIGKILL if still there */
	int nfg;
};

struct pending {
	struct pending *next;
	size_t len;
	uint8_t payload[];
};

struct agent {
	int port;             /* -1 while not open */
	bool fixed_port;      /* --fd: no reopening, EOF ends the agent */
	bool quit;
	long long port_retry; /* don't touch the port before this */
	bool port_waiting_logged;
	struct buf in;
	int sigfd;
	const char *dir;
	struct session sess;
	struct run run;
	unsigned long seq;
	struct pending *queue, **queue_tail;
	int queue_len;
	int drain[DRAIN_MAX];
	int ndrain;
};

static uint8_t chunk[65536];

static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("worldfs-agent: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double uptime(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int buf_reserve(struct buf *b, size_t need)
{
	size_t cap = b->cap ? b->cap : 4096;
	uint8_t *p;

	if (need <= b->cap)
		return 0;
	while (cap < need)
		cap *= 2;
	p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

static int buf_add(struct buf *b, const void *data, size_t len)
{
	int ret = buf_reserve(b, b->len + len);

	if (ret < 0)
		return ret;
	memcpy(b->p + b->len, data, len);
	b->len += len;
	return 0;
}

static int buf_printf(struct buf *b, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	return buf_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void buf_release(struct buf *b)
{
	free(b->p);
	*b = (struct buf){ 0 };
}

static int write_all(int fd, const void *data, size_t len)
{
	const uint8_t *p = data;
	ssize_t w;

	while (len) {
		w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= w;
	}
	return 0;
}

/* ---- PID 1 setup ---- */

static const struct mountpoint {
	const char *source, *target, *type;
	unsigned long flags;
	const char *data;
} mountpoints[] = {
	{ "devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755" },
	{ "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
	{ "sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
	{ "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" },
	{ "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755" },
	{ "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666" },
	{ "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" },
};

/* In load order: each needs the ones before it.  A missing file means the
 * driver is built in. */
static const char *const modules[] = {
	"virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk",
};

static void setup_console(void)
{
	int null = open("/dev/null", O_RDWR);
	int con = open("/dev/console", O_RDWR | O_NOCTTY);

	/* The kernel gives init no fds when the initramfs has no
	 * /dev/console node, which an unprivileged image build cannot make. */
	if (null >= 0)
		dup2(null, 0);
	if (con >= 0) {
		dup2(con, 1);
		dup2(con, 2);
	}
	if (null > 2)
		close(null);
	if (con > 2)
		close(con);
}

static void load_module(const char *name)
{
	char path[128];
	int fd;

	snprintf(path, sizeof(path), "/lib/modules/%s.ko", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			say("%s: %s", path, strerror(errno));
		return;
	}
	if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
		say("%s: finit_module: %s", path, strerror(errno));
	close(fd);
}

static void loopback_up(void)
{
	struct ifreq ifr = { .ifr_name = "lo" };
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (s < 0)
		return;
	if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			say("lo: %s", strerror(errno));
	}
	close(s);
}

static void init_system(void)
{
	const struct mountpoint *m;
	size_t i;

	for (i = 0; i < sizeof(mountpoints) / sizeof(mountpoints[0]); i++) {
		m = &mountpoints[i];
		mkdir(m->target, 0755);
		if (mount(m->source, m->target, m->type, m->flags, m->data) < 0 &&
		    errno != EBUSY)
			say("mount %s: %s", m->target, strerror(errno));
		if (i == 0)
			setup_console();
	}
	for (i = 0; i < sizeof(modules) / sizeof(modules[0]); i++)
		load_module(modules[i]);
	mkdir(HOME_DIR, 0700);
	sethostname("world", 5);
	loopback_up();
	umask(022);
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	setenv("HOME", HOME_DIR, 1);
	setenv("SHELL", "/bin/sh", 1);
	setenv("USER", "root", 1);
	setenv("LOGNAME", "root", 1);
	/* Output goes to files, not a terminal: no escape sequences. */
	setenv("TERM", "dumb", 1);
}

/* ---- the virtio-serial port ---- */

static int port_open(void)
{
	char path[PATH_MAX], name[64];
	struct dirent *e;
	DIR *d;
	FILE *f;
	int fd = -ENOENT;

	d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		if (!fgets(name, sizeof(name), f))
			name[0] = 0;
		fclose(f);
		name[strcspn(name, "\n")] = 0;
		if (strcmp(name, PORT_NAME))
			continue;
		snprintf(path, sizeof(path), "/dev/%s", e->d_name);
		fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			fd = -errno;
		else
			say("serving on %s (%.2f s after boot)", path, uptime());
		break;
	}
	closedir(d);
	return fd;
}

static void port_close(struct agent *a, int retry_ms)
{
	a->in.len = 0;
	a->port_retry = now_ms() + retry_ms;
	if (a->fixed_port)
		return;
	if (a->port >= 0)
		close(a->port);
	a->port = -1;
}

/* Drop what the host sent and start over at a frame boundary: closing the
 * port discards the kernel's buffered data too. */
static void port_reset(struct agent *a, const char *why)
{
	ssize_t r;

	say("malformed frame (%s); resetting the connection", why);
	if (a->fixed_port) {
		do
			r = read(a->port, chunk, sizeof(chunk));
		while (r > 0 || (r < 0 && errno == EINTR));
	}
	port_close(a, PORT_RETRY_MS);
}

/* Send a frame.  A host that went away loses the reply; the next one
 * starts with a PING, so nothing waits for it. */
static void port_send(struct agent *a, uint8_t type, const struct iovec *iov, int n)
{
	int ret;

	if (a->port < 0)
		return;
	ret = proto_writev(a->port, type, iov, n);
	if (ret < 0)
		say("dropping reply %u: %s", type, strerror(-ret));
}

/* ---- children ---- */

static void child_reset(void)
{
	sigset_t none;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
}

static pid_t proc_pgrp(pid_t pid)
{
	char path[64], text[512], *p;
	int fd, pgrp = -1;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	text[n] = 0;
	/* The command name may hold spaces and parens: skip to the last ')'. */
	p = strrchr(text, ')');
	if (!p || sscanf(p + 1, " %*c %*d %d", &pgrp) != 1)
		return -1;
	return pgrp;
}

static bool proc_ignores_sigint(pid_t pid)
{
	char path[64], line[128];
	unsigned long long ign = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "SigIgn: %llx", &ign) == 1)
			break;
	fclose(f);
	return ign & (1ull << (SIGINT - 1));
}

static bool pid_in(const pid_t *set, int n, pid_t pid)
{
	while (n--)
		if (set[n] == pid)
			return true;
	return false;
}

/* Stop the foreground of the session: its process group minus the shell
 * and minus the background jobs, which ash starts with SIGINT ignored.
 * SIGINT first (ash reports no "Killed" line for it), SIGKILL for those
 * that outlived one tick, or all of them when force is set. */
static void kill_foreground(pid_t shell, pid_t *fg, int *nfg, bool force)
{
	pid_t seen[FG_MAX];
	struct dirent *e;
	int nseen = 0;
	DIR *d;
	char *end;
	long pid;

	d = opendir("/proc");
	if (!d)
		return;
	while ((e = readdir(d))) {
		pid = strtol(e->d_name, &end, 10);
		if (*end || pid <= 1 || pid == shell)
			continue;
		if (proc_pgrp(pid) != shell || proc_ignores_sigint(pid))
			continue;
		if (force || nseen == FG_MAX || pid_in(fg, *nfg, pid)) {
			kill(pid, SIGKILL);
		} else {
			kill(pid, SIGINT);
			seen[nseen++] = pid;
		}
	}
	closedir(d);
	memcpy(fg, seen, nseen * sizeof(pid_t));
	*nfg = nseen;
}

/* ---- the session shell ---- */

/* The trap unwinds the running code on SIGINT, one level per signal:
 * `return` leaves a function or the `.`; every second signal `break`s
 * instead, because ash lets that leave the loops of the callers too, so
 * `while :; do f; done` ends even though f keeps being re-entered.
 * Outside a run the trap must do nothing: a `return` at top level makes
 * ash stop reading its stdin.  It is set again before each run, in case
 * the code replaced it (`trap '' INT` would also hide the foreground from
 * kill_foreground in later runs). */
static const char session_trap[] =
	"trap '[ -z \"${__worldfs_in-}\" ] || {"
	" __worldfs_k=$((${__worldfs_k-0} + 1));"
	" if [ $((__worldfs_k % 2)) = 0 ]; then break 1000000; else return 130; fi; }' INT";

static int session_start(struct agent *a)
{
	int in[2] = { -1, -1 }, st[2] = { -1, -1 };
	pid_t pid;
	int ret;

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(st, O_CLOEXEC) < 0) {
		ret = -errno;
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		ret = -errno;
		goto out;
	}
	if (pid == 0) {
		child_reset();
		setsid();
		dup2(in[0], 0);
		dup2(st[1], 1);
		if (chdir(HOME_DIR) < 0 && chdir("/") < 0)
			_exit(127);
		execl(SHELL_PATH, "sh", (char *)NULL);
		_exit(127);
	}
	a->sess.pid = pid;
	a->sess.ctl = in[1];
	a->sess.status = st[0];
	a->sess.line.len = 0;
	in[1] = st[0] = -1;
	fcntl(a->sess.status, F_SETFL, O_NONBLOCK);
	ret = 0;
out:
	if (in[0] >= 0)
		close(in[0]);
	if (in[1] >= 0)
		close(in[1]);
	if (st[0] >= 0)
		close(st[0]);
	if (st[1] >= 0)
		close(st[1]);
	return ret;
}

/* The shell is gone (already reaped): forget its pipes. */
static void session_forget(struct agent *a)
{
	if (a->sess.ctl >= 0)
		close(a->sess.ctl);
	if (a->sess.status >= 0)
		close(a->sess.status);
	a->sess.ctl = a->sess.status = -1;
	a->sess.pid = 0;
	a->sess.line.len = 0;
}

static int wait_status_code(int st)
{
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return 255;
}

/* ---- runs ---- */

static void run_path(const struct agent *a, char *path, size_t size, const char *name)
{
	snprintf(path, size, "%s/%s", a->dir, name);
}

static void drain_add(struct agent *a, int fd)
{
	if (a->ndrain == DRAIN_MAX) {
		/* Out of slots: the oldest job loses its output pipe. */
		close(a->drain[0]);
		memmove(a->drain, a->drain + 1, (DRAIN_MAX - 1) * sizeof(int));
		a->ndrain--;
	}
	a->drain[a->ndrain++] = fd;
}

/* Read what the stream has now, keeping up to max bytes.  Returns true at
 * EOF, i.e. when no writer holds the FIFO any more. */
static bool stream_read(struct stream *s, size_t max)
{
	size_t keep, burst = 0;
	ssize_t r;

	while (burst < READ_BURST) {
		r = read(s->fd, chunk, sizeof(chunk));
		if (r < 0)
			return errno != EINTR && errno != EAGAIN;
		if (r == 0)
			return true;
		burst += r;
		s->total += r;
		keep = s->data.len < max ? max - s->data.len : 0;
		if (keep > (size_t)r)
			keep = r;
		/* Out of memory loses bytes, which the truncation marker
		 * then reports. */
		if (keep)
			(void)buf_add(&s->data, chunk, keep);
	}
	return false;
}

static int stream_open(struct agent *a, struct stream *s)
{
	char path[PATH_MAX];

	run_path(a, path, sizeof(path), s->name);
	unlink(path);
	if (mkfifo(path, 0600) < 0)
		return -errno;
	/* Non-blocking, so that opening does not wait for the shell. */
	s->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (s->fd < 0)
		return -errno;
	s->hold = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (s->hold < 0)
		return -errno;
	return 0;
}

static void stream_close(struct stream *s)
{
	if (s->fd >= 0)
		close(s->fd);
	if (s->hold >= 0)
		close(s->hold);
	s->fd = s->hold = -1;
}

/* End of run: take the rest, hand still-held FIFOs to the drain list. */
static void stream_finish(struct agent *a, struct stream *s, size_t max)
{
	if (s->hold >= 0)
		close(s->hold);
	s->hold = -1;
	if (s->fd < 0)
		return;
	if (stream_read(s, max))
		close(s->fd);
	else
		drain_add(a, s->fd);
	s->fd = -1;
}

static bool stream_truncate(struct stream *s, size_t max)
{
	if (s->total <= max && s->data.len == s->total)
		return false;
	buf_printf(&s->data, "\n[worldfs: output truncated at %zu bytes]\n", max);
	return true;
}

static void marker_line(struct buf *b)
{
	if (b->len && b->p[b->len - 1] != '\n')
		buf_add(b, "\n", 1);
}

static void send_result(struct agent *a, uint32_t id, int status, uint32_t flags,
			const struct buf *out, const struct buf *err)
{
	uint8_t hdr[16];
	struct iovec iov[3];

	proto_put_u32(hdr, id);
	proto_put_u32(hdr + 4, (uint32_t)status);
	proto_put_u32(hdr + 8, flags);
	proto_put_u32(hdr + 12, (uint32_t)out->len);
	iov[0] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(hdr) };
	iov[1] = (struct iovec){ .iov_base = out->p, .iov_len = out->len };
	iov[2] = (struct iovec){ .iov_base = err->p, .iov_len = err->len };
	port_send(a, PROTO_RESULT, iov, 3);
}

/* Answer a run that never reached the shell (syntax error, agent trouble). */
static void send_early_result(struct agent *a, uint32_t id, int status, struct buf *err)
{
	struct buf none = { 0 };
	uint32_t flags = 0;

	if (a->sess.note[0]) {
		marker_line(err);
		buf_printf(err, "%s\n", a->sess.note);
		a->sess.note[0] = 0;
		flags |= PROTO_F_SESSION_RESET;
	}
	send_result(a, id, status, flags, &none, err);
}

static void run_start_next(struct agent *a);

/* status: the code's exit status; the shell's status if it died (died). */
static void run_finish(struct agent *a, int status, bool died)
{
	struct run *r = &a->run;
	char path[PATH_MAX];

	stream_finish(a, &r->out, r->output_max);
	stream_finish(a, &r->err, r->output_max);
	if (stream_truncate(&r->out, r->output_max))
		r->flags |= PROTO_F_TRUNCATED;
	if (stream_truncate(&r->err, r->output_max))
		r->flags |= PROTO_F_TRUNCATED;
	if (r->flags & PROTO_F_TIMED_OUT) {
		status = 124;
		marker_line(&r->err.data);
		buf_printf(&r->err.data, "[worldfs: run killed after %u ms (exec_timeout)]\n",
			   r->timeout_ms);
	}
	if (a->sess.note[0]) {
		/* The session had died between runs. */
		marker_line(&r->err.data);
		buf_printf(&r->err.data, "%s\n", a->sess.note);
		a->sess.note[0] = 0;
		r->flags |= PROTO_F_SESSION_RESET;
	}
	if (died) {
		marker_line(&r->err.data);
		if (r->killed_shell)
			buf_printf(&r->err.data, "[worldfs: session restarted: the session "
				   "shell did not stop]\n");
		else
			buf_printf(&r->err.data, "[worldfs: session restarted: the session "
				   "shell exited with status %d]\n", status);
		r->flags |= PROTO_F_SESSION_RESET;
	}
	send_result(a, r->id, status, r->flags, &r->out.data, &r->err.data);

	buf_release(&r->out.data);
	buf_release(&r->err.data);
	run_path(a, path, sizeof(path), r->out.name);
	unlink(path);
	run_path(a, path, sizeof(path), r->err.name);
	unlink(path);
	r->active = false;
	run_start_next(a);
}

static int write_code(struct agent *a, const uint8_t *code, size_t len)
{
	char path[PATH_MAX];
	int fd, ret;

	if (mkdir(a->dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	run_path(a, path, sizeof(path), "code");
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	ret = write_all(fd, code, len);
	if (close(fd) < 0 && !ret)
		ret = -errno;
	return ret;
}

static void run_start(struct agent *a, const uint8_t *p, size_t len)
{
	struct run *r = &a->run;
	struct buf msg = { 0 };
	char line[3 * PATH_MAX];
	const char *step;
	int ret, n;

	*r = (struct run){
		.id = proto_get_u32(p),
		.timeout_ms = proto_get_u32(p + 4),
		.output_max = proto_get_u32(p + 8),
		.seq = ++a->seq,
		.out = { .fd = -1, .hold = -1, .name = "out" },
		.err = { .fd = -1, .hold = -1, .name = "err" },
	};
	if (r->output_max == 0 || r->output_max > OUTPUT_CAP)
		r->output_max = OUTPUT_CAP;

	step = "write the code";
	ret = write_code(a, p + 12, len - 12);
	if (ret < 0)
		goto fail;
	step = "start the session shell";
	if (!a->sess.pid) {
		ret = session_start(a);
		if (ret < 0)
			goto fail;
	}
	step = "make the output FIFOs";
	ret = stream_open(a, &r->out);
	if (ret >= 0)
		ret = stream_open(a, &r->err);
	if (ret < 0)
		goto fail;

	/* `command .` keeps errors that would end a non-interactive shell
	 * (assignment to a readonly, ${x?}, set -u) to the run, as in an
	 * interactive one.  The status goes to the shell's own stdout;
	 * `\command` skips aliases the user may have made.  __worldfs_in is
	 * cleared in the first command after the code so that a late SIGINT
	 * finds the trap disarmed. */
	n = snprintf(line, sizeof(line),
		     "%s; __worldfs_in=1; __worldfs_k=0; { \\command . %s/code; } </dev/null >%s/out 2>%s/err; "
		     "__worldfs_in= __worldfs_st=$?; "
		     "\\command printf '" STATUS_TAG "%%s %%s\\n' %lu \"$__worldfs_st\"\n",
		     session_trap, a->dir, a->dir, a->dir, r->seq);
	step = "talk to the session shell";
	ret = n < 0 || (size_t)n >= sizeof(line) ? -ENAMETOOLONG :
	      write_all(a->sess.ctl, line, n);
	if (ret < 0)
		goto fail;
	r->active = true;
	if (r->timeout_ms)
		r->deadline = now_ms() + r->timeout_ms;
	goto out;
fail:
	/* The agent failed, not the code: 125, as env(1) and timeout(1) do. */
	msg.len = 0;
	buf_printf(&msg, "[worldfs: agent could not %s: %s]\n", step, strerror(-ret));
	say("run %u: could not %s: %s", r->id, step, strerror(-ret));
	stream_close(&r->out);
	stream_close(&r->err);
	send_early_result(a, r->id, 125, &msg);
out:
	buf_release(&msg);
}

static void run_start_next(struct agent *a)
{
	struct pending *p;

	while (!a->run.active && a->queue) {
		p = a->queue;
		a->queue = p->next;
		if (!a->queue)
			a->queue_tail = &a->queue;
		a->queue_len--;
		run_start(a, p->payload, p->len);
		free(p);
	}
}

static int run_enqueue(struct agent *a, const uint8_t *payload, size_t len)
{
	struct pending *p;

	if (!a->run.active && !a->queue) {
		run_start(a, payload, len);
		return 0;
	}
	p = malloc(sizeof(*p) + len);
	if (!p)
		return -ENOMEM;
	p->next = NULL;
	p->len = len;
	memcpy(p->payload, payload, len);
	*a->queue_tail = p;
	a->queue_tail = &p->next;
	a->queue_len++;
	return 0;
}

/* Status lines from the session's stdout. */
static void session_read_status(struct agent *a)
{
	struct session *s = &a->sess;
	unsigned long seq;
	int status;
	uint8_t *nl;
	ssize_t r;
	size_t n;

	if (s->status < 0)
		return;
	for (;;) {
		r = read(s->status, chunk, sizeof(chunk));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (s->line.len + r > 4096)
			s->line.len = 0;  /* not ours: nothing else writes here */
		buf_add(&s->line, chunk, r);
	}
	while (s->line.len && (nl = memchr(s->line.p, '\n', s->line.len))) {
		*nl = 0;
		if (sscanf((char *)s->line.p, STATUS_TAG "%lu %d", &seq, &status) == 2 &&
		    a->run.active && seq == a->run.seq)
			run_finish(a, status, false);
		n = nl + 1 - s->line.p;
		memmove(s->line.p, nl + 1, s->line.len - n);
		s->line.len -= n;
	}
}

static void reap(struct agent *a)
{
	struct signalfd_siginfo si;
	pid_t pid;
	int st;

	while (read(a->sigfd, &si, sizeof(si)) == sizeof(si))
		;
	/* A status line the shell printed before dying comes first. */
	session_read_status(a);
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (pid != a->sess.pid)
			continue;  /* an orphan we inherited as init */
		session_forget(a);
		if (a->run.active) {
			run_finish(a, wait_status_code(st), true);
		} else {
			snprintf(a->sess.note, sizeof(a->sess.note),
				 "[worldfs: session restarted: the session shell had exited "
				 "with status %d between runs]", wait_status_code(st));
			say("session shell exited between runs (status %d)",
			    wait_status_code(st));
		}
	}
}

static void run_timers(struct agent *a)
{
	struct run *r = &a->run;
	long long now = now_ms();

	if (!r->active || !r->timeout_ms || now < r->deadline)
		return;
	if (!r->killing) {
		r->killing = true;
		r->flags |= PROTO_F_TIMED_OUT;
		r->next_tick = now + KILL_TICK_MS;
		r->give_up = now + KILL_GRACE_MS;
		kill(a->sess.pid, SIGINT);
		kill_foreground(a->sess.pid, r->fg, &r->nfg, false);
		return;
	}
	if (now >= r->give_up && !r->killed_shell) {
		r->killed_shell = true;
		say("run %u: the session shell ignores SIGINT; replacing it", r->id);
		kill_foreground(a->sess.pid, r->fg, &r->nfg, true);
		kill(a->sess.pid, SIGKILL);
	} else if (now >= r->next_tick && !r->killed_shell) {
		kill(a->sess.pid, SIGINT);
		kill_foreground(a->sess.pid, r->fg, &r->nfg, false);
		r->next_tick = now + KILL_TICK_MS;
	}
}

static long long run_next_timer(const struct agent *a)
{
	const struct run *r = &a->run;

	if (!r->active || !r->timeout_ms || r->killed_shell)
		return -1;
	if (!r->killing)
		return r->deadline;
	return r->next_tick < r->give_up ? r->next_tick : r->give_up;
}

/* Discard what an old run's FIFO holds; close it once no writer is left. */
static void drain_read(struct agent *a, int i)
{
	size_t burst = 0;
	ssize_t r;

	while (burst < READ_BURST) {
		r = read(a->drain[i], chunk, sizeof(chunk));
		if (r > 0) {
			burst += r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return;
		close(a->drain[i]);  /* EOF or error */
		a->drain[i] = -1;
		return;
	}
}

static void drain_compact(struct agent *a)
{
	int i, j = 0;

	for (i = 0; i < a->ndrain; i++)
		if (a->drain[i] >= 0)
			a->drain[j++] = a->drain[i];
	a->ndrain = j;
}

/* ---- frames ---- */

static int reseed(const uint8_t *p, size_t len)
{
	uint64_t ns = proto_get_u64(p);
	size_t n = len - 8;
	struct rand_pool_info *info = NULL;
	struct timespec ts;
	int fd, ret = 0;

	if (n) {
		fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
		if (fd < 0) {
			ret = -errno;
			say("/dev/urandom: %s", strerror(errno));
			goto clock;
		}
		info = malloc(sizeof(*info) + n);
		if (info) {
			info->entropy_count = n > INT_MAX / 8 ? INT_MAX : (int)(n * 8);
			info->buf_size = (int)n;
			memcpy(info->buf, p + 8, n);
		}
		/* Crediting needs CAP_SYS_ADMIN; a plain write still mixes. */
		if (!info || ioctl(fd, RNDADDENTROPY, info) < 0) {
			ret = write_all(fd, p + 8, n);
			if (ret < 0)
				say("/dev/urandom: %s", strerror(-ret));
		}
		/* A ready crng reseeds from the pool only every minute or so:
		 * clones would go on sharing their output until then. */
		if (ioctl(fd, RNDRESEEDCRNG) < 0 && errno != ENODATA)
			say("RNDRESEEDCRNG: %s", strerror(errno));
		free(info);
		close(fd);
	}
clock:
	if (ns) {
		ts.tv_sec = ns / 1000000000u;
		ts.tv_nsec = ns % 1000000000u;
		if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
			ret = -errno;
			say("clock_settime: %s", strerror(errno));
		}
	}
	return ret;
}

/* Returns 0, or -EPROTO for a frame the host should not have sent. */
static int handle_frame(struct agent *a, const struct proto_frame *f)
{
	static const char pong[] = AGENT_NAME;
	struct iovec iov = { .iov_base = (void *)pong, .iov_len = sizeof(pong) - 1 };

	switch (f->type) {
	case PROTO_PING:
		port_send(a, PROTO_PONG, &iov, 1);
		return 0;
	case PROTO_EXEC:
		if (f->len < 12)
			return -EPROTO;
		if (run_enqueue(a, f->payload, f->len) < 0)
			say("dropping an EXEC: out of memory");
		return 0;
	case PROTO_RESEED:
		if (f->len < 8)
			return -EPROTO;
		reseed(f->payload, f->len);
		port_send(a, PROTO_RESEEDED, NULL, 0);
		return 0;
	default:
		return -EPROTO;
	}
}

/* Handle the complete frames in the input buffer. */
static void port_dispatch(struct agent *a)
{
	struct proto_frame f;
	size_t off = 0;
	char why[64];
	long n;

	while (a->queue_len < QUEUE_MAX) {
		n = proto_parse(a->in.p + off, a->in.len - off, &f);
		if (n == 0)
			break;
		if (n < 0) {
			port_reset(a, "bad length");
			return;
		}
		if (handle_frame(a, &f) < 0) {
			snprintf(why, sizeof(why), "type %u, %zu bytes", f.type, f.len);
			port_reset(a, why);
			return;
		}
		off += n;
	}
	if (off) {
		memmove(a->in.p, a->in.p + off, a->in.len - off);
		a->in.len -= off;
	}
}

static void port_input(struct agent *a)
{
	size_t need;
	ssize_t r;

	for (;;) {
		need = a->in.len + sizeof(chunk);
		/* Once the header is in, make room for exactly the frame. */
		if (a->in.len >= 4 && proto_get_u32(a->in.p) <= PROTO_FRAME_MAX &&
		    4 + (size_t)proto_get_u32(a->in.p) > need)
			need = 4 + (size_t)proto_get_u32(a->in.p);
		if (buf_reserve(&a->in, need) < 0) {
			port_reset(a, "out of memory");
			return;
		}
		r = read(a->port, a->in.p + a->in.len, a->in.cap - a->in.len);
		if (r > 0) {
			a->in.len += r;
			port_dispatch(a);
			if (a->port < 0 || a->queue_len >= QUEUE_MAX)
				return;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return;
		if (r == 0) {
			/* No host on the other end (yet, or any more): poll
			 * would report POLLHUP at once, so look again later. */
			if (a->fixed_port)
				a->quit = true;
			a->in.len = 0;
			a->port_retry = now_ms() + PORT_RETRY_MS;
			return;
		}
		say("read port: %s; reopening", strerror(errno));
		port_close(a, PORT_RETRY_MS);
		return;
	}
}

/* ---- main loop ---- */

static int poll_timeout(const struct agent *a, long long now)
{
	long long next = -1, t = run_next_timer(a);

	if (a->port < 0 || a->port_retry > now)
		next = a->port_retry > now ? a->port_retry : now + PORT_RETRY_MS;
	if (t >= 0 && (next < 0 || t < next))
		next = t;
	if (next < 0)
		return -1;
	return next <= now ? 0 : (int)(next - now);
}

static void serve(struct agent *a)
{
	struct pollfd pfd[5 + DRAIN_MAX];
	int n, i, port_i, sig_i, st_i, out_i, err_i, drain_i, ret;
	long long now;

	while (!a->quit) {
		now = now_ms();
		if (a->port < 0 && now >= a->port_retry) {
			ret = port_open();
			if (ret >= 0) {
				a->port = ret;
				a->port_waiting_logged = false;
			} else {
				if (!a->port_waiting_logged)
					say("waiting for port \"%s\": %s", PORT_NAME, strerror(-ret));
				a->port_waiting_logged = true;
				a->port_retry = now + PORT_RETRY_MS;
			}
		}
		n = 0;
		port_i = sig_i = st_i = out_i = err_i = -1;
		if (a->port >= 0 && now >= a->port_retry && a->queue_len < QUEUE_MAX) {
			port_i = n;
			pfd[n++] = (struct pollfd){ .fd = a->port, .events = POLLIN };
		}
		sig_i = n;
		pfd[n++] = (struct pollfd){ .fd = a->sigfd, .events = POLLIN };
		if (a->sess.status >= 0) {
			st_i = n;
			pfd[n++] = (struct pollfd){ .fd = a->sess.status, .events = POLLIN };
		}
		if (a->run.active && a->run.out.fd >= 0 && !a->run.out.eof) {
			out_i = n;
			pfd[n++] = (struct pollfd){ .fd = a->run.out.fd, .events = POLLIN };
		}
		if (a->run.active && a->run.err.fd >= 0 && !a->run.err.eof) {
			err_i = n;
			pfd[n++] = (struct pollfd){ .fd = a->run.err.fd, .events = POLLIN };
		}
		drain_i = n;
		for (i = 0; i < a->ndrain; i++)
			pfd[n++] = (struct pollfd){ .fd = a->drain[i], .events = POLLIN };

		ret = poll(pfd, n, poll_timeout(a, now));
		if (ret < 0 && errno != EINTR) {
			say("poll: %s", strerror(errno));
			usleep(PORT_RETRY_MS * 1000);
			continue;
		}
		if (ret > 0) {
			/* A FIFO without writers keeps reporting POLLHUP:
			 * stop polling it; run_finish reads it once more. */
			if (out_i >= 0 && pfd[out_i].revents)
				a->run.out.eof = stream_read(&a->run.out, a->run.output_max);
			if (err_i >= 0 && pfd[err_i].revents)
				a->run.err.eof = stream_read(&a->run.err, a->run.output_max);
			for (i = 0; i < a->ndrain; i++)
				if (pfd[drain_i + i].revents)
					drain_read(a, i);
			drain_compact(a);
			if (st_i >= 0 && pfd[st_i].revents)
				session_read_status(a);
			if (pfd[sig_i].revents)
				reap(a);
			if (port_i >= 0 && pfd[port_i].revents && a->port >= 0)
				port_input(a);
		}
		run_timers(a);
		if (a->port >= 0 && a->in.len)
			port_dispatch(a);
	}
}

/* Only --fd mode gets here: a test on the host, which wants no leftovers
 * from the current session either. */
static void agent_release(struct agent *a)
{
	struct pending *p;
	int i;

	if (a->sess.pid)
		kill(-a->sess.pid, SIGKILL);
	while ((p = a->queue)) {
		a->queue = p->next;
		free(p);
	}
	for (i = 0; i < a->ndrain; i++)
		close(a->drain[i]);
	if (a->run.active) {
		buf_release(&a->run.out.data);
		buf_release(&a->run.err.data);
	}
	session_forget(a);
	buf_release(&a->sess.line);
	buf_release(&a->in);
	close(a->sigfd);
}

int main(int argc, char **argv)
{
	struct agent a = {
		.port = -1,
		.dir = RUN_DIR,
		.sigfd = -1,
		.sess = { .ctl = -1, .status = -1 },
		.run = { .out = { .fd = -1, .hold = -1 }, .err = { .fd = -1, .hold = -1 } },
	};
	sigset_t mask;
	int i, ret;

	a.queue_tail = &a.queue;
	if (getpid() == 1) {
		init_system();
	} else {
		for (i = 1; i < argc; i++) {
			if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
				a.port = atoi(argv[++i]);
				a.fixed_port = true;
			} else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
				a.dir = argv[++i];
			} else {
				fprintf(stderr, "usage: %s [--fd N] [--dir DIR]\n", argv[0]);
				return 2;
			}
		}
		/* Inherit the orphans of background jobs, as init would. */
		prctl(PR_SET_CHILD_SUBREAPER, 1);
	}
	if (strspn(a.dir, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-") !=
	    strlen(a.dir)) {
		say("%s: the run directory name must be shell-safe", a.dir);
		return 2;
	}
	if (a.fixed_port)
		fcntl(a.port, F_SETFL, fcntl(a.port, F_GETFL) | O_NONBLOCK);

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	a.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (a.sigfd < 0) {
		say("signalfd: %s", strerror(errno));
		return 1;
	}
	if (mkdir(a.dir, 0700) < 0 && errno != EEXIST)
		say("%s: %s", a.dir, strerror(errno));
	/* Start the session now so that the first run does not wait for it. */
	ret = session_start(&a);
	if (ret < 0)
		say("session shell: %s", strerror(-ret));
	serve(&a);
	agent_release(&a);
	return 0;
}
