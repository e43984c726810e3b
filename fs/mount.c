/* mount.c: the runtime's start and end: runtime_open locks the state
 * directory, opens the registry, starts the backend and loads the tree
 * (reattaching what kept running, failing what was lost); runtime_close
 * suspends every live sandbox in parallel and frees the tree. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/tree.h"
#include "backend/util/clock.h"

struct load_ctx {
	struct runtime *rt;
	struct entity **all;
	size_t n;
};

static struct entity *find_loaded(struct load_ctx *c, const char *id)
{
	for (size_t i = c->n; i-- > 0;)
		if (strcmp(c->all[i]->id, id) == 0)
			return c->all[i];
	return NULL;
}

static int load_one(void *ctx, struct entity *row, const char *parent_id)
{
	struct load_ctx *c = ctx;
	struct entity *e, *parent = NULL;
	int err;

	if (parent_id && !(parent = find_loaded(c, parent_id))) {
		worldfs_log("registry: %s: parent %s missing, skipped", row->id, parent_id);
		return 0;
	}
	e = entity_new(row->kind, row->name);
	if (!e)
		return -ENOMEM;
	{
		struct ledger l = row->ledger;
		pthread_mutex_t m = e->oplock;
		char *failure = row->failure ? strdup(row->failure) : NULL;
		char *push_down = row->push_down ? strdup(row->push_down) : NULL;
		*e = *row;
		e->oplock = m;
		e->ledger = (struct ledger){ 0 };
		e->failure = failure;
		e->push_down = push_down;
		e->refs = 1;
		e->parent = parent;
		e->verses = e->snapshots = NULL;
		e->nverses = e->nsnapshots = 0;
		e->sb = NULL;
		e->sb_desc = NULL;
		e->sb_saved = false;
		err = ledger_copy(&e->ledger, &l);
	}
	if (!err)
		err = entity_attach(c->rt, e);
	if (!err)
		err = entity_array_add(&c->all, &c->n, e);
	if (err)
		entity_free(e);
	return err;
}

static bool known_id(void *ctx, const char *id)
{
	struct load_ctx *c = ctx;

	return find_loaded(c, id) != NULL;
}

/* One worldfs per state directory: two would each believe their registry
 * and drive the same sandboxes.  The lock dies with the process. */
static int state_lock(struct runtime *rt, const char *dir, char *err, size_t errlen)
{
	char path[4096], pid[32] = "";
	ssize_t n;
	int fd, rc;

	snprintf(path, sizeof(path), "%s/worldfs.lock", dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		n = pread(fd, pid, sizeof(pid) - 1, 0);
		pid[n > 0 ? n : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		snprintf(err, errlen, "%s: in use by another worldfs (pid %s)", dir, pid[0] ? pid : "?");
		close(fd);
		return rc;
	}
	n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) < 0) {
		/* the pid is only a hint for the message above */
	}
	rt->lock_fd = fd;
	return 0;
}

/* Every user's outputs live in the registry: keep its files private, also
 * when an older worldfs made them with the umask's modes (0644). */
static void private_files(const char *dir)
{
	static const char *const names[] = { "worldfs.db", "worldfs.db-wal", "worldfs.db-shm", "worldfs.log" };
	char path[4096];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (chmod(path, 0600) < 0 && errno != ENOENT)
			worldfs_log("%s: %s", path, strerror(errno));
	}
}

/* ---- recovery: the sandboxes of a registry just loaded ---- */

struct recovery {
	struct load_ctx c;  /* every entity loaded, each referenced */
	pthread_t thread;
};

/* What is left of e's sandbox, under e->oplock, unless first use has
 * attached it already: reattach one that kept running (so that a clean
 * unmount suspends it), fail a live one that is gone and has no snapshot
 * to come back from (with the reason, never dropped), delete what a
 * collapsed or failed one left. */
static void recover_one(struct runtime *rt, struct entity *e, size_t *counts)
{
	enum sandbox_presence p;
	bool live, skip, lost;

	pthread_mutex_lock(&e->oplock);
	pthread_mutex_lock(&rt->lock);
	live = e->state == STATE_RUNNING || e->state == STATE_WON;
	skip = e->removed || e->sb || e->kind == ENTITY_SNAPSHOT;
	pthread_mutex_unlock(&rt->lock);
	if (!skip) {
		p = rt->be_ops->probe(rt->be, e->id, e->handle);
		pthread_mutex_lock(&rt->lock);
		/* Again: a resolve or an rmdir does not wait for the oplock,
		 * and a verse collapsed meanwhile is not to be failed. */
		live = !e->removed && (e->state == STATE_RUNNING || e->state == STATE_WON);
		e->sb_saved = live && p == SANDBOX_SAVED;
		rt->sb_changes++;
		lost = live && p == SANDBOX_GONE && e->nsnapshots == 0;
		pthread_mutex_unlock(&rt->lock);
		if (live && p == SANDBOX_RUNNING && sandbox_ensure(rt, e) == 0) {
			counts[0]++;
		} else if (lost) {
			mark_failed(rt, e, "sandbox lost while worldfs was down (no process, no saved state)");
			counts[1]++;
		} else if (!live && p != SANDBOX_GONE) {
			rt->be_ops->discard(rt->be, e->id, e->handle);
		}
	}
	pthread_mutex_unlock(&e->oplock);
}

static void *recover(void *arg)
{
	struct recovery *r = arg;
	struct runtime *rt = r->c.rt;
	double t0 = now_ms();
	size_t counts[2] = { 0, 0 };

	for (size_t i = 0; i < r->c.n; i++)
		recover_one(rt, r->c.all[i], counts);
	rt->be_ops->collect_garbage(rt->be, known_id, &r->c);
	worldfs_log("recovered %zu entities in %.0f ms: %zu reattached, %zu failed", r->c.n, now_ms() - t0,
		    counts[0], counts[1]);
	for (size_t i = 0; i < r->c.n; i++)
		runtime_put(rt, r->c.all[i]);
	return NULL;
}

static int recovery_start(struct runtime *rt, struct load_ctx *c)
{
	struct recovery *r = calloc(1, sizeof(*r));
	int err;

	if (!r)
		return -ENOMEM;
	r->c = *c;
	c->all = NULL;
	c->n = 0;
	err = pthread_create(&r->thread, NULL, recover, r);
	if (err) {
		*c = r->c;
		free(r);
		return -err;
	}
	rt->recovery = r;
	return 0;
}

void runtime_settle(struct runtime *rt)
{
	struct recovery *r = rt->recovery;

	if (!r)
		return;
	pthread_join(r->thread, NULL);
	free(r->c.all);
	free(r);
	rt->recovery = NULL;
}

int runtime_open(struct runtime *rt, const struct backend_ops *ops, const struct backend_config *cfg,
		 char *err, size_t errlen)
{
	struct load_ctx c = { .rt = rt };
	char path[4096];
	int rc;

	pthread_mutex_init(&rt->lock, NULL);
	rt->lock_fd = -1;
	rt->cfg = *cfg;
	rt->be_ops = ops;
	if (mkdir(cfg->state_dir, 0700) < 0 && errno != EEXIST) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", cfg->state_dir, strerror(errno));
		return rc;
	}
	rc = state_lock(rt, cfg->state_dir, err, errlen);
	if (rc)
		return rc;
	snprintf(path, sizeof(path), "%s/worldfs.db", cfg->state_dir);
	rc = registry_open(&rt->reg, path, err, errlen);
	if (rc)
		goto fail;
	private_files(cfg->state_dir);
	rc = rt->be_ops->init(&rt->be, &rt->cfg, err, errlen);
	if (rc)
		goto fail;
	rc = registry_load(rt->reg, load_one, &c);
	if (rc) {
		snprintf(err, errlen, "%s: cannot load the registry: %s", path, strerror(-rc));
		goto fail;
	}
	/* The mount is served at once: what was up when worldfs stopped is
	 * looked at in the background (recover), or sooner on first use. */
	for (size_t i = 0; i < c.n; i++) {
		struct entity *e = c.all[i];

		e->sb_saved = e->kind != ENTITY_SNAPSHOT && (e->state == STATE_RUNNING || e->state == STATE_WON);
		e->refs++;  /* the recovery's */
	}
	worldfs_log("mounted: %zu entities, backend %s, state %s", c.n, rt->be_ops->name, cfg->state_dir);
	rc = recovery_start(rt, &c);
	if (rc) {
		snprintf(err, errlen, "cannot start the recovery thread: %s", strerror(-rc));
		for (size_t i = 0; i < c.n; i++)
			c.all[i]->refs--;
		goto fail;
	}
	return 0;
fail:
	free(c.all);
	if (rt->be)
		rt->be_ops->fini(rt->be);
	rt->be = NULL;
	registry_close(rt->reg);
	rt->reg = NULL;
	close(rt->lock_fd);
	rt->lock_fd = -1;
	return rc;
}

struct suspend_job {
	struct runtime *rt;
	struct entity *e;
	pthread_t thread;
	bool started;
};

static void *suspend_one(void *arg)
{
	struct suspend_job *j = arg;

	pthread_mutex_lock(&j->e->oplock);
	sandbox_suspend(j->rt, j->e);
	pthread_mutex_unlock(&j->e->oplock);
	return NULL;
}

static int collect_up(struct entity *e, struct suspend_job **v, size_t *n)
{
	for (size_t i = 0; i < e->nverses; i++)
		collect_up(e->verses[i], v, n);
	for (size_t i = 0; i < e->nsnapshots; i++)
		collect_up(e->snapshots[i], v, n);
	if (e->sb) {
		struct suspend_job *nv = realloc(*v, (*n + 1) * sizeof(**v));
		if (!nv)
			return -ENOMEM;
		*v = nv;
		nv[*n].e = e;
		(*n)++;
	}
	return 0;
}

void runtime_close(struct runtime *rt)
{
	struct suspend_job *jobs = NULL;
	size_t n = 0;

	/* The recovery finishes its pass first: what it reattaches is suspended below. */
	runtime_settle(rt);
	runtime_idle_stop(rt);
	for (size_t i = 0; i < rt->nworlds; i++)
		collect_up(rt->worlds[i], &jobs, &n);
	/* Suspend in parallel: each is a migration to disk and a quit. */
	for (size_t i = 0; i < n; i++) {
		jobs[i].rt = rt;
		jobs[i].started = pthread_create(&jobs[i].thread, NULL, suspend_one, &jobs[i]) == 0;
		if (!jobs[i].started)
			suspend_one(&jobs[i]);
	}
	for (size_t i = 0; i < n; i++)
		if (jobs[i].started)
			pthread_join(jobs[i].thread, NULL);
	free(jobs);
	worldfs_log("unmounted: %zu sandboxes suspended", n);
	for (size_t i = 0; i < rt->nworlds; i++)
		subtree_free(rt->worlds[i]);
	free(rt->worlds);
	rt->worlds = NULL;
	rt->nworlds = 0;
	if (rt->be)
		rt->be_ops->fini(rt->be);
	registry_close(rt->reg);
	if (rt->lock_fd >= 0)
		close(rt->lock_fd);
	rt->lock_fd = -1;
	for (size_t i = 0; i < sizeof(rt->meta_cache) / sizeof(rt->meta_cache[0]); i++)
		free(rt->meta_cache[i].buf);
	memset(rt->meta_cache, 0, sizeof(rt->meta_cache));
	free(rt->uses);
	rt->uses = NULL;
	rt->nuses = 0;
	pthread_mutex_destroy(&rt->lock);
}
