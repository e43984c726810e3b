/* fsdiff.c: see fsdiff.h.
 *
 * A manifest is a tree in one array: each directory's children lie side
 * by side, sorted by name, and the directory points at them; names live
 * in one arena.  Only indices are kept, so the arrays may move while a
 * walk appends.  A walk holds one directory open at a time (its entries
 * are read, then it is closed, then its subdirectories are walked), so
 * its depth is bounded by the path length, not by the open-file limit;
 * each directory is opened from the layer's root without following a
 * symlink or crossing a mount, so a guest that swaps a directory for a
 * symlink mid-walk only loses that directory from the listing.
 *
 * The diff walks base and now side by side, directory by directory.  On
 * each side a path is its upper entry if it has one (a whiteout: absent),
 * else the lower one if the lower directory shows through there.  Lower
 * entries that neither side's upper layer names are the same on both
 * sides and are never looked at, unless the lower directory shows through
 * on one side only (a directory removed or made opaque): then it is
 * listed. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "backend/agent/fsdiff.h"
#include "backend/agent/fsproto.h"
#include "backend/util/clock.h"
#include "backend/util/io.h"
#include "backend/util/strbuf.h"

#define NONE UINT32_MAX
#define F_HASHED 1u   /* hash holds the content's (a file) or the target's (a symlink) */
#define F_OPAQUE 2u   /* an overlay directory that hides the lower one */

struct ent {
	uint64_t size;    /* a device's: its rdev */
	uint64_t ino, mtime, ctime, hash;
	uint32_t name;    /* offset in names */
	uint32_t mode, uid, gid;
	uint32_t first, n;  /* a directory's children */
	uint32_t flags;
};

struct fsd_manifest {
	struct ent *v;
	size_t n, cap;
	struct strbuf names;
	uint32_t root[FSD_LAYERS_MAX];
};

static const char *name_of(const struct fsd_manifest *m, uint32_t i)
{
	return m->names.buf + m->v[i].name;
}

void fsd_free(struct fsd_manifest *m)
{
	if (!m)
		return;
	free(m->v);
	strbuf_release(&m->names);
	free(m);
}

size_t fsd_count(const struct fsd_manifest *m)
{
	return m ? m->n : 0;
}

/* ---- hashing: a 64-bit mix of 8-byte words (not a cryptographic hash:
 * it tells the guest's own files apart, for the guest's own listing) ---- */

#define MIX 0x9e3779b97f4a7c15ull

static uint64_t mix(uint64_t h, uint64_t w)
{
	h ^= w * 0xff51afd7ed558ccdull;
	h = (h << 29 | h >> 35) * MIX;
	return h;
}

static uint64_t hash_bytes(uint64_t h, const unsigned char *p, size_t n)
{
	uint64_t w;

	for (; n >= 8; p += 8, n -= 8) {
		memcpy(&w, p, 8);
		h = mix(h, w);
	}
	w = 0;
	memcpy(&w, p, n);
	return mix(h, w ^ (uint64_t)n << 56);
}

static uint64_t hash_final(uint64_t h, uint64_t total)
{
	h = mix(h, total);
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	return h ^ (h >> 29);
}

/* The content hash of dfd/name, a regular file of at most FSD_HASH_MAX
 * bytes with inode ino; false if it is not (any more). */
static bool hash_file(int dfd, const char *name, uint64_t ino, uint64_t *out)
{
	static unsigned char buf[65536];
	uint64_t h = MIX, total = 0;
	struct stat st;
	ssize_t r;
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

	if (fd < 0)
		return false;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_ino != ino || st.st_size > FSD_HASH_MAX) {
		close(fd);
		return false;
	}
	while ((r = read(fd, buf, sizeof(buf))) > 0 && total <= FSD_HASH_MAX) {
		h = hash_bytes(h, buf, (size_t)r);
		total += (uint64_t)r;
	}
	close(fd);
	if (r < 0 || total > FSD_HASH_MAX)
		return false;
	*out = hash_final(h, total);
	return true;
}

static bool hash_link(int dfd, const char *name, uint64_t *out)
{
	char target[FS_PATH_MAX + 1];
	ssize_t n = readlinkat(dfd, name, target, sizeof(target));

	if (n < 0 || (size_t)n > FS_PATH_MAX)
		return false;
	*out = hash_final(hash_bytes(MIX, (const unsigned char *)target, (size_t)n), (uint64_t)n);
	return true;
}

/* ---- paths ---- */

/* A path below a layer's root, without a leading '/' ("" is the root). */
struct path {
	char s[FS_PATH_MAX + NAME_MAX + 2];
	size_t len;
};

/* Append "/name" (or "name" at the root); the old length, or -1 if the
 * guest path would be longer than FS_PATH_MAX. */
static long path_push(struct path *p, const struct fsd_layer *l, const char *name)
{
	size_t old = p->len, k = strlen(name), at = strlen(l->at);

	if (at + 1 + old + 1 + k > FS_PATH_MAX)
		return -1;
	if (old)
		p->s[p->len++] = '/';
	memcpy(p->s + p->len, name, k + 1);
	p->len += k;
	return (long)old;
}

static void path_pop(struct path *p, long old)
{
	p->len = (size_t)old;
	p->s[old] = '\0';
}

/* The guest's path of p: l->at joined with p. */
static int guest_path(const struct fsd_layer *l, const struct path *p, struct strbuf *out)
{
	strbuf_reset(out);
	if (strbuf_addstr(out, l->at) < 0)
		return -ENOMEM;
	if (!p->len)
		return 0;
	if (out->buf[out->len - 1] != '/' && strbuf_add(out, "/", 1) < 0)
		return -ENOMEM;
	return strbuf_add(out, p->s, p->len);
}

static bool skipped(const struct fsd_layer *l, const struct path *p)
{
	size_t at = strlen(l->at);

	if (!l->skip)
		return false;
	for (const char *const *s = l->skip; *s; s++) {
		const char *g = *s;
		/* g is l->at, then '/' unless l->at ends in one, then p */
		if (strncmp(g, l->at, at) != 0)
			continue;
		g += at;
		if (at && l->at[at - 1] != '/') {
			if (*g != '/')
				continue;
			g++;
		}
		if (strcmp(g, p->s) == 0)
			return true;
	}
	return false;
}

/* Directory p below root, opened without following a symlink or crossing
 * a mount point on the way. */
static int open_dir(int root, const struct path *p)
{
	return io_openat2(root, p->len ? p->s : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0,
			  RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV);
}

static uint64_t ns(const struct timespec *t)
{
	return (uint64_t)t->tv_sec * 1000000000u + (uint64_t)t->tv_nsec;
}

static void ent_of(struct ent *e, const struct stat *st)
{
	e->mode = st->st_mode;
	e->uid = st->st_uid;
	e->gid = st->st_gid;
	e->size = S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) ? (uint64_t)st->st_rdev : (uint64_t)st->st_size;
	e->ino = st->st_ino;
	e->mtime = ns(&st->st_mtim);
	e->ctime = ns(&st->st_ctim);
	e->first = NONE;
	e->n = 0;
	e->flags = 0;
	e->hash = 0;
}

static bool whiteout(const struct fsd_layer *l, const struct ent *e)
{
	return l->lower_fd >= 0 && S_ISCHR(e->mode) && e->size == 0;
}

/* ---- taking a manifest ---- */

struct walk {
	struct fsd_manifest *m;
	const struct fsd_manifest *prev;
	const struct fsd_layer *l;
	dev_t dev;
	double deadline;
	struct path p;
};

static int add(struct fsd_manifest *m, const char *name, const struct stat *st)
{
	struct ent *e;

	if (m->n >= FSD_ENTRIES_MAX)
		return -E2BIG;
	if (m->n == m->cap) {
		size_t cap = m->cap ? 2 * m->cap : 256;
		struct ent *v = realloc(m->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		m->v = v;
		m->cap = cap;
	}
	e = &m->v[m->n];
	ent_of(e, st);
	e->name = (uint32_t)m->names.len;
	if (strbuf_add(&m->names, name, strlen(name) + 1) < 0)
		return -ENOMEM;
	m->n++;
	return 0;
}

/* The child of directory dir in m named name, or NONE. */
static uint32_t child(const struct fsd_manifest *m, uint32_t dir, const char *name)
{
	size_t lo, hi;

	if (!m || dir == NONE || m->v[dir].first == NONE)
		return NONE;
	lo = m->v[dir].first;
	hi = lo + m->v[dir].n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, name_of(m, (uint32_t)mid));

		if (c == 0)
			return (uint32_t)mid;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NONE;
}

static int by_name(const void *a, const void *b, void *names)
{
	return strcmp((const char *)names + ((const struct ent *)a)->name,
		      (const char *)names + ((const struct ent *)b)->name);
}

/* e's hash: prev's if prev holds the same file unchanged, else read. */
static void hash_ent(struct walk *w, int dfd, struct ent *e, const char *name, uint32_t prev_dir)
{
	uint32_t k = child(w->prev, prev_dir, name);

	if (k != NONE) {
		const struct ent *o = &w->prev->v[k];

		if ((o->flags & F_HASHED) && o->mode == e->mode && o->ino == e->ino && o->size == e->size &&
		    o->mtime == e->mtime && o->ctime == e->ctime) {
			e->hash = o->hash;
			e->flags |= F_HASHED;
			return;
		}
	}
	/* An empty file's hash needs no open. */
	if (S_ISREG(e->mode) && e->size == 0) {
		e->hash = hash_final(MIX, 0);
		e->flags |= F_HASHED;
		return;
	}
	if ((S_ISREG(e->mode) && e->size <= FSD_HASH_MAX && hash_file(dfd, name, e->ino, &e->hash)) ||
	    (S_ISLNK(e->mode) && hash_link(dfd, name, &e->hash)))
		e->flags |= F_HASHED;
}

/* Fill directory entry dir (w->p) with its children, then walk those
 * that are directories.  prev_dir: the same directory in w->prev. */
static int walk_dir(struct walk *w, uint32_t dir, uint32_t prev_dir, bool hash)
{
	struct fsd_manifest *m = w->m;
	uint32_t first = (uint32_t)m->n;
	struct dirent *de;
	struct stat st;
	char opaque;
	DIR *d;
	int fd, r = 0;

	if (now_ms() > w->deadline)
		return -ETIMEDOUT;
	fd = open_dir(w->l->fd, &w->p);
	if (fd < 0)
		return fd == -ENOMEM ? fd : 0;  /* gone, or swapped for a symlink or a mount: not listed */
	if (w->l->lower_fd >= 0 && fgetxattr(fd, "trusted.overlay.opaque", &opaque, 1) == 1 && opaque == 'y')
		m->v[dir].flags |= F_OPAQUE;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	while (r == 0 && (de = readdir(d))) {
		long old;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		/* One directory may hold most of the entries. */
		if ((m->n & 1023) == 0 && now_ms() > w->deadline) {
			r = -ETIMEDOUT;
			break;
		}
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != w->dev)
			continue;
		if ((old = path_push(&w->p, w->l, de->d_name)) < 0)
			continue;
		if (!skipped(w->l, &w->p) && (r = add(m, de->d_name, &st)) == 0 && hash)
			hash_ent(w, dirfd(d), &m->v[m->n - 1], de->d_name, prev_dir);
		path_pop(&w->p, old);
	}
	closedir(d);
	if (r < 0)
		return r;
	m->v[dir].first = first;
	m->v[dir].n = (uint32_t)m->n - first;
	if (m->n > first)
		qsort_r(m->v + first, m->n - first, sizeof(*m->v), by_name, m->names.buf);
	for (uint32_t i = first; r == 0 && i < first + m->v[dir].n; i++) {
		long old;

		if (!S_ISDIR(m->v[i].mode) || (old = path_push(&w->p, w->l, name_of(m, i))) < 0)
			continue;
		r = walk_dir(w, i, child(w->prev, prev_dir, name_of(m, i)), hash);
		path_pop(&w->p, old);
	}
	return r;
}

static int take(const struct fsd_layer *l, size_t n, const struct fsd_manifest *prev, bool hash,
		struct fsd_manifest **out)
{
	struct fsd_manifest *m = calloc(1, sizeof(*m));
	struct walk *w = malloc(sizeof(*w));
	int r = 0;

	*out = NULL;
	if (!m || !w || n > FSD_LAYERS_MAX) {
		free(m);
		free(w);
		return n > FSD_LAYERS_MAX ? -EINVAL : -ENOMEM;
	}
	w->m = m;
	w->prev = prev;
	w->deadline = now_ms() + FSD_BUDGET_MS;
	for (size_t i = 0; r == 0 && i < n; i++) {
		struct stat st;

		m->root[i] = NONE;
		if (fstat(l[i].fd, &st) < 0 || !S_ISDIR(st.st_mode))
			continue;
		w->l = &l[i];
		w->dev = st.st_dev;
		w->p.len = 0;
		w->p.s[0] = '\0';
		m->root[i] = (uint32_t)m->n;
		if ((r = add(m, "", &st)) == 0)
			r = walk_dir(w, m->root[i], prev ? prev->root[i] : NONE, hash);
	}
	free(w);
	if (r < 0) {
		fsd_free(m);
		return r;
	}
	*out = m;
	return 0;
}

int fsd_take(const struct fsd_layer *l, size_t n, const struct fsd_manifest *prev, struct fsd_manifest **out)
{
	return take(l, n, prev, true, out);
}

/* ---- the diff ---- */

enum from { ABSENT, BASE, NOW, LOWER };

/* A path on one side: its entry, and where the entry is. */
struct side_ent {
	enum from from;
	uint32_t idx;     /* BASE, NOW: in the manifest */
	struct ent e;     /* a copy (LOWER: read now) */
};

/* One side of a directory: its entry in the side's manifest (NONE: no
 * upper directory there) and whether the lower directory shows through. */
struct side {
	uint32_t dir;
	bool lower;
};

struct line {
	char status;
	char *path;
};

struct diff {
	const struct fsd_layer *l;
	const struct fsd_manifest *base, *now;
	double deadline;
	struct path p;
	struct strbuf gp;
	struct line *v;
	size_t n, cap;
};

static int emit(struct diff *d, char status)
{
	struct line *v;

	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 64;

		if (!(v = realloc(d->v, cap * sizeof(*v))))
			return -ENOMEM;
		d->v = v;
		d->cap = cap;
	}
	if (guest_path(d->l, &d->p, &d->gp) < 0 || !(d->v[d->n].path = strdup(d->gp.buf)))
		return -ENOMEM;
	d->v[d->n++].status = status;
	return 0;
}

/* The hash of x (d->p names it): stored (BASE), or read from the upper
 * (NOW) or lower (LOWER) tree. */
static bool side_hash(struct diff *d, const struct side_ent *x, uint64_t *h)
{
	struct path dir = d->p;
	char *slash = strrchr(dir.s, '/');
	const char *name = slash ? slash + 1 : dir.s;
	bool ok;
	int fd;

	if (x->from == BASE) {
		*h = x->e.hash;
		return x->e.flags & F_HASHED;
	}
	if (S_ISREG(x->e.mode) && x->e.size > FSD_HASH_MAX)
		return false;
	if (slash)
		*slash = '\0';
	dir.len = slash ? (size_t)(slash - dir.s) : 0;
	fd = open_dir(x->from == LOWER ? d->l->lower_fd : d->l->fd, &dir);
	if (fd < 0)
		return false;
	ok = S_ISREG(x->e.mode) ? hash_file(fd, name, x->e.ino, h) : hash_link(fd, name, h);
	close(fd);
	return ok;
}

/* 'A', 'D', 'M' or 0 for the path d->p, b before and n now. */
static char compare(struct diff *d, const struct side_ent *b, const struct side_ent *n)
{
	uint64_t hb, hn;

	if (b->from == ABSENT)
		return n->from == ABSENT ? 0 : 'A';
	if (n->from == ABSENT)
		return 'D';
	if (b->e.mode != n->e.mode || b->e.uid != n->e.uid || b->e.gid != n->e.gid)
		return 'M';
	if (S_ISDIR(b->e.mode))
		return 0;
	if (b->e.size != n->e.size)
		return 'M';
	if (!S_ISREG(b->e.mode) && !S_ISLNK(b->e.mode))
		return 0;
	if ((b->from == LOWER) == (n->from == LOWER) && b->e.ino == n->e.ino && b->e.mtime == n->e.mtime &&
	    b->e.ctime == n->e.ctime)
		return 0;
	if (!side_hash(d, b, &hb) || !side_hash(d, n, &hn))
		return 'M';
	return hb == hn ? 0 : 'M';
}

/* Child name of a side: its upper entry (a whiteout is absent), else the
 * lower entry lst (valid when have_lower) if the lower shows through. */
static void resolve(struct diff *d, const struct fsd_manifest *m, enum from from, struct side s,
		    const char *name, const struct stat *lst, bool have_lower, struct side_ent *x)
{
	uint32_t k = child(m, s.dir, name);

	x->from = ABSENT;
	if (k != NONE) {
		if (whiteout(d->l, &m->v[k]))
			return;
		x->from = from;
		x->idx = k;
		x->e = m->v[k];
	} else if (s.lower && have_lower) {
		x->from = LOWER;
		ent_of(&x->e, lst);
	}
}

/* The side of directory x for its children. */
static struct side below(const struct side_ent *x, struct side parent, bool lower_is_dir)
{
	struct side s = { NONE, false };

	if (x->from == ABSENT || !S_ISDIR(x->e.mode))
		return s;
	if (x->from == LOWER)
		return (struct side){ NONE, true };
	s.dir = x->idx;
	s.lower = parent.lower && lower_is_dir && !(x->e.flags & F_OPAQUE);
	return s;
}

struct item {
	const char *name;
	bool lower_is_dir;
	struct side_ent b, n;
};

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The lower directory's names (d->p), sorted. */
static int lower_names(struct diff *d, char ***out, size_t *n)
{
	char **v = NULL, **nv;
	size_t cap = 0;
	struct dirent *de;
	int fd = open_dir(d->l->lower_fd, &d->p);
	DIR *dir;

	*out = NULL;
	*n = 0;
	if (fd < 0)
		return 0;
	if (!(dir = fdopendir(fd))) {
		close(fd);
		return -ENOMEM;
	}
	while ((de = readdir(dir))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 64;
			if (!(nv = realloc(v, cap * sizeof(*v))))
				goto nomem;
			v = nv;
		}
		if (!(v[*n] = strdup(de->d_name)))
			goto nomem;
		(*n)++;
	}
	closedir(dir);
	if (*n)  /* qsort takes no NULL, even for 0 elements */
		qsort(v, *n, sizeof(*v), cmp_str);
	*out = v;
	return 0;
nomem:
	closedir(dir);
	while (*n)
		free(v[--*n]);
	free(v);
	return -ENOMEM;
}

static const char *next_name(const struct fsd_manifest *m, struct side s, uint32_t i)
{
	return s.dir != NONE && m->v[s.dir].first != NONE && i < m->v[s.dir].n ? name_of(m, m->v[s.dir].first + i)
									      : NULL;
}

static const char *least(const char *a, const char *b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	return strcmp(a, b) <= 0 ? a : b;
}

static int diff_dir(struct diff *d, struct side b, struct side n);

/* The directory d->p: its children as pairs (before, now), then each
 * compared and, where it can differ below, walked. */
static int diff_items(struct diff *d, struct side b, struct side n, struct item *it, size_t k)
{
	int r = 0;

	for (size_t i = 0; r == 0 && i < k; i++) {
		struct side cb, cn;
		char st;
		long old = path_push(&d->p, d->l, it[i].name);

		if (old < 0)
			continue;
		if (!skipped(d->l, &d->p)) {
			if ((st = compare(d, &it[i].b, &it[i].n)))
				r = emit(d, st);
			cb = below(&it[i].b, b, it[i].lower_is_dir);
			cn = below(&it[i].n, n, it[i].lower_is_dir);
			if (r == 0 && ((cb.dir != NONE && d->base->v[cb.dir].n) || (cn.dir != NONE && d->now->v[cn.dir].n) ||
				       cb.lower != cn.lower))
				r = diff_dir(d, cb, cn);
		}
		path_pop(&d->p, old);
	}
	return r;
}

static int diff_dir(struct diff *d, struct side b, struct side n)
{
	char **lower = NULL;
	size_t nlower = 0, k = 0, cap = 0;
	uint32_t ib = 0, in = 0, il = 0;
	struct item *it = NULL, *nit;
	int lfd = -1, r = 0;
	const char *x;

	if (now_ms() > d->deadline)
		return -ETIMEDOUT;
	/* The lower names matter only where the lower shows through on one side. */
	if (b.lower != n.lower && (r = lower_names(d, &lower, &nlower)) < 0)
		return r;
	if (b.lower || n.lower)
		lfd = open_dir(d->l->lower_fd, &d->p);
	while ((x = least(least(next_name(d->base, b, ib), next_name(d->now, n, in)), il < nlower ? lower[il] : NULL))) {
		struct stat lst;
		bool have_lower = false;

		if ((k & 1023) == 1023 && now_ms() > d->deadline) {
			r = -ETIMEDOUT;
			break;
		}
		if (k == cap) {
			cap = cap ? 2 * cap : 32;
			if (!(nit = realloc(it, cap * sizeof(*it)))) {
				r = -ENOMEM;
				break;
			}
			it = nit;
		}
		it[k].name = x;
		if (lfd >= 0 && fstatat(lfd, x, &lst, AT_SYMLINK_NOFOLLOW) == 0)
			have_lower = true;
		it[k].lower_is_dir = have_lower && S_ISDIR(lst.st_mode);
		resolve(d, d->base, BASE, b, x, &lst, have_lower, &it[k].b);
		resolve(d, d->now, NOW, n, x, &lst, have_lower, &it[k].n);
		k++;
		/* Step every list past x. */
		if (next_name(d->base, b, ib) && strcmp(next_name(d->base, b, ib), x) == 0)
			ib++;
		if (next_name(d->now, n, in) && strcmp(next_name(d->now, n, in), x) == 0)
			in++;
		if (il < nlower && strcmp(lower[il], x) == 0)
			il++;
	}
	if (lfd >= 0)
		close(lfd);
	/* No directory stays open below this point: the walk's depth is not
	 * bounded by open files. */
	if (r == 0)
		r = diff_items(d, b, n, it, k);
	free(it);
	for (size_t i = 0; i < nlower; i++)
		free(lower[i]);
	free(lower);
	return r;
}

static int by_path(const void *a, const void *b)
{
	return strcmp(((const struct line *)a)->path, ((const struct line *)b)->path);
}

/* path as git writes it: as is, or quoted with C escapes when it holds a
 * control character, '"' or '\'. */
static int put_path(struct strbuf *out, const char *path)
{
	const unsigned char *p = (const unsigned char *)path;
	bool plain = true;
	int r = 0;

	for (; *p; p++)
		if (*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\')
			plain = false;
	if (plain)
		return strbuf_addstr(out, path);
	r |= strbuf_add(out, "\"", 1);
	for (p = (const unsigned char *)path; *p; p++) {
		switch (*p) {
		case '\n': r |= strbuf_add(out, "\\n", 2); break;
		case '\t': r |= strbuf_add(out, "\\t", 2); break;
		case '"': r |= strbuf_add(out, "\\\"", 2); break;
		case '\\': r |= strbuf_add(out, "\\\\", 2); break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				r |= strbuf_addf(out, "\\%03o", *p);
			else
				r |= strbuf_add(out, p, 1);
		}
	}
	r |= strbuf_add(out, "\"", 1);
	return r ? -ENOMEM : 0;
}

int fsd_diff(const struct fsd_layer *l, size_t n, const struct fsd_manifest *base, char **text, size_t *len)
{
	struct fsd_manifest *now = NULL;
	struct strbuf out = STRBUF_INIT;
	struct diff *d;
	int r;

	*text = NULL;
	*len = 0;
	if ((r = take(l, n, NULL, false, &now)) < 0)
		return r;
	if (!(d = calloc(1, sizeof(*d)))) {
		fsd_free(now);
		return -ENOMEM;
	}
	d->base = base;
	d->now = now;
	d->deadline = now_ms() + FSD_BUDGET_MS;
	for (size_t i = 0; r == 0 && i < n; i++) {
		/* An overlay's lower root shows through on both sides. */
		bool lower = l[i].lower_fd >= 0;
		struct side b = { base->root[i], lower && base->root[i] != NONE },
			    s = { now->root[i], lower && now->root[i] != NONE };

		d->l = &l[i];
		d->p.len = 0;
		d->p.s[0] = '\0';
		r = diff_dir(d, b, s);
	}
	if (r == 0) {
		if (d->n)  /* qsort takes no NULL, even for 0 elements */
			qsort(d->v, d->n, sizeof(*d->v), by_path);
		for (size_t i = 0; r == 0 && i < d->n; i++) {
			if (strbuf_add(&out, &d->v[i].status, 1) < 0 || strbuf_add(&out, "\t", 1) < 0 ||
			    put_path(&out, d->v[i].path) < 0 || strbuf_add(&out, "\n", 1) < 0)
				r = -ENOMEM;
		}
	}
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i].path);
	free(d->v);
	strbuf_release(&d->gp);
	free(d);
	fsd_free(now);
	if (r < 0) {
		strbuf_release(&out);
		return r;
	}
	if (!out.buf && strbuf_grow(&out, 1) < 0)
		return -ENOMEM;
	*text = strbuf_detach(&out, len);
	return 0;
}
