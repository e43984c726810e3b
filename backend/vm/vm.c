/* vm.c: the "vm" backend: one QEMU microVM per world, driven over QMP
 * (qmp.c), with the world's session in the guest agent, reached over a
 * virtio-serial port (backend/agent/proto.h).
 *
 * Files, all below STATE/vm/:
 *   <id>/config         mem_mib and vcpus, so branch and resume can size the VM
 *   <id>/qemu.pid       written by QEMU; -pidfile also marks the process as ours
 *   <id>/qmp.sock, <id>/agent.sock, <id>/console.log (guest), <id>/qemu.log (QEMU's stderr)
 *   <id>/suspend.state  the full state saved by suspend()
 *   snapshots/<snap>/{config,state}
 * QEMU runs daemonized in its own session, so it survives worldfs dying and
 * resume() can reattach to it. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "backend/agent/proto.h"
#include "backend/backend.h"
#include "backend/vm/qmp.h"

#define ID_MAX 64
#define SOCK_PATH_MAX ((int)sizeof(((struct sockaddr_un *)0)->sun_path))
#define QMP_TIMEOUT_MS 10000
#define LAUNCH_TIMEOUT_MS 30000    /* until `qemu -daemonize` returns */
#define BOOT_TIMEOUT_MS 60000      /* until the agent answers (TCG boots in ~2 s) */
#define RESTORE_TIMEOUT_MS 60000
#define MIGRATE_TIMEOUT_MS 300000
#define EXEC_GRACE_MS 10000        /* the agent kills a run at its time-out; allow for that */
#define PING_RETRY_MS 250
#define QUIT_TIMEOUT_MS 5000
#define RESEED_BYTES 64
#define DEFAULT_EXEC_TIMEOUT_S 60

static const char kernel_append[] =
	"console=ttyS0 quiet panic=-1 cryptomgr.notests tsc=reliable no_timer_check pci=off mitigations=off";

struct backend {
	char dir[PATH_MAX];       /* STATE/vm, absolute: QEMU runs with cwd / */
	char snap_dir[PATH_MAX];  /* STATE/vm/snapshots */
	char kernel[PATH_MAX];
	char initrd[PATH_MAX];
	char qemu[PATH_MAX];
	char append[sizeof(kernel_append) + 64];  /* kernel command line */
	bool kvm;
	unsigned mem_mib;
	unsigned vcpus;
	unsigned exec_timeout_s;
	size_t output_max;
};

struct sandbox {
	struct backend *b;
	char id[ID_MAX + 1];
	char dir[PATH_MAX];
	int dirfd;                /* keeps socket paths short: /proc/self/fd/N/qmp.sock */
	pid_t pid;                /* the daemonized QEMU, 0 when none */
	struct qmp *qmp;
	int agent;                /* agent socket, -1 when not connected */
	unsigned mem_mib;
	unsigned vcpus;
	uint32_t next_run;
	bool bandwidth_set;
	bool broken;              /* the agent or QEMU failed: later calls get EIO */
};

/* --- small helpers -------------------------------------------------------- */

static void say(const char *id, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(const char *id, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* One fprintf per message, so lines of parallel sandboxes don't mix. */
	fprintf(stderr, "worldfs: vm %s: %s\n", id, msg);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Milliseconds left until deadline, for poll(2)-style timeouts. */
static int ms_left(double deadline)
{
	double left = deadline - now_ms();

	return left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left + 1;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static const char *str_or(const char *s, const char *fallback)
{
	return s ? s : fallback;
}

static int pathf(char out[PATH_MAX], const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int pathf(char out[PATH_MAX], const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, PATH_MAX, fmt, ap);
	va_end(ap);
	return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* Registry ids and snapshot ids become file names: keep them plain. */
static int id_check(const char *id)
{
	size_t n = strlen(id);

	if (n == 0 || n > ID_MAX || id[0] == '.')
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_' && id[i] != '.')
			return -EINVAL;
	return 0;
}

static bool exists(const char *path)
{
	return access(path, F_OK) == 0;
}

static int fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		r = -errno;
	close(fd);
	return r;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Replace dir/name with text, durably: temp file, fsync, rename, fsync dir. */
static int write_durable(const char *dir, const char *name, const char *text)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	int fd = -1, r;

	if ((r = pathf(tmp, "%s/.%s.tmp", dir, name)) < 0 || (r = pathf(path, "%s/%s", dir, name)) < 0)
		return r;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	r = write_all(fd, text, strlen(text));
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r == 0)
		r = fsync_path(dir);
	if (r < 0)
		unlink(tmp);
	return r;
}

/* Read up to n-1 bytes of a small file, NUL-terminated.  Bytes or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got;

	if (fd < 0)
		return -errno;
	got = read(fd, buf, n - 1);
	if (got < 0)
		got = -errno;
	else
		buf[got] = '\0';
	close(fd);
	return got;
}

static int rm_tree_at(int parent, const char *name)
{
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct dirent *e;
	DIR *d;
	int r = 0;

	if (fd < 0) {
		if (errno == ENOTDIR || errno == ELOOP)
			return unlinkat(parent, name, 0) < 0 ? -errno : 0;
		return errno == ENOENT ? 0 : -errno;
	}
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((e = readdir(d))) {
		int rr;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (e->d_type == DT_DIR || e->d_type == DT_UNKNOWN)
			rr = rm_tree_at(dirfd(d), e->d_name);
		else
			rr = unlinkat(dirfd(d), e->d_name, 0) < 0 ? -errno : 0;
		if (rr < 0 && rr != -ENOENT && r == 0)
			r = rr;
	}
	closedir(d);
	if (unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r == 0)
		r = -errno;
	return r;
}

/* Remove path and everything below it; a missing path is fine. */
static int rm_tree(const char *path)
{
	return rm_tree_at(AT_FDCWD, path);
}

static int config_write(const char *dir, unsigned mem_mib, unsigned vcpus)
{
	char text[64];

	snprintf(text, sizeof(text), "mem_mib=%u\nvcpus=%u\n", mem_mib, vcpus);
	return write_durable(dir, "config", text);
}

static int config_read(const char *dir, unsigned *mem_mib, unsigned *vcpus)
{
	char path[PATH_MAX], text[128];
	ssize_t n;
	int r;

	if ((r = pathf(path, "%s/config", dir)) < 0)
		return r;
	n = read_small(path, text, sizeof(text));
	if (n < 0)
		return (int)n;
	if (sscanf(text, "mem_mib=%u vcpus=%u", mem_mib, vcpus) != 2 || *mem_mib == 0 || *vcpus == 0)
		return -EINVAL;
	return 0;
}

/* The last lines of a log file on one line, for error messages. */
static void log_tail(const char *dir, const char *name, char *out, size_t n)
{
	char path[PATH_MAX], buf[1024];
	int fd, lines = 0;
	off_t size;
	ssize_t got;
	char *p;

	snprintf(out, n, "(%s empty)", name);
	if (pathf(path, "%s/%s", dir, name) < 0 || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return;
	size = lseek(fd, 0, SEEK_END);
	got = size < 0 ? -1 : pread(fd, buf, sizeof(buf) - 1, size > (off_t)sizeof(buf) - 1 ? size - (off_t)sizeof(buf) + 1 : 0);
	close(fd);
	if (got <= 0)
		return;
	buf[got] = '\0';
	while (got > 0 && isspace((unsigned char)buf[got - 1]))
		buf[--got] = '\0';
	for (p = buf + got; p > buf; p--)
		if (p[-1] == '\n' && ++lines == 4)
			break;
	for (char *c = p; *c; c++)
		if (*c == '\n' || *c == '\r')
			*c = '|';
		else if (!isprint((unsigned char)*c))
			*c = '?';
	snprintf(out, n, "%s", p);
}

/* --- the QEMU process ----------------------------------------------------- */

/* Is pid a live QEMU started for dir?  Its -pidfile argument says so; a
 * zombie has an empty cmdline and so is not. */
static bool pid_is_ours(pid_t pid, const char *dir)
{
	char path[64], want[PATH_MAX], args[8192];
	bool qemu = false, mine = false;
	ssize_t n;

	if (pid <= 1 || pathf(want, "%s/qemu.pid", dir) < 0)
		return false;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	n = read_small(path, args, sizeof(args));
	if (n <= 0)
		return false;
	for (char *a = args; a < args + n; a += strlen(a) + 1) {
		const char *base = strrchr(a, '/');

		if (a == args)
			qemu = strncmp(base ? base + 1 : a, "qemu-system", 11) == 0;
		else if (strcmp(a, want) == 0)
			mine = true;
	}
	return qemu && mine;
}

static pid_t pid_parse(const char *text)
{
	char *end;
	long v;

	if (!text)
		return 0;
	errno = 0;
	v = strtol(text, &end, 10);
	if (errno || end == text || (*end && *end != '\n') || v <= 1 || v > INT_MAX)
		return 0;
	return (pid_t)v;
}

static pid_t pid_from_file(const char *dir)
{
	char path[PATH_MAX], text[32];

	if (pathf(path, "%s/qemu.pid", dir) < 0 || read_small(path, text, sizeof(text)) <= 0)
		return 0;
	return pid_parse(text);
}

static bool wait_gone(pid_t pid, const char *dir, int timeout_ms)
{
	double deadline = now_ms() + timeout_ms;

	while (pid_is_ours(pid, dir)) {
		if (now_ms() > deadline)
			return false;
		sleep_ms(10);
	}
	return true;
}

/* A socket path short enough for sun_path.  QEMU gets the absolute path if
 * it fits, else the bare name (it binds before leaving our cwd, the
 * sandbox dir); we connect through /proc/self/fd/DIRFD when it doesn't. */
static void sock_path(const struct sandbox *s, const char *name, bool for_qemu, char out[SOCK_PATH_MAX])
{
	int n = snprintf(out, SOCK_PATH_MAX, "%s/%s", s->dir, name);

	if (n > 0 && n < SOCK_PATH_MAX)
		return;
	if (for_qemu)
		snprintf(out, SOCK_PATH_MAX, "%s", name);
	else
		snprintf(out, SOCK_PATH_MAX, "/proc/self/fd/%d/%s", s->dirfd, name);
}

/* QEMU's own words on a failure: qemu.log, then the guest's console. */
static void say_died(const struct sandbox *s, const char *what)
{
	char q[512], c[512];

	log_tail(s->dir, "qemu.log", q, sizeof(q));
	log_tail(s->dir, "console.log", c, sizeof(c));
	say(s->id, "%s: qemu.log: %s; console.log: %s", what, q, c);
}

static int errno_from_log(const struct sandbox *s)
{
	char q[1024];

	log_tail(s->dir, "qemu.log", q, sizeof(q));
	if (strstr(q, "Cannot allocate memory") || strstr(q, "cannot set up guest memory"))
		return -ENOMEM;
	if (strstr(q, "No space left on device"))
		return -ENOSPC;
	return -EIO;
}

/* Start QEMU for s, daemonized.  incoming: wait paused (-S) for a state to
 * be loaded with state_load().  On success s->pid and s->qmp are set; on
 * failure nothing is left running. */
static int qemu_launch(struct sandbox *s, bool incoming)
{
	const struct backend *b = s->b;
	char mem[32], smp[32], name[ID_MAX + 16], pidfile[PATH_MAX], logpath[PATH_MAX];
	char qmp_sock[SOCK_PATH_MAX], agent_sock[SOCK_PATH_MAX], us[SOCK_PATH_MAX];
	char qmp_arg[SOCK_PATH_MAX + 48], agent_arg[SOCK_PATH_MAX + 80];
	const char *argv[64];
	double deadline = now_ms() + LAUNCH_TIMEOUT_MS;
	int argc = 0, logfd = -1, status = 0, r;
	sigset_t none;
	pid_t child, w;

	sock_path(s, "qmp.sock", true, qmp_sock);
	sock_path(s, "agent.sock", true, agent_sock);
	snprintf(mem, sizeof(mem), "%u", s->mem_mib);
	snprintf(smp, sizeof(smp), "%u", s->vcpus);
	snprintf(name, sizeof(name), "worldfs-%s", s->id);
	snprintf(qmp_arg, sizeof(qmp_arg), "unix:%s,server=on,wait=off", qmp_sock);
	snprintf(agent_arg, sizeof(agent_arg), "socket,id=agent,path=%s,server=on,wait=off", agent_sock);
	if ((r = pathf(pidfile, "%s/qemu.pid", s->dir)) < 0 || (r = pathf(logpath, "%s/qemu.log", s->dir)) < 0)
		return r;
	/* Leftovers of an earlier run would make QEMU's bind() fail. */
	unlinkat(s->dirfd, "qmp.sock", 0);
	unlinkat(s->dirfd, "agent.sock", 0);
	unlinkat(s->dirfd, "qemu.pid", 0);

	argv[argc++] = b->qemu;
	argv[argc++] = "-name";
	argv[argc++] = name;
	argv[argc++] = "-M";
	argv[argc++] = "microvm,x-option-roms=off,rtc=on,isa-serial=on";
	argv[argc++] = "-accel";
	argv[argc++] = b->kvm ? "kvm" : "tcg";
	argv[argc++] = "-cpu";
	argv[argc++] = b->kvm ? "host" : "max";
	argv[argc++] = "-m";
	argv[argc++] = mem;
	argv[argc++] = "-smp";
	argv[argc++] = smp;
	argv[argc++] = "-nodefaults";
	argv[argc++] = "-no-user-config";
	argv[argc++] = "-nographic";
	argv[argc++] = "-no-reboot";
	argv[argc++] = "-kernel";
	argv[argc++] = b->kernel;
	argv[argc++] = "-initrd";
	argv[argc++] = b->initrd;
	argv[argc++] = "-append";
	argv[argc++] = b->append;
	argv[argc++] = "-serial";
	argv[argc++] = "file:console.log";  /* relative: QEMU opens it in our cwd, the sandbox dir */
	argv[argc++] = "-device";
	argv[argc++] = "virtio-serial-device";
	argv[argc++] = "-chardev";
	argv[argc++] = agent_arg;
	argv[argc++] = "-device";
	argv[argc++] = "virtserialport,chardev=agent,name=agent";
	argv[argc++] = "-qmp";
	argv[argc++] = qmp_arg;
	/* -D keeps QEMU's stderr (qemu.log) open after daemonizing, so its
	 * later errors (a failed migration load) are not lost in /dev/null. */
	argv[argc++] = "-D";
	argv[argc++] = logpath;
	argv[argc++] = "-daemonize";
	argv[argc++] = "-pidfile";
	argv[argc++] = pidfile;
	if (incoming) {
		argv[argc++] = "-incoming";
		argv[argc++] = "defer";
		argv[argc++] = "-S";
	}
	argv[argc] = NULL;

	logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
	if (logfd < 0) {
		r = -errno;
		say(s->id, "%s: %s", logpath, strerror(-r));
		return r;
	}
	sigemptyset(&none);
	child = fork();
	if (child < 0) {
		r = -errno;
		close(logfd);
		say(s->id, "fork: %s", strerror(-r));
		return r;
	}
	if (child == 0) {
		/* Only async-signal-safe calls here: other threads may hold locks. */
		int devnull = open("/dev/null", O_RDONLY);

		setsid();
		if (chdir(s->dir) < 0)
			_exit(126);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(logfd, 1);
		dup2(logfd, 2);
		close_range(3, ~0u, 0);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(logfd);

	/* The foreground QEMU exits once the daemon is initialized (sockets
	 * bound, pid file written) or has failed. */
	for (;;) {
		w = waitpid(child, &status, WNOHANG);
		if (w == child || (w < 0 && errno != EINTR))
			break;
		if (now_ms() > deadline) {
			kill(child, SIGKILL);
			waitpid(child, &status, 0);
			say(s->id, "qemu did not start within %d s", LAUNCH_TIMEOUT_MS / 1000);
			r = -ETIMEDOUT;
			goto fail;
		}
		sleep_ms(5);
	}
	/* w < 0 (ECHILD) when SIGCHLD is ignored: the pid file tells then. */
	if (w == child && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
		r = errno_from_log(s);
		say_died(s, "qemu failed to start");
		goto fail;
	}
	s->pid = pid_from_file(s->dir);
	if (!pid_is_ours(s->pid, s->dir)) {
		r = errno_from_log(s);
		say_died(s, "qemu exited during start");
		goto fail;
	}
	sock_path(s, "qmp.sock", false, us);
	r = qmp_open(&s->qmp, us, QMP_TIMEOUT_MS);
	if (r < 0) {
		say(s->id, "%s/qmp.sock: %s", s->dir, strerror(-r));
		goto fail;
	}
	return 0;
fail:
	if (s->pid > 0 && pid_is_ours(s->pid, s->dir)) {
		kill(s->pid, SIGKILL);
		wait_gone(s->pid, s->dir, QUIT_TIMEOUT_MS);
	}
	s->pid = 0;
	return r;
}

/* Stop QEMU: quit over QMP, else SIGTERM, else SIGKILL.  Leaves s with no
 * process and no connections. */
static void qemu_stop(struct sandbox *s)
{
	static const int sigs[] = { SIGTERM, SIGKILL };
	bool quitting = false;

	if (s->agent >= 0)
		close(s->agent);
	s->agent = -1;
	if (s->qmp && s->pid > 0) {
		int r = qmp_command(s->qmp, "quit", NULL, NULL, QMP_TIMEOUT_MS);

		/* QEMU may close the connection before answering. */
		quitting = r == 0 || r == -EPIPE;
		if (!quitting)
			say(s->id, "qmp quit: %s %s", strerror(-r), qmp_error_desc(s->qmp));
	}
	qmp_close(s->qmp);
	s->qmp = NULL;
	if (s->pid > 0 && !(quitting && wait_gone(s->pid, s->dir, QUIT_TIMEOUT_MS))) {
		for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
			/* Signal only what is still our QEMU: the pid may be reused. */
			if (!pid_is_ours(s->pid, s->dir))
				break;
			kill(s->pid, sigs[i]);
			if (wait_gone(s->pid, s->dir, QUIT_TIMEOUT_MS))
				break;
		}
		if (pid_is_ours(s->pid, s->dir))
			say(s->id, "qemu pid %d did not exit", (int)s->pid);
	}
	s->pid = 0;
}

/* --- the guest agent ------------------------------------------------------ */

static int agent_connect(struct sandbox *s, double deadline)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	sock_path(s, "agent.sock", false, sa.sun_path);
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), err;

		if (fd < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			s->agent = fd;
			return 0;
		}
		err = errno;
		close(fd);
		if ((err != ENOENT && err != ECONNREFUSED && err != EINTR) || now_ms() > deadline) {
			say(s->id, "%s/agent.sock: %s", s->dir, strerror(err));
			return -err;
		}
		sleep_ms(10);
	}
}

/* The agent stopped answering: say why, and fail this sandbox for good. */
static int agent_lost(struct sandbox *s, int r, const char *what)
{
	s->broken = true;
	if (!pid_is_ours(s->pid, s->dir))
		say_died(s, "qemu exited");
	else
		say(s->id, "agent %s: %s", what, strerror(-r));
	return -EIO;
}

/* Read frames until one of type `type` arrives (for RESULT: with run_id);
 * anything else is stale (extra PONGs of a boot, results of runs
 * given up on) and dropped.  *buf holds the frame's bytes on success.
 * -ETIMEDOUT when no frame starts before idle or none ends before
 * deadline: a frame is never cut in the middle before the deadline, which
 * would leave the stream out of step. */
static int agent_wait(struct sandbox *s, uint8_t type, uint32_t run_id,
		      struct proto_frame *f, uint8_t **buf, double idle, double deadline)
{
	for (;;) {
		struct pollfd pfd = { .fd = s->agent, .events = POLLIN };
		int r = poll(&pfd, 1, ms_left(idle < deadline ? idle : deadline));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		r = proto_read(s->agent, f, buf, ms_left(deadline));
		if (r < 0)
			return r;
		if (f->type == type &&
		    (type != PROTO_RESULT || (f->len >= 4 && proto_get_u32(f->payload) == run_id)))
			return 0;
		free(*buf);
		*buf = NULL;
	}
}

/* Wait until the agent answers PING, then give it fresh entropy and the
 * host's time: a restored or cloned guest has its parent's. */
static int agent_ready(struct sandbox *s, double deadline)
{
	uint8_t seed[8 + RESEED_BYTES];
	struct proto_frame f;
	struct timespec ts;
	uint8_t *buf = NULL;
	int r;

	for (;;) {
		double retry = now_ms() + PING_RETRY_MS;

		r = proto_write(s->agent, PROTO_PING, NULL, 0);
		if (r < 0)
			return agent_lost(s, r, "ping");
		/* Before the guest opens its port, PINGs wait in the socket
		 * or are dropped; resend until one is answered. */
		r = agent_wait(s, PROTO_PONG, 0, &f, &buf, retry, deadline);
		if (r == 0)
			break;
		if (r != -ETIMEDOUT)
			return agent_lost(s, r, "ping");
		if (!pid_is_ours(s->pid, s->dir))
			return agent_lost(s, -ESRCH, "ping");
		if (now_ms() > deadline) {
			say_died(s, "the agent did not answer in time");
			return -ETIMEDOUT;
		}
	}
	free(buf);
	buf = NULL;

	clock_gettime(CLOCK_REALTIME, &ts);
	proto_put_u64(seed, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	if (getrandom(seed + 8, RESEED_BYTES, 0) != RESEED_BYTES)
		return -EIO;
	r = proto_write(s->agent, PROTO_RESEED, seed, sizeof(seed));
	if (r == 0)
		r = agent_wait(s, PROTO_RESEEDED, 0, &f, &buf, deadline, deadline);
	free(buf);
	return r < 0 ? agent_lost(s, r, "reseed") : 0;
}

/* RESULT: u32 run_id, i32 status, u32 flags, u32 stdout_len, stdout, stderr. */
static int result_parse(const struct proto_frame *f, struct run_result *res)
{
	uint32_t flags, out_len;

	if (f->len < 16)
		return -EPROTO;
	out_len = proto_get_u32(f->payload + 12);
	if (out_len > f->len - 16)
		return -EPROTO;
	flags = proto_get_u32(f->payload + 8);
	res->status = (int)(int32_t)proto_get_u32(f->payload + 4);
	res->timed_out = flags & PROTO_F_TIMED_OUT;
	res->truncated = flags & PROTO_F_TRUNCATED;
	res->session_reset = flags & PROTO_F_SESSION_RESET;
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

/* --- full state files ----------------------------------------------------- *
 * A state is QEMU's whole migration stream, guest RAM included, written to
 * and read from a file descriptor we pass over QMP (no shell, no `cat` to
 * outlive the migration).  Copy-on-write RAM files will replace these two. */

static int migrate_bandwidth(struct sandbox *s)
{
	int r;

	if (s->bandwidth_set)
		return 0;
	/* The default cap is 32 MiB/s: a 128 MiB guest would stay frozen for seconds. */
	r = qmp_command(s->qmp, "migrate-set-parameters",
			json_pack("{s:I}", "max-bandwidth", (json_int_t)INT64_MAX / 2), NULL, QMP_TIMEOUT_MS);
	if (r == 0)
		s->bandwidth_set = true;
	return r;
}

static int query_status(struct sandbox *s, char *out, size_t n)
{
	json_t *ret = NULL;
	int r = qmp_command(s->qmp, "query-status", NULL, &ret, QMP_TIMEOUT_MS);

	if (r == 0)
		snprintf(out, n, "%s", str_or(json_string_value(json_object_get(ret, "status")), ""));
	json_decref(ret);
	return r;
}

static int qmp_failed(struct sandbox *s, int r, const char *what)
{
	if (r == -EREMOTEIO)
		say(s->id, "%s: %s: %s", what, qmp_error_class(s->qmp), qmp_error_desc(s->qmp));
	else if (!pid_is_ours(s->pid, s->dir)) {
		s->broken = true;
		say_died(s, what);
	} else {
		say(s->id, "%s: %s", what, strerror(-r));
	}
	return r == -ETIMEDOUT || r == -ENOMEM ? r : -EIO;
}

/* Write s's full state to fd.  The VM is stopped meanwhile (*frozen_ms);
 * it runs again afterwards if keep_running, and always on failure. */
static int state_save(struct sandbox *s, int fd, bool keep_running, double *frozen_ms)
{
	double t0, deadline;
	json_t *ret = NULL;
	char desc[256] = "";
	const char *st = "";
	int r, rc;

	*frozen_ms = 0;
	if ((r = migrate_bandwidth(s)) < 0)
		return qmp_failed(s, r, "migrate-set-parameters");
	if ((r = qmp_send_fd(s->qmp, "wfs-state", fd, QMP_TIMEOUT_MS)) < 0)
		return qmp_failed(s, r, "getfd");
	t0 = now_ms();
	if ((r = qmp_command(s->qmp, "stop", NULL, NULL, QMP_TIMEOUT_MS)) < 0)
		return qmp_failed(s, r, "stop");
	r = qmp_command(s->qmp, "migrate", json_pack("{s:s}", "uri", "fd:wfs-state"), NULL, QMP_TIMEOUT_MS);
	if (r < 0) {
		r = qmp_failed(s, r, "migrate");
		goto out;
	}
	deadline = now_ms() + MIGRATE_TIMEOUT_MS;
	for (long pause = 1;; pause = pause < 8 ? pause * 2 : pause) {
		r = qmp_command(s->qmp, "query-migrate", NULL, &ret, QMP_TIMEOUT_MS);
		if (r < 0) {
			r = qmp_failed(s, r, "query-migrate");
			goto out;
		}
		st = str_or(json_string_value(json_object_get(ret, "status")), "");
		if (strcmp(st, "completed") == 0 || strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)
			break;
		json_decref(ret);
		ret = NULL;
		if (now_ms() > deadline) {
			qmp_command(s->qmp, "migrate_cancel", NULL, NULL, QMP_TIMEOUT_MS);
			say(s->id, "migration did not complete within %d s", MIGRATE_TIMEOUT_MS / 1000);
			r = -ETIMEDOUT;
			goto out;
		}
		sleep_ms(pause);
	}
	if (strcmp(st, "completed") != 0) {
		snprintf(desc, sizeof(desc), "%s", str_or(json_string_value(json_object_get(ret, "error-desc")), st));
		say(s->id, "migration %s: %s", st, desc);
		r = strstr(desc, "No space left") ? -ENOSPC : -EIO;
	}
out:
	json_decref(ret);
	if (keep_running || r < 0) {
		/* After a migration the VM sits in "postmigrate"; cont resumes it. */
		rc = qmp_command(s->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS);
		if (rc < 0) {
			s->broken = true;
			rc = qmp_failed(s, rc, "cont");
			if (r == 0)
				r = rc;
		}
	}
	*frozen_ms = now_ms() - t0;
	return r;
}

/* Load a state from fd into s's QEMU (launched with incoming) and run it. */
static int state_load(struct sandbox *s, int fd, double deadline)
{
	char st[32] = "inmigrate";
	int r;

	if ((r = qmp_send_fd(s->qmp, "wfs-state", fd, QMP_TIMEOUT_MS)) < 0)
		return qmp_failed(s, r, "getfd");
	r = qmp_command(s->qmp, "migrate-incoming", json_pack("{s:s}", "uri", "fd:wfs-state"), NULL,
			QMP_TIMEOUT_MS);
	if (r < 0)
		return qmp_failed(s, r, "migrate-incoming");
	/* QEMU exits when the load fails: query-status then fails with EPIPE. */
	for (long pause = 1; strcmp(st, "inmigrate") == 0; pause = pause < 8 ? pause * 2 : pause) {
		if (now_ms() > deadline) {
			say(s->id, "loading the state took too long");
			return -ETIMEDOUT;
		}
		sleep_ms(pause);
		if ((r = query_status(s, st, sizeof(st))) < 0)
			return qmp_failed(s, r, "loading the state");
	}
	if (strcmp(st, "paused") != 0 && strcmp(st, "prelaunch") != 0) {
		say(s->id, "after loading the state the VM is %s", st);
		return -EIO;
	}
	if ((r = qmp_command(s->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS)) < 0)
		return qmp_failed(s, r, "cont");
	return 0;
}

/* --- sandboxes ------------------------------------------------------------ */

static int sandbox_new(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus,
		       struct sandbox **out)
{
	struct sandbox *s;
	int r;

	if ((r = id_check(id)) < 0)
		return r;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->b = b;
	s->dirfd = s->agent = -1;
	s->mem_mib = mem_mib ? mem_mib : b->mem_mib;
	s->vcpus = vcpus ? vcpus : b->vcpus;
	snprintf(s->id, sizeof(s->id), "%s", id);
	if ((r = pathf(s->dir, "%s/%s", b->dir, id)) < 0) {
		free(s);
		return r;
	}
	if (getrandom(&s->next_run, sizeof(s->next_run), 0) != sizeof(s->next_run))
		s->next_run = (uint32_t)time(NULL);
	*out = s;
	return 0;
}

static int sandbox_open_dir(struct sandbox *s)
{
	s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return s->dirfd < 0 ? -errno : 0;
}

/* Create s's directory and config; -EEXIST if the id is taken. */
static int sandbox_make_dir(struct sandbox *s)
{
	int r;

	if (mkdir(s->dir, 0700) < 0) {
		r = -errno;
		if (r != -EEXIST)
			say(s->id, "%s: %s", s->dir, strerror(-r));
		return r;
	}
	if ((r = sandbox_open_dir(s)) < 0 || (r = config_write(s->dir, s->mem_mib, s->vcpus)) < 0) {
		say(s->id, "%s: %s", s->dir, strerror(-r));
		if (s->dirfd >= 0)
			close(s->dirfd);
		s->dirfd = -1;
		rm_tree(s->dir);
	}
	return r;
}

/* Close what s holds in worldfs; QEMU keeps running if it does. */
static void sandbox_free(struct sandbox *s)
{
	if (!s)
		return;
	if (s->agent >= 0)
		close(s->agent);
	qmp_close(s->qmp);
	if (s->dirfd >= 0)
		close(s->dirfd);
	free(s);
}

/* Stop QEMU, delete s's files, free s. */
static int sandbox_discard(struct sandbox *s)
{
	int r;

	qemu_stop(s);
	if (s->dirfd >= 0)
		close(s->dirfd);
	s->dirfd = -1;
	r = rm_tree(s->dir);
	if (r < 0)
		say(s->id, "%s: %s", s->dir, strerror(-r));
	sandbox_free(s);
	return r;
}

/* Start QEMU for s, fresh (state_fd < 0) or from a state, and wait for the
 * agent.  On failure no process is left. */
static int sandbox_start(struct sandbox *s, int state_fd, double deadline)
{
	int r = qemu_launch(s, state_fd >= 0);

	if (r < 0)
		return r;
	if (state_fd >= 0 && (r = state_load(s, state_fd, deadline)) < 0)
		goto fail;
	if ((r = agent_connect(s, deadline)) < 0 || (r = agent_ready(s, deadline)) < 0)
		goto fail;
	s->broken = false;
	return 0;
fail:
	qemu_stop(s);
	return r;
}

static void handle_set(const struct sandbox *s, char handle[BACKEND_HANDLE_MAX])
{
	snprintf(handle, BACKEND_HANDLE_MAX, "%d", (int)s->pid);
}

/* --- backend ops ---------------------------------------------------------- */

static int mkdir_p(char *path)
{
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0700) < 0 && errno != EEXIST) {
			*p = '/';
			return -errno;
		}
		*p = '/';
	}
	return mkdir(path, 0700) < 0 && errno != EEXIST ? -errno : 0;
}

static bool cpu_has_virt(void)
{
	FILE *f = fopen("/proc/cpuinfo", "re");
	char line[8192];
	bool yes = false;

	if (!f)
		return false;
	while (!yes && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "flags", 5) != 0)
			continue;
		char *save = NULL;

		for (char *t = strtok_r(line, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save))
			if (strcmp(t, "vmx") == 0 || strcmp(t, "svm") == 0)
				yes = true;
		break;
	}
	fclose(f);
	return yes;
}

/* KVM only where it can run a stock guest kernel: /dev/kvm alone may be
 * PVM, which can't (see VM-NOTES). */
static bool choose_kvm(enum accel accel)
{
	int fd;

	if (accel == ACCEL_KVM)
		return true;
	if (accel == ACCEL_TCG)
		return false;
	if (!cpu_has_virt()) {
		fprintf(stderr, "worldfs: /dev/kvm: no vmx/svm, using tcg\n");
		return false;
	}
	fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "worldfs: /dev/kvm: %s, using tcg\n", strerror(errno));
		return false;
	}
	close(fd);
	fprintf(stderr, "worldfs: /dev/kvm: using kvm\n");
	return true;
}

/* The host's TSC rate in kHz, measured; 0 if unknown.  Under TCG the
 * guest's TSC is the host's, and the guest's own calibration against the
 * emulated PIT fails often enough on a loaded host (the kernel then marks
 * the TSC unusable and hangs on this clockless machine) that we tell it. */
static unsigned long host_tsc_khz(void)
{
#if defined(__x86_64__) || defined(__i386__)
	double t0, t1;
	uint64_t c0, c1;

	t0 = now_ms();
	c0 = __builtin_ia32_rdtsc();
	sleep_ms(20);
	t1 = now_ms();
	c1 = __builtin_ia32_rdtsc();
	if (t1 <= t0 || c1 <= c0)
		return 0;
	return (unsigned long)((double)(c1 - c0) / (t1 - t0) + 0.5);
#else
	return 0;
#endif
}

static int find_program(const char *name, char out[PATH_MAX])
{
	const char *path = getenv("PATH");

	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin";
	while (*path) {
		size_t n = strcspn(path, ":");

		if (n > 0 && snprintf(out, PATH_MAX, "%.*s/%s", (int)n, path, name) < PATH_MAX &&
		    access(out, X_OK) == 0)
			return 0;
		path += n;
		if (*path == ':')
			path++;
	}
	return -ENOENT;
}

/* Temporary snapshot dirs (.NAME.tmp) are what a crash mid-snapshot leaves. */
static void snapshots_sweep(const struct backend *b)
{
	DIR *d = opendir(b->snap_dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name);

		if (e->d_name[0] == '.' && n > 5 && strcmp(e->d_name + n - 4, ".tmp") == 0)
			rm_tree_at(dirfd(d), e->d_name);
	}
	closedir(d);
}

static int vm_init(struct backend **out, const struct backend_config *cfg, char *err, size_t errlen)
{
	char path[PATH_MAX], image[PATH_MAX];
	struct backend *b;
	int r;

	if (!cfg->state_dir || !cfg->image_dir) {
		snprintf(err, errlen, "vm: no state or image directory");
		return -EINVAL;
	}
	b = calloc(1, sizeof(*b));
	if (!b) {
		snprintf(err, errlen, "vm: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	b->mem_mib = cfg->mem_mib ? cfg->mem_mib : 128;
	b->vcpus = cfg->vcpus ? cfg->vcpus : 1;
	b->exec_timeout_s = cfg->exec_timeout_s ? cfg->exec_timeout_s : DEFAULT_EXEC_TIMEOUT_S;
	b->output_max = cfg->output_max;

	/* Absolute paths throughout: QEMU runs from / once daemonized. */
	if ((r = pathf(path, "%s/vm/snapshots", cfg->state_dir)) < 0 || (r = mkdir_p(path)) < 0) {
		snprintf(err, errlen, "%s/vm/snapshots: %s", cfg->state_dir, strerror(-r));
		goto fail;
	}
	if ((r = pathf(path, "%s/vm", cfg->state_dir)) < 0 || !realpath(path, b->dir)) {
		r = r < 0 ? r : -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-r));
		goto fail;
	}
	if ((r = pathf(b->snap_dir, "%s/snapshots", b->dir)) < 0) {
		snprintf(err, errlen, "%s/snapshots: %s", b->dir, strerror(-r));
		goto fail;
	}
	if (!realpath(cfg->image_dir, image)) {
		r = -errno;
		snprintf(err, errlen, "%s: %s (the guest image: sh backend/image/build-image.sh DIR AGENT)",
			 cfg->image_dir, strerror(-r));
		goto fail;
	}
	if ((r = pathf(b->kernel, "%s/vmlinux", image)) < 0 || (r = pathf(b->initrd, "%s/initrd.cpio.gz", image)) < 0) {
		snprintf(err, errlen, "%s: %s", image, strerror(-r));
		goto fail;
	}
	if (access(b->kernel, R_OK) < 0 || access(b->initrd, R_OK) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s (the guest image: sh backend/image/build-image.sh DIR AGENT)",
			 access(b->kernel, R_OK) < 0 ? b->kernel : b->initrd, strerror(-r));
		goto fail;
	}
	if ((r = find_program("qemu-system-x86_64", b->qemu)) < 0) {
		snprintf(err, errlen, "qemu-system-x86_64: not found in PATH (Debian: apt install qemu-system-x86)");
		goto fail;
	}
	b->kvm = choose_kvm(cfg->accel);
	snprintf(b->append, sizeof(b->append), "%s", kernel_append);
	if (!b->kvm) {
		unsigned long khz = host_tsc_khz();

		if (khz)
			snprintf(b->append, sizeof(b->append), "%s tsc_early_khz=%lu", kernel_append, khz);
	}
	snapshots_sweep(b);
	*out = b;
	return 0;
fail:
	free(b);
	return r;
}

static void vm_fini(struct backend *b)
{
	free(b);
}

static int vm_create(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus,
		     struct sandbox **out, char handle[BACKEND_HANDLE_MAX], double *boot_ms)
{
	double t0 = now_ms();
	struct sandbox *s;
	int r;

	if ((r = sandbox_new(b, id, mem_mib, vcpus, &s)) < 0)
		return r;
	if ((r = sandbox_make_dir(s)) < 0) {
		sandbox_free(s);
		return r;
	}
	r = sandbox_start(s, -1, t0 + BOOT_TIMEOUT_MS);
	if (r < 0) {
		sandbox_discard(s);
		return r;
	}
	handle_set(s, handle);
	if (boot_ms)
		*boot_ms = now_ms() - t0;
	*out = s;
	return 0;
}

static int vm_exec(struct sandbox *s, const char *code, size_t len, struct run_result *res)
{
	uint32_t timeout_ms = s->b->exec_timeout_s > UINT32_MAX / 1000 ? UINT32_MAX : s->b->exec_timeout_s * 1000u;
	uint32_t run_id = s->next_run++;
	uint32_t output_max = s->b->output_max > UINT32_MAX ? UINT32_MAX : (uint32_t)s->b->output_max;
	double deadline = now_ms() + timeout_ms + EXEC_GRACE_MS;
	uint8_t head[12], *buf = NULL;
	struct iovec iov[2] = {
		{ .iov_base = head, .iov_len = sizeof(head) },
		{ .iov_base = (void *)code, .iov_len = len },
	};
	struct proto_frame f;
	int r;

	memset(res, 0, sizeof(*res));
	if (s->broken || s->agent < 0)
		return -EIO;
	if (len > PROTO_FRAME_MAX - 1 - sizeof(head))
		return -E2BIG;
	proto_put_u32(head, run_id);
	proto_put_u32(head + 4, timeout_ms);
	proto_put_u32(head + 8, output_max);
	r = proto_writev(s->agent, PROTO_EXEC, iov, 2);
	if (r < 0)
		return agent_lost(s, r, "exec");
	r = agent_wait(s, PROTO_RESULT, run_id, &f, &buf, deadline, deadline);
	if (r == -ETIMEDOUT) {
		say(s->id, "the agent gave no result %u s after the run's time-out", EXEC_GRACE_MS / 1000);
		return agent_lost(s, r, "exec");
	}
	if (r < 0)
		return agent_lost(s, r, "exec");
	r = result_parse(&f, res);
	free(buf);
	if (r == -EPROTO)
		return agent_lost(s, r, "result");
	return r;
}

static int snapshot_paths(const struct backend *b, const char *snap_id, char dir[PATH_MAX], char tmp[PATH_MAX])
{
	int r = id_check(snap_id);

	if (r == 0)
		r = pathf(dir, "%s/%s", b->snap_dir, snap_id);
	if (r == 0 && tmp)
		r = pathf(tmp, "%s/.%s.tmp", b->snap_dir, snap_id);
	return r;
}

/* Snapshot into a temporary directory, renamed into place once durable:
 * a crash leaves either no snapshot or a whole one. */
static int vm_snapshot(struct sandbox *s, const char *snap_id, struct snapshot_info *info)
{
	char dir[PATH_MAX], tmp[PATH_MAX], state[PATH_MAX];
	double frozen = 0;
	struct stat st;
	int fd = -1, r;

	if ((r = snapshot_paths(s->b, snap_id, dir, tmp)) < 0 || (r = pathf(state, "%s/state", tmp)) < 0)
		return r;
	if (s->broken)
		return -EIO;
	if (exists(dir))
		return -EEXIST;
	rm_tree(tmp);
	if (mkdir(tmp, 0700) < 0) {
		r = -errno;
		say(s->id, "%s: %s", tmp, strerror(-r));
		return r;
	}
	fd = open(state, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		say(s->id, "%s: %s", state, strerror(-r));
		goto out;
	}
	if ((r = state_save(s, fd, true, &frozen)) < 0)
		goto out;
	if (fsync(fd) < 0 || fstat(fd, &st) < 0) {
		r = -errno;
		say(s->id, "%s: %s", state, strerror(-r));
		goto out;
	}
	if ((r = config_write(tmp, s->mem_mib, s->vcpus)) < 0 || (r = fsync_path(tmp)) < 0) {
		say(s->id, "%s: %s", tmp, strerror(-r));
		goto out;
	}
	if (rename(tmp, dir) < 0) {
		r = errno == ENOTEMPTY ? -EEXIST : -errno;
		say(s->id, "%s: %s", dir, strerror(-r));
		goto out;
	}
	if ((r = fsync_path(s->b->snap_dir)) < 0)
		say(s->id, "%s: %s", s->b->snap_dir, strerror(-r));
	info->size_bytes = (uint64_t)st.st_size;
	info->snapshot_time_ms = frozen;
out:
	if (fd >= 0)
		close(fd);
	if (r < 0)
		rm_tree(tmp);
	return r;
}

static int vm_snapshot_delete(struct backend *b, const char *snap_id)
{
	char dir[PATH_MAX];
	int r;

	if ((r = snapshot_paths(b, snap_id, dir, NULL)) < 0)
		return r;
	if (!exists(dir))
		return -ENOENT;
	if ((r = rm_tree(dir)) == 0)
		r = fsync_path(b->snap_dir);
	if (r < 0)
		fprintf(stderr, "worldfs: vm: %s: %s\n", dir, strerror(-r));
	return r;
}

/* The parent's live state for a branch: an unnamed file in the child's
 * directory, so nothing is left to clean up whatever happens. */
static int branch_state_of_parent(struct sandbox *parent, struct sandbox *child, double *frozen)
{
	int fd = openat(child->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600), r;

	if (fd < 0) {
		r = -errno;
		say(child->id, "%s: temporary state file: %s", child->dir, strerror(-r));
		return r;
	}
	r = state_save(parent, fd, true, frozen);
	if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

static int branch_state_of_snapshot(struct backend *b, const char *snap_id, unsigned *mem_mib, unsigned *vcpus)
{
	char dir[PATH_MAX], state[PATH_MAX];
	int r, fd;

	if ((r = snapshot_paths(b, snap_id, dir, NULL)) < 0 || (r = pathf(state, "%s/state", dir)) < 0)
		return r;
	if ((r = config_read(dir, mem_mib, vcpus)) < 0) {
		if (r != -ENOENT)
			fprintf(stderr, "worldfs: vm: %s/config: %s\n", dir, strerror(-r));
		return r;
	}
	fd = open(state, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		fprintf(stderr, "worldfs: vm: %s: %s\n", state, strerror(-r));
		return r;
	}
	return fd;
}

static int vm_branch(struct backend *b, struct sandbox *parent, const char *snap_id,
		     const char *child_id, struct sandbox **out,
		     char handle[BACKEND_HANDLE_MAX], struct branch_info *info)
{
	double t0 = now_ms(), frozen = 0;
	unsigned mem_mib = 0, vcpus = 0;
	struct sandbox *s = NULL;
	int fd = -1, r;

	if (parent) {
		if (parent->broken)
			return -EIO;
		mem_mib = parent->mem_mib;
		vcpus = parent->vcpus;
	} else {
		if (!snap_id)
			return -EINVAL;
		fd = branch_state_of_snapshot(b, snap_id, &mem_mib, &vcpus);
		if (fd < 0)
			return fd;
	}
	if ((r = sandbox_new(b, child_id, mem_mib, vcpus, &s)) < 0)
		goto out;
	if ((r = sandbox_make_dir(s)) < 0) {
		sandbox_free(s);
		s = NULL;
		goto out;
	}
	if (parent && (fd = r = branch_state_of_parent(parent, s, &frozen)) < 0)
		goto fail;
	if ((r = sandbox_start(s, fd, now_ms() + RESTORE_TIMEOUT_MS)) < 0)
		goto fail;
	handle_set(s, handle);
	if (info) {
		info->snapshot_time_ms = frozen;
		info->total_ms = now_ms() - t0;
	}
	*out = s;
	r = 0;
	goto out;
fail:
	sandbox_discard(s);
out:
	if (fd >= 0)
		close(fd);
	return r;
}

static int vm_destroy(struct sandbox *s)
{
	return sandbox_discard(s);
}

/* Save to suspend.state and quit.  On failure QEMU keeps running, so the
 * next mount reattaches to it instead of losing the world. */
static int vm_suspend(struct sandbox *s)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	double frozen;
	int fd = -1, r;

	if ((r = pathf(tmp, "%s/suspend.state.tmp", s->dir)) < 0 || (r = pathf(path, "%s/suspend.state", s->dir)) < 0)
		goto out;
	if (!s->qmp) {
		r = -EIO;
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		say(s->id, "%s: %s", tmp, strerror(-r));
		goto out;
	}
	if ((r = state_save(s, fd, false, &frozen)) < 0)
		goto out;
	if (fsync(fd) < 0 || rename(tmp, path) < 0 || fsync(s->dirfd) < 0) {
		r = -errno;
		say(s->id, "%s: %s", path, strerror(-r));
		qmp_command(s->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS);
		goto out;
	}
	qemu_stop(s);
out:
	if (fd >= 0)
		close(fd);
	if (r < 0) {
		unlink(tmp);
		say(s->id, "suspend failed (%s); qemu left running for the next mount", strerror(-r));
	}
	sandbox_free(s);
	return r;
}

/* Reattach to a QEMU that kept running while worldfs was down. */
static int resume_reattach(struct sandbox *s, pid_t pid)
{
	double deadline = now_ms() + s->b->exec_timeout_s * 1000.0 + EXEC_GRACE_MS;
	char us[SOCK_PATH_MAX], st[32];
	int r;

	s->pid = pid;
	sock_path(s, "qmp.sock", false, us);
	if ((r = qmp_open(&s->qmp, us, QMP_TIMEOUT_MS)) < 0) {
		say(s->id, "reattach: %s/qmp.sock: %s", s->dir, strerror(-r));
		return r;
	}
	if ((r = query_status(s, st, sizeof(st))) < 0)
		return qmp_failed(s, r, "query-status");
	/* Stopped mid-snapshot or mid-suspend when worldfs died. */
	if (strcmp(st, "running") != 0 && (r = qmp_command(s->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS)) < 0)
		return qmp_failed(s, r, "cont");
	/* A run may still be going on: PING waits for it (exec_timeout). */
	if ((r = agent_connect(s, deadline)) < 0 || (r = agent_ready(s, deadline)) < 0)
		return r;
	s->broken = false;
	return 0;
}

static int resume_from_file(struct sandbox *s, const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0) {
		r = -errno;
		say(s->id, "%s: %s", path, strerror(-r));
		return r;
	}
	r = sandbox_start(s, fd, now_ms() + RESTORE_TIMEOUT_MS);
	close(fd);
	if (r < 0)
		return r;
	/* Running now: the saved state is older than the world and must not come back. */
	if (unlink(path) < 0 || fsync(s->dirfd) < 0)
		say(s->id, "%s: %s", path, strerror(errno));
	return 0;
}

static int vm_resume(struct backend *b, const char *id, const char *handle,
		     struct sandbox **out, char new_handle[BACKEND_HANDLE_MAX])
{
	char path[PATH_MAX];
	struct sandbox *s;
	unsigned mem_mib, vcpus;
	pid_t pid;
	int r;

	if ((r = sandbox_new(b, id, 0, 0, &s)) < 0)
		return r;
	if ((r = config_read(s->dir, &mem_mib, &vcpus)) < 0 || (r = sandbox_open_dir(s)) < 0) {
		if (r != -ENOENT)
			say(id, "%s: %s", s->dir, strerror(-r));
		sandbox_free(s);
		return -ENOENT;
	}
	s->mem_mib = mem_mib;
	s->vcpus = vcpus;
	if ((r = pathf(path, "%s/suspend.state", s->dir)) < 0)
		goto fail;

	pid = pid_parse(handle);
	if (!pid_is_ours(pid, s->dir))
		pid = pid_from_file(s->dir);
	if (pid_is_ours(pid, s->dir)) {
		r = resume_reattach(s, pid);
		if (r == 0) {
			unlink(path);  /* older than the running VM */
			goto done;
		}
		say(id, "reattach to qemu pid %d failed; stopping it", (int)pid);
		s->pid = pid;
		qemu_stop(s);
	}
	if (exists(path)) {
		if ((r = resume_from_file(s, path)) < 0)
			goto fail;
		goto done;
	}
	/* Nothing to bring back: nobody else can clean these files up. */
	say_died(s, "nothing to resume");
	sandbox_discard(s);
	return -ENOENT;
done:
	handle_set(s, new_handle);
	*out = s;
	return 0;
fail:
	qemu_stop(s);
	sandbox_free(s);
	return r;
}

static enum sandbox_presence vm_probe(struct backend *b, const char *id, const char *handle)
{
	char dir[PATH_MAX], path[PATH_MAX];

	if (id_check(id) < 0 || pathf(dir, "%s/%s", b->dir, id) < 0 || pathf(path, "%s/suspend.state", dir) < 0)
		return SANDBOX_GONE;
	if (pid_is_ours(pid_parse(handle), dir) || pid_is_ours(pid_from_file(dir), dir))
		return SANDBOX_RUNNING;
	return exists(path) ? SANDBOX_SAVED : SANDBOX_GONE;
}

/* Kill whatever QEMU still runs for id and delete its files. */
static int vm_discard(struct backend *b, const char *id, const char *handle)
{
	struct sandbox *s;
	pid_t pid;
	int r;

	if ((r = sandbox_new(b, id, 0, 0, &s)) < 0)
		return r;
	if (!exists(s->dir)) {
		sandbox_free(s);
		return 0;
	}
	pid = pid_parse(handle);
	if (!pid_is_ours(pid, s->dir))
		pid = pid_from_file(s->dir);
	s->pid = pid_is_ours(pid, s->dir) ? pid : 0;
	return sandbox_discard(s);
}

static void vm_collect_garbage(struct backend *b, bool (*known)(void *ctx, const char *id), void *ctx)
{
	DIR *d = opendir(b->dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || strcmp(e->d_name, "snapshots") == 0 || known(ctx, e->d_name))
			continue;
		say(e->d_name, "not in the registry (left by a crash while being made): deleted");
		vm_discard(b, e->d_name, "");
	}
	closedir(d);
	d = opendir(b->snap_dir);
	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || known(ctx, e->d_name))
			continue;
		say(e->d_name, "snapshot not in the registry: deleted");
		rm_tree_at(dirfd(d), e->d_name);
	}
	closedir(d);
}

static char *vm_describe(struct sandbox *s)
{
	json_t *o = json_pack("{s:s, s:i, s:s, s:i, s:i, s:s}",
			      "backend", "vm",
			      "pid", (int)s->pid,
			      "accel", s->b->kvm ? "kvm" : "tcg",
			      "mem_mib", (int)s->mem_mib,
			      "vcpus", (int)s->vcpus,
			      "status", s->broken ? "failed" : pid_is_ours(s->pid, s->dir) ? "up" : "down");
	char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;

	json_decref(o);
	return text;
}

const struct backend_ops vm_backend_ops = {
	.name = "vm",
	.init = vm_init,
	.fini = vm_fini,
	.create = vm_create,
	.exec = vm_exec,
	.snapshot = vm_snapshot,
	.snapshot_delete = vm_snapshot_delete,
	.branch = vm_branch,
	.destroy = vm_destroy,
	.suspend = vm_suspend,
	.resume = vm_resume,
	.probe = vm_probe,
	.discard = vm_discard,
	.collect_garbage = vm_collect_garbage,
	.describe = vm_describe,
};
