/* main.c: options, --help, and the mount: open the runtime, mount, serve,
 * and on unmount suspend every live world. */
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend/util/io.h"
#include "backend/vm/mountinfo.h"
#include "fs/ops.h"
#include "fs/runtime.h"

struct options {
	char *backend, *accel, *state, *image, *morph_url, *morph_snapshot, *morph_image, *branch, *reseed, *qemu_user;
	unsigned mem, vcpus, exec_timeout, pool, max_worlds, idle_suspend;
	unsigned long output_max;
	int help, version;
};

#define OPT(t, p) { t, offsetof(struct options, p), 1 }
static const struct fuse_opt option_spec[] = {
	OPT("backend=%s", backend),
	OPT("accel=%s", accel),
	OPT("state=%s", state),
	OPT("image=%s", image),
	OPT("mem=%u", mem),
	OPT("vcpus=%u", vcpus),
	OPT("exec_timeout=%u", exec_timeout),
	OPT("output_max=%lu", output_max),
	OPT("morph_url=%s", morph_url),
	OPT("morph_snapshot=%s", morph_snapshot),
	OPT("morph_image=%s", morph_image),
	OPT("branch=%s", branch),
	OPT("pool=%u", pool),
	OPT("qemu_user=%s", qemu_user),
	OPT("reseed=%s", reseed),
	OPT("max_worlds=%u", max_worlds),
	OPT("idle_suspend=%u", idle_suspend),
	OPT("-h", help),
	OPT("--help", help),
	OPT("-V", version),
	OPT("--version", version),
	FUSE_OPT_END
};

static void usage(const char *prog)
{
	printf("usage: %s [-f] [-d] [-o OPTION[,OPTION...]] MOUNTPOINT\n"
	       "\n"
	       "worldfs turns sandboxed, branchable worlds into plain files (see worldfs(1)).\n"
	       "\n"
	       "worldfs options:\n"
	       "    -o backend=vm|morph     where worlds run (default: vm)\n"
	       "    -o accel=auto|kvm|tcg   how vm runs guests (default: auto: kvm with vmx/svm\n"
	       "                            and a usable /dev/kvm, else tcg)\n"
	       "    -o state=DIR            registry, snapshots, sandboxes (default: /var/lib/worldfs\n"
	       "                            for root, else $XDG_STATE_HOME/worldfs)\n"
	       "    -o image=NAME|DIR       the guest: debian (Debian 12 with python3, numpy, pandas),\n"
	       "                            busybox (sh only, smallest), or a directory made by\n"
	       "                            backend/image/build-image.sh (default: debian)\n"
	       "    -o mem=MIB              memory of a new top-level world (default: the image's:\n"
	       "                            debian 512, busybox 128)\n"
	       "    -o vcpus=N              vCPUs of a new top-level world (default: 1)\n"
	       "    -o exec_timeout=SEC     longest run of one exec (default: 60)\n"
	       "    -o output_max=BYTES     largest captured stdout/stderr per run (default: 1048576)\n"
	       "    -o max_worlds=N         live worlds + verses one uid other than the mounting user\n"
	       "                            may hold at once; beyond it mkdir fails with EDQUOT\n"
	       "                            (default: 32; 0: no limit)\n"
	       "    -o idle_suspend=SEC     suspend a world to disk after SEC seconds with no run and\n"
	       "                            no open file; it resumes on next use (default: 300;\n"
	       "                            0: never)\n"
	       "    -o reseed=all|kernel    after a branch or restore, reseed the guest kernel's RNG\n"
	       "                            and the sessions' generators (Python random, numpy.random),\n"
	       "                            or the kernel's only, keeping common random numbers\n"
	       "                            across sibling verses (default: all)\n"
	       "    -o branch=cow|copy      vm: branch copy-on-write (default where the state\n"
	       "                            directory can clone files, or as root) or by copying memory\n"
	       "    -o pool=N               vm: QEMU processes kept started for branches (default: 3)\n"
	       "    -o qemu_user=USER       vm, when worldfs runs as root: the user QEMU becomes once\n"
	       "                            started, in an empty chroot (default: worldfs, else\n"
	       "                            nobody; root: QEMU keeps root's privileges)\n"
	       "    -o morph_url=URL        Morph Cloud API base (default: https://cloud.morph.so/api);\n"
	       "                            the API key comes from $MORPH_API_KEY\n"
	       "    -o morph_snapshot=ID    morph: the snapshot new worlds start from\n"
	       "                            (default: one made from morph_image)\n"
	       "    -o morph_image=ID       morph: the image of that snapshot (default: morphvm-minimal)\n"
	       "\n", prog);
}

static char *default_state_dir(void)
{
	const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
	char *s = NULL;

	if (geteuid() == 0)
		return strdup("/var/lib/worldfs");
	if (xdg && *xdg) {
		if (asprintf(&s, "%s/worldfs", xdg) < 0)
			s = NULL;
	} else if (home) {
		if (asprintf(&s, "%s/.local/state/worldfs", home) < 0)
			s = NULL;
	}
	return s;
}

/* Where image names are directories: the images built in the source
 * tree, if any, else the installed ones. */
static const char *image_base(void)
{
	static const char *const names[] = { "debian", "busybox" };
	char p[PATH_MAX];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s/vmlinux", WORLDFS_IMAGE_DIR, names[i]);
		if (access(p, R_OK) == 0)
			return WORLDFS_IMAGE_DIR;
	}
	return WORLDFS_INSTALLED_IMAGE_DIR;
}

/* Like mkdir -p for the state directory. */
static int make_dirs(const char *path)
{
	char p[PATH_MAX];

	snprintf(p, sizeof(p), "%s", path);
	for (char *s = p + 1; *s; s++)
		if (*s == '/') {
			*s = '\0';
			if (mkdir(p, 0700) < 0 && errno != EEXIST)
				return -errno;
			*s = '/';
		}
	if (mkdir(p, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* The state directory holds every user's outputs and the registry: it
 * must be the mounting user's alone (another's, or one others can write,
 * is refused; one others can only read is made 0700).  A comma would also break the QEMU
 * option strings that name files below it. */
static int state_dir_check(const char *dir)
{
	struct stat st;

	if (strchr(dir, ',')) {
		fprintf(stderr, "worldfs: state=%s: a comma in the path is not supported\n", dir);
		return -EINVAL;
	}
	if (stat(dir, &st) < 0) {
		fprintf(stderr, "worldfs: state=%s: %s\n", dir, strerror(errno));
		return -errno;
	}
	if (st.st_uid != geteuid()) {
		fprintf(stderr, "worldfs: state=%s: owned by uid %u, not by this user (%u)\n", dir,
			(unsigned)st.st_uid, (unsigned)geteuid());
		return -EPERM;
	}
	if (st.st_mode & 022) {
		fprintf(stderr, "worldfs: state=%s: writable by other users (mode %03o): chmod go-w it\n", dir,
			(unsigned)(st.st_mode & 0777));
		return -EPERM;
	}
	/* Readable by others: its files are private anyway; make it so. */
	if ((st.st_mode & 077) && chmod(dir, st.st_mode & 0700) < 0) {
		fprintf(stderr, "worldfs: state=%s: chmod 700: %s\n", dir, strerror(errno));
		return -errno;
	}
	return 0;
}

static int parse_config(struct options *o, struct backend_config *cfg, char **state_abs)
{
	char *abs;
	int err;

	memset(cfg, 0, sizeof(*cfg));
	if (!o->accel || strcmp(o->accel, "auto") == 0)
		cfg->accel = ACCEL_AUTO;
	else if (strcmp(o->accel, "kvm") == 0)
		cfg->accel = ACCEL_KVM;
	else if (strcmp(o->accel, "tcg") == 0)
		cfg->accel = ACCEL_TCG;
	else {
		fprintf(stderr, "worldfs: accel=%s: expected auto, kvm or tcg\n", o->accel);
		return -EINVAL;
	}
	if (o->mem && (o->mem < 64 || o->mem > 1024 * 1024)) {
		fprintf(stderr, "worldfs: mem=%u: expected 64..1048576 MiB\n", o->mem);
		return -EINVAL;
	}
	if (o->vcpus < 1 || o->vcpus > 64) {
		fprintf(stderr, "worldfs: vcpus=%u: expected 1..64\n", o->vcpus);
		return -EINVAL;
	}
	if (o->exec_timeout < 1) {
		fprintf(stderr, "worldfs: exec_timeout=%u: expected at least 1 second\n", o->exec_timeout);
		return -EINVAL;
	}
	if (o->output_max < 64 || o->output_max > (16ul << 20)) {
		fprintf(stderr, "worldfs: output_max=%lu: expected 64..16777216 bytes\n", o->output_max);
		return -EINVAL;
	}
	if (!o->branch || strcmp(o->branch, "cow") == 0)
		cfg->branch_copy = false;
	else if (strcmp(o->branch, "copy") == 0)
		cfg->branch_copy = true;
	else {
		fprintf(stderr, "worldfs: branch=%s: expected cow or copy\n", o->branch);
		return -EINVAL;
	}
	if (!o->reseed || strcmp(o->reseed, "all") == 0)
		cfg->reseed_sessions = true;
	else if (strcmp(o->reseed, "kernel") == 0)
		cfg->reseed_sessions = false;
	else {
		fprintf(stderr, "worldfs: reseed=%s: expected all or kernel\n", o->reseed);
		return -EINVAL;
	}
	if (o->pool > 64) {
		fprintf(stderr, "worldfs: pool=%u: expected 0..64\n", o->pool);
		return -EINVAL;
	}
	if (!o->state && !(o->state = default_state_dir())) {
		fprintf(stderr, "worldfs: no state directory: give -o state=DIR\n");
		return -EINVAL;
	}
	err = make_dirs(o->state);
	if (err || !(abs = realpath(o->state, NULL))) {
		fprintf(stderr, "worldfs: state=%s: %s\n", o->state, strerror(err ? -err : errno));
		return err ? err : -errno;
	}
	if ((err = state_dir_check(abs)) < 0) {
		free(abs);
		return err;
	}
	*state_abs = abs;
	if (!o->image)
		o->image = strdup("debian");
	cfg->state_dir = abs;
	cfg->image = o->image;
	cfg->image_base = image_base();
	cfg->mem_mib = o->mem;
	cfg->vcpus = o->vcpus;
	cfg->exec_timeout_s = o->exec_timeout;
	cfg->output_max = o->output_max;
	cfg->morph_url = o->morph_url;
	cfg->morph_snapshot = o->morph_snapshot;
	cfg->morph_image = o->morph_image;
	cfg->pool_size = o->pool;
	cfg->qemu_user = o->qemu_user;
	return 0;
}

/* Fork into the background, but let the parent exit with the child's
 * verdict on the mount, so a failed mount is a failed command. */
static int background(int *report_fd)
{
	int p[2];
	pid_t pid;
	char verdict = 1;

	if (pipe(p) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(p[1]);
		if (read(p[0], &verdict, 1) != 1)
			verdict = 1;
		_exit(verdict);
	}
	close(p[0]);
	setsid();
	*report_fd = p[1];
	return 0;
}

static void report(int fd, char verdict)
{
	int null;

	if (fd < 0)
		return;
	if (write(fd, &verdict, 1) < 0) {
		/* the parent is gone: nobody to tell */
	}
	close(fd);
	if (verdict == 0 && (null = open("/dev/null", O_RDWR)) >= 0) {
		/* stderr is the log's pipe; only the terminal echo stops. */
		dup2(null, 0);
		dup2(null, 1);
		if (null > 2)
			close(null);
		worldfs_log_echo(false);
	}
}

/* Each live VM holds a few descriptors (its directory, QMP, the agent):
 * hundreds of verses need more than the usual soft limit of 1024. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			fprintf(stderr, "worldfs: raising the open-file limit: %s\n", strerror(errno));
	}
}

/* Tell ops.c the device of the mount just made (for its readahead), from
 * /proc/self/mountinfo: a stat of the mount point would wait for the loop
 * that has not started yet. */
static void mount_device(const char *mountpoint)
{
	char path[PATH_MAX], dev[64];
	size_t cap = 1 << 20;
	char *text;

	if (!realpath(mountpoint, path) || !(text = malloc(cap)))
		return;
	if (io_read_small("/proc/self/mountinfo", text, cap) > 0 && mountinfo_devno(text, path, dev, sizeof(dev)))
		ops_set_device(dev);
	free(text);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct options o = { .mem = 0, .vcpus = 1, .exec_timeout = 60, .output_max = 1u << 20, .pool = 3,
			     .max_worlds = 32, .idle_suspend = 300 };
	struct fuse_cmdline_opts copts = { 0 };
	struct backend_config cfg;
	const struct backend_ops *ops;
	struct runtime rt = { 0 };
	struct fuse *fuse = NULL;
	struct fuse_loop_config *loop = NULL;
	char err[512] = "", *state = NULL, log_path[PATH_MAX];
	int report_fd = -1, rc = 1;

	/* What worldfs creates (registry, log, states) is the mounting user's
	 * alone; a peer that went away is an error, never a signal. */
	umask(077);
	signal(SIGPIPE, SIG_IGN);
	if (fuse_opt_parse(&args, &o, option_spec, NULL) < 0)
		goto out;
	if (o.version) {
		printf("worldfs %s\n", WORLDFS_VERSION);
		printf("FUSE library version %s\n", fuse_pkgversion());
		rc = 0;
		goto out;
	}
	if (o.help) {
		usage(argv[0]);
		fuse_lib_help(&args);
		printf("FUSE options:\n");
		fuse_cmdline_help();
		rc = 0;
		goto out;
	}
	if (fuse_parse_cmdline(&args, &copts) != 0)
		return 1;
	raise_fd_limit();
	if (!copts.mountpoint) {
		fprintf(stderr, "usage: %s [options] MOUNTPOINT (see --help)\n", argv[0]);
		goto out;
	}
	if (parse_config(&o, &cfg, &state) < 0)
		goto out;
	if (!o.backend)
		o.backend = strdup("vm");
	if (!(ops = backend_find(o.backend))) {
		fprintf(stderr, "worldfs: backend=%s: not available in this version (available: vm, morph)\n", o.backend);
		goto out;
	}

	snprintf(log_path, sizeof(log_path), "%s/worldfs.log", state);
	if (!copts.foreground && background(&report_fd) < 0) {
		perror("worldfs: fork");
		goto out;
	}
	/* Until the mount is up the terminal sees every line too; in the
	 * background it stops there (report()), with -f it goes on. */
	worldfs_log_open(log_path, true);
	if (runtime_open(&rt, ops, &cfg, err, sizeof(err)) < 0) {
		worldfs_log("%s", err);
		goto out;
	}
	rt.mount_uid = getuid();
	rt.mount_gid = getgid();
	rt.max_worlds = o.max_worlds;
	rt.mount_time = time(NULL);
	if (runtime_idle_start(&rt, o.idle_suspend) < 0)
		worldfs_log("idle_suspend: cannot start its thread: worlds stay up while idle");

	/* Permissions are the kernel's, from the modes and owners we report. */
	fuse_opt_add_arg(&args, "-odefault_permissions");
	fuse_opt_add_arg(&args, "-ofsname=worldfs,subtype=worldfs");
	fuse = fuse_new(&args, &worldfs_ops, sizeof(worldfs_ops), &rt);
	if (!fuse)
		goto out_runtime;
	if (fuse_mount(fuse, copts.mountpoint) != 0)
		goto out_fuse;
	mount_device(copts.mountpoint);
	if (fuse_set_signal_handlers(fuse_get_session(fuse)) != 0)
		goto out_unmount;
	worldfs_log("serving %s", copts.mountpoint);
	report(report_fd, 0);
	report_fd = -1;

	loop = fuse_loop_cfg_create();
	fuse_loop_cfg_set_clone_fd(loop, copts.clone_fd);
	if (copts.max_idle_threads != UINT_MAX)  /* UINT_MAX: not given */
		fuse_loop_cfg_set_idle_threads(loop, copts.max_idle_threads);
	/* Runs block their thread for as long as they last: room for many. */
	fuse_loop_cfg_set_max_threads(loop, copts.max_threads > 10 ? copts.max_threads : 256);
	rc = copts.singlethread ? fuse_loop(fuse) : fuse_loop_mt(fuse, loop);
	rc = rc ? 1 : 0;
	fuse_loop_cfg_destroy(loop);
	fuse_remove_signal_handlers(fuse_get_session(fuse));
	signal(SIGPIPE, SIG_IGN);  /* libfuse put it back to the default */
out_unmount:
	fuse_unmount(fuse);
out_fuse:
	fuse_destroy(fuse);
out_runtime:
	runtime_close(&rt);
out:
	report(report_fd, 1);
	free(copts.mountpoint);
	fuse_opt_free_args(&args);
	free(state);
	free(o.backend);
	free(o.accel);
	free(o.state);
	free(o.image);
	free(o.morph_url);
	free(o.morph_snapshot);
	free(o.morph_image);
	free(o.branch);
	free(o.reseed);
	free(o.qemu_user);
	worldfs_log_close();
	return rc;
}
