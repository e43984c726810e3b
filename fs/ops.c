/* ops.c: the FUSE face.  Paths become nodes (node.c: lookup, list, stat,
 * render); every change is one runtime call (runtime.h).  It takes no tree
 * lock and reads no entity: only its own handles' locks.  Errors are
 * -errno, right after the failing call, with a log line for bad input. */
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "fs/node.h"
#include "fs/guest.h"
#include "fs/ops.h"
#include "backend/agent/fsproto.h"
#include "backend/util/strbuf.h"

struct handle {
	struct node n;
	char *path;          /* as opened, for the log (flush and release get none) */
	const char *guest;   /* NODE_GUEST: the guest path, in path */
	pthread_mutex_t lock;
	char *data;          /* what reads return: content at open, or a run's stdout */
	size_t len;
	struct strbuf code;  /* exec: code written and not yet run */
	struct strbuf value; /* value files: the bytes written on this descriptor */
	bool pending;        /* value holds bytes not applied yet (no newline so far) */
	off_t write_end;     /* exec: file offset after the last write */
	off_t data_base;     /* exec: file offset at which the run's stdout starts */
	bool created;        /* balance made by this create(); undone if its first write fails */
	bool written;
};

static struct runtime *rt_of(void)
{
	return fuse_get_context()->private_data;
}

static struct handle *handle_of(struct fuse_file_info *fi)
{
	return (struct handle *)(uintptr_t)fi->fh;
}

/* The node at path, as the calling uid sees it. */
static int lookup(struct runtime *rt, const char *path, struct node *n)
{
	return node_lookup(rt, path, fuse_get_context()->uid, n);
}

/* Split "/a/b/c" into its directory "/a/b" and name "c" (copies). */
static int split(const char *path, char **dir, char **name)
{
	char *d = strdup(path), *n = strdup(path);

	if (!d || !n) {
		free(d);
		free(n);
		return -ENOMEM;
	}
	*dir = strdup(dirname(d));
	*name = strdup(basename(n));
	free(d);
	free(n);
	if (!*dir || !*name) {
		free(*dir);
		free(*name);
		return -ENOMEM;
	}
	return 0;
}

static int wfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	if (!path) {  /* fstat(2) of an open file (nullpath_ok: see wfs_init) */
		struct handle *h = handle_of(fi);

		if (h->n.type == NODE_GUEST)
			return guest_getattr(rt, h->n.e, h->guest, st);
		return node_stat(rt, &h->n, st);
	}
	err = lookup(rt, path, &n);
	if (err)
		return err;
	/* W/fs itself is the world's (0700, its owner's), whatever the guest
	 * root's mode or the backend: below it, everything is the guest's. */
	if (n.type == NODE_GUEST && strcmp(n.guest, "/") != 0)
		err = guest_getattr(rt, n.e, n.guest, st);
	else
		err = node_stat(rt, &n, st);
	node_release(rt, &n);
	return err;
}

struct dir_fill {
	void *buf;
	fuse_fill_dir_t fill;
};

static void dir_fill(void *ctx, const char *name)
{
	struct dir_fill *d = ctx;

	d->fill(d->buf, name, NULL, 0, 0);
}

static int wfs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		       struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	struct runtime *rt = rt_of();
	struct dir_fill d = { buf, fill };
	struct node n;
	int err;

	(void)off;
	(void)flags;
	err = lookup(rt, path ? path : (const char *)(uintptr_t)fi->fh, &n);
	if (err)
		return err;
	if (n.type == NODE_GUEST) {
		err = guest_readdir(rt, n.e, n.guest, buf, fill);
	} else {
		fill(buf, ".", NULL, 0, 0);
		fill(buf, "..", NULL, 0, 0);
		err = node_list(rt, &n, dir_fill, &d);
	}
	node_release(rt, &n);
	return err;
}

/* With nullpath_ok readdir gets no path: it finds the directory by the
 * path it was opened by (the mount's own directories are never renamed;
 * one in W/fs/ renamed while open lists what is at its old path). */
static int wfs_opendir(const char *path, struct fuse_file_info *fi)
{
	char *copy = strdup(path);

	if (!copy)
		return -ENOMEM;
	fi->fh = (uint64_t)(uintptr_t)copy;
	return 0;
}

static int wfs_releasedir(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	free((char *)(uintptr_t)fi->fh);
	return 0;
}

static int wfs_mkdir(const char *path, mode_t mode)
{
	struct runtime *rt = rt_of();
	struct fuse_context *ctx = fuse_get_context();
	char *dir, *name;
	struct node n;
	int err;

	/* Anything already there, a fixed file included, exists. */
	if (lookup(rt, path, &n) == 0) {
		err = n.type == NODE_GUEST ? guest_mkdir(rt, n.e, n.guest, mode) : -EEXIST;
		node_release(rt, &n);
		return err;
	}
	err = split(path, &dir, &name);
	if (err)
		return err;
	err = lookup(rt, dir, &n);
	if (err)
		goto out;
	switch (n.type) {
	case NODE_ROOT:
		err = runtime_create_world(rt, name, ctx->uid, ctx->gid);
		break;
	case NODE_ENTITY_DIR:
		err = runtime_branch(rt, n.e, name, ctx->uid, ctx->gid);
		break;
	case NODE_SNAPSHOT_DIR:
		err = runtime_snapshot(rt, n.e, name, ctx->uid, ctx->gid);
		break;
	case NODE_META_DIR:
	case NODE_BALANCE_DIR:
		err = -EPERM;
		break;
	default:
		err = -ENOTDIR;
	}
	if (err == -EINVAL && name_check(name) < 0)
		worldfs_log("mkdir %s: invalid name (1-64 of [A-Za-z0-9._-], no leading '.', not a file name)", path);
	else if (err && err != -EEXIST)
		worldfs_log("mkdir %s: %s", path, strerror(-err));
	node_release(rt, &n);
out:
	free(dir);
	free(name);
	return err;
}

static int wfs_rmdir(const char *path)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	err = lookup(rt, path, &n);
	if (err)
		return err;
	switch (n.type) {
	case NODE_GUEST:
		err = guest_remove(rt, n.e, n.guest, true);
		break;
	case NODE_ENTITY_DIR:
		err = runtime_remove(rt, n.e);
		if (err == -ENOTEMPTY)
			worldfs_log("rmdir %s: live verses below it, or a verse or snapshot being made", path);
		break;
	case NODE_ROOT:
		err = -EBUSY;
		break;
	case NODE_META_DIR:
	case NODE_SNAPSHOT_DIR:
	case NODE_BALANCE_DIR:
		err = -EPERM;
		break;
	default:
		err = -ENOTDIR;
	}
	node_release(rt, &n);
	return err;
}

static bool writable(const struct node *n)
{
	return (node_mode(n) & 0200) != 0;
}

/* ---- readahead ----
 * A guest file is read through the page cache in readahead's pieces:
 * FUSE's bdi starts at 128 KiB (8 round trips to the guest per MiB).  The
 * mount's own bdi is raised to FS_IO_MAX, once, when the first guest file
 * is opened (the INIT answer, which lowers it to what libfuse asked, is
 * long past then).  Not root, or no sysfs: it stays as it was. */
static char bdi_path[96];
static pthread_once_t bdi_once = PTHREAD_ONCE_INIT;

void ops_set_device(const char *majmin)
{
	snprintf(bdi_path, sizeof(bdi_path), "/sys/class/bdi/%s/read_ahead_kb", majmin);
}

static void bdi_raise(void)
{
	char kb[16];
	int fd, n;

	if (!bdi_path[0])
		return;
	n = snprintf(kb, sizeof(kb), "%u\n", FS_IO_MAX >> 10);
	fd = open(bdi_path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, kb, (size_t)n) != n)
		worldfs_log("%s: %s (guest files are read in 128 KiB pieces)", bdi_path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* Opening an existing file in W/fs/: not a directory, and emptied for
 * O_TRUNC (libfuse asks for atomic O_TRUNC: the open does it).  The
 * kernel checked the mode bits (default_permissions). */
static int guest_open(struct runtime *rt, const struct node *n, int flags)
{
	struct stat st;
	int err;

	if ((err = guest_getattr(rt, n->e, n->guest, &st)) < 0)
		return err;
	if (S_ISDIR(st.st_mode))
		return -EISDIR;
	if ((flags & O_TRUNC) && st.st_size)
		return guest_truncate(rt, n->e, n->guest, 0);
	return 0;
}

/* A handle on node n (its reference moves into the handle).  A guest file
 * is checked by the caller (guest_open, or created as a file). */
static int handle_open(struct runtime *rt, const char *path, struct node *n, struct fuse_file_info *fi)
{
	bool wr = (fi->flags & O_ACCMODE) != O_RDONLY;
	struct handle *h;
	int err = 0;

	if (n->type != NODE_GUEST && n->type != NODE_FILE && n->type != NODE_META_FILE &&
	    n->type != NODE_BALANCE_FILE)
		return -EISDIR;
	if (n->type != NODE_GUEST && wr && !writable(n))
		return -EACCES;
	if (wr && n->type == NODE_FILE && n->file->id == F_EXEC && (err = runtime_state_errno(rt, n->e)))
		return err;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	pthread_mutex_init(&h->lock, NULL);
	h->path = strdup(path);
	if (!h->path)
		err = -ENOMEM;
	/* n->guest points into path (only W/fs itself gets the literal "/",
	 * and it is a directory, refused above). */
	if (!err && n->type == NODE_GUEST) {
		h->guest = h->path + (n->guest - path);
		pthread_once(&bdi_once, bdi_raise);
	} else if (!err && (fi->flags & O_ACCMODE) != O_WRONLY)
		err = node_render(rt, n, &h->data, &h->len);
	if (err) {
		pthread_mutex_destroy(&h->lock);
		free(h->path);
		free(h);
		return err;
	}
	h->n = *n;
	n->e = NULL;
	if (h->n.e)
		runtime_file_use(rt, h->n.e, 1);
	fi->fh = (uint64_t)(uintptr_t)h;
	/* The mount's own files change under the kernel's feet: no page
	 * cache.  A guest file is cached while it is open (reads come in
	 * readahead's large pieces) and dropped at each open, so that every
	 * open sees what the last run wrote (close-to-open, as NFS). */
	fi->direct_io = h->n.type != NODE_GUEST;
	fi->keep_cache = 0;
	fi->nonseekable = 0;
	return 0;
}

static int wfs_open(const char *path, struct fuse_file_info *fi)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	err = lookup(rt, path, &n);
	if (err)
		return err;
	if (n.type != NODE_GUEST || !(err = guest_open(rt, &n, fi->flags)))
		err = handle_open(rt, path, &n, fi);
	node_release(rt, &n);
	return err;
}

static int wfs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct runtime *rt = rt_of();
	char *dir, *name;
	struct node n;
	bool made = false;
	int err;

	if (lookup(rt, path, &n) == 0) {
		if (n.type == NODE_GUEST && !(err = guest_create(rt, n.e, n.guest, mode, fi->flags)))
			err = handle_open(rt, path, &n, fi);
		else if (n.type != NODE_GUEST)
			err = -EEXIST;
		node_release(rt, &n);
		return err;
	}
	err = split(path, &dir, &name);
	if (err)
		return err;
	err = lookup(rt, dir, &n);
	if (err)
		goto out;
	if (n.type != NODE_BALANCE_DIR) {
		err = n.type == NODE_META_DIR ? -EACCES : -EPERM;
	} else if (!writable(&n)) {
		err = -EACCES;  /* a snapshot's ledger is what was captured */
	} else if (name_check(name) < 0) {
		worldfs_log("create %s: invalid owner name", path);
		err = -EINVAL;
	} else {
		err = runtime_add_balance(rt, n.e, name, &made);
	}
	node_release(rt, &n);
	if (err)
		goto out;
	err = lookup(rt, path, &n);
	if (!err) {
		err = handle_open(rt, path, &n, fi);
		node_release(rt, &n);
	}
	if (!err)
		handle_of(fi)->created = made;
out:
	free(dir);
	free(name);
	return err;
}

/* Run the code pending on an exec handle (h->lock held). */
static int handle_run(struct runtime *rt, struct handle *h)
{
	struct run_result res = { 0 };
	int err;

	err = runtime_charge(rt, h->n.uid, 1, 0);
	if (!err) {
		err = runtime_exec(rt, h->n.e, h->code.buf, h->code.len, &res);
		runtime_charge(rt, h->n.uid, -1, 0);
	}
	runtime_charge(rt, h->n.uid, 0, -(long long)h->code.len);
	strbuf_reset(&h->code);
	/* After writing N bytes of code the descriptor's offset is N: the run's
	 * stdout reads from there as if from its start. */
	h->data_base = h->write_end;
	free(h->data);
	h->data = res.out;
	h->len = res.out_len;
	res.out = NULL;
	run_result_release(&res);
	return err;
}

static int wfs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	int err = 0;

	(void)path;
	if (h->n.type == NODE_GUEST)
		return guest_read(rt_of(), h->n.e, h->guest, buf, size, off);
	pthread_mutex_lock(&h->lock);
	if (h->code.len)
		err = handle_run(rt_of(), h);
	if (off >= h->data_base)
		off -= h->data_base;
	if (!err) {
		if ((size_t)off >= h->len)
			size = 0;
		else if (size > h->len - (size_t)off)
			size = h->len - (size_t)off;
		if (size)
			memcpy(buf, h->data + off, size);
	}
	pthread_mutex_unlock(&h->lock);
	return err ? err : (int)size;
}

/* Apply a complete value written to a value file. */
static int apply_value(struct runtime *rt, struct handle *h, const char *v, size_t len)
{
	struct entity *e = h->n.e;
	int64_t x;
	int t, err;

	if (h->n.type == NODE_BALANCE_FILE) {
		err = amount_parse(v, len, &x);
		return err ? err : runtime_set_balance(rt, e, h->n.owner, x);
	}
	switch (h->n.file->id) {
	case F_TRIT:
		err = trit_parse(v, len, &t);
		return err ? err : runtime_set_trit(rt, e, t);
	case F_PROB:
		err = prob_parse(v, len, &x);
		return err ? err : runtime_set_prob(rt, e, x);
	case F_RESOLVE: {
		char name[NAME_MAX_LEN + 1];
		size_t n = len && v[len - 1] == '\n' ? len - 1 : len;
		if (n == 0)
			return -EINVAL;
		if (name_parse(v, len, name) < 0)
			return -ENOENT;  /* no child can have that name */
		return runtime_resolve(rt, e, name, fuse_get_context()->uid);
	}
	case F_PUSH_DOWN:
		return runtime_push_down(rt, e, v, len, fuse_get_context()->uid, fuse_get_context()->gid);
	default:
		return -EACCES;
	}
}

/* Apply what value holds, once: a failure is logged, and a balance this
 * descriptor's create() made is undone if its first value fails. */
static int value_apply(struct runtime *rt, struct handle *h)
{
	const char *path = h->path;

	int err = apply_value(rt, h, h->value.buf, h->value.len);

	h->pending = false;
	if (err == -EINVAL)
		worldfs_log("%s: invalid value", path);
	else if (err)
		worldfs_log("%s: write: %s", path, strerror(-err));
	if (err && h->created && !h->written)
		runtime_delete_balance(rt, h->n.e, h->n.owner);
	if (!err)
		h->written = true;
	return err;
}

/* A value file gathers the bytes written on the descriptor (at most
 * VALUE_MAX; a write at an earlier offset replaces what followed it).  The
 * value is applied once it is a whole line, by the write that ends it with
 * a newline (`echo v > file`: that write reports the error), or else at
 * close (`printf v > file`).  So no prefix of a value written in pieces is
 * ever applied, and a write that fails changes nothing, then or at close. */
static int value_write(struct runtime *rt, struct handle *h, const char *buf, size_t size, off_t off)
{
	size_t before = h->value.len;
	int err;

	/* After a refused write nothing of this descriptor's is applied. */
	h->pending = false;
	if (off < 0 || (size_t)off > h->value.len || (size_t)off + size > VALUE_MAX) {
		worldfs_log("%s: a value is one line of at most %d bytes", h->path, VALUE_MAX);
		return -EINVAL;
	}
	strbuf_setlen(&h->value, (size_t)off);
	if ((err = strbuf_add(&h->value, buf, size)))
		return err;
	if (!size || buf[size - 1] != '\n') {
		h->pending = true;
		return 0;
	}
	err = value_apply(rt, h);
	if (err)
		strbuf_setlen(&h->value, before < h->value.len ? before : h->value.len);
	return err;
}

static int wfs_write(const char *path, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct runtime *rt = rt_of();
	struct handle *h = handle_of(fi);
	int err = 0;

	(void)path;
	if (h->n.type == NODE_GUEST)
		return guest_write(rt, h->n.e, h->guest, buf, size, off);
	pthread_mutex_lock(&h->lock);
	if (h->n.type == NODE_FILE && h->n.file->id == F_EXEC) {
		/* Code accumulates over any number of writes until the run. */
		if (h->code.len + size > EXEC_CODE_MAX) {
			worldfs_log("%s: code larger than 16 MiB", h->path);
			err = -EFBIG;
		} else if (!(err = runtime_charge(rt, h->n.uid, 0, (long long)size))) {
			if ((err = strbuf_add(&h->code, buf, size)))
				runtime_charge(rt, h->n.uid, 0, -(long long)size);
			else
				h->write_end = off + (off_t)size;
		}
		goto out;
	}
	err = value_write(rt, h, buf, size, off);
out:
	pthread_mutex_unlock(&h->lock);
	return err ? err : (int)size;
}

static int wfs_flush(const char *path, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	int err = 0;

	(void)path;

	pthread_mutex_lock(&h->lock);
	if (h->code.len)
		err = handle_run(rt_of(), h);
	else if (h->pending)
		err = value_apply(rt_of(), h);
	pthread_mutex_unlock(&h->lock);
	return err;
}

static int wfs_release(const char *path, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	(void)path;
	if (h->code.len)  /* not run: a flush that failed before the run */
		runtime_charge(rt_of(), h->n.uid, 0, -(long long)h->code.len);
	if (h->n.e)
		runtime_file_use(rt_of(), h->n.e, -1);
	node_release(rt_of(), &h->n);
	pthread_mutex_destroy(&h->lock);
	free(h->data);
	strbuf_release(&h->code);
	strbuf_release(&h->value);
	free(h->path);
	free(h);
	return 0;
}

static int wfs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	if (!path) {  /* ftruncate(2) */
		struct handle *h = handle_of(fi);

		if (h->n.type == NODE_GUEST)
			return guest_truncate(rt, h->n.e, h->guest, size);
		return !writable(&h->n) ? -EACCES : size != 0 ? -EINVAL : 0;
	}
	err = lookup(rt, path, &n);
	if (err)
		return err;
	if (n.type == NODE_GUEST)
		err = guest_truncate(rt, n.e, n.guest, size);
	else if (S_ISDIR(node_mode(&n)))
		err = -EISDIR;
	else if (!writable(&n))
		err = -EACCES;
	else if (size != 0)
		err = -EINVAL;  /* O_TRUNC is fine; the value comes with the write */
	node_release(rt, &n);
	return err;
}

static int wfs_unlink(const char *path)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	err = lookup(rt, path, &n);
	if (err)
		return err;
	if (n.type == NODE_GUEST)
		err = guest_remove(rt, n.e, n.guest, false);
	else if (n.type == NODE_BALANCE_FILE)
		err = writable(&n) ? runtime_delete_balance(rt, n.e, n.owner) : -EACCES;
	else if (S_ISDIR(node_mode(&n)))
		err = -EISDIR;
	else
		err = -EPERM;
	node_release(rt, &n);
	return err;
}

static int wfs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	if (!path) {  /* futimens(2) of an open file */
		struct handle *h = fi ? handle_of(fi) : NULL;

		return !h ? -ENOENT : h->n.type == NODE_GUEST ? guest_utimens(rt, h->n.e, h->guest, tv) : 0;
	}
	err = lookup(rt, path, &n);
	if (err)
		return err;
	if (n.type == NODE_GUEST)
		err = guest_utimens(rt, n.e, n.guest, tv);
	node_release(rt, &n);
	return err;
}

static int wfs_statfs(const char *path, struct statvfs *st)
{
	(void)path;
	memset(st, 0, sizeof(*st));
	st->f_bsize = st->f_frsize = 4096;
	st->f_namemax = NAME_MAX_LEN;
	return 0;
}

/* Inside one world's fs/ only: anything else is not a file to move. */
static int wfs_rename(const char *from, const char *to, unsigned int flags)
{
	struct runtime *rt = rt_of();
	struct node a, b;
	int err;

	err = lookup(rt, from, &a);
	if (err)
		return err;
	err = lookup(rt, to, &b);
	if (err) {
		node_release(rt, &a);
		return err == -ENOENT && a.type != NODE_GUEST ? -EPERM : err;
	}
	if (a.type == NODE_GUEST && b.type == NODE_GUEST)
		err = a.e == b.e ? guest_rename(rt, a.e, a.guest, b.guest, flags) : -EXDEV;
	else
		err = a.type == NODE_GUEST || b.type == NODE_GUEST ? -EXDEV : -EPERM;
	node_release(rt, &a);
	node_release(rt, &b);
	return err;
}

static int wfs_link(const char *from, const char *to)
{
	(void)from;
	(void)to;
	return -EPERM;
}

/* A symlink in fs/ holds target as written, in the guest's terms. */
static int wfs_symlink(const char *target, const char *path)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	err = lookup(rt, path, &n);
	if (err)
		return err == -ENOENT ? -EPERM : err;
	err = n.type == NODE_GUEST ? guest_symlink(rt, n.e, target, n.guest) : -EPERM;
	node_release(rt, &n);
	return err;
}

static int wfs_readlink(const char *path, char *buf, size_t size)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	err = lookup(rt, path, &n);
	if (err)
		return err;
	err = n.type == NODE_GUEST ? guest_readlink(rt, n.e, n.guest, buf, size) : -EINVAL;
	node_release(rt, &n);
	return err;
}

static int wfs_mknod(const char *path, mode_t mode, dev_t dev)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	(void)dev;
	err = lookup(rt, path, &n);
	if (err)
		return err == -ENOENT ? -EPERM : err;
	/* Regular files only: no devices or FIFOs from the host. */
	err = n.type == NODE_GUEST && S_ISREG(mode) ? guest_create(rt, n.e, n.guest, mode, O_EXCL) : -EPERM;
	node_release(rt, &n);
	return err;
}

static int wfs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	if (!path) {
		struct handle *h = handle_of(fi);

		return h->n.type == NODE_GUEST ? guest_chmod(rt, h->n.e, h->guest, mode) : -EPERM;
	}
	err = lookup(rt, path, &n);
	if (err)
		return err;
	err = n.type == NODE_GUEST ? guest_chmod(rt, n.e, n.guest, mode) : -EPERM;
	node_release(rt, &n);
	return err;
}

/* Owners are the world's: a chown to them (cp -a, tar -p) changes
 * nothing and succeeds; to anyone else it is refused. */
static int wfs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	struct runtime *rt = rt_of();
	struct node n;
	int err;

	if (!path) {
		n = handle_of(fi)->n;
	} else if ((err = lookup(rt, path, &n)) < 0) {
		return err;
	}
	if (n.type != NODE_GUEST)
		err = -EPERM;
	else
		err = (uid == (uid_t)-1 || uid == n.e->uid) && (gid == (gid_t)-1 || gid == n.e->gid) ? 0 : -EPERM;
	if (path)
		node_release(rt, &n);
	return err;
}

static void *wfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	/* A write(2) to a guest file goes to the agent in pieces of up to
	 * max_write, one round trip each: take the file protocol's whole
	 * piece, not FUSE's 128 KiB default (8 round trips per MiB). */
	if (conn->max_write < FS_IO_MAX)
		conn->max_write = FS_IO_MAX;
	/* Every value is live: the kernel must ask each time. */
	cfg->entry_timeout = 0;
	cfg->attr_timeout = 0;
	cfg->negative_timeout = 0;
	/* direct_io per file (handle_open), not for all: see there. */
	/* Operations on an open file get no path, so libfuse takes no path
	 * lock for them: a run (exec's flush) that takes a minute must not
	 * hold up rmdir of its world, which interrupts it. */
	cfg->nullpath_ok = 1;
	return fuse_get_context()->private_data;
}

const struct fuse_operations worldfs_ops = {
	.init = wfs_init,
	.getattr = wfs_getattr,
	.opendir = wfs_opendir,
	.readdir = wfs_readdir,
	.releasedir = wfs_releasedir,
	.mkdir = wfs_mkdir,
	.rmdir = wfs_rmdir,
	.open = wfs_open,
	.create = wfs_create,
	.read = wfs_read,
	.write = wfs_write,
	.flush = wfs_flush,
	.release = wfs_release,
	.truncate = wfs_truncate,
	.unlink = wfs_unlink,
	.utimens = wfs_utimens,
	.statfs = wfs_statfs,
	.rename = wfs_rename,
	.link = wfs_link,
	.symlink = wfs_symlink,
	.readlink = wfs_readlink,
	.mknod = wfs_mknod,
	.chmod = wfs_chmod,
	.chown = wfs_chown,
};
