/* fsserve.c: see fsserve.h.  Every path is split into its directory,
 * opened with openat2(RESOLVE_IN_ROOT) below the root, and its last
 * component, on which the *at() call acts without following it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "backend/agent/fsserve.h"
#include "backend/agent/proto.h"
#include "backend/util/io.h"

static int open_in_root(int rootfd, const char *path, int flags, mode_t mode)
{
	return io_openat2(rootfd, path, flags | O_CLOEXEC, (flags & O_CREAT) ? mode : 0,
			  RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

/* The kernel's pseudo-filesystems (/proc, /sys, /dev, ...) are not the
 * guest's files: a tar or find over W/fs must not read /proc/kcore or
 * /dev/zero.  They are left out of listings, and a path into one is
 * ENOENT. */
static bool pseudo(int fd)
{
	struct statfs sf;

	if (fstatfs(fd, &sf) < 0)
		return false;
	switch ((unsigned long)sf.f_type) {
	case 0x9fa0:      /* proc */
	case 0x62656572:  /* sysfs */
	case 0x1cd1:      /* devpts */
	case 0x64626720:  /* debugfs */
	case 0x74726163:  /* tracefs */
	case 0x73636673:  /* securityfs */
	case 0x27e0eb:    /* cgroup */
	case 0x63677270:  /* cgroup2 */
	case 0xcafe4a11:  /* bpf */
	case 0x19800202:  /* mqueue */
	case 0x958458f6:  /* hugetlbfs */
	case 0x42494e4d:  /* binfmt_misc */
		return true;
	default:
		return false;
	}
}

/* /dev is devtmpfs, which says it is a tmpfs: it is known by its place.
 * Its device nodes are the guest kernel's, not files of the world. */
static bool below_dev(const char *dir)
{
	return strncmp(dir, "/dev/", 5) == 0;
}

/* Is name, in the directory dfd (the root: at_root), whose own device is
 * parent_dev, one of those left out?  st is name's lstat.  Only a
 * directory on a device of its own can be a mount: the rest costs no
 * system call. */
static bool hidden_st(int dfd, const char *name, const struct stat *st, dev_t parent_dev, bool at_root)
{
	bool yes;
	int fd;

	if (at_root && strcmp(name, "dev") == 0)
		return true;
	if (!S_ISDIR(st->st_mode) || st->st_dev == parent_dev)
		return false;
	fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return false;
	yes = pseudo(fd);
	close(fd);
	return yes;
}

/* The same for dfd/base, stat'ed here. */
static bool hidden(int dfd, const char *base, bool at_root)
{
	struct stat st, parent;

	return fstat(dfd, &parent) == 0 && fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	       hidden_st(dfd, base, &st, parent.st_dev, at_root);
}

/* The directory of path (opened) and its last component, copied into
 * base; "" for the root itself.  The path has no NUL and starts with '/'. */
static int split_open(int rootfd, const char *path, size_t len, char base[NAME_MAX + 1], bool *at_root)
{
	char buf[FS_PATH_MAX + 2];
	char *slash;
	int fd;

	memcpy(buf, path, len);
	buf[len] = '\0';
	while (len > 1 && buf[len - 1] == '/')
		buf[--len] = '\0';
	slash = strrchr(buf, '/');
	if (strlen(slash + 1) > NAME_MAX)
		return -ENAMETOOLONG;
	strcpy(base, slash + 1);
	if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
		return -EINVAL;
	slash[1] = '\0';
	*at_root = strcmp(buf, "/") == 0;
	fd = open_in_root(rootfd, buf, O_PATH | O_DIRECTORY, 0);
	if (fd >= 0 && (pseudo(fd) || below_dev(buf))) {
		close(fd);
		return -ENOENT;
	}
	return fd;
}

static void attr_of(const struct stat *st, struct fs_attr *a)
{
	a->mode = st->st_mode;
	a->nlink = (uint32_t)st->st_nlink;
	a->uid = st->st_uid;
	a->gid = st->st_gid;
	a->size = (uint64_t)st->st_size;
	a->ino = st->st_ino;
	a->mtime_ns = (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec;
	a->ctime_ns = (uint64_t)st->st_ctim.tv_sec * 1000000000u + (uint64_t)st->st_ctim.tv_nsec;
}

static void attr_put(const struct stat *st, uint8_t *p)
{
	struct fs_attr a;

	attr_of(st, &a);
	fs_attr_put(p, &a);
}

/* stat of dfd's base ("" : dfd itself) into out's attr. */
static int stat_put(int dfd, const char *base, uint8_t *p)
{
	struct stat st;

	if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW | (base[0] ? 0 : AT_EMPTY_PATH)) < 0)
		return -errno;
	attr_put(&st, p);
	return FS_ATTR_LEN;
}

static void put_u16(uint8_t *p, size_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/* Entries of the directory at dirfd/base from the cookie-th on, as many as
 * fit FS_DIR_BUDGET; the body's length or -errno. */
static int list(int dfd, const char *base, bool at_root, uint64_t cookie, uint8_t *body)
{
	int fd = openat(dfd, base[0] ? base : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	uint64_t index = 0, next = 0;
	struct stat self, st;
	size_t at = 8;
	struct dirent *d;
	DIR *dir;

	if (fd < 0)
		return -errno;
	dir = fdopendir(fd);
	if (!dir || fstat(fd, &self) < 0) {
		int r = -errno;

		if (dir)
			closedir(dir);
		else
			close(fd);
		return r;
	}
	while ((d = readdir(dir))) {
		size_t n = strlen(d->d_name);

		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		/* One lstat an entry, for the listing and for whether it is
		 * left out (listing the root itself: its entries are at the
		 * root).  Gone since readdir saw it: not listed. */
		if (fstatat(fd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    hidden_st(fd, d->d_name, &st, self.st_dev, at_root && !base[0]))
			continue;
		if (index++ < cookie)
			continue;
		if (at - 8 + 2 + n + FS_ATTR_LEN > FS_DIR_BUDGET) {
			next = index - 1;
			break;
		}
		attr_put(&st, body + at + 2 + n);
		put_u16(body + at, n);
		memcpy(body + at + 2, d->d_name, n);
		at += 2 + n + FS_ATTR_LEN;
	}
	closedir(dir);
	proto_put_u64(body, next);
	return (int)at;
}

/* The file dfd/base opened with flags, never through a symlink. */
static int open_base(int dfd, const char *base, int flags, mode_t mode)
{
	int fd = openat(dfd, base[0] ? base : ".", flags | O_NOFOLLOW | O_CLOEXEC, mode);

	return fd < 0 ? -errno : fd;
}

static int do_read(int dfd, const char *base, uint64_t off, uint32_t len, uint8_t *body)
{
	int fd = open_base(dfd, base, O_RDONLY | O_NONBLOCK, 0);
	size_t got = 0;
	ssize_t n;

	if (fd < 0)
		return fd;
	while (got < len && (n = pread(fd, body + got, len - got, (off_t)(off + got))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			n = -errno;
			close(fd);
			return (int)n;
		}
		got += (size_t)n;
	}
	close(fd);
	return (int)got;
}

static int do_write(int dfd, const char *base, uint64_t off, const uint8_t *data, size_t len, uint8_t *body)
{
	int fd = open_base(dfd, base, O_WRONLY | O_NONBLOCK, 0);
	size_t put = 0;
	ssize_t n;

	if (fd < 0)
		return fd;
	while (put < len) {
		n = pwrite(fd, data + put, len - put, (off_t)(off + put));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			n = n < 0 ? -errno : -EIO;
			close(fd);
			return (int)n;
		}
		put += (size_t)n;
	}
	close(fd);
	proto_put_u32(body, (uint32_t)put);
	return 4;
}

static int do_create(int dfd, const char *base, uint32_t mode, uint32_t flags, uint8_t *body)
{
	int fd;

	if (!base[0])
		return -EEXIST;
	fd = open_base(dfd, base, O_WRONLY | O_CREAT | O_NONBLOCK | ((flags & FS_EXCL) ? O_EXCL : 0) |
		       ((flags & FS_TRUNC) ? O_TRUNC : 0),
		       (mode_t)(mode & 07777));
	if (fd < 0)
		return fd;
	close(fd);
	return stat_put(dfd, base, body);
}

static int do_truncate(int dfd, const char *base, uint64_t size)
{
	int fd = open_base(dfd, base, O_WRONLY | O_NONBLOCK, 0), r = 0;

	if (fd < 0)
		return fd;
	if (size > INT64_MAX || ftruncate(fd, (off_t)size) < 0)
		r = size > INT64_MAX ? -EFBIG : -errno;
	close(fd);
	return r;
}

/* chmod without following a symlink at the end (Linux has no mode for a
 * symlink): through an O_PATH descriptor's /proc link. */
static int do_chmod(int dfd, const char *base, uint32_t mode)
{
	char proc[64];
	struct stat st;
	int fd = open_base(dfd, base, O_PATH, 0), r = 0;

	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0)
		r = -errno;
	else if (S_ISLNK(st.st_mode))
		r = -EOPNOTSUPP;
	else {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		if (chmod(proc, (mode_t)(mode & 07777)) < 0)
			r = -errno;
	}
	close(fd);
	return r;
}

static void time_of(uint64_t ns, struct timespec *t)
{
	if (ns == FS_TIME_NOW)
		*t = (struct timespec){ .tv_nsec = UTIME_NOW };
	else if (ns == FS_TIME_OMIT)
		*t = (struct timespec){ .tv_nsec = UTIME_OMIT };
	else
		*t = (struct timespec){ .tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u) };
}

/* The op on dfd/base (and, for RENAME, dfd2/base2): the body's length
 * or -errno. */
static int serve_op(int rootfd, const struct fs_req *r, int dfd, const char *base, bool at_root, uint8_t *body)
{
	char base2[NAME_MAX + 1], target[FS_PATH_MAX + 1];
	struct timespec ts[2];
	bool root2;
	int dfd2, n;

	switch (r->op) {
	case FS_STAT:
		return stat_put(dfd, base, body);
	case FS_READDIR:
		return list(dfd, base, at_root, r->off, body);
	case FS_READ:
		return do_read(dfd, base, r->off, r->len, body);
	case FS_WRITE:
		return do_write(dfd, base, r->off, r->data, r->data_len, body);
	case FS_CREATE:
		return do_create(dfd, base, r->mode, r->flags, body);
	case FS_TRUNCATE:
		return do_truncate(dfd, base, r->off);
	case FS_MKDIR:
		if (!base[0])
			return -EEXIST;
		return mkdirat(dfd, base, (mode_t)(r->mode & 07777)) < 0 ? -errno : stat_put(dfd, base, body);
	case FS_UNLINK:
	case FS_RMDIR:
		if (!base[0])
			return r->op == FS_RMDIR ? -EBUSY : -EISDIR;
		return unlinkat(dfd, base, r->op == FS_RMDIR ? AT_REMOVEDIR : 0) < 0 ? -errno : 0;
	case FS_RENAME:
		if (!base[0])
			return -EBUSY;
		dfd2 = split_open(rootfd, r->path2, r->path2_len, base2, &root2);
		if (dfd2 < 0)
			return dfd2;
		if (base2[0] && hidden(dfd2, base2, root2)) {
			close(dfd2);
			return -EXDEV;
		}
		n = base2[0] ? (int)syscall(SYS_renameat2, dfd, base, dfd2, base2, r->flags) : -1;
		n = !base2[0] ? -EBUSY : n < 0 ? -errno : 0;
		close(dfd2);
		return n;
	case FS_READLINK:
		n = (int)readlinkat(dfd, base, (char *)body, FS_PATH_MAX);
		return n < 0 ? -errno : n;
	case FS_SYMLINK:
		if (!base[0])
			return -EEXIST;
		memcpy(target, r->path2, r->path2_len);
		target[r->path2_len] = '\0';
		return symlinkat(target, dfd, base) < 0 ? -errno : stat_put(dfd, base, body);
	case FS_CHMOD:
		return do_chmod(dfd, base, r->mode);
	case FS_UTIMENS:
		time_of(r->off, &ts[0]);
		time_of(r->arg, &ts[1]);
		return utimensat(dfd, base[0] ? base : ".", ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	default:
		return -ENOSYS;
	}
}

size_t fs_serve(int rootfd, const struct fs_req *r, uint8_t *out)
{
	char base[NAME_MAX + 1];
	bool at_root = false;
	int dfd = split_open(rootfd, r->path, r->path_len, base, &at_root), n;

	if (dfd >= 0 && base[0] && hidden(dfd, base, at_root))
		n = -ENOENT;
	else
		n = dfd < 0 ? dfd : serve_op(rootfd, r, dfd, base, at_root, out + FS_REPLY_HDR);
	if (dfd >= 0)
		close(dfd);
	return fs_reply_head(out, r->id, n);
}
