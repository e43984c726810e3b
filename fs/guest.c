/* guest.c: W/fs/, the guest's own file tree, through the mount.  Each
 * FUSE operation is one request of the file protocol (fsproto.h) to the
 * world's agent, under the world's oplock (runtime_fs): a file operation
 * waits for a run in progress, and sees everything a finished run wrote.
 * Nothing is cached here (the mount's timeouts are 0 and its I/O direct),
 * and nothing is trusted from the guest: an errno outside 1..4095 or a
 * malformed listing is EIO.
 *
 * Entries appear owned by the world's owner with the guest's mode bits,
 * so default_permissions keeps other users out.  A symlink whose target
 * is absolute, or climbs above the guest's root, reads back relative to
 * W/fs/ (sshfs's transform_symlinks), so that the host kernel, which
 * follows it, stays in the world. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/guest.h"
#include "backend/agent/proto.h"
#include "backend/util/clock.h"

/* One request; its body (pointing into *reply, freed by the caller) or
 * -errno, the guest's own included. */
static int call(struct runtime *rt, struct entity *e, struct fs_req *r, uint8_t **reply, const uint8_t **body,
		size_t *body_len)
{
	size_t len = 0;
	int rc;

	*reply = NULL;
	rc = runtime_fs(rt, e, r, reply, &len);
	return rc < 0 ? rc : fs_reply_status(*reply, len, body, body_len);
}

/* A request that answers with nothing to keep. */
static int call_simple(struct runtime *rt, struct entity *e, struct fs_req *r)
{
	uint8_t *reply;
	const uint8_t *body;
	size_t n;
	int rc = call(rt, e, r, &reply, &body, &n);

	free(reply);
	return rc;
}

static struct fs_req on(uint8_t op, const char *path)
{
	return (struct fs_req){ .op = op, .path = path, .path_len = strlen(path) };
}

static void stat_of(const struct entity *e, const struct fs_attr *a, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_mode = a->mode;
	st->st_nlink = a->nlink ? a->nlink : 1;
	st->st_uid = e->uid;
	st->st_gid = e->gid;
	st->st_size = (off_t)a->size;
	st->st_blocks = (blkcnt_t)((a->size + 511) / 512);
	/* The size a program should read and write in (cp, dd, stdio take
	 * it): one request of the file protocol, one round trip. */
	st->st_blksize = FS_IO_MAX;
	st->st_mtim.tv_sec = (time_t)(a->mtime_ns / 1000000000u);
	st->st_mtim.tv_nsec = (long)(a->mtime_ns % 1000000000u);
	st->st_atim = st->st_mtim;
	st->st_ctim.tv_sec = (time_t)(a->ctime_ns / 1000000000u);
	st->st_ctim.tv_nsec = (long)(a->ctime_ns % 1000000000u);
}

/* ---- attributes, kept a moment ----
 * ls -l, find and tar stat(2) every name they list, and the kernel looks
 * up every directory on the way to it again (the mount's entry timeout is
 * 0): one round trip each to the guest (ls -l of 1,000 files took 7 s
 * under TCG).  So the attributes a listing brought, and those of the
 * last stats, are kept, and a stat answers from them while the world's
 * files_gen is unchanged (no run started or ended and nothing changed
 * through fs/ since: a run waits for nothing here, and any change made
 * through worldfs is seen at once) and for LISTING_TTL_MS at most (what
 * the guest's background jobs change shows after that). */
#define LISTINGS 8
#define LISTING_TTL_MS 1000
#define LISTING_MAX 100000  /* entries kept of one listing */

struct named_attr {
	char *name;
	struct fs_attr a;
};

struct listing {
	char id[sizeof(((struct entity *)0)->id)];
	char *dir;
	uint64_t gen;
	double at;
	struct named_attr *v;
	size_t n, cap;
};

static struct listing listings[LISTINGS];
static pthread_mutex_t listings_lock = PTHREAD_MUTEX_INITIALIZER;

/* The last stats, one slot per hash of the path (listings_lock). */
#define STATS 512
static struct stat_slot {
	char id[sizeof(((struct entity *)0)->id)];
	char *path;
	uint64_t gen;
	double at;
	struct fs_attr a;
} stats[STATS];

static unsigned path_slot(const char *id, const char *path)
{
	uint32_t h = 2166136261u;

	for (const char *p = id; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	for (const char *p = path; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return h % STATS;
}

static void stat_keep(struct entity *e, const char *path, uint64_t gen, double at, const struct fs_attr *a)
{
	struct stat_slot *s = &stats[path_slot(e->id, path)];
	char *p = strdup(path);

	if (!p)
		return;
	pthread_mutex_lock(&listings_lock);
	free(s->path);
	snprintf(s->id, sizeof(s->id), "%s", e->id);
	s->path = p;
	s->gen = gen;
	s->at = at;
	s->a = *a;
	pthread_mutex_unlock(&listings_lock);
}

static void listing_clear(struct listing *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].name);
	free(l->v);
	free(l->dir);
	memset(l, 0, sizeof(*l));
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct named_attr *)a)->name, ((const struct named_attr *)b)->name);
}

/* The directory part of path ("/" for "/x"), its length. */
static size_t dir_len(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash == path ? 1 : (size_t)(slash - path);
}

/* Keep l (taken over) as the listing of its dir, in place of the oldest. */
static void listing_keep(struct listing *l)
{
	double now = now_ms();
	size_t oldest = 0;

	if (l->n)  /* qsort takes no NULL, even for 0 elements */
		qsort(l->v, l->n, sizeof(*l->v), by_name);
	pthread_mutex_lock(&listings_lock);
	/* What no stat may use any more holds no memory. */
	for (size_t i = 0; i < LISTINGS; i++)
		if (listings[i].dir && now - listings[i].at > LISTING_TTL_MS)
			listing_clear(&listings[i]);
	for (size_t i = 0; i < LISTINGS; i++) {
		if (!listings[i].dir || (strcmp(listings[i].id, l->id) == 0 && strcmp(listings[i].dir, l->dir) == 0)) {
			oldest = i;
			break;
		}
		if (listings[i].at < listings[oldest].at)
			oldest = i;
	}
	listing_clear(&listings[oldest]);
	listings[oldest] = *l;
	pthread_mutex_unlock(&listings_lock);
	memset(l, 0, sizeof(*l));
}

/* path's attributes from a stat or listing still valid at generation gen
 * and time now; false if none has them. */
static bool listing_find(struct entity *e, const char *path, uint64_t gen, double now, struct fs_attr *a)
{
	struct stat_slot *s = &stats[path_slot(e->id, path)];
	size_t dl = dir_len(path);
	bool found = false;

	pthread_mutex_lock(&listings_lock);
	if (s->path && s->gen == gen && now - s->at <= LISTING_TTL_MS && strcmp(s->id, e->id) == 0 &&
	    strcmp(s->path, path) == 0) {
		*a = s->a;
		found = true;
	}
	/* "/" has no listing that holds it. */
	if (!path[dl] || !path[dl + (dl > 1)]) {
		pthread_mutex_unlock(&listings_lock);
		return found;
	}
	for (size_t i = 0; i < LISTINGS && !found; i++) {
		struct listing *l = &listings[i];
		struct named_attr key = { .name = (char *)path + dl + (dl > 1) }, *hit;

		if (!l->dir || l->gen != gen || now - l->at > LISTING_TTL_MS || strcmp(l->id, e->id) != 0 ||
		    strlen(l->dir) != dl || strncmp(l->dir, path, dl) != 0)
			continue;
		if (l->n && (hit = bsearch(&key, l->v, l->n, sizeof(*l->v), by_name))) {
			*a = hit->a;
			found = true;
		}
	}
	pthread_mutex_unlock(&listings_lock);
	return found;
}

/* Add name's attributes to l; false when it holds enough (or no memory). */
static bool listing_add(struct listing *l, const char *name, const struct fs_attr *a)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		struct named_attr *v = cap <= LISTING_MAX ? realloc(l->v, cap * sizeof(*v)) : NULL;

		if (!v)
			return false;
		l->v = v;
		l->cap = cap;
	}
	if (!(l->v[l->n].name = strdup(name)))
		return false;
	l->v[l->n++].a = *a;
	return true;
}

int guest_getattr(struct runtime *rt, struct entity *e, const char *path, struct stat *st)
{
	struct fs_req r = on(FS_STAT, path);
	uint8_t *reply;
	const uint8_t *body;
	size_t n;
	struct fs_attr a;
	uint64_t gen = runtime_files_gen(rt, e);
	double at = now_ms();
	int rc;

	if (listing_find(e, path, gen, at, &a)) {
		stat_of(e, &a, st);
		return 0;
	}
	rc = call(rt, e, &r, &reply, &body, &n);
	if (!rc && n != FS_ATTR_LEN)
		rc = -EIO;
	if (!rc) {
		fs_attr_get(body, &a);
		stat_of(e, &a, st);
		stat_keep(e, path, gen, at, &a);
	}
	free(reply);
	return rc;
}

/* The most entries one listing takes from a guest: libfuse holds a whole
 * listing in memory, and a guest could page out names forever. */
#define GUEST_DIR_MAX 1000000

int guest_readdir(struct runtime *rt, struct entity *e, const char *path, void *buf, fuse_fill_dir_t fill)
{
	uint64_t cookie = 0;
	size_t count = 0;
	int rc = 0;
	struct listing keep = { .gen = runtime_files_gen(rt, e), .at = now_ms() };
	bool keeping = (keep.dir = strdup(path)) != NULL;

	if (keeping)
		snprintf(keep.id, sizeof(keep.id), "%s", e->id);
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	do {
		struct fs_req r = on(FS_READDIR, path);
		char name[FS_PATH_MAX + 1];
		const uint8_t *body;
		const char *nm;
		uint8_t *reply;
		size_t n, pos = 8, nl;
		struct fs_attr a;
		int k;

		r.off = cookie;
		rc = call(rt, e, &r, &reply, &body, &n);
		if (!rc && n < 8)
			rc = -EIO;
		if (!rc) {
			uint64_t next = proto_get_u64(body);

			/* A guest whose cookies do not advance would loop us. */
			rc = next && next <= cookie ? -EIO : 0;
			cookie = next;
			while (!rc && (k = fs_dirent_next(body, n, &pos, &nm, &nl, &a)) == 1) {
				struct stat st;

				memcpy(name, nm, nl);
				name[nl] = '\0';
				stat_of(e, &a, &st);
				if (++count > GUEST_DIR_MAX) {
					worldfs_log("%s: fs%s: more than %d entries: refused", e->id, path, GUEST_DIR_MAX);
					rc = -EIO;
				} else if (fill(buf, name, &st, 0, 0)) {
					rc = -ENOMEM;  /* libfuse could keep no more */
				} else if (keeping) {
					keeping = listing_add(&keep, name, &a);
				}
			}
			if (!rc && k < 0)
				rc = -EIO;
		}
		free(reply);
	} while (!rc && cookie);
	if (!rc && keeping)
		listing_keep(&keep);
	else
		listing_clear(&keep);
	return rc;
}

int guest_create(struct runtime *rt, struct entity *e, const char *path, mode_t mode, int flags)
{
	struct fs_req r = on(FS_CREATE, path);

	r.mode = mode & 07777;
	r.flags = ((flags & O_EXCL) ? FS_EXCL : 0) | ((flags & O_TRUNC) ? FS_TRUNC : 0);
	return call_simple(rt, e, &r);
}

int guest_read(struct runtime *rt, struct entity *e, const char *path, char *buf, size_t size, off_t off)
{
	struct fs_req r = on(FS_READ, path);
	uint8_t *reply;
	const uint8_t *body;
	size_t n;
	int rc;

	r.off = (uint64_t)off;
	r.len = (uint32_t)(size < FS_IO_MAX ? size : FS_IO_MAX);
	rc = call(rt, e, &r, &reply, &body, &n);
	if (!rc && n > r.len)
		rc = -EIO;  /* more than asked for */
	if (!rc) {
		memcpy(buf, body, n);
		rc = (int)n;
	}
	free(reply);
	return rc;
}

int guest_write(struct runtime *rt, struct entity *e, const char *path, const char *buf, size_t size, off_t off)
{
	struct fs_req r = on(FS_WRITE, path);
	uint8_t *reply;
	const uint8_t *body;
	size_t n;
	int rc;

	r.off = (uint64_t)off;
	r.data = (const uint8_t *)buf;
	r.data_len = size < FS_IO_MAX ? size : FS_IO_MAX;
	rc = call(rt, e, &r, &reply, &body, &n);
	if (!rc)
		rc = n == 4 && proto_get_u32(body) <= r.data_len ? (int)proto_get_u32(body) : -EIO;
	free(reply);
	return rc;
}

int guest_truncate(struct runtime *rt, struct entity *e, const char *path, off_t size)
{
	struct fs_req r = on(FS_TRUNCATE, path);

	r.off = (uint64_t)size;
	return call_simple(rt, e, &r);
}

int guest_mkdir(struct runtime *rt, struct entity *e, const char *path, mode_t mode)
{
	struct fs_req r = on(FS_MKDIR, path);

	r.mode = mode & 07777;
	return call_simple(rt, e, &r);
}

int guest_remove(struct runtime *rt, struct entity *e, const char *path, bool dir)
{
	struct fs_req r = on(dir ? FS_RMDIR : FS_UNLINK, path);

	return call_simple(rt, e, &r);
}

int guest_rename(struct runtime *rt, struct entity *e, const char *from, const char *to, unsigned flags)
{
	struct fs_req r = on(FS_RENAME, from);

	r.path2 = to;
	r.path2_len = strlen(to);
	r.flags = flags;
	return call_simple(rt, e, &r);
}

int guest_symlink(struct runtime *rt, struct entity *e, const char *target, const char *path)
{
	struct fs_req r = on(FS_SYMLINK, path);

	r.path2 = target;
	r.path2_len = strlen(target);
	if (r.path2_len == 0 || r.path2_len > FS_PATH_MAX)
		return r.path2_len ? -ENAMETOOLONG : -ENOENT;
	return call_simple(rt, e, &r);
}

int guest_chmod(struct runtime *rt, struct entity *e, const char *path, mode_t mode)
{
	struct fs_req r = on(FS_CHMOD, path);

	r.mode = mode & 07777;
	return call_simple(rt, e, &r);
}

static uint64_t ns_of(const struct timespec *t)
{
	if (t->tv_nsec == UTIME_NOW)
		return FS_TIME_NOW;
	if (t->tv_nsec == UTIME_OMIT)
		return FS_TIME_OMIT;
	return (uint64_t)t->tv_sec * 1000000000u + (uint64_t)t->tv_nsec;
}

int guest_utimens(struct runtime *rt, struct entity *e, const char *path, const struct timespec tv[2])
{
	struct fs_req r = on(FS_UTIMENS, path);
	struct timespec now[2] = { { .tv_nsec = UTIME_NOW }, { .tv_nsec = UTIME_NOW } };

	if (!tv)
		tv = now;
	r.off = ns_of(&tv[0]);
	r.arg = ns_of(&tv[1]);
	return call_simple(rt, e, &r);
}

/* Append component c (n bytes) to the normalized absolute path out,
 * applying "." and ".." (which stops at the root: *clamped then). */
static void push(char *out, const char *c, size_t n, bool *clamped)
{
	size_t len = strlen(out);

	if (n == 0 || (n == 1 && c[0] == '.'))
		return;
	if (n == 2 && c[0] == '.' && c[1] == '.') {
		char *slash = strrchr(out, '/');

		if (len <= 1)
			*clamped = true;
		else
			*(slash == out ? slash + 1 : slash) = '\0';
		return;
	}
	if (len + 1 + n >= FS_PATH_MAX + 1)
		return;
	if (len > 1)
		out[len++] = '/';
	memcpy(out + len, c, n);
	out[len + n] = '\0';
}

static void walk(char *out, const char *p, bool *clamped)
{
	while (*p) {
		size_t n = strcspn(p, "/");

		push(out, p, n, clamped);
		p += n;
		while (*p == '/')
			p++;
	}
}

void guest_link_target(const char *link, const char *target, char *out, size_t size)
{
	char dir[FS_PATH_MAX + 1] = "/", abs[FS_PATH_MAX + 1] = "/";
	bool clamped = false, ignored = false;
	size_t depth = 0, at = 0;
	const char *slash;

	/* The link's directory, normalized. */
	slash = strrchr(link, '/');
	if (slash && slash > link) {
		char tmp[FS_PATH_MAX + 1];
		size_t n = (size_t)(slash - link) < FS_PATH_MAX ? (size_t)(slash - link) : FS_PATH_MAX;

		memcpy(tmp, link, n);
		tmp[n] = '\0';
		walk(dir, tmp, &ignored);
	}
	if (target[0] != '/') {
		strcpy(abs, dir);
		walk(abs, target, &clamped);
		if (!clamped) {  /* stays inside: shown as written */
			snprintf(out, size, "%s", target);
			return;
		}
	} else {
		walk(abs, target, &clamped);
	}
	for (const char *p = dir + 1; *p; depth++) {
		p += strcspn(p, "/");
		while (*p == '/')
			p++;
	}
	out[0] = '\0';
	for (size_t i = 0; i < depth && at + 3 < size; i++)
		at += (size_t)snprintf(out + at, size - at, "../");
	if (strcmp(abs, "/") == 0) {
		if (at)
			out[at - 1] = '\0';  /* "../.." */
		else
			snprintf(out, size, ".");
		return;
	}
	snprintf(out + at, size - at, "%s", abs + 1);
}

int guest_readlink(struct runtime *rt, struct entity *e, const char *path, char *buf, size_t size)
{
	struct fs_req r = on(FS_READLINK, path);
	char target[FS_PATH_MAX + 1];
	uint8_t *reply;
	const uint8_t *body;
	size_t n;
	int rc = call(rt, e, &r, &reply, &body, &n);

	if (!rc && (n == 0 || n > FS_PATH_MAX || memchr(body, '\0', n)))
		rc = -EIO;
	if (!rc) {
		memcpy(target, body, n);
		target[n] = '\0';
		guest_link_target(path, target, buf, size);
	}
	free(reply);
	return rc;
}
