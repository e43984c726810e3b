/* node.c: the files of the mount, from one table per directory kind
 * (acme's Dirtab is the model): entity_files[] and meta_files[] are what
 * lookup walks, what listing shows, what stat reports and what render
 * fills; the names a verse may not take are the table's names too.  No
 * other file knows the tree's shape. */
#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/diff.h"
#include "fs/node.h"

const struct file_desc entity_files[] = {
	{ "exec",     F_EXEC,     S_IFREG | 0600, 0 },
	{ "stdout",   F_STDOUT,   S_IFREG | 0400, 0 },
	{ "stderr",   F_STDERR,   S_IFREG | 0400, 0 },
	{ "status",   F_STATUS,   S_IFREG | 0400, 0 },
	{ "state",    F_STATE,    S_IFREG | 0400, 0 },
	{ "info",     F_INFO,     S_IFREG | 0400, S_IFREG | 0400 },
	{ "trit",     F_TRIT,     S_IFREG | 0600, 0 },
	{ "prob",     F_PROB,     S_IFREG | 0600, 0 },
	{ "gf3",      F_GF3,      S_IFREG | 0400, S_IFREG | 0400 },
	{ "balance",  F_BALANCE,  S_IFDIR | 0700, S_IFDIR | 0500 },
	{ "push_down", F_PUSH_DOWN, S_IFREG | 0600, S_IFREG | 0600 },
	{ "resolve",  F_RESOLVE,  S_IFREG | 0600, S_IFREG | 0600 },
	{ "wev",      F_WEV,      S_IFREG | 0400, S_IFREG | 0400 },
	{ "snapshot", F_SNAPSHOT, S_IFDIR | 0700, 0 },
	{ "fs",       F_FS,       S_IFDIR | 0700, 0 },
	{ "diff",     F_DIFF,     S_IFREG | 0400, 0 },
};
const size_t n_entity_files = sizeof(entity_files) / sizeof(entity_files[0]);

const struct file_desc meta_files[] = {
	{ "version",     F_VERSION,     S_IFREG | 0444, 0 },
	{ "entities",    F_ENTITIES,    S_IFREG | 0444, 0 },
	{ "branches",    F_BRANCHES,    S_IFREG | 0444, 0 },
	{ "resolutions", F_RESOLUTIONS, S_IFREG | 0444, 0 },
	{ "metrics",     F_METRICS,     S_IFREG | 0444, 0 },
};
const size_t n_meta_files = sizeof(meta_files) / sizeof(meta_files[0]);
_Static_assert(sizeof(meta_files) / sizeof(meta_files[0]) <= sizeof(((struct runtime *)0)->meta_cache) /
	       sizeof(((struct runtime *)0)->meta_cache[0]), "one cache slot per .worldfs file");

bool name_is_reserved(const char *name)
{
	for (size_t i = 0; i < n_entity_files; i++)
		if (strcmp(entity_files[i].name, name) == 0)
			return true;
	return false;
}

static mode_t file_mode(const struct runtime *rt, const struct file_desc *f, const struct entity *e)
{
	/* A collapsed or failed verse has no sandbox, so no files of its own;
	 * nor has any world of a backend without the file protocol. */
	if ((f->id == F_FS || f->id == F_DIFF) &&
	    ((e->state != STATE_RUNNING && e->state != STATE_WON) || (rt && !rt->be_ops->fs)))
		return 0;
	return e->kind == ENTITY_SNAPSHOT ? f->snapshot_mode : f->world_mode;
}

static const struct file_desc *entity_file(const struct runtime *rt, const struct entity *e, const char *name)
{
	for (size_t i = 0; i < n_entity_files; i++)
		if (strcmp(entity_files[i].name, name) == 0)
			return file_mode(rt, &entity_files[i], e) ? &entity_files[i] : NULL;
	return NULL;
}

mode_t node_mode(const struct node *n)
{
	switch (n->type) {
	case NODE_ROOT: return S_IFDIR | 01777;  /* any user may create worlds; sticky */
	case NODE_META_DIR: return S_IFDIR | 0555;
	case NODE_META_FILE: return n->file->world_mode;
	case NODE_ENTITY_DIR: return S_IFDIR | 0700;
	case NODE_SNAPSHOT_DIR:
	case NODE_BALANCE_DIR:
	case NODE_FILE: return file_mode(NULL, n->file, n->e);  /* the lookup checked the backend */
	case NODE_BALANCE_FILE: return S_IFREG | (n->e->kind == ENTITY_SNAPSHOT ? 0400 : 0600);
	case NODE_GUEST: return S_IFDIR | 0700;  /* W/fs itself, as W lists it */
	}
	return 0;
}

/* Next path component into buf; returns the rest, or NULL at the end. */
static const char *next_component(const char *p, char *buf, size_t len, int *err)
{
	size_t n;

	while (*p == '/')
		p++;
	if (!*p)
		return NULL;
	n = strcspn(p, "/");
	if (n >= len) {
		*err = -ENAMETOOLONG;
		return NULL;
	}
	memcpy(buf, p, n);
	buf[n] = '\0';
	return p + n;
}

int node_lookup(struct runtime *rt, const char *path, uid_t uid, struct node *n)
{
	char c[256];
	const char *p = path;
	struct entity *e = NULL;
	int err = 0;

	memset(n, 0, sizeof(*n));
	n->uid = uid;
	n->sees_all = uid == 0 || uid == rt->mount_uid;
	pthread_mutex_lock(&rt->lock);
	p = next_component(p, c, sizeof(c), &err);
	if (!p) {
		n->type = NODE_ROOT;
		goto out;
	}
	if (strcmp(c, ".worldfs") == 0) {
		p = next_component(p, c, sizeof(c), &err);
		n->type = NODE_META_DIR;
		if (!p)
			goto out;
		err = -ENOENT;
		for (size_t i = 0; i < n_meta_files; i++)
			if (strcmp(meta_files[i].name, c) == 0) {
				n->type = NODE_META_FILE;
				n->file = &meta_files[i];
				err = 0;
			}
		if (!err && next_component(p, c, sizeof(c), &err))
			err = -ENOTDIR;
		goto out;
	}
	e = runtime_find_verse(rt, NULL, c, false);
	if (!e) {
		err = -ENOENT;
		goto out;
	}
	for (;;) {
		const struct file_desc *f;
		p = next_component(p, c, sizeof(c), &err);
		if (!p) {
			n->type = NODE_ENTITY_DIR;
			break;
		}
		f = entity_file(rt, e, c);
		if (!f) {
			e = runtime_find_verse(rt, e, c, false);
			if (!e) {
				err = -ENOENT;
				break;
			}
			continue;
		}
		n->file = f;
		if (f->id == F_FS) {
			n->type = NODE_GUEST;
			while (*p == '/' && p[1] == '/')
				p++;
			n->guest = *p ? p : "/";
			break;
		}
		if (f->id == F_BALANCE) {
			p = next_component(p, c, sizeof(c), &err);
			n->type = NODE_BALANCE_DIR;
			if (!p)
				break;
			n->type = NODE_BALANCE_FILE;
			if (strlen(c) > NAME_MAX_LEN || !ledger_get(&e->ledger, c)) {
				err = -ENOENT;
				break;
			}
			strcpy(n->owner, c);
			if (next_component(p, c, sizeof(c), &err))
				err = -ENOTDIR;
			break;
		}
		if (f->id == F_SNAPSHOT) {
			p = next_component(p, c, sizeof(c), &err);
			if (!p) {
				n->type = NODE_SNAPSHOT_DIR;
				break;
			}
			e = runtime_find_snapshot(e, c, false);
			if (!e) {
				err = -ENOENT;
				break;
			}
			continue;
		}
		n->type = NODE_FILE;
		if (next_component(p, c, sizeof(c), &err))
			err = -ENOTDIR;
		break;
	}
out:
	if (!err && e) {
		n->e = e;
		runtime_get(e);
	}
	pthread_mutex_unlock(&rt->lock);
	return err;
}

void node_release(struct runtime *rt, struct node *n)
{
	runtime_put(rt, n->e);
	n->e = NULL;
}

static int text(char **buf, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int text(char **buf, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(buf, fmt, ap);
	va_end(ap);
	if (n < 0) {
		*buf = NULL;
		return -ENOMEM;
	}
	*len = (size_t)n;
	return 0;
}

static int json_line(char **buf, size_t *len, char *json)
{
	int err;

	if (!json)
		return -ENOMEM;
	err = text(buf, len, "%s\n", json);
	free(json);
	return err;
}

/* e's info object as one line of JSON (rt->lock held). */
static char *info_json(struct runtime *rt, struct entity *e)
{
	char path[1024];
	json_t *o, *sb;
	char *s;

	runtime_path(e, path, sizeof(path));
	if (e->kind == ENTITY_SNAPSHOT) {
		o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:f}",
			      "id", e->id, "entity_id", e->id, "entity_type", "snapshot",
			      "name", e->name, "path", path,
			      "parent_id", e->parent ? e->parent->id : "",
			      "created_at", e->created_at, "size_bytes", (json_int_t)e->size_bytes,
			      "snapshot_time_ms", e->snapshot_ms);
	} else {
		o = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:i,s:f,s:s,s:i,s:i,s:f,s:s,s:o,s:i,s:o}",
			      "entity_id", e->id, "entity_type", entity_kind_name(e->kind),
			      "name", e->name, "path", path,
			      "parent_id", e->parent ? json_string(e->parent->id) : json_null(),
			      "snapshot_id", e->parent && e->parent->kind == ENTITY_SNAPSHOT
			      ? json_string(e->parent->id) : json_null(),
			      "trit", e->trit, "prob", (double)e->prob / PROB_ONE, "state", entity_state_name(e->state),
			      "memory_mib", (int)e->mem_mib, "vcpu_count", (int)e->vcpus,
			      "boot_time_ms", e->boot_ms, "created_at", e->created_at,
			      "resolved_at", e->resolved_at[0] ? json_string(e->resolved_at) : json_null(),
			      "owner_uid", (int)e->uid,
			      "failure", e->failure ? json_string(e->failure) : json_null());
		if (!o)
			return NULL;
		/* As the runtime last saw the sandbox: no backend call here. */
		if (e->sb_desc) {
			sb = json_loads(e->sb_desc, 0, NULL);
			if (!sb)
				sb = json_object();
			if (!json_object_get(sb, "status"))
				json_object_set_new(sb, "status", json_string("up"));
		} else {
			bool saved = (e->state == STATE_RUNNING || e->state == STATE_WON) && e->sb_saved;

			sb = json_pack("{s:s,s:s}", "backend", rt->be_ops->name, "status", saved ? "suspended" : "down");
			if (sb && saved && e->suspended_at[0])
				json_object_set_new(sb, "suspended_at", json_string(e->suspended_at));
		}
		json_object_set_new(o, "sandbox", sb);
	}
	if (!o)
		return NULL;
	s = json_dumps(o, JSON_OUT);
	json_decref(o);
	return s;
}

/* Each entity the reader may see, one JSON line each, depth first. */
static void entities_dump(struct runtime *rt, const struct node *n, struct entity *e, FILE *f)
{
	if (!e->busy_creating && (n->sees_all || e->uid == n->uid)) {
		char *s = info_json(rt, e);

		if (s)
			fprintf(f, "%s\n", s);
		free(s);
	}
	for (size_t i = 0; i < e->nverses; i++)
		entities_dump(rt, n, e->verses[i], f);
	for (size_t i = 0; i < e->nsnapshots; i++)
		entities_dump(rt, n, e->snapshots[i], f);
}

/* Content of a file; called with rt->lock held. */
static int render_locked(struct runtime *rt, const struct node *n, char **buf, size_t *len)
{
	struct entity *e = n->e;

	*buf = NULL;
	*len = 0;
	if (e && e->removed)
		return -ENOENT;
	if (n->type == NODE_BALANCE_FILE) {
		const struct ledger_entry *le = ledger_get(&e->ledger, n->owner);
		if (!le)
			return -ENOENT;
		return text(buf, len, "%lld\n", (long long)le->amount);
	}
	if (n->type != NODE_FILE && n->type != NODE_META_FILE)
		return -EISDIR;
	switch (n->file->id) {
	case F_VERSION:
		return text(buf, len, "worldfs %s backend=%s\n", WORLDFS_VERSION, rt->be_ops->name);
	case F_ENTITIES: {
		FILE *f = open_memstream(buf, len);
		if (!f)
			return -ENOMEM;
		for (size_t i = 0; i < rt->nworlds; i++)
			entities_dump(rt, n, rt->worlds[i], f);
		return fclose(f) == 0 ? 0 : -ENOMEM;
	}
	case F_BRANCHES:
		return registry_dump(rt->reg, "world_branches", n->sees_all ? -1 : (long long)n->uid, buf, len);
	case F_RESOLUTIONS:
		return registry_dump(rt->reg, "verse_resolutions", n->sees_all ? -1 : (long long)n->uid, buf, len);
	case F_METRICS: {
		json_t *m = registry_metrics(rt->reg);
		char *s = m ? json_dumps(m, JSON_OUT) : NULL;
		json_decref(m);
		return json_line(buf, len, s);
	}
	case F_EXEC:
		return 0;
	case F_STDOUT:
		return registry_output_get(rt->reg, e->id, 1, buf, len);
	case F_STDERR:
		return registry_output_get(rt->reg, e->id, 2, buf, len);
	case F_STATUS:
		return e->has_run ? text(buf, len, "%d\n", e->status) : 0;
	case F_STATE:
		return text(buf, len, "%s\n", entity_state_name(e->state));
	case F_INFO:
		return json_line(buf, len, info_json(rt, e));
	case F_TRIT:
		return text(buf, len, "%d\n", e->trit);
	case F_PROB: {
		char p[32];
		prob_format(e->prob, p, sizeof(p));
		return text(buf, len, "%s\n", p);
	}
	case F_GF3:
		return text(buf, len, "%d\n", runtime_gf3(e));
	case F_RESOLVE:
		return e->winner[0] ? text(buf, len, "%s\n", e->winner) : 0;
	case F_PUSH_DOWN:
		return e->push_down ? text(buf, len, "%s\n", e->push_down) : 0;
	case F_WEV:
		return text(buf, len, "%lld\n", (long long)e->wev);
	case F_DIFF:
		return 0;  /* computed in the guest: node_render, outside the lock */
	case F_BALANCE:
	case F_SNAPSHOT:
	case F_FS:
		return -EISDIR;
	}
	return -ENOENT;
}

/* The .worldfs files summarize the whole mount (entities renders every
 * entity, metrics scans the metrics table): each is rendered again only
 * once something changed since, so that stat(2), ls -l and repeated reads
 * cost a copy.  The cache holds the whole view (root's and the mounting
 * user's); another uid's own part is rendered each time.  rt->lock held. */
static int render_meta_locked(struct runtime *rt, const struct node *n, char **buf, size_t *len)
{
	struct rendered *c = &rt->meta_cache[n->file - meta_files];
	uint64_t changes = registry_changes(rt->reg) + rt->sb_changes;
	int err;

	if (!c->valid || c->changes != changes) {
		free(c->buf);
		c->valid = false;
		err = render_locked(rt, n, &c->buf, &c->len);
		if (err)
			return err;
		c->changes = changes;
		c->valid = true;
	}
	*len = c->len;
	*buf = malloc(c->len + 1);
	if (!*buf)
		return -ENOMEM;
	memcpy(*buf, c->buf ? c->buf : "", c->len);
	(*buf)[c->len] = '\0';
	return 0;
}

int node_render(struct runtime *rt, const struct node *n, char **buf, size_t *len)
{
	int err;

	if (n->type == NODE_FILE && n->file->id == F_DIFF)
		return guest_diff(rt, n->e, buf, len);
	pthread_mutex_lock(&rt->lock);
	if (n->type == NODE_META_FILE && n->sees_all)
		err = render_meta_locked(rt, n, buf, len);
	else
		err = render_locked(rt, n, buf, len);
	pthread_mutex_unlock(&rt->lock);
	return err;
}

int node_size(struct runtime *rt, const struct node *n, off_t *size)
{
	char *buf;
	size_t len;
	int err;

	/* W/diff is computed by the guest when opened: like a /proc file, it
	 * says size 0 and reads to its end (direct I/O). */
	if (n->type == NODE_FILE && n->file->id == F_DIFF) {
		*size = 0;
		return 0;
	}
	if (n->type == NODE_FILE && (n->file->id == F_STDOUT || n->file->id == F_STDERR)) {
		pthread_mutex_lock(&rt->lock);
		*size = (off_t)(n->file->id == F_STDOUT ? n->e->out_len : n->e->err_len);
		pthread_mutex_unlock(&rt->lock);
		return 0;
	}
	err = node_render(rt, n, &buf, &len);
	if (err)
		return err;
	free(buf);
	*size = (off_t)len;
	return 0;
}

/* Names in a directory node, fixed files first (rt->lock held). */
static int list_locked(struct runtime *rt, const struct node *n, node_fill_fn fill, void *ctx)
{
	struct entity *e = n->e;

	/* Removed since the lookup: the children it still points to may be
	 * freed already (an rmdir frees the subtree it took out). */
	if (e && e->removed)
		return -ENOENT;
	switch (n->type) {
	case NODE_ROOT:
		fill(ctx, ".worldfs");
		for (size_t i = 0; i < rt->nworlds; i++)
			if (!rt->worlds[i]->busy_creating)
				fill(ctx, rt->worlds[i]->name);
		return 0;
	case NODE_META_DIR:
		for (size_t i = 0; i < n_meta_files; i++)
			fill(ctx, meta_files[i].name);
		return 0;
	case NODE_ENTITY_DIR:
		for (size_t i = 0; i < n_entity_files; i++)
			if (file_mode(rt, &entity_files[i], e))
				fill(ctx, entity_files[i].name);
		for (size_t i = 0; i < e->nverses; i++)
			if (!e->verses[i]->busy_creating)
				fill(ctx, e->verses[i]->name);
		return 0;
	case NODE_SNAPSHOT_DIR:
		for (size_t i = 0; i < e->nsnapshots; i++)
			if (!e->snapshots[i]->busy_creating)
				fill(ctx, e->snapshots[i]->name);
		return 0;
	case NODE_BALANCE_DIR:
		for (size_t i = 0; i < e->ledger.n; i++)
			fill(ctx, e->ledger.v[i].owner);
		return 0;
	default:
		return -ENOTDIR;
	}
}

int node_list(struct runtime *rt, const struct node *n, node_fill_fn fill, void *ctx)
{
	int err;

	pthread_mutex_lock(&rt->lock);
	err = list_locked(rt, n, fill, ctx);
	pthread_mutex_unlock(&rt->lock);
	return err;
}

int node_stat(struct runtime *rt, const struct node *n, struct stat *st)
{
	off_t size = 0;
	int err = 0;

	memset(st, 0, sizeof(*st));
	st->st_mode = node_mode(n);
	if (!st->st_mode)
		return -ENOENT;  /* gone since the lookup (fs/ and diff of a verse collapsed meanwhile) */
	st->st_nlink = S_ISDIR(st->st_mode) ? 2 : 1;
	/* uid and gid never change after an entity is made. */
	st->st_uid = n->e ? n->e->uid : rt->mount_uid;
	st->st_gid = n->e ? n->e->gid : rt->mount_gid;
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = rt->mount_time;
	if (S_ISREG(st->st_mode)) {
		err = node_size(rt, n, &size);
		st->st_size = size;
		st->st_blocks = (size + 511) / 512;
	}
	return err;
}
