/* ram.c: the RAM directory, STATE/vm/ram: guest RAM as files on a
 * filesystem that clones a file in O(extents) (FICLONE), so freezing or
 * branching a world costs the same for 128 MiB as for 2 GiB.  When
 * STATE/vm is on a filesystem without reflink (ext4), root gets one: a
 * sparse XFS image, STATE/vm/ram.xfs, loop-mounted on the directory.
 *
 *   ram/<id>.ram              a VM's RAM, mapped share=on by its QEMU
 *   ram/snapshots/<snap>.ram  a frozen RAM (never written again)
 *   ram/golden/<key>.ram      the frozen just-booted world (golden.c) */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/vm/mountinfo.h"
#include "backend/vm/vm.h"

#define RAM_IMAGE_MAX (256ull << 30)  /* apparent size; only used blocks cost disk */
#define RAM_IMAGE_MIN (1ull << 30)
#define UMOUNT_TRIES 40               /* x 50 ms: QEMUs that just quit let go */

int ram_path(const struct backend *b, const char *name, char out[PATH_MAX])
{
	return vm_pathf(out, "%s/%s.ram", b->ram_dir, name);
}

int ram_snapshot_path(const struct backend *b, const char *snap_id, char out[PATH_MAX])
{
	return vm_pathf(out, "%s/snapshots/%s.ram", b->ram_dir, snap_id);
}

int ram_create(const char *path, unsigned mem_mib)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), r = 0;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)mem_mib << 20) < 0)
		r = -errno;
	close(fd);
	return r;
}

int ram_open_dest(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);

	return fd < 0 ? -errno : fd;
}

int ram_clone_fd(int src_fd, int dst_fd)
{
	/* The filesystem writes back src's dirty pages first, then shares
	 * its extents; dst's old data and page cache are dropped (a QEMU
	 * that maps dst sees the new data on its next access). */
	return ioctl(dst_fd, FICLONE, src_fd) < 0 ? -errno : 0;
}

int ram_clone(const char *src, const char *dst)
{
	int s = open(src, O_RDONLY | O_CLOEXEC), d, r;

	if (s < 0)
		return -errno;
	d = ram_open_dest(dst);
	if (d < 0) {
		close(s);
		return d;
	}
	r = ram_clone_fd(s, d);
	close(d);
	close(s);
	return r;
}

void ram_preflush(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
	close(fd);
}

/* Does dir clone files?  Two small temp files and one FICLONE. */
static bool reflink_works(const char *dir)
{
	char a[PATH_MAX], c[PATH_MAX], page[4096];
	int fa = -1, fc = -1;
	bool ok = false;

	if (vm_pathf(a, "%s/.probe-%d.a", dir, (int)getpid()) < 0 ||
	    vm_pathf(c, "%s/.probe-%d.b", dir, (int)getpid()) < 0)
		return false;
	memset(page, 'w', sizeof(page));
	fa = open(a, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	fc = open(c, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fa >= 0 && fc >= 0 && write_all(fa, page, sizeof(page)) == 0)
		ok = ram_clone_fd(fa, fc) == 0;
	if (fa >= 0)
		close(fa);
	if (fc >= 0)
		close(fc);
	unlink(a);
	unlink(c);
	return ok;
}

/* Run argv (a system tool); 0 if it exited 0.  Its stderr is ours (the log). */
static int run_tool(const char *const argv[])
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDWR);

		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* Is the filesystem mounted on dir the loop mount of image?  dev gets
 * the device's name ("loop3") when it is ours. */
static bool mounted_here(const char *dir, const char *image, bool *ours, char dev_out[32])
{
	char source[PATH_MAX], type[PATH_MAX], sys[PATH_MAX], backing[PATH_MAX], real[PATH_MAX];
	size_t cap = 1 << 20;
	char *text = malloc(cap);
	bool found;
	ssize_t n;
	const char *dev;

	*ours = false;
	if (!text)
		return false;
	n = io_read_small("/proc/self/mountinfo", text, cap);
	found = n > 0 && mountinfo_find(text, dir, source, type, sizeof(source));
	free(text);
	if (!found)
		return false;
	dev = strrchr(source, '/');
	dev = dev ? dev + 1 : source;
	if (strncmp(dev, "loop", 4) == 0 && realpath(image, real) &&
	    vm_pathf(sys, "/sys/block/%s/loop/backing_file", dev) == 0 &&
	    (n = io_read_small(sys, backing, sizeof(backing))) > 0) {
		if (backing[n - 1] == '\n')
			backing[n - 1] = '\0';
		*ours = strcmp(backing, real) == 0;
		if (*ours && strlen(dev) < 32)
			memcpy(dev_out, dev, strlen(dev) + 1);
	}
	return true;
}

static bool image_is_xfs(const char *image)
{
	char head[4];
	int fd = open(image, O_RDONLY | O_CLOEXEC);
	bool yes;

	if (fd < 0)
		return false;
	yes = pread(fd, head, sizeof(head), 0) == (ssize_t)sizeof(head) && xfs_magic(head, sizeof(head));
	close(fd);
	return yes;
}

/* No read-ahead on our loop device.  A VM's first touch of a guest page
 * then brings in that page, not a 128 KiB folio around it (or, with
 * read-ahead, large folios that a 4 KiB guest write dirties whole): both
 * the VM's memory (PSS) and what a snapshot must write back stay the
 * pages the guest used.  The image's own file on the disk below keeps
 * its read-ahead, so a cold restore still reads in large pieces. */
static void loop_tune(const char *dev)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/dev/%s", dev);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, BLKRASET, 0UL) < 0)
		vm_log(VM_LOG_HOST, "%s: read-ahead left on: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* Make STATE/vm/ram.xfs (once) and loop-mount it on the RAM directory. */
static int image_mount(struct backend *b)
{
	char mkfs[PATH_MAX], mount_bin[PATH_MAX];
	struct statvfs vfs;
	int r;

	if (!image_is_xfs(b->ram_image)) {
		unsigned long long size = RAM_IMAGE_MAX;
		int fd;

		if ((r = vm_find_program("mkfs.xfs", mkfs)) < 0) {
			vm_log(VM_LOG_HOST, "mkfs.xfs: not found (Debian: apt install xfsprogs)");
			return r;
		}
		/* No bigger than the disk under it: a loop device that cannot
		 * write fails I/O, where XFS itself would say ENOSPC. */
		if (statvfs(b->dir, &vfs) == 0) {
			unsigned long long avail = (unsigned long long)vfs.f_bavail * vfs.f_frsize / 10 * 9;

			if (avail < RAM_IMAGE_MIN) {
				vm_log(VM_LOG_HOST, "%s: only %llu MiB free for an XFS image", b->dir, avail >> 20);
				return -ENOSPC;
			}
			if (avail < size)
				size = avail;
		}
		fd = open(b->ram_image, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
			r = -errno;
			if (fd >= 0)
				close(fd);
			vm_log(VM_LOG_HOST, "%s: %s", b->ram_image, strerror(-r));
			return r;
		}
		close(fd);
		const char *argv[] = { mkfs, "-q", "-K", "-m", "reflink=1", b->ram_image, NULL };

		if ((r = run_tool(argv)) < 0) {
			vm_log(VM_LOG_HOST, "mkfs.xfs %s failed", b->ram_image);
			unlink(b->ram_image);
			return r;
		}
		vm_log(VM_LOG_HOST, "%s: made an XFS image (%llu GiB, sparse) for guest RAM",
		       b->ram_image, size >> 30);
	}
	if ((r = vm_find_program("mount", mount_bin)) < 0) {
		vm_log(VM_LOG_HOST, "mount: not found");
		return r;
	}
	/* -o loop: the loop device goes away with the unmount (autoclear). */
	const char *argv[] = { mount_bin, "-o", "loop,discard", b->ram_image, b->ram_dir, NULL };

	if ((r = run_tool(argv)) < 0) {
		vm_log(VM_LOG_HOST, "mount -o loop %s %s failed", b->ram_image, b->ram_dir);
		return r;
	}
	return 0;
}

/* For the message that says why branching copies. */
static const char *fs_name(const char *dir)
{
	struct statfs f;

	if (statfs(dir, &f) < 0)
		return "unknown filesystem";
	switch ((unsigned long)f.f_type) {
	case 0xEF53: return "ext4";
	case 0x01021994: return "tmpfs";
	case 0x58465342: return "xfs without reflink";
	case 0x6969: return "nfs";
	case 0x794c7630: return "overlayfs";
	default: return "no reflink";
	}
}

/* MiB free to an unprivileged writer on dir's filesystem, or -errno. */
static long long free_mib(const char *dir)
{
	struct statvfs v;

	if (statvfs(dir, &v) < 0)
		return -errno;
	return (long long)((unsigned long long)v.f_bavail * v.f_frsize >> 20);
}

int vm_room(const struct backend *b, const char *id, unsigned mem_mib)
{
	/* The state directory's filesystem, and the RAM directory's when it is
	 * our loop-mounted image (whose file lives on the first). */
	const char *dirs[2] = { b->dir, b->ram_mounted ? b->ram_dir : NULL };
	long long need = (long long)mem_mib + DISK_RESERVE_MIB;

	for (int i = 0; i < 2 && dirs[i]; i++) {
		long long have = free_mib(dirs[i]);

		if (have >= 0 && have < need) {
			vm_log(id, "%s: %lld MiB free, below the %lld MiB a %u MiB guest needs with the margin kept for "
			       "the running ones: refused (ENOSPC)", dirs[i], have, need, mem_mib);
			return -ENOSPC;
		}
	}
	return 0;
}

void ram_init(struct backend *b, bool want)
{
	const char *why = NULL;
	char sub[PATH_MAX], dev[32] = "";
	bool here, ours;

	if (vm_pathf(b->ram_dir, "%s/ram", b->dir) < 0 || vm_pathf(b->ram_image, "%s/ram.xfs", b->dir) < 0)
		return;
	if (mkdir(b->ram_dir, 0700) < 0 && errno != EEXIST) {
		vm_log(VM_LOG_HOST, "%s: %s", b->ram_dir, strerror(errno));
		return;
	}
	here = mounted_here(b->ram_dir, b->ram_image, &ours, dev);
	/* branch=copy: only what earlier mounts left (RAM files to resume). */
	if (!want && !here && !vm_exists(b->ram_image))
		return;
	if (reflink_works(b->ram_dir)) {
		b->ram_ready = true;
		b->ram_mounted = ours;  /* left mounted by a worldfs that was killed */
	} else if (here) {
		why = "a filesystem without reflink is mounted there";
	} else if (geteuid() != 0) {
		why = "not root";
	} else if (image_mount(b) < 0) {
		why = "no XFS image";
	} else if (!reflink_works(b->ram_dir)) {
		why = "the XFS image does not clone";
		umount2(b->ram_dir, 0);
	} else {
		b->ram_ready = b->ram_mounted = true;
		mounted_here(b->ram_dir, b->ram_image, &ours, dev);
	}
	if (b->ram_mounted && dev[0])
		loop_tune(dev);
	if (why && want)
		vm_log(VM_LOG_HOST, "%s: no reflink (%s) and %s: branching copies memory", b->ram_dir,
		       fs_name(b->ram_dir), why);
	if (!b->ram_ready)
		return;
	if ((vm_pathf(sub, "%s/snapshots", b->ram_dir) == 0 && mkdir(sub, 0700) < 0 && errno != EEXIST) ||
	    (vm_pathf(sub, "%s/golden", b->ram_dir) == 0 && mkdir(sub, 0700) < 0 && errno != EEXIST)) {
		vm_log(VM_LOG_HOST, "%s: %s: branching copies memory", sub, strerror(errno));
		b->ram_ready = false;
		return;
	}
	vm_tmp_sweep(b->ram_dir);
	if (vm_pathf(sub, "%s/snapshots", b->ram_dir) == 0)
		vm_tmp_sweep(sub);
	if (vm_pathf(sub, "%s/golden", b->ram_dir) == 0)
		vm_tmp_sweep(sub);
	b->cow = want;
}

void ram_fini(struct backend *b)
{
	if (!b->ram_mounted)
		return;
	for (int i = 0;; i++) {
		if (umount2(b->ram_dir, 0) == 0 || errno == EINVAL || errno == ENOENT)
			break;
		if (errno != EBUSY || i == UMOUNT_TRIES) {
			vm_log(VM_LOG_HOST, "umount %s: %s (left mounted for the VMs still using it)",
			       b->ram_dir, strerror(errno));
			return;
		}
		sleep_ms(50);
	}
	b->ram_mounted = false;
}

/* Unlink dir/<name>.ram where name is not known (or, with known == NULL, always). */
static void collect_dir(const char *dir, bool (*known)(void *ctx, const char *id), void *ctx, const char *what)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char id[ID_MAX + 8];
		size_t n = strlen(e->d_name);

		if (e->d_name[0] == '.' || n <= 4 || n - 4 > ID_MAX || strcmp(e->d_name + n - 4, ".ram") != 0)
			continue;
		memcpy(id, e->d_name, n - 4);
		id[n - 4] = '\0';
		if (known(ctx, id))
			continue;
		vm_log(id, "%s RAM file not in the registry: deleted", what);
		unlinkat(dirfd(d), e->d_name, 0);
	}
	closedir(d);
}

void ram_collect_garbage(struct backend *b, bool (*known)(void *ctx, const char *id), void *ctx)
{
	char sub[PATH_MAX];

	if (!b->ram_ready)
		return;
	collect_dir(b->ram_dir, known, ctx, "a world's");
	if (vm_pathf(sub, "%s/snapshots", b->ram_dir) == 0)
		collect_dir(sub, known, ctx, "a snapshot's");
}
