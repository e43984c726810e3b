/* qemu.c: the QEMU process behind a sandbox: its command line (built by
 * qemu_argv, pure, unit-tested), starting it daemonized, knowing it again
 * by its command line, stopping it, and moving its state in and out
 * through migration to a file descriptor passed over QMP. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "backend/vm/vm.h"

/* s, or fallback when s is NULL (a JSON member that is not there). */
static const char *str_or(const char *s, const char *fallback)
{
	return s ? s : fallback;
}

/* --- identity ------------------------------------------------------------- */

/* Is pid a live QEMU started in qdir?  Its -pidfile argument says so; a
 * zombie has an empty cmdline and so is not. */
bool qemu_pid_is_ours(pid_t pid, const char *qdir)
{
	char path[64], want[PATH_MAX], args[8192];
	bool qemu = false, mine = false;
	ssize_t n;

	if (pid <= 1 || vm_pathf(want, "%s/qemu.pid", qdir) < 0)
		return false;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	n = io_read_small(path, args, sizeof(args));
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

pid_t qemu_pid_parse(const char *text)
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

pid_t qemu_pid_from_file(const char *dir)
{
	char path[PATH_MAX], text[32];

	if (vm_pathf(path, "%s/qemu.pid", dir) < 0 || io_read_small(path, text, sizeof(text)) <= 0)
		return 0;
	return qemu_pid_parse(text);
}

void qemu_origin(const char *dir, char qdir[PATH_MAX])
{
	char path[PATH_MAX];
	ssize_t n = -1;

	if (vm_pathf(path, "%s/qemu.origin", dir) == 0)
		n = io_read_small(path, qdir, PATH_MAX);
	if (n > 0 && qdir[n - 1] == '\n')
		qdir[n - 1] = '\0';
	if (n <= 1)
		snprintf(qdir, PATH_MAX, "%s", dir);
}

/* Wait until pid (a QEMU of qdir) has exited: on its pidfd, which becomes
 * readable the moment it does (a daemonized QEMU is not our child), else
 * by looking every few ms.  A collapse or an rmdir waits for this. */
static bool wait_gone(pid_t pid, const char *qdir, int timeout_ms)
{
	double deadline = now_ms() + timeout_ms;
	int pfd = qemu_pid_is_ours(pid, qdir) ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;

	if (pfd >= 0) {
		struct pollfd p = { .fd = pfd, .events = POLLIN };
		int r;

		while ((r = poll(&p, 1, ms_left(deadline))) < 0 && errno == EINTR)
			;
		close(pfd);
		if (r == 0)
			return false;
	}
	while (qemu_pid_is_ours(pid, qdir)) {
		if (now_ms() > deadline)
			return false;
		sleep_ms(pfd >= 0 ? 1 : 5);
	}
	return true;
}

/* A socket path short enough for sun_path.  QEMU gets the absolute path if
 * it fits, else the bare name (it binds before leaving our cwd, the
 * sandbox dir); we connect through /proc/self/fd/DIRFD when it doesn't. */
void qemu_sock_path(const struct sandbox *s, const char *name, bool for_qemu, char out[SOCK_PATH_MAX])
{
	int n = snprintf(out, SOCK_PATH_MAX, "%s/%s", s->dir, name);

	if (n > 0 && n < SOCK_PATH_MAX)
		return;
	if (for_qemu)
		snprintf(out, SOCK_PATH_MAX, "%s", name);
	else
		snprintf(out, SOCK_PATH_MAX, "/proc/self/fd/%d/%s", s->dirfd, name);
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
	if (vm_pathf(path, "%s/%s", dir, name) < 0 || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
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

/* QEMU's own words on a failure: qemu.log, then the guest's console. */
void qemu_log_died(const struct sandbox *s, const char *what)
{
	char q[512], c[512];

	log_tail(s->dir, "qemu.log", q, sizeof(q));
	log_tail(s->dir, "console.log", c, sizeof(c));
	vm_log(s->id, "%s: qemu.log: %s; console.log: %s", what, q, c);
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

/* --- command line --------------------------------------------------------- */

/* QEMU's option lists split at commas: a comma in a value is doubled. */
static int opt_value(char *out, size_t n, const char *prefix, const char *value)
{
	size_t o = strlen(prefix);

	if (o >= n)
		return -ENAMETOOLONG;
	memcpy(out, prefix, o);
	for (const char *c = value; *c; c++) {
		if (o + 3 > n)
			return -ENAMETOOLONG;
		if (*c == ',')
			out[o++] = ',';
		out[o++] = *c;
	}
	out[o] = '\0';
	return 0;
}

int qemu_argv(const struct qemu_spec *q, struct qemu_cmdline *out)
{
	const char **argv = out->argv;
	int argc = 0, r;

	snprintf(out->mem, sizeof(out->mem), "%u", q->mem_mib);
	snprintf(out->smp, sizeof(out->smp), "%u", q->vcpus);
	snprintf(out->name, sizeof(out->name), "worldfs-%s", q->id);
	snprintf(out->qmp, sizeof(out->qmp), "unix:%s,server=on,wait=off", q->qmp_sock);
	snprintf(out->agent, sizeof(out->agent), "socket,id=agent,path=%s,server=on,wait=off", q->agent_sock);
	snprintf(out->machine, sizeof(out->machine), "microvm,x-option-roms=off,rtc=on,isa-serial=on%s%s",
		 q->machine >= MACHINE_NO_PIT ? ",pit=off" : "", q->ram ? ",memory-backend=mem" : "");
	if (q->kvm)
		snprintf(out->accel, sizeof(out->accel), "kvm");
	else
		snprintf(out->accel, sizeof(out->accel), "tcg,tb-size=%u", TCG_TB_MIB);
	/* The root disk: one file, read by every QEMU of the image and never
	 * written (the guest's writes go to an overlay in its memory). */
	if (q->root && q->root[0] &&
	    (r = opt_value(out->root, sizeof(out->root), "if=none,id=root,format=raw,readonly=on,file=", q->root)) < 0)
		return r;
	if (q->ram) {
		char prefix[64];

		snprintf(prefix, sizeof(prefix), "memory-backend-file,id=mem,share=on,size=%uM,mem-path=", q->mem_mib);
		if ((r = opt_value(out->ram, sizeof(out->ram), prefix, q->ram)) < 0)
			return r;
	}

	argv[argc++] = q->qemu;
	argv[argc++] = "-name";
	argv[argc++] = out->name;
	argv[argc++] = "-M";
	argv[argc++] = out->machine;
	argv[argc++] = "-accel";
	argv[argc++] = out->accel;
	argv[argc++] = "-cpu";
	argv[argc++] = q->kvm ? "host" : "max";
	argv[argc++] = "-m";
	argv[argc++] = out->mem;
	if (q->ram) {
		argv[argc++] = "-object";
		argv[argc++] = out->ram;
	}
	argv[argc++] = "-smp";
	argv[argc++] = out->smp;
	/* QEMU's own seccomp filter: no obsolete system calls, no changing of
	 * limits, priorities or CPU affinity.  Not elevateprivileges=deny or
	 * spawn=deny: QEMU 7.2 installs the filter before it drops to -runas
	 * (setuid) and -daemonize forks (both then die of SIGSYS).  What they
	 * would guard is covered otherwise: once started, QEMU has no root to
	 * elevate from, and nothing to run in its empty -chroot. */
	argv[argc++] = "-sandbox";
	argv[argc++] = "on,obsolete=deny,resourcecontrol=deny";
	/* After init (every file open: kernel, disks, RAM file, sockets, log),
	 * QEMU becomes an unprivileged user in an empty directory: later
	 * files (states) come as descriptors over QMP. */
	if (q->runas) {
		argv[argc++] = "-runas";
		argv[argc++] = q->runas;
	}
	if (q->chroot) {
		argv[argc++] = "-chroot";
		argv[argc++] = q->chroot;
	}
	argv[argc++] = "-nodefaults";
	argv[argc++] = "-no-user-config";
	argv[argc++] = "-nographic";
	argv[argc++] = "-no-reboot";
	argv[argc++] = "-kernel";
	argv[argc++] = q->kernel;
	argv[argc++] = "-initrd";
	argv[argc++] = q->initrd;
	argv[argc++] = "-append";
	argv[argc++] = q->append;
	/* The console is a pipe (console.c), never a file the guest can grow. */
	snprintf(out->serial, sizeof(out->serial), "file:/dev/fd/%d", q->console_fd);
	argv[argc++] = "-serial";
	argv[argc++] = out->serial;
	argv[argc++] = "-device";
	argv[argc++] = "virtio-serial-device";
	argv[argc++] = "-chardev";
	argv[argc++] = out->agent;
	argv[argc++] = "-device";
	argv[argc++] = "virtserialport,chardev=agent,name=agent";
	if (q->root && q->root[0]) {
		argv[argc++] = "-drive";
		argv[argc++] = out->root;
		argv[argc++] = "-device";
		argv[argc++] = "virtio-blk-device,drive=root";
	}
	argv[argc++] = "-qmp";
	argv[argc++] = out->qmp;
	/* -D keeps QEMU's stderr (qemu.log) open after daemonizing, so its
	 * later errors (a failed migration load) are not lost in /dev/null. */
	argv[argc++] = "-D";
	argv[argc++] = q->log;
	argv[argc++] = "-daemonize";
	argv[argc++] = "-pidfile";
	argv[argc++] = q->pidfile;
	if (q->incoming) {
		argv[argc++] = "-incoming";
		argv[argc++] = "defer";
		argv[argc++] = "-S";
	}
	argv[argc] = NULL;
	return 0;
}

/* Migration parameters (bandwidth; x-ignore-shared for cow), once per QEMU. */
static int migrate_prepare(struct sandbox *s);

/* --- start and stop ------------------------------------------------------- */

/* QEMU madvises all guest RAM MADV_HUGEPAGE, and for a RAM file that
 * makes the kernel fill the mapping with 2 MiB page-cache folios: one
 * 4 KiB guest write then dirties 2 MiB, which a snapshot writes back and
 * the filesystem copies on write (measured: 38 MB written per snapshot
 * of an idle 128 MiB guest, 0.7 MB without), and a verse's first touch
 * of a page brings in 2 MiB of its parent's memory.  So a cow QEMU runs
 * under a seccomp filter that fails that one madvise (QEMU ignores the
 * failure); copy-mode RAM is anonymous and keeps its huge pages. */
#if defined(__x86_64__)
#define HOST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define HOST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#define HOST_AUDIT_ARCH 0  /* unknown: the filter lets everything through */
#endif

static const struct sock_filter no_hugepage_insns[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HOST_AUDIT_ARCH, 0, 5),
	BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 3),
	BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_HUGEPAGE, 0, 1),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};

static const struct sock_fprog no_hugepage = {
	.len = sizeof(no_hugepage_insns) / sizeof(no_hugepage_insns[0]),
	.filter = (struct sock_filter *)no_hugepage_insns,
};

/* Fork and exec QEMU (argv) in s's dir, in a session of its own, with its
 * stdout and stderr going to logfd: the child's pid, or -errno. */
/* The descriptor the console pipe has in QEMU. */
#define QEMU_CONSOLE_FD 3

static pid_t spawn(const struct sandbox *s, int logfd, int consolefd, const char *const argv[])
{
	sigset_t none;
	pid_t child;
	int devnull;

	sigemptyset(&none);
	child = fork();
	if (child != 0)
		return child < 0 ? -errno : child;
	/* Only async-signal-safe calls here: other threads may hold locks. */
	devnull = open("/dev/null", O_RDONLY);
	setsid();
	if (chdir(s->dir) < 0)
		_exit(126);
	if (devnull >= 0)
		dup2(devnull, 0);
	dup2(logfd, 1);
	dup2(logfd, 2);
	dup2(consolefd, QEMU_CONSOLE_FD);
	close_range(QEMU_CONSOLE_FD + 1, ~0u, 0);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Without the filter (seccomp not allowed here) it only costs memory. */
	if (s->cow && (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
		       prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &no_hugepage) < 0)) {
		static const char msg[] = "worldfs: no seccomp filter: guest RAM may use huge pages\n";
		ssize_t w = write(2, msg, sizeof(msg) - 1);  /* into qemu.log */

		(void)w;
	}
	execv(argv[0], (char *const *)argv);
	_exit(127);
}

/* Wait for the foreground QEMU (child) to exit, which it does once the
 * daemon is initialized (sockets bound, pid file written) or has failed;
 * then s->pid is the daemon's. */
static int daemonized(struct sandbox *s, pid_t child, double deadline)
{
	int status = 0, r;
	pid_t w;

	for (long pause = 1;; pause = pause < 4 ? pause * 2 : pause) {
		w = waitpid(child, &status, WNOHANG);
		if (w == child || (w < 0 && errno != EINTR))
			break;
		if (now_ms() > deadline) {
			kill(child, SIGKILL);
			waitpid(child, &status, 0);
			vm_log(s->id, "qemu did not start within %d s", LAUNCH_TIMEOUT_MS / 1000);
			return -ETIMEDOUT;
		}
		sleep_ms(pause);
	}
	/* w < 0 (ECHILD) when SIGCHLD is ignored: the pid file tells then. */
	if (w == child && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
		r = errno_from_log(s);
		qemu_log_died(s, "qemu failed to start");
		return r;
	}
	s->pid = qemu_pid_from_file(s->dir);
	if (!qemu_pid_is_ours(s->pid, s->qdir)) {
		r = errno_from_log(s);
		qemu_log_died(s, "qemu exited during start");
		return r;
	}
	return 0;
}

/* Migration parameters (bandwidth; x-ignore-shared for cow), once per QEMU. */
static int migrate_prepare(struct sandbox *s);

/* On success s->pid and s->qmp are set; on failure nothing is left running. */
int qemu_launch(struct sandbox *s, bool incoming)
{
	const struct backend *b = s->b;
	char pidfile[PATH_MAX], logpath[PATH_MAX], ram[PATH_MAX];
	char qmp_sock[SOCK_PATH_MAX], agent_sock[SOCK_PATH_MAX], us[SOCK_PATH_MAX];
	struct qemu_spec spec = {
		.qemu = b->qemu, .id = s->id, .kvm = b->kvm, .machine = s->machine,
		.mem_mib = s->mem_mib, .vcpus = s->vcpus, .ram = s->cow ? ram : NULL,
		.kernel = s->img->kernel, .initrd = s->img->initrd, .append = s->img->append, .root = s->img->root,
		.qmp_sock = qmp_sock, .agent_sock = agent_sock, .pidfile = pidfile, .log = logpath,
		.incoming = incoming, .console_fd = QEMU_CONSOLE_FD,
		.runas = b->runas[0] ? b->runas : NULL, .chroot = b->runas[0] ? b->empty_dir : NULL,
	};
	struct qemu_cmdline cmd;
	double deadline = now_ms() + LAUNCH_TIMEOUT_MS;
	int logfd, consolefd, r;
	pid_t child;

	qemu_sock_path(s, "qmp.sock", true, qmp_sock);
	qemu_sock_path(s, "agent.sock", true, agent_sock);
	if ((r = vm_pathf(pidfile, "%s/qemu.pid", s->dir)) < 0 || (r = vm_pathf(logpath, "%s/qemu.log", s->dir)) < 0 ||
	    (s->cow && (r = ram_path(b, s->id, ram)) < 0) || (r = qemu_argv(&spec, &cmd)) < 0)
		return r;
	/* Leftovers of an earlier run would make QEMU's bind() fail. */
	unlinkat(s->dirfd, "qmp.sock", 0);
	unlinkat(s->dirfd, "agent.sock", 0);
	unlinkat(s->dirfd, "qemu.pid", 0);
	unlinkat(s->dirfd, "qemu.origin", 0);
	snprintf(s->qdir, sizeof(s->qdir), "%s", s->dir);

	logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
	if (logfd < 0) {
		r = -errno;
		vm_log(s->id, "%s: %s", logpath, strerror(-r));
		return r;
	}
	if ((r = console_pipe(s, &consolefd)) < 0) {
		vm_log(s->id, "console pipe: %s", strerror(-r));
		close(logfd);
		return r;
	}
	child = spawn(s, logfd, consolefd, cmd.argv);
	close(logfd);
	close(consolefd);
	if (child < 0) {
		vm_log(s->id, "fork: %s", strerror((int)-child));
		return (int)child;
	}
	if ((r = daemonized(s, child, deadline)) < 0)
		goto fail;
	qemu_sock_path(s, "qmp.sock", false, us);
	r = qmp_open(&s->qmp, us, QMP_TIMEOUT_MS);
	if (r < 0) {
		vm_log(s->id, "%s/qmp.sock: %s", s->dir, strerror(-r));
		goto fail;
	}
	s->migrate_ready = false;
	/* The incoming side must know x-ignore-shared before the state comes. */
	if (incoming && (r = migrate_prepare(s)) < 0)
		goto fail;
	return 0;
fail:
	qmp_close(s->qmp);
	s->qmp = NULL;
	if (s->pid > 0 && qemu_pid_is_ours(s->pid, s->qdir)) {
		kill(s->pid, SIGKILL);
		wait_gone(s->pid, s->qdir, QUIT_TIMEOUT_MS);
	}
	s->pid = 0;
	return r;
}

/* End QEMU and leave s with no process and no connections.  quit: ask
 * over QMP first, then SIGTERM, then SIGKILL.  Without quit (its state is
 * thrown away: a collapsed or removed verse, a failed start) SIGKILL at
 * once, which ends it in about a millisecond where an orderly quit takes
 * 6-10 ms of teardown. */
static void qemu_end(struct sandbox *s, bool quit)
{
	static const int sigs[] = { SIGTERM, SIGKILL };
	bool quitting = false;

	if (s->agent >= 0)
		close(s->agent);
	s->agent = -1;
	if (quit && s->qmp && s->pid > 0) {
		int r = qmp_command(s->qmp, "quit", NULL, NULL, QMP_TIMEOUT_MS);

		/* QEMU may close the connection before answering. */
		quitting = r == 0 || r == -EPIPE;
		if (!quitting)
			vm_log(s->id, "qmp quit: %s %s", strerror(-r), qmp_error_desc(s->qmp));
	}
	qmp_close(s->qmp);
	s->qmp = NULL;
	if (s->pid > 0 && !(quitting && wait_gone(s->pid, s->qdir, QUIT_TIMEOUT_MS))) {
		for (size_t i = quit ? 0 : 1; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
			/* Signal only what is still our QEMU: the pid may be reused. */
			if (!qemu_pid_is_ours(s->pid, s->qdir))
				break;
			kill(s->pid, sigs[i]);
			if (wait_gone(s->pid, s->qdir, QUIT_TIMEOUT_MS))
				break;
		}
		if (qemu_pid_is_ours(s->pid, s->qdir))
			vm_log(s->id, "qemu pid %d did not exit", (int)s->pid);
	}
	s->pid = 0;
}

void qemu_stop(struct sandbox *s) { qemu_end(s, true); }
void qemu_kill(struct sandbox *s) { qemu_end(s, false); }

/* --- migration ------------------------------------------------------------ */

int qemu_status(struct sandbox *s, char *out, size_t n)
{
	json_t *ret = NULL;
	int r = qmp_command(s->qmp, "query-status", NULL, &ret, QMP_TIMEOUT_MS);

	if (r == 0)
		snprintf(out, n, "%s", str_or(json_string_value(json_object_get(ret, "status")), ""));
	json_decref(ret);
	return r;
}

int qemu_cmd_failed(struct sandbox *s, int r, const char *what)
{
	if (r == -EREMOTEIO)
		vm_log(s->id, "%s: %s: %s", what, qmp_error_class(s->qmp), qmp_error_desc(s->qmp));
	else if (!qemu_pid_is_ours(s->pid, s->qdir)) {
		s->broken = true;
		qemu_log_died(s, what);
	} else {
		vm_log(s->id, "%s: %s", what, strerror(-r));
	}
	return r == -ETIMEDOUT || r == -ENOMEM ? r : -EIO;
}

static int migrate_prepare(struct sandbox *s)
{
	int r;

	if (s->migrate_ready)
		return 0;
	/* The default cap is 32 MiB/s: a 128 MiB guest would stay frozen for seconds. */
	r = qmp_command(s->qmp, "migrate-set-parameters",
			json_pack("{s:I}", "max-bandwidth", (json_int_t)INT64_MAX / 2), NULL, QMP_TIMEOUT_MS);
	if (r < 0)
		return qemu_cmd_failed(s, r, "migrate-set-parameters");
	/* RAM shared with a file (share=on) stays out of the stream: the
	 * file is the RAM.  Both ends must agree: it changes the format. */
	if (s->cow) {
		r = qmp_command(s->qmp, "migrate-set-capabilities",
				json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-ignore-shared",
					  "state", 1),
				NULL, QMP_TIMEOUT_MS);
		if (r < 0)
			return qemu_cmd_failed(s, r, "migrate-set-capabilities x-ignore-shared");
	}
	s->migrate_ready = true;
	return 0;
}

/* The pause between two looks at a migration: 1 ms for its first 50 ms
 * (saving or loading a device state takes a few, and the parent is paused
 * meanwhile), then doubling up to 8 ms for a long full-copy migration. */
static long poll_pause(long pause, double since)
{
	if (now_ms() - since < 50)
		return 1;
	return pause < 8 ? pause * 2 : pause;
}

/* Look at the VM's run state until it is no longer `state`; the last one
 * seen goes to st.  what names the step in messages. */
static int status_wait_while(struct sandbox *s, const char *state, char st[32], double deadline,
			     const char *what)
{
	double t0 = now_ms();
	int r;

	for (long pause = 1;; pause = poll_pause(pause, t0)) {
		if ((r = qemu_status(s, st, 32)) < 0)
			return qemu_cmd_failed(s, r, what);
		if (strcmp(st, state) != 0)
			return 0;
		if (now_ms() > deadline) {
			vm_log(s->id, "%s: still %s after %.0f ms", what, state, now_ms() - t0);
			return -ETIMEDOUT;
		}
		sleep_ms(pause);
	}
}

/* Until the outgoing migration is over: "completed" comes a moment before
 * the VM leaves finish-migrate, and cont refuses until then ("Migration is
 * not finalized yet"), so that is waited out too. */
static int migrate_wait(struct sandbox *s)
{
	double t0 = now_ms(), deadline = t0 + MIGRATE_TIMEOUT_MS;
	json_t *ret = NULL;
	char desc[256] = "", run[32];
	const char *st = "";
	int r;

	for (long pause = 1;; pause = poll_pause(pause, t0)) {
		r = qmp_command(s->qmp, "query-migrate", NULL, &ret, QMP_TIMEOUT_MS);
		if (r < 0)
			return qemu_cmd_failed(s, r, "query-migrate");
		st = str_or(json_string_value(json_object_get(ret, "status")), "");
		if (strcmp(st, "completed") == 0 || strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)
			break;
		json_decref(ret);
		ret = NULL;
		if (now_ms() > deadline) {
			qmp_command(s->qmp, "migrate_cancel", NULL, NULL, QMP_TIMEOUT_MS);
			vm_log(s->id, "migration did not complete within %d s", MIGRATE_TIMEOUT_MS / 1000);
			return -ETIMEDOUT;
		}
		sleep_ms(pause);
	}
	if (strcmp(st, "completed") != 0) {
		snprintf(desc, sizeof(desc), "%s", str_or(json_string_value(json_object_get(ret, "error-desc")), st));
		vm_log(s->id, "migration %s: %s", st, desc);
		r = strstr(desc, "No space left") ? -ENOSPC : -EIO;
	}
	json_decref(ret);
	if (r == 0)
		r = status_wait_while(s, "finish-migrate", run, deadline, "finishing the migration");
	return r;
}

int state_save(struct sandbox *s, int fd, int ram_to, bool keep_running, double *frozen_ms)
{
	char ram[PATH_MAX];
	int ram_fd = -1, r, rc;
	double t0;

	*frozen_ms = 0;
	/* A state others start from (a snapshot, a branch, the golden state):
	 * W/diff's base for them is recorded first. */
	t0 = now_ms();
	if (keep_running && (r = agent_mark(s)) < 0)
		return r;
	s->record_ms = now_ms() - t0;
	if ((r = migrate_prepare(s)) < 0)
		return r;
	if (s->cow) {
		if ((r = ram_path(s->b, s->id, ram)) < 0)
			return r;
		/* Most dirty pages go to disk while the guest still runs; a
		 * second pass takes what a busy guest wrote during the first. */
		ram_preflush(ram);
		ram_preflush(ram);
		if (ram_to >= 0 && (ram_fd = open(ram, O_RDONLY | O_CLOEXEC)) < 0) {
			r = -errno;
			vm_log(s->id, "%s: %s", ram, strerror(-r));
			return r;
		}
	}
	if ((r = qmp_send_fd(s->qmp, "wfs-state", fd, QMP_TIMEOUT_MS)) < 0) {
		r = qemu_cmd_failed(s, r, "getfd");
		goto out_fd;
	}
	t0 = now_ms();
	if ((r = qmp_command(s->qmp, "stop", NULL, NULL, QMP_TIMEOUT_MS)) < 0) {
		r = qemu_cmd_failed(s, r, "stop");
		goto out_fd;
	}
	r = qmp_command(s->qmp, "migrate", json_pack("{s:s}", "uri", "fd:wfs-state"), NULL, QMP_TIMEOUT_MS);
	if (r < 0)
		r = qemu_cmd_failed(s, r, "migrate");
	else
		r = migrate_wait(s);
	/* The guest is stopped: its RAM file is what the state goes with. */
	if (r == 0 && ram_fd >= 0) {
		double t = now_ms();

		if ((r = ram_clone_fd(ram_fd, ram_to)) < 0)
			vm_log(s->id, "%s: clone: %s", ram, strerror(-r));
		s->clone_in_freeze_ms = now_ms() - t;
	}
	if (keep_running || r < 0) {
		/* After a migration the VM sits in "postmigrate"; cont resumes it. */
		rc = qmp_command(s->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS);
		if (rc < 0) {
			s->broken = true;
			rc = qemu_cmd_failed(s, rc, "cont");
			if (r == 0)
				r = rc;
		}
	}
	*frozen_ms = now_ms() - t0;
out_fd:
	if (ram_fd >= 0)
		close(ram_fd);
	return r;
}

int state_load(struct sandbox *s, int fd, double deadline)
{
	char st[32];
	int r;

	if ((r = migrate_prepare(s)) < 0)
		return r;
	if ((r = qmp_send_fd(s->qmp, "wfs-state", fd, QMP_TIMEOUT_MS)) < 0)
		return qemu_cmd_failed(s, r, "getfd");
	r = qmp_command(s->qmp, "migrate-incoming", json_pack("{s:s}", "uri", "fd:wfs-state"), NULL,
			QMP_TIMEOUT_MS);
	if (r < 0)
		return qemu_cmd_failed(s, r, "migrate-incoming");
	/* QEMU exits when the load fails: query-status then fails with EPIPE. */
	if ((r = status_wait_while(s, "inmigrate", st, deadline, "loading the state")) < 0)
		return r;
	if (strcmp(st, "paused") != 0 && strcmp(st, "prelaunch") != 0) {
		vm_log(s->id, "after loading the state the VM is %s", st);
		return -EIO;
	}
	if ((r = qmp_command(s->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS)) < 0)
		return qemu_cmd_failed(s, r, "cont");
	return 0;
}
