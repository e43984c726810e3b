/* agent.c: worldfs-agent, the guest's /init.  It mounts the basics, loads
 * the kernel modules it needs, mounts the image's root disk if it has one,
 * then serves the host's frames on the virtio-serial port "agent", running
 * code in the world's persistent sessions: one sh session, and one Python
 * session started on the first run that asks for it.
 *
 * Not as PID 1 (a test on the host), it skips the setup and takes
 *   --fd N          serve frames on fd N instead of the port; stop at its EOF
 *   --dir DIR       where the run files live (default /run/worldfs)
 *   --session FILE  the Python session program (default
 *                   /lib/worldfs/worldfs_session.py)
 *
 * The root disk.  With worldfs.root=DEV on the kernel command line (the
 * debian image), DEV is a read-only squashfs shared by every world; the
 * agent mounts it under an overlay whose upper layer is a tmpfs, i.e. in
 * guest memory, and moves the whole system onto it (as switch_root does,
 * but staying PID 1).  The guest's writes then live in its RAM, so
 * snapshots, branches and suspends capture the disk with the memory.
 *
 * How a run works.  The first line of the code picks the session:
 * "#!python3" (or "#!python") the Python session, "#!/ABS/PATH [ARG]" a
 * one-off script run by that interpreter from the sh session, anything
 * else the sh session.  A session is a child reading commands from a pipe
 * and writing one status line per run to a second pipe.  For each EXEC the
 * agent writes the code to DIR/code, makes two FIFOs for the run's stdout
 * and stderr, and sends the session one command: the sh session gets a
 * line that sources the code (or runs the interpreter on it) with those
 * redirections and then prints "worldfs-status SEQ STATUS"; the Python
 * session (worldfs_session.py) gets "run SEQ" and does the same itself.
 * The run ends at the status line, not at EOF of the FIFOs, so background
 * processes may keep them open: the agent keeps draining them instead of
 * closing them under a writer (SIGPIPE).  The sh code is not checked with
 * `sh -n` first: a fork and exec per run costs more than the rest of the
 * run under TCG, and sourcing it gives script semantics (a syntax error
 * ends the run there, with status 2).
 *
 * Timeouts.  sh (busybox ash, dash) without job control keeps every child
 * in the shell's process group and starts `&` children with SIGINT and
 * SIGQUIT ignored.  A non-interactive sh dies of an untrapped SIGINT, and
 * runs a trap only once its foreground child has exited.  So the sh
 * session traps SIGINT to unwind the code (see session_trap), and the
 * Python session turns it into KeyboardInterrupt while a run is on.  On a
 * timeout the agent sends SIGINT to the session and to its foreground
 * children (same group, SIGINT not ignored), then every KILL_TICK_MS
 * again, with SIGKILL for children that outlived a tick.  A session that
 * still has not printed its status after KILL_GRACE_MS is killed and
 * started afresh on its next run (PROTO_F_SESSION_RESET). */
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
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend/agent/fsdiff.h"
#include "backend/agent/fsserve.h"
#include "backend/agent/proto.h"
#include "backend/util/clock.h"
#include "backend/util/io.h"
#include "backend/util/strbuf.h"

#define AGENT_NAME "worldfs-agent " PROTO_VERSION
#define SHELL_PATH "/bin/sh"
#define PYTHON_NAME "python3"
#define SESSION_PY "/lib/worldfs/worldfs_session.py"  /* in the initramfs */
#define SESSION_PY_NAME "worldfs_session.py"          /* its copy in the run dir */
#define SESSION_PY_MAX (1u << 20)
#define PORT_NAME "agent"
#define RUN_DIR "/run/worldfs"
#define HOME_DIR "/root"
#define NEW_ROOT "/.worldfs-root"  /* in the initramfs: where the root disk's overlay is built */
#define ROOT_WAIT_MS 10000         /* for the root disk's device node */
#define PORT_RETRY_MS 20
#define KILL_TICK_MS 50
#define KILL_GRACE_MS 2000
#define OUTPUT_CAP (16u << 20)   /* per stream; two fit in PROTO_FRAME_MAX */
#define QUEUE_MAX 8              /* EXECs waiting behind the current run */
#define DRAIN_MAX 64             /* old run FIFOs still held by background jobs */
#define STATUS_TAG "worldfs-status "
#define FG_MAX 64                /* foreground processes tracked per tick */
/* Reads from one pipe per wake-up: a writer that never pauses (`yes`) must
 * not keep the loop from its timers.  Not below the largest pipe buffer,
 * so that one call at the end of a run takes everything written before. */
#define READ_BURST (1u << 20)

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
	struct strbuf data;
	uint64_t total;       /* bytes read, kept or not */
};

/* The sessions of a world, each started on the first run that needs it. */
enum session_kind { SESSION_SH, SESSION_PYTHON, SESSION_KINDS };

/* How each kind is named in the log, and in the note of a restart, which
 * also says what the restart lost. */
static const struct {
	const char *name, *noun, *loss;
} session_kinds[SESSION_KINDS] = {
	[SESSION_SH] = { "sh", "the session shell", "" },
	[SESSION_PYTHON] = { PYTHON_NAME, "the " PYTHON_NAME " interpreter", "; its names are lost" },
};

struct session {
	pid_t pid;            /* the interpreter, 0 when there is none */
	int ctl;              /* we write commands here */
	int status;           /* it writes status lines here */
	struct strbuf line;      /* partial status line */
	char note[200];       /* why the previous session ended, for the next run */
};

struct run {
	bool active;
	enum session_kind kind;
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
	struct strbuf in;
	int sigfd;
	const char *dir;
	char *py_text;            /* the Python session program, copied into dir */
	size_t py_len;
	char *root_error;         /* the root disk could not be mounted: every run says why */
	struct session sess[SESSION_KINDS];
	struct run run;
	unsigned long seq;
	struct pending *queue, **queue_tail;
	int queue_len;
	int drain[DRAIN_MAX];
	int ndrain;
	/* W/diff (fsdiff.h): the guest's writable layers; the manifest the
	 * diff is against (base) and the last one taken (mark), with the
	 * errno of a walk that failed (no manifest then); the last diff's
	 * text while the host pages it out. */
	struct fsd_layer layers[3];
	size_t nlayers;
	int upper_fd, lower_fd;
	struct fsd_manifest *base, *mark;
	int base_err, mark_err;
	char *diff_text;
	size_t diff_len;
	uint64_t diff_token;
};

static uint8_t chunk[65536];
static bool hostile;  /* worldfs.hostile=1: see hostile_run */

static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("worldfs-agent: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static double uptime(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* path gets exactly data (0600).  Returns 0 or -errno. */
static int file_put(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), ret;

	if (fd < 0)
		return -errno;
	ret = write_all(fd, data, len);
	if (close(fd) < 0 && !ret)
		ret = -errno;
	return ret;
}

/* ---- PID 1 setup ---- */

static const struct mountpoint {
	const char *source, *target, *type;
	unsigned long flags;
	const char *data;
} early_mounts[] = {
	/* In the initramfs, before anything else; moved onto the root disk. */
	{ "devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755" },
	{ "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
	{ "sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
}, late_mounts[] = {
	/* On the final root. */
	{ "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" },
	{ "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755" },
	{ "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666" },
	{ "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" },
};

#define NMOUNTS(t) (sizeof(t) / sizeof((t)[0]))

/* In load order: each needs the ones before it.  A missing file means the
 * driver is built in. */
static const char *const modules[] = {
	"virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk",
	"squashfs", "overlay",
};

/* The root disk: a read-only squashfs (lower), and the guest's writes in a
 * tmpfs (upper) of half the guest's memory, which the man page states. */
#define ROOT_LOWER "/.worldfs-lower"
#define ROOT_RW "/.worldfs-rw"
#define ROOT_RW_SIZE "50%"

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

static void mount_all(const struct mountpoint *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		mkdir(m[i].target, 0755);
		if (mount(m[i].source, m[i].target, m[i].type, m[i].flags, m[i].data) < 0 &&
		    errno != EBUSY)
			say("mount %s: %s", m[i].target, strerror(errno));
		if (strcmp(m[i].target, "/dev") == 0)
			setup_console();
	}
}

/* The value of KEY=VALUE on the kernel command line, or "". */
static void cmdline_value(const char *key, char *out, size_t n)
{
	char text[4096], *p, *save = NULL;
	size_t k = strlen(key);
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t r = fd < 0 ? -1 : read(fd, text, sizeof(text) - 1);

	if (fd >= 0)
		close(fd);
	out[0] = 0;
	if (r <= 0)
		return;
	text[r] = 0;
	for (p = strtok_r(text, " \t\n", &save); p; p = strtok_r(NULL, " \t\n", &save))
		if (strncmp(p, key, k) == 0 && p[k] == '=')
			snprintf(out, n, "%s", p + k + 1);
}

/* Mount the root disk dev (read-only) under an overlay whose upper layer
 * is a tmpfs, move /dev, /proc and /sys onto it and make it the root, as
 * switch_root(8) does but staying in this process.  On failure the
 * initramfs stays the root and why says what went wrong. */
static int root_switch(struct agent *a, const char *dev, char *why, size_t n)
{
	static const char opts[] = "lowerdir=" ROOT_LOWER ",upperdir=" ROOT_RW "/upper,workdir=" ROOT_RW "/work";
	long long deadline = now_ms() + ROOT_WAIT_MS;
	char target[PATH_MAX];
	const char *step;

	/* The disk's node appears when virtio_blk has probed it. */
	while (access(dev, F_OK) < 0) {
		if (now_ms() > deadline) {
			snprintf(why, n, "%s: no such device after %d s", dev, ROOT_WAIT_MS / 1000);
			return -ENODEV;
		}
		usleep(10000);
	}
	mkdir(ROOT_LOWER, 0755);
	mkdir(ROOT_RW, 0755);
	mkdir(NEW_ROOT, 0755);
	step = "mount the root disk";
	if (mount(dev, ROOT_LOWER, "squashfs", MS_RDONLY, NULL) < 0)
		goto fail;
	step = "mount the tmpfs for the root's writes";
	if (mount("tmpfs", ROOT_RW, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=" ROOT_RW_SIZE) < 0)
		goto fail;
	step = "make the overlay's dirs";
	if ((mkdir(ROOT_RW "/upper", 0755) < 0 && errno != EEXIST) ||
	    (mkdir(ROOT_RW "/work", 0700) < 0 && errno != EEXIST))
		goto fail;
	step = "mount the overlay";
	if (mount("overlay", NEW_ROOT, "overlay", 0, opts) < 0)
		goto fail;
	/* W/diff walks the overlay's layers, which the switch hides. */
	a->upper_fd = open(ROOT_RW "/upper", O_PATH | O_DIRECTORY | O_CLOEXEC);
	a->lower_fd = open(ROOT_LOWER, O_PATH | O_DIRECTORY | O_CLOEXEC);
	for (size_t i = 0; i < NMOUNTS(early_mounts); i++) {
		step = early_mounts[i].target;
		snprintf(target, sizeof(target), NEW_ROOT "%s", early_mounts[i].target);
		mkdir(target, 0755);
		if (mount(early_mounts[i].target, target, NULL, MS_MOVE, NULL) < 0)
			goto fail;
	}
	step = "switch to the new root";
	if (chdir(NEW_ROOT) < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
	    chdir("/") < 0)
		goto fail;
	return 0;
fail:
	snprintf(why, n, "could not %s (%s): %s", step, dev, strerror(errno));
	return -errno;
}

static void session_py_load(struct agent *a, const char *path);

/* ---- W/diff ---- */

/* What the agent keeps for its sessions is not the world's change. */
static const char *const diff_skip[] = { RUN_DIR, NULL };

/* The trees the guest writes: the root (an overlay's upper directory over
 * the root disk, or the initramfs itself), and the tmpfs mounts on it
 * that fs/ shows. */
static void diff_layers(struct agent *a)
{
	static const char *const mounts[] = { "/tmp", "/run" };
	int fd;

	if (a->upper_fd >= 0 && a->lower_fd >= 0) {
		a->layers[a->nlayers++] = (struct fsd_layer){ "/", a->upper_fd, a->lower_fd, diff_skip };
	} else if ((fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		a->layers[a->nlayers++] = (struct fsd_layer){ "/", fd, -1, diff_skip };
	}
	for (size_t i = 0; i < NMOUNTS(mounts); i++)
		if ((fd = open(mounts[i], O_PATH | O_DIRECTORY | O_CLOEXEC)) >= 0)
			a->layers[a->nlayers++] = (struct fsd_layer){ mounts[i], fd, -1, diff_skip };
}

static void manifest_drop(struct agent *a, struct fsd_manifest *m)
{
	if (m && m != a->base && m != a->mark)
		fsd_free(m);
}

/* MARK: record the files as they are now (a file unchanged since the
 * last record keeps its hash).  At boot the record is also the base. */
static int diff_mark(struct agent *a)
{
	struct fsd_manifest *old = a->mark, *m = NULL;
	double t = now_ms();
	int r;

	if (!a->nlayers)
		return -ENOTSUP;
	r = fsd_take(a->layers, a->nlayers, a->mark ? a->mark : a->base, &m);
	a->mark = m;
	a->mark_err = r;
	manifest_drop(a, old);
	if (r < 0)
		say("W/diff: recording the files: %s", strerror(-r));
	else if (now_ms() - t > 1000)
		say("W/diff: recorded %zu paths in %.0f ms", fsd_count(m), now_ms() - t);
	return r;
}

/* A new copy: its diff is against the files of the last mark. */
static void diff_adopt(struct agent *a)
{
	struct fsd_manifest *old = a->base;

	a->base = a->mark;
	a->base_err = a->mark_err;
	manifest_drop(a, old);
}

/* DIFF: compute the text (arg 0) or go on paging out the one computed
 * (arg = its token); the reply body is token, total, bytes from off.
 * The body's length, or -errno. */
static int diff_request(struct agent *a, const struct fs_req *r, uint8_t *body)
{
	size_t n;
	int err;

	if (!a->nlayers)
		return -ENOTSUP;
	if (r->arg == 0) {
		free(a->diff_text);
		a->diff_text = NULL;
		if (!a->base)
			return a->base_err ? a->base_err : -ENODATA;
		if ((err = fsd_diff(a->layers, a->nlayers, a->base, &a->diff_text, &a->diff_len)) < 0)
			return err;
		a->diff_token++;
		if (a->diff_token == 0)
			a->diff_token = 1;
	} else if (!a->diff_text || r->arg != a->diff_token) {
		return -ESTALE;
	}
	if (r->off > a->diff_len)
		return -EINVAL;
	n = a->diff_len - r->off;
	if (n > FS_IO_MAX - FS_DIFF_HDR)
		n = FS_IO_MAX - FS_DIFF_HDR;
	proto_put_u64(body, a->diff_token);
	proto_put_u64(body + 8, a->diff_len);
	memcpy(body + FS_DIFF_HDR, a->diff_text + r->off, n);
	/* Nothing outlives the request that takes the last byte. */
	if (r->off + n == a->diff_len) {
		free(a->diff_text);
		a->diff_text = NULL;
	}
	return (int)(FS_DIFF_HDR + n);
}

static void init_system(struct agent *a)
{
	char dev[64], why[256];
	size_t i;

	mount_all(early_mounts, NMOUNTS(early_mounts));
	for (i = 0; i < sizeof(modules) / sizeof(modules[0]); i++)
		load_module(modules[i]);
	/* The Python session's program lives in the initramfs, which the
	 * root switch hides: keep it. */
	session_py_load(a, SESSION_PY);
	cmdline_value("worldfs.hostile", why, sizeof(why));
	hostile = strcmp(why, "1") == 0;
	cmdline_value("worldfs.root", dev, sizeof(dev));
	if (dev[0] && root_switch(a, dev, why, sizeof(why)) < 0) {
		say("root disk: %s; staying in the initramfs", why);
		a->root_error = strdup(why);
	}
	mount_all(late_mounts, NMOUNTS(late_mounts));
	mkdir(HOME_DIR, 0700);
	diff_layers(a);
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
	strbuf_reset(&a->in);
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
	ret = proto_writev(a->port, type, iov, n, -1);
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

/* ---- the sessions ---- */

/* The trap unwinds the running code on SIGINT, one level per signal:
 * `return` leaves a function or the `.`; every second signal `break`s
 * instead, because ash and dash let that leave the loops of the callers
 * too, so `while :; do f; done` ends even though f keeps being re-entered.
 * Outside a run the trap must do nothing: a `return` at top level makes
 * the shell stop reading its stdin.  It is set again before each run, in
 * case the code replaced it (`trap '' INT` would also hide the foreground
 * from kill_foreground in later runs). */
static const char session_trap[] =
	"trap '[ -z \"${__worldfs_in-}\" ] || {"
	" __worldfs_k=$((${__worldfs_k-0} + 1));"
	" if [ $((__worldfs_k % 2)) = 0 ]; then break 1000000; else return 130; fi; }' INT";

/* Read the Python session's program into memory (it may live in the
 * initramfs, which the root switch hides).  Without it, Python runs fail
 * with a note saying so. */
static void session_py_load(struct agent *a, const char *path)
{
	struct strbuf b = { 0 };
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t r;

	if (fd < 0) {
		say("%s: %s (no Python session)", path, strerror(errno));
		return;
	}
	while ((r = read(fd, chunk, sizeof(chunk))) > 0 && b.len + r <= SESSION_PY_MAX)
		if (strbuf_add(&b, chunk, r) < 0)
			break;
	close(fd);
	if (r != 0) {
		say("%s: %s (no Python session)", path, r < 0 ? strerror(errno) : "too large");
		strbuf_release(&b);
		return;
	}
	a->py_text = b.buf;
	a->py_len = b.len;
}

/* The executable name in $PATH, as execvp would find it. */
static int find_in_path(const char *name, char *out, size_t n)
{
	const char *path = getenv("PATH"), *p, *end;

	for (p = path ? path : "/usr/bin:/bin"; *p; p = *end ? end + 1 : end) {
		end = strchrnul(p, ':');
		if (end == p)
			continue;
		snprintf(out, n, "%.*s/%s", (int)(end - p), p, name);
		if (access(out, X_OK) == 0)
			return 0;
	}
	return -ENOENT;
}

/* Put the Python session's program into the run dir, where its own
 * interpreter (in the root disk) can read it. */
static int session_py_install(struct agent *a, char *out, size_t n)
{
	char tmp[PATH_MAX];
	int ret;

	if (!a->py_text)
		return -ENOENT;
	snprintf(out, n, "%s/%s", a->dir, SESSION_PY_NAME);
	if (access(out, R_OK) == 0)
		return 0;
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", a->dir, SESSION_PY_NAME);
	ret = file_put(tmp, a->py_text, a->py_len);
	if (!ret && rename(tmp, out) < 0)
		ret = -errno;
	if (ret)
		unlink(tmp);
	return ret;
}

/* Start the session of this kind.  sh reads commands on its stdin and
 * prints status lines on its stdout; the Python session gets both pipes
 * as descriptors named on its command line, and /dev/null as stdin and
 * stdout (its stderr is ours, the console: its own failures show there).
 * -ENOENT: the world has no such interpreter. */
static int session_start(struct agent *a, enum session_kind kind)
{
	struct session *s = &a->sess[kind];
	int in[2] = { -1, -1 }, st[2] = { -1, -1 };
	char python[PATH_MAX], prog[PATH_MAX], ctl_arg[16], st_arg[16];
	pid_t pid;
	int ret;

	if (kind == SESSION_PYTHON) {
		if ((ret = find_in_path(PYTHON_NAME, python, sizeof(python))) < 0)
			return ret;
		if ((ret = session_py_install(a, prog, sizeof(prog))) < 0)
			return ret == -ENOENT ? -ENOEXEC : ret;
	}
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
		int null = open("/dev/null", O_RDWR);

		child_reset();
		setsid();
		if (chdir(HOME_DIR) < 0 && chdir("/") < 0)
			_exit(127);
		if (kind == SESSION_SH) {
			dup2(in[0], 0);
			dup2(st[1], 1);
			execl(SHELL_PATH, "sh", (char *)NULL);
			_exit(127);
		}
		fcntl(in[0], F_SETFD, 0);
		fcntl(st[1], F_SETFD, 0);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
		}
		snprintf(ctl_arg, sizeof(ctl_arg), "%d", in[0]);
		snprintf(st_arg, sizeof(st_arg), "%d", st[1]);
		execl(python, PYTHON_NAME, prog, ctl_arg, st_arg, a->dir, (char *)NULL);
		_exit(127);
	}
	s->pid = pid;
	s->ctl = in[1];
	s->status = st[0];
	strbuf_reset(&s->line);
	in[1] = st[0] = -1;
	fcntl(s->status, F_SETFL, O_NONBLOCK);
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

/* The session is gone (already reaped): forget its pipes. */
static void session_forget(struct agent *a, enum session_kind kind)
{
	struct session *s = &a->sess[kind];

	if (s->ctl >= 0)
		close(s->ctl);
	if (s->status >= 0)
		close(s->status);
	s->ctl = s->status = -1;
	s->pid = 0;
	strbuf_reset(&s->line);
}

/* Which sessions are alive, as PROTO_F_SESSION_* bits. */
static uint32_t sessions_alive(const struct agent *a)
{
	uint32_t bits = 0;

	for (int k = 0; k < SESSION_KINDS; k++)
		if (a->sess[k].pid)
			bits |= PROTO_F_SESSION_SH << k;
	return bits;
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
			(void)strbuf_add(&s->data, chunk, keep);
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
	strbuf_addf(&s->data, "\n" PROTO_NOTE_TRUNCATED "\n", max);
	return true;
}

static void marker_line(struct strbuf *b)
{
	if (b->len && b->buf[b->len - 1] != '\n')
		strbuf_add(b, "\n", 1);
}

static void send_result(struct agent *a, uint32_t id, int status, uint32_t flags,
			const struct strbuf *out, const struct strbuf *err)
{
	uint8_t hdr[16];
	struct iovec iov[3];

	proto_put_u32(hdr, id);
	proto_put_u32(hdr + 4, (uint32_t)status);
	proto_put_u32(hdr + 8, flags | sessions_alive(a));
	proto_put_u32(hdr + 12, (uint32_t)out->len);
	iov[0] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(hdr) };
	iov[1] = (struct iovec){ .iov_base = out->buf, .iov_len = out->len };
	iov[2] = (struct iovec){ .iov_base = err->buf, .iov_len = err->len };
	port_send(a, PROTO_RESULT, iov, 3);
}

/* Add why the session of this kind ended before this run, if it did. */
static uint32_t note_take(struct agent *a, enum session_kind kind, struct strbuf *err)
{
	struct session *s = &a->sess[kind];

	if (!s->note[0])
		return 0;
	marker_line(err);
	strbuf_addf(err, "%s\n", s->note);
	s->note[0] = 0;
	return PROTO_F_SESSION_RESET;
}

/* Answer a run that never reached its session (agent trouble, no such
 * interpreter), with its status and stderr. */
static void send_early_result(struct agent *a, uint32_t id, enum session_kind kind, int status, struct strbuf *err)
{
	struct strbuf none = STRBUF_INIT;
	uint32_t flags = note_take(a, kind, err);

	send_result(a, id, status, flags, &none, err);
}

static void run_start_next(struct agent *a);

/* ---- the hostile guest of the tests ----
 * With worldfs.hostile=1 on the kernel command line (the host puts it
 * there only for its test suite: WORLDFS_TEST_HOSTILE), a run whose code
 * starts with "#!worldfs-hostile MODE" makes the agent misbehave as an
 * untrusted guest may, so that the tests can show the host survives it:
 *   stall     read nothing more from the port, answer nothing
 *   mute      answer nothing to this run
 *   oversize  a RESULT header announcing PROTO_FRAME_MAX bytes, then nothing
 *   badstatus a RESULT with status 1000
 *   bigout    a RESULT whose stdout is output_max + 8 KiB
 *   garbage   64 random bytes */

static bool hostile_run(struct agent *a, const uint8_t *p, size_t len)
{
	static const char tag[] = "#!worldfs-hostile ";
	const size_t k = sizeof(tag) - 1;
	struct strbuf out = STRBUF_INIT, err = STRBUF_INIT;
	uint8_t raw[64];
	const char *mode;

	if (!hostile || len < 12 + k || memcmp(p + 12, tag, k) != 0)
		return false;
	mode = (const char *)p + 12 + k;
	len -= 12 + k;
	say("hostile: %.*s", (int)(len < 16 ? len : 16), mode);
	if (len >= 5 && memcmp(mode, "stall", 5) == 0) {
		a->port_retry = LLONG_MAX;
	} else if (len >= 8 && memcmp(mode, "oversize", 8) == 0) {
		proto_put_u32(raw, PROTO_FRAME_MAX);
		raw[4] = PROTO_RESULT;
		(void)write_all(a->port, raw, 5);
	} else if (len >= 9 && memcmp(mode, "badstatus", 9) == 0) {
		send_result(a, proto_get_u32(p), 1000, 0, &out, &err);
	} else if (len >= 6 && memcmp(mode, "bigout", 6) == 0) {
		if (strbuf_grow(&out, proto_get_u32(p + 8) + 8192) == 0) {
			memset(out.buf, 'x', strbuf_avail(&out));
			strbuf_setlen(&out, proto_get_u32(p + 8) + 8192);
		}
		send_result(a, proto_get_u32(p), 0, 0, &out, &err);
	} else if (len >= 7 && memcmp(mode, "garbage", 7) == 0) {
		if (getrandom(raw, sizeof(raw), 0) == sizeof(raw))
			(void)write_all(a->port, raw, sizeof(raw));
	}
	strbuf_release(&out);
	return true;
}

/* status: the code's exit status; the session's status if it died (died). */
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
		strbuf_addf(&r->err.data, PROTO_NOTE_TIMED_OUT "\n", r->timeout_ms);
	}
	/* The session had died between runs. */
	r->flags |= note_take(a, r->kind, &r->err.data);
	if (died) {
		marker_line(&r->err.data);
		if (r->killed_shell)
			strbuf_addf(&r->err.data, "[worldfs: session restarted: %s did not stop%s]\n",
				   session_kinds[r->kind].noun, session_kinds[r->kind].loss);
		else
			strbuf_addf(&r->err.data, PROTO_NOTE_SESSION_EXITED "\n",
				   session_kinds[r->kind].noun, status, session_kinds[r->kind].loss);
		r->flags |= PROTO_F_SESSION_RESET;
	}
	send_result(a, r->id, status, r->flags, &r->out.data, &r->err.data);

	strbuf_release(&r->out.data);
	strbuf_release(&r->err.data);
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

	if (mkdir(a->dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	run_path(a, path, sizeof(path), "code");
	return file_put(path, code, len);
}

/* The kernel's limit for a "#!" line (BINPRM_BUF_SIZE). */
#define SHEBANG_MAX 256

/* What a run's first line asks for: "#!python3" or "#!python" the Python
 * session; "#!/ABS/PATH [ARG]" a one-off script of that interpreter (the
 * interpreter and its argument, split as the kernel splits a "#!" line, in
 * interp and arg); anything else the sh session.  -E2BIG for a "#!/" line
 * longer than the kernel would take. */
static int run_kind(const uint8_t *code, size_t len, enum session_kind *kind, char interp[SHEBANG_MAX],
		    char arg[SHEBANG_MAX])
{
	const char *p = (const char *)code, *nl = memchr(code, '\n', len), *end, *w;
	size_t n = nl ? (size_t)(nl - p) : len;

	*kind = SESSION_SH;
	interp[0] = arg[0] = 0;
	if (n < 2 || p[0] != '#' || p[1] != '!')
		return 0;
	end = p + n;
	while (end > p + 2 && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		end--;
	for (p += 2; p < end && (*p == ' ' || *p == '\t'); p++)
		;
	if ((end - p == 7 && memcmp(p, "python3", 7) == 0) || (end - p == 6 && memcmp(p, "python", 6) == 0)) {
		*kind = SESSION_PYTHON;
		return 0;
	}
	if (p == end || *p != '/')
		return 0;  /* a comment to sh */
	if (end - p >= SHEBANG_MAX)
		return -E2BIG;
	for (w = p; w < end && *w != ' ' && *w != '\t'; w++)
		;
	memcpy(interp, p, w - p);
	interp[w - p] = 0;
	while (w < end && (*w == ' ' || *w == '\t'))
		w++;
	memcpy(arg, w, end - w);
	arg[end - w] = 0;
	return 0;
}

/* s in single quotes for sh, appended to b. */
static void sh_quote(struct strbuf *b, const char *s)
{
	strbuf_add(b, "'", 1);
	for (; *s; s++) {
		if (*s == '\'')
			strbuf_add(b, "'\\''", 4);
		else
			strbuf_add(b, s, 1);
	}
	strbuf_add(b, "'", 1);
}

/* The command that makes the session run DIR/code: for sh one line that
 * sources it (or runs the one-off interpreter on it) with the run's
 * redirections, then prints the status line; for Python "run SEQ". */
static int run_command(struct agent *a, const struct run *r, const char *interp, const char *arg, struct strbuf *cmd)
{
	if (r->kind == SESSION_PYTHON)
		return strbuf_addf(cmd, "run %lu\n", r->seq);
	/* `command .` keeps errors that would end a non-interactive shell
	 * (assignment to a readonly, ${x?}, set -u) to the run, as in an
	 * interactive one.  The status goes to the shell's own stdout;
	 * `\command` skips aliases the user may have made.  __worldfs_in is
	 * cleared in the first command after the code so that a late SIGINT
	 * finds the trap disarmed.  A one-off script is not sourced, so the
	 * trap stays disarmed (its `return` would end the session) and only
	 * the interpreter, in the foreground, gets the SIGINT. */
	strbuf_addf(cmd, "%s; ", session_trap);
	if (interp[0]) {
		strbuf_addf(cmd, "__worldfs_in= __worldfs_k=0; { ");
		sh_quote(cmd, interp);
		if (arg[0]) {
			strbuf_add(cmd, " ", 1);
			sh_quote(cmd, arg);
		}
		strbuf_addf(cmd, " %s/code; }", a->dir);
	} else {
		strbuf_addf(cmd, "__worldfs_in=1; __worldfs_k=0; { \\command . %s/code; }", a->dir);
	}
	strbuf_addf(cmd, " </dev/null >%s/out 2>%s/err; __worldfs_in= __worldfs_st=$?; ", a->dir, a->dir);
	return strbuf_addf(cmd, "\\command printf '" STATUS_TAG "%%s %%s\\n' %lu \"$__worldfs_st\"\n", r->seq);
}

static void run_start(struct agent *a, const uint8_t *p, size_t len)
{
	struct run *r = &a->run;
	struct strbuf msg = STRBUF_INIT, cmd = STRBUF_INIT;
	char interp[SHEBANG_MAX], arg[SHEBANG_MAX];
	int status = 125, ret;
	const char *step;

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

	if (a->root_error) {
		strbuf_addf(&msg, "[worldfs: this world's root disk is not mounted: %s]\n", a->root_error);
		goto fail_early;
	}
	if (run_kind(p + 12, len - 12, &r->kind, interp, arg) < 0) {
		status = 126;
		strbuf_addf(&msg, "[worldfs: the #! line is longer than %d bytes]\n", SHEBANG_MAX - 1);
		goto fail_early;
	}
	step = "write the code";
	ret = write_code(a, p + 12, len - 12);
	if (ret < 0)
		goto fail;
	step = r->kind == SESSION_SH ? "start the session shell" : "start the " PYTHON_NAME " session";
	if (!a->sess[r->kind].pid) {
		ret = session_start(a, r->kind);
		if (ret == -ENOENT) {
			status = 127;
			strbuf_addf(&msg, "[worldfs: %s: not found in this world (the busybox image has none; "
				   "use image=debian)]\n", PYTHON_NAME);
			goto fail_early;
		}
		if (ret < 0)
			goto fail;
	}
	step = "make the output FIFOs";
	ret = stream_open(a, &r->out);
	if (ret >= 0)
		ret = stream_open(a, &r->err);
	if (ret < 0)
		goto fail;
	step = "talk to the session";
	ret = run_command(a, r, interp, arg, &cmd);
	if (ret >= 0)
		ret = write_all(a->sess[r->kind].ctl, cmd.buf, cmd.len);
	if (ret < 0)
		goto fail;
	r->active = true;
	if (r->timeout_ms)
		r->deadline = now_ms() + r->timeout_ms;
	goto out;
fail:
	/* The agent failed, not the code: 125, as env(1) and timeout(1) do. */
	strbuf_addf(&msg, "[worldfs: agent could not %s: %s]\n", step, strerror(-ret));
	say("run %u: could not %s: %s", r->id, step, strerror(-ret));
fail_early:
	stream_close(&r->out);
	stream_close(&r->err);
	send_early_result(a, r->id, r->kind, status, &msg);
out:
	strbuf_release(&cmd);
	strbuf_release(&msg);
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

/* Status lines from a session: the end of its current run. */
static void session_read_status(struct agent *a, enum session_kind kind)
{
	struct session *s = &a->sess[kind];
	unsigned long seq;
	int status;
	char *nl;
	ssize_t r;

	if (s->status < 0)
		return;
	for (;;) {
		r = read(s->status, chunk, sizeof(chunk));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (s->line.len + r > 4096)
			strbuf_reset(&s->line);  /* not ours: nothing else writes here */
		strbuf_add(&s->line, chunk, r);
	}
	while (s->line.len && (nl = memchr(s->line.buf, '\n', s->line.len))) {
		*nl = 0;
		if (sscanf(s->line.buf, STATUS_TAG "%lu %d", &seq, &status) == 2 &&
		    a->run.active && a->run.kind == kind && seq == a->run.seq)
			run_finish(a, status, false);
		strbuf_remove(&s->line, 0, nl + 1 - s->line.buf);
	}
}

static void reap(struct agent *a)
{
	struct signalfd_siginfo si;
	struct session *s;
	pid_t pid;
	int st, k;

	while (read(a->sigfd, &si, sizeof(si)) == sizeof(si))
		;
	/* A status line a session printed before dying comes first. */
	for (k = 0; k < SESSION_KINDS; k++)
		session_read_status(a, k);
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (k = 0; k < SESSION_KINDS && a->sess[k].pid != pid; k++)
			;
		if (k == SESSION_KINDS)
			continue;  /* an orphan we inherited as init */
		s = &a->sess[k];
		session_forget(a, k);
		if (a->run.active && a->run.kind == (enum session_kind)k) {
			run_finish(a, wait_status_code(st), true);
		} else {
			snprintf(s->note, sizeof(s->note),
				 "[worldfs: session restarted: %s had exited with status %d between runs%s]",
				 session_kinds[k].noun, wait_status_code(st), session_kinds[k].loss);
			say("%s session exited between runs (status %d)", session_kinds[k].name,
			    wait_status_code(st));
		}
	}
}

/* SIGINT to the run's session and its foreground now, and again every
 * tick; SIGKILL for the session once the grace is over. */
static void run_timers(struct agent *a)
{
	struct run *r = &a->run;
	pid_t sess = a->sess[r->kind].pid;
	long long now = now_ms();

	if (!r->active || !r->timeout_ms || now < r->deadline || !sess)
		return;
	if (!r->killing) {
		r->killing = true;
		r->flags |= PROTO_F_TIMED_OUT;
		r->next_tick = now + KILL_TICK_MS;
		r->give_up = now + KILL_GRACE_MS;
		kill(sess, SIGINT);
		kill_foreground(sess, r->fg, &r->nfg, false);
		return;
	}
	if (now >= r->give_up && !r->killed_shell) {
		r->killed_shell = true;
		say("run %u: the %s session did not stop on SIGINT; replacing it", r->id, session_kinds[r->kind].name);
		kill_foreground(sess, r->fg, &r->nfg, true);
		kill(sess, SIGKILL);
	} else if (now >= r->next_tick && !r->killed_shell) {
		kill(sess, SIGINT);
		kill_foreground(sess, r->fg, &r->nfg, false);
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

/* Mix n bytes of the host's entropy into the kernel's RNG and reseed it at
 * once, and set the clock to the host's time (ns since the epoch; 0: no). */
static int reseed(uint64_t ns, const uint8_t *entropy, size_t n)
{
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
			memcpy(info->buf, entropy, n);
		}
		/* Crediting needs CAP_SYS_ADMIN; a plain write still mixes. */
		if (!info || ioctl(fd, RNDADDENTROPY, info) < 0) {
			ret = write_all(fd, entropy, n);
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

/* A file request (fsproto.h), done at once on the guest's root: a
 * request is a few system calls, and a READ or WRITE at most FS_IO_MAX. */
static int fs_request(struct agent *a, const struct proto_frame *f)
{
	static uint8_t reply[FS_REPLY_MAX];
	static int root = -1;
	struct fs_req r;
	struct iovec iov;

	if (fs_req_parse(f->payload, f->len, &r) < 0)
		return -EPROTO;
	if (r.op == FS_MARK || r.op == FS_DIFF) {
		int n = r.op == FS_MARK ? diff_mark(a) : diff_request(a, &r, reply + FS_REPLY_HDR);

		iov = (struct iovec){ .iov_base = reply, .iov_len = fs_reply_head(reply, r.id, n) };
		port_send(a, PROTO_FS_REPLY, &iov, 1);
		return 0;
	}
	/* Opened at the first request: after init switched to the root disk. */
	if (root < 0)
		root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root < 0) {
		say("/: %s", strerror(errno));
		return 0;
	}
	iov = (struct iovec){ .iov_base = reply, .iov_len = fs_serve(root, &r, reply) };
	port_send(a, PROTO_FS_REPLY, &iov, 1);
	return 0;
}

/* Returns 0, or -EPROTO for a frame the host should not have sent. */
static int handle_frame(struct agent *a, const struct proto_frame *f)
{
	static const char pong[] = AGENT_NAME;
	struct iovec iov = { .iov_base = (void *)pong, .iov_len = sizeof(pong) - 1 };
	uint8_t alive[4];
	size_t hdr;

	switch (f->type) {
	case PROTO_PING:
		port_send(a, PROTO_PONG, &iov, 1);
		return 0;
	case PROTO_EXEC:
		if (f->len < 12)
			return -EPROTO;
		if (hostile_run(a, f->payload, f->len))
			return 0;
		if (run_enqueue(a, f->payload, f->len) < 0)
			say("dropping an EXEC: out of memory");
		return 0;
	case PROTO_FS:
		return fs_request(a, f);
	case PROTO_RESEED:
	case PROTO_RESEED2:
		hdr = f->type == PROTO_RESEED ? 8 : 12;
		if (f->len < hdr)
			return -EPROTO;
		reseed(proto_get_u64(f->payload), f->payload + hdr, f->len - hdr);
		/* The Python session reseeds its generators from the kernel's,
		 * fresh now, before it takes its next run. */
		if (f->type == PROTO_RESEED2 && (proto_get_u32(f->payload + 8) & PROTO_RESEED_DIFF_BASE))
			diff_adopt(a);
		if (f->type == PROTO_RESEED2 && (proto_get_u32(f->payload + 8) & PROTO_RESEED_SESSIONS) &&
		    a->sess[SESSION_PYTHON].pid &&
		    write_all(a->sess[SESSION_PYTHON].ctl, "reseed\n", 7) < 0)
			say("python3 session: reseed: %s", strerror(errno));
		proto_put_u32(alive, sessions_alive(a));
		iov = (struct iovec){ .iov_base = alive, .iov_len = sizeof(alive) };
		port_send(a, PROTO_RESEEDED, &iov, 1);
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
		n = proto_parse((const uint8_t *)a->in.buf + off, a->in.len - off, &f);
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
	strbuf_remove(&a->in, 0, off);
}

static void port_input(struct agent *a)
{
	uint32_t frame;
	size_t need;
	ssize_t r;

	for (;;) {
		need = a->in.len + sizeof(chunk);
		/* Once the header is in, make room for exactly the frame. */
		if (a->in.len >= 4 && (frame = proto_get_u32((const uint8_t *)a->in.buf)) <= PROTO_FRAME_MAX &&
		    4 + (size_t)frame > need)
			need = 4 + (size_t)frame;
		if (strbuf_grow(&a->in, need - a->in.len) < 0) {
			port_reset(a, "out of memory");
			return;
		}
		r = read(a->port, a->in.buf + a->in.len, strbuf_avail(&a->in));
		if (r > 0) {
			strbuf_setlen(&a->in, a->in.len + r);
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
			strbuf_reset(&a->in);
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
	struct pollfd pfd[4 + SESSION_KINDS + DRAIN_MAX];
	int n, i, port_i, sig_i, st_i[SESSION_KINDS], out_i, err_i, drain_i, ret;
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
		port_i = sig_i = out_i = err_i = -1;
		if (a->port >= 0 && now >= a->port_retry && a->queue_len < QUEUE_MAX) {
			port_i = n;
			pfd[n++] = (struct pollfd){ .fd = a->port, .events = POLLIN };
		}
		sig_i = n;
		pfd[n++] = (struct pollfd){ .fd = a->sigfd, .events = POLLIN };
		for (i = 0; i < SESSION_KINDS; i++) {
			st_i[i] = -1;
			if (a->sess[i].status >= 0) {
				st_i[i] = n;
				pfd[n++] = (struct pollfd){ .fd = a->sess[i].status, .events = POLLIN };
			}
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
			for (i = 0; i < SESSION_KINDS; i++)
				if (st_i[i] >= 0 && pfd[st_i[i]].revents)
					session_read_status(a, i);
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

	for (i = 0; i < SESSION_KINDS; i++)
		if (a->sess[i].pid)
			kill(-a->sess[i].pid, SIGKILL);
	while ((p = a->queue)) {
		a->queue = p->next;
		free(p);
	}
	for (i = 0; i < a->ndrain; i++)
		close(a->drain[i]);
	if (a->run.active) {
		strbuf_release(&a->run.out.data);
		strbuf_release(&a->run.err.data);
	}
	for (i = 0; i < SESSION_KINDS; i++) {
		session_forget(a, i);
		strbuf_release(&a->sess[i].line);
	}
	strbuf_release(&a->in);
	free(a->py_text);
	free(a->root_error);
	free(a->diff_text);
	if (a->base != a->mark)
		fsd_free(a->base);
	fsd_free(a->mark);
	close(a->sigfd);
}

int main(int argc, char **argv)
{
	struct agent a = {
		.port = -1,
		.upper_fd = -1,
		.lower_fd = -1,
		.dir = RUN_DIR,
		.sigfd = -1,
		.sess = { [SESSION_SH] = { .ctl = -1, .status = -1 },
			  [SESSION_PYTHON] = { .ctl = -1, .status = -1 } },
		.run = { .out = { .fd = -1, .hold = -1 }, .err = { .fd = -1, .hold = -1 } },
	};
	sigset_t mask;
	int i, ret;

	const char *session_py = SESSION_PY;

	a.queue_tail = &a.queue;
	if (getpid() == 1) {
		init_system(&a);
	} else {
		for (i = 1; i < argc; i++) {
			if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
				a.port = atoi(argv[++i]);
				a.fixed_port = true;
			} else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
				a.dir = argv[++i];
			} else if (!strcmp(argv[i], "--session") && i + 1 < argc) {
				session_py = argv[++i];
			} else {
				fprintf(stderr, "usage: %s [--fd N] [--dir DIR] [--session FILE]\n", argv[0]);
				return 2;
			}
		}
		session_py_load(&a, session_py);
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
	/* Start the sh session now so that the first run does not wait for
	 * it; the Python session waits for its first run (the golden state
	 * of an image that has one holds it started). */
	ret = session_start(&a, SESSION_SH);
	if (ret < 0)
		say("session shell: %s", strerror(-ret));
	/* W/diff's first base: the files as booted. */
	if (a.nlayers) {
		diff_mark(&a);
		diff_adopt(&a);
	}
	serve(&a);
	agent_release(&a);
	return 0;
}
