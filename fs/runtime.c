/* runtime.c: the World Runtime operations on the tree.  Order of work in
 * every mutation: validate and reserve under the tree lock, do backend work
 * without it (under the entity's oplock), then commit to the registry and
 * publish in memory under the tree lock again. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs/runtime.h"
#include "backend/util/clock.h"

/* The log.  Everything written to stderr in this process (ours, the
 * backends', libfuse's, SQLite's) goes through a pipe to one thread that
 * stamps each line into STATE/worldfs.log and, while echoing, copies it to
 * the terminal worldfs was started from. */
static struct {
	FILE *file;
	int echo_fd;          /* the original stderr, or -1 */
	pthread_t thread;
	bool running;
	pthread_mutex_t lock;
} log_sink = { .echo_fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER };

static void *log_pump(void *arg)
{
	FILE *in = fdopen((int)(intptr_t)arg, "r");
	char *line = NULL, now[32];
	size_t cap = 0;
	ssize_t n;

	if (!in)
		return NULL;
	while ((n = getline(&line, &cap, in)) > 0) {
		registry_now(now);
		pthread_mutex_lock(&log_sink.lock);
		if (log_sink.file)
			fprintf(log_sink.file, "%s %s%s", now, line, line[n - 1] == '\n' ? "" : "\n");
		if (log_sink.echo_fd >= 0 && write(log_sink.echo_fd, line, (size_t)n) < 0) {
			/* the terminal is gone: the file still has it */
		}
		pthread_mutex_unlock(&log_sink.lock);
	}
	free(line);
	fclose(in);
	return NULL;
}

void runtime_log_open(const char *path, bool echo)
{
	int p[2];

	log_sink.file = fopen(path, "a");
	if (log_sink.file)
		setvbuf(log_sink.file, NULL, _IOLBF, 0);
	if (pipe2(p, O_CLOEXEC) < 0)
		return;
	log_sink.echo_fd = echo ? fcntl(2, F_DUPFD_CLOEXEC, 3) : -1;
	fflush(stderr);
	dup2(p[1], 2);
	close(p[1]);
	setvbuf(stderr, NULL, _IOLBF, 0);
	log_sink.running = pthread_create(&log_sink.thread, NULL, log_pump, (void *)(intptr_t)p[0]) == 0;
	if (!log_sink.running) {
		close(p[0]);
		if (log_sink.echo_fd >= 0)
			dup2(log_sink.echo_fd, 2);
	}
}

void runtime_log_echo(bool echo)
{
	pthread_mutex_lock(&log_sink.lock);
	if (!echo && log_sink.echo_fd >= 0) {
		close(log_sink.echo_fd);
		log_sink.echo_fd = -1;
	}
	pthread_mutex_unlock(&log_sink.lock);
}

void runtime_log_close(void)
{
	int null = open("/dev/null", O_WRONLY | O_CLOEXEC);

	fflush(stderr);
	/* The pipe's last writer is fd 2: replacing it ends the pump. */
	if (log_sink.echo_fd >= 0)
		dup2(log_sink.echo_fd, 2);
	else if (null >= 0)
		dup2(null, 2);
	if (null >= 0)
		close(null);
	if (log_sink.running) {
		/* A child that kept a copy of fd 2 would hold the pipe open:
		 * wait a little, then leave the pump to the process exit. */
		struct timespec deadline;

		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_sec += 2;
		if (pthread_timedjoin_np(log_sink.thread, NULL, &deadline) != 0)
			return;
	}
	log_sink.running = false;
	runtime_log_echo(false);
	if (log_sink.file)
		fclose(log_sink.file);
	log_sink.file = NULL;
}

void runtime_log(const char *fmt, ...)
{
	va_list ap;
	char line[1024];

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "worldfs: %s\n", line);
}

/* ---- entities and references ---- */

static struct entity *entity_new(enum entity_kind kind, const char *name)
{
	struct entity *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->kind = kind;
	snprintf(e->name, sizeof(e->name), "%s", name);
	registry_new_id(kind == ENTITY_WORLD ? "w" : kind == ENTITY_VERSE ? "v" : "s", e->id);
	pthread_mutex_init(&e->oplock, NULL);
	e->refs = 1;
	return e;
}

static void entity_free(struct entity *e)
{
	free(e->verses);
	free(e->snapshots);
	free(e->failure);
	ledger_release(&e->ledger);
	pthread_mutex_destroy(&e->oplock);
	free(e);
}

void runtime_get(struct entity *e)
{
	e->refs++;
}

void runtime_put(struct runtime *rt, struct entity *e)
{
	bool gone;

	if (!e)
		return;
	pthread_mutex_lock(&rt->lock);
	gone = --e->refs == 0;
	pthread_mutex_unlock(&rt->lock);
	if (gone)
		entity_free(e);
}

static int array_add(struct entity ***v, size_t *n, struct entity *e)
{
	struct entity **nv = realloc(*v, (*n + 1) * sizeof(**v));

	if (!nv)
		return -ENOMEM;
	nv[(*n)++] = e;
	*v = nv;
	return 0;
}

static void array_del(struct entity **v, size_t *n, struct entity *e)
{
	for (size_t i = 0; i < *n; i++)
		if (v[i] == e) {
			memmove(&v[i], &v[i + 1], (*n - i - 1) * sizeof(*v));
			(*n)--;
			return;
		}
}

/* The array an entity lives in. */
static void entity_siblings(struct runtime *rt, struct entity *e, struct entity ****v, size_t **n)
{
	if (!e->parent) {
		*v = &rt->worlds;
		*n = &rt->nworlds;
	} else if (e->kind == ENTITY_SNAPSHOT) {
		*v = &e->parent->snapshots;
		*n = &e->parent->nsnapshots;
	} else {
		*v = &e->parent->verses;
		*n = &e->parent->nverses;
	}
}

static int entity_attach(struct runtime *rt, struct entity *e)
{
	struct entity ***v;
	size_t *n;

	entity_siblings(rt, e, &v, &n);
	return array_add(v, n, e);
}

static void entity_detach(struct runtime *rt, struct entity *e)
{
	struct entity ***v;
	size_t *n;

	entity_siblings(rt, e, &v, &n);
	array_del(*v, n, e);
	e->removed = true;
}

struct entity *runtime_find_verse(struct runtime *rt, struct entity *parent, const char *name, bool with_busy)
{
	struct entity **v = parent ? parent->verses : rt->worlds;
	size_t n = parent ? parent->nverses : rt->nworlds;

	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i]->name, name) == 0 && (with_busy || !v[i]->busy_creating))
			return v[i];
	return NULL;
}

struct entity *runtime_find_snapshot(struct entity *w, const char *name, bool with_busy)
{
	for (size_t i = 0; i < w->nsnapshots; i++)
		if (strcmp(w->snapshots[i]->name, name) == 0 && (with_busy || !w->snapshots[i]->busy_creating))
			return w->snapshots[i];
	return NULL;
}

static bool is_live(const struct entity *e)
{
	return e->kind != ENTITY_SNAPSHOT && (e->state == STATE_RUNNING || e->busy_creating);
}

/* Does anything below e (children, verses of its snapshots, recursively) still run? */
static bool subtree_has_live(const struct entity *e)
{
	for (size_t i = 0; i < e->nverses; i++)
		if (is_live(e->verses[i]) || subtree_has_live(e->verses[i]))
			return true;
	for (size_t i = 0; i < e->nsnapshots; i++)
		if (subtree_has_live(e->snapshots[i]))
			return true;
	return false;
}

int runtime_gf3(const struct entity *e)
{
	int s = 0;

	for (size_t i = 0; i < e->nverses; i++)
		if (!e->verses[i]->busy_creating)
			s = (s + e->verses[i]->trit + 3) % 3;
	return s == 2 ? -1 : s;
}

void runtime_path(const struct entity *e, char *out, size_t len)
{
	char tail[1024];

	if (!e) {
		snprintf(out, len, "%s", "");
		return;
	}
	runtime_path(e->parent, tail, sizeof(tail));
	if (e->kind == ENTITY_SNAPSHOT)
		snprintf(out, len, "%s/snapshot/%s", tail, e->name);
	else
		snprintf(out, len, "%s/%s", tail, e->name);
}

/* Mark e failed with a reason (under rt->lock), durable. */
static void mark_failed_locked(struct runtime *rt, struct entity *e, const char *why)
{
	char path[1024];

	runtime_path(e, path, sizeof(path));
	runtime_log("%s (%s): failed: %s", path, e->id, why);
	e->state = STATE_FAILED;
	free(e->failure);
	e->failure = strdup(why);
	registry_entity_put(rt->reg, e);
}

static void mark_failed(struct runtime *rt, struct entity *e, const char *why)
{
	pthread_mutex_lock(&rt->lock);
	if (!e->removed)
		mark_failed_locked(rt, e, why);
	pthread_mutex_unlock(&rt->lock);
}

/* e's newest snapshot, referenced, or NULL. */
static struct entity *latest_snapshot(struct runtime *rt, struct entity *e)
{
	struct entity *snap = NULL;

	pthread_mutex_lock(&rt->lock);
	for (size_t i = e->nsnapshots; i-- > 0;)
		if (!e->snapshots[i]->busy_creating) {
			snap = e->snapshots[i];
			runtime_get(snap);
			break;
		}
	pthread_mutex_unlock(&rt->lock);
	return snap;
}

/* With e->oplock held: make sure e's sandbox is up, resuming a suspended
 * one or reattaching one that kept running while worldfs was down. */
static int sandbox_ensure(struct runtime *rt, struct entity *e)
{
	char handle[BACKEND_HANDLE_MAX] = "";
	struct sandbox *sb = NULL;
	enum entity_state st;
	int err;

	pthread_mutex_lock(&rt->lock);
	st = e->state;
	pthread_mutex_unlock(&rt->lock);
	if (e->removed)
		return -ENOENT;
	if (st == STATE_COLLAPSED)
		return -EROFS;
	if (st == STATE_FAILED)
		return -EIO;
	if (e->sb)
		return 0;
	err = rt->be_ops->resume(rt->be, e->id, e->handle, &sb, handle);
	if (err) {
		/* Nothing left to resume (lost while worldfs was down): back to
		 * the latest snapshot, if any.  Other errors fail the world. */
		struct entity *snap = err == -ENOENT ? latest_snapshot(rt, e) : NULL;
		struct branch_info info;

		if (snap) {
			err = rt->be_ops->branch(rt->be, NULL, snap->id, e->id, &sb, handle, &info);
			if (!err)
				runtime_log("%s: sandbox lost; restored from snapshot %s (%s)", e->id,
					    snap->name, snap->created_at);
		}
		runtime_put(rt, snap);
	}
	if (err) {
		char why[256];
		snprintf(why, sizeof(why), "cannot resume the sandbox: %s", strerror(-err));
		mark_failed(rt, e, why);
		return -EIO;
	}
	pthread_mutex_lock(&rt->lock);
	e->sb = sb;
	snprintf(e->handle, sizeof(e->handle), "%s", handle);
	registry_entity_put(rt->reg, e);
	pthread_mutex_unlock(&rt->lock);
	return 0;
}

/* Stop and forget e's sandbox (collapse, remove). */
static void sandbox_drop(struct runtime *rt, struct entity *e)
{
	pthread_mutex_lock(&e->oplock);
	if (e->kind == ENTITY_SNAPSHOT) {
		rt->be_ops->snapshot_delete(rt->be, e->id);
	} else if (e->sb) {
		rt->be_ops->destroy(e->sb);
		e->sb = NULL;
	} else {
		rt->be_ops->discard(rt->be, e->id, e->handle);
	}
	e->handle[0] = '\0';
	pthread_mutex_unlock(&e->oplock);
}

/* ---- create, branch, snapshot ---- */

/* Reserve a name: a busy entity in the tree, so concurrent mkdirs of the same
 * name get EEXIST and rmdir of the parent gets ENOTEMPTY. */
static int reserve(struct runtime *rt, struct entity *parent, enum entity_kind kind,
		   const char *name, uid_t uid, gid_t gid, struct entity **out)
{
	struct entity *e;
	int err;

	if (parent && parent->removed)
		return -ENOENT;
	if (kind == ENTITY_SNAPSHOT ? runtime_find_snapshot(parent, name, true) != NULL
	    : runtime_find_verse(rt, parent, name, true) != NULL)
		return -EEXIST;
	if (name_check(name) < 0)
		return -EINVAL;
	e = entity_new(kind, name);
	if (!e)
		return -ENOMEM;
	e->parent = parent;
	e->uid = uid;
	e->gid = gid;
	e->busy_creating = true;
	e->state = STATE_RUNNING;
	e->prob = kind == ENTITY_WORLD ? PROB_ONE : 0;
	err = entity_attach(rt, e);
	if (err) {
		entity_free(e);
		return err;
	}
	e->refs++;  /* the creator's */
	*out = e;
	return 0;
}

/* Undo a reservation whose backend work failed (rt->lock held). */
static void unreserve_locked(struct runtime *rt, struct entity *e)
{
	entity_detach(rt, e);
	e->refs--;  /* the tree's; the creator still holds one */
}

int runtime_create_world(struct runtime *rt, const char *name, uid_t uid, gid_t gid)
{
	struct entity *e;
	struct sandbox *sb = NULL;
	char handle[BACKEND_HANDLE_MAX] = "";
	double boot_ms = 0;
	int err;

	pthread_mutex_lock(&rt->lock);
	err = reserve(rt, NULL, ENTITY_WORLD, name, uid, gid, &e);
	pthread_mutex_unlock(&rt->lock);
	if (err)
		return err;
	e->mem_mib = rt->cfg.mem_mib;
	e->vcpus = rt->cfg.vcpus;

	err = rt->be_ops->create(rt->be, e->id, e->mem_mib, e->vcpus, &sb, handle, &boot_ms);

	pthread_mutex_lock(&rt->lock);
	if (!err) {
		e->sb = sb;
		snprintf(e->handle, sizeof(e->handle), "%s", handle);
		e->boot_ms = boot_ms;
		registry_now(e->created_at);
		err = registry_begin(rt->reg);
		if (!err)
			err = registry_entity_put(rt->reg, e);
		if (!err)
			err = registry_metric_add(rt->reg, e->id, "boot", boot_ms);
		if (!err)
			err = registry_commit(rt->reg);
		else
			registry_rollback(rt->reg);
		if (err) {
			rt->be_ops->destroy(sb);
			e->sb = NULL;
		}
	}
	if (err)
		unreserve_locked(rt, e);
	else
		e->busy_creating = false;
	pthread_mutex_unlock(&rt->lock);
	if (!err)
		runtime_log("created world %s (%s) in %.0f ms", name, e->id, boot_ms);
	runtime_put(rt, e);
	return err;
}

/* The parent's oplock, held from before a branch until the backend has
 * taken the parent's state (branch_info.parent_done), not until the child
 * answers: siblings then start side by side, and the parent runs on. */
struct held_parent {
	pthread_mutex_t *oplock;
	bool held;
};

static void parent_release(void *arg)
{
	struct held_parent *h = arg;

	if (h->held) {
		h->held = false;
		pthread_mutex_unlock(h->oplock);
	}
}

int runtime_branch(struct runtime *rt, struct entity *parent, const char *name, uid_t uid, gid_t gid)
{
	bool from_snapshot = parent->kind == ENTITY_SNAPSHOT;
	struct entity *src = from_snapshot ? parent->parent : parent; /* whose memory size */
	struct entity *e;
	struct sandbox *sb = NULL;
	struct branch_info info = { 0 };
	char handle[BACKEND_HANDLE_MAX] = "";
	int err;

	pthread_mutex_lock(&rt->lock);
	if (!from_snapshot && parent->state == STATE_COLLAPSED)
		err = -EROFS;
	else if (!from_snapshot && parent->state == STATE_FAILED)
		err = -EIO;
	else
		err = reserve(rt, parent, ENTITY_VERSE, name, uid, gid, &e);
	if (!err) {
		e->mem_mib = src->mem_mib;
		e->vcpus = src->vcpus;
		/* The balances at the instant of the branch. */
		err = ledger_copy(&e->ledger, &parent->ledger);
		if (err)
			unreserve_locked(rt, e);
	}
	pthread_mutex_unlock(&rt->lock);
	if (err)
		return err;

	if (from_snapshot) {
		err = rt->be_ops->branch(rt->be, NULL, parent->id, e->id, &sb, handle, &info);
	} else {
		struct held_parent h = { .oplock = &parent->oplock, .held = true };

		pthread_mutex_lock(&parent->oplock);
		info.parent_done = parent_release;
		info.parent_done_arg = &h;
		err = sandbox_ensure(rt, parent);
		if (!err)
			err = rt->be_ops->branch(rt->be, parent->sb, NULL, e->id, &sb, handle, &info);
		parent_release(&h);
	}

	pthread_mutex_lock(&rt->lock);
	if (!err && parent->removed)
		err = -ENOENT;
	if (!err) {
		unsigned old_count = parent->branch_count;
		e->sb = sb;
		snprintf(e->handle, sizeof(e->handle), "%s", handle);
		e->trit = trit_for_child(parent->branch_count++);
		e->boot_ms = info.total_ms;
		registry_now(e->created_at);
		e->busy_creating = false;  /* gf3 below counts it */
		err = registry_begin(rt->reg);
		if (!err)
			err = registry_entity_put(rt->reg, e);
		if (!err)
			err = registry_entity_put(rt->reg, parent);
		if (!err)
			err = registry_ledger_put(rt->reg, e->id, &e->ledger);
		if (!err)
			err = registry_branch_add(rt->reg, parent->id, e->id,
						  from_snapshot ? "snapshot" : "live",
						  info.snapshot_time_ms, runtime_gf3(parent));
		if (!err)
			err = registry_metric_add(rt->reg, e->id, "branch", info.total_ms);
		if (!err)
			err = registry_commit(rt->reg);
		else
			registry_rollback(rt->reg);
		if (err) {
			parent->branch_count = old_count;
			e->busy_creating = true;
		}
	}
	if (err) {
		if (sb)
			rt->be_ops->destroy(sb);
		e->sb = NULL;
		unreserve_locked(rt, e);
	}
	pthread_mutex_unlock(&rt->lock);
	if (!err)
		runtime_log("branched %s (%s) from %s in %.0f ms (parent paused %.1f ms)", name, e->id,
			    parent->id, info.total_ms, info.snapshot_time_ms);
	runtime_put(rt, e);
	return err;
}

int runtime_snapshot(struct runtime *rt, struct entity *w, const char *name, uid_t uid, gid_t gid)
{
	struct snapshot_info info = { 0 };
	struct entity *s;
	double t0 = now_ms();
	int err;

	pthread_mutex_lock(&rt->lock);
	if (w->state == STATE_COLLAPSED)
		err = -EROFS;
	else if (w->state == STATE_FAILED)
		err = -EIO;
	else
		err = reserve(rt, w, ENTITY_SNAPSHOT, name, uid, gid, &s);
	if (!err) {
		s->mem_mib = w->mem_mib;
		s->vcpus = w->vcpus;
		s->trit = w->trit;
		s->prob = w->prob;
		err = ledger_copy(&s->ledger, &w->ledger);
		if (err)
			unreserve_locked(rt, s);
	}
	pthread_mutex_unlock(&rt->lock);
	if (err)
		return err;

	pthread_mutex_lock(&w->oplock);
	err = sandbox_ensure(rt, w);
	if (!err)
		err = rt->be_ops->snapshot(w->sb, s->id, &info);
	pthread_mutex_unlock(&w->oplock);

	pthread_mutex_lock(&rt->lock);
	if (!err && w->removed)
		err = -ENOENT;
	if (!err) {
		s->size_bytes = info.size_bytes;
		s->snapshot_ms = info.snapshot_time_ms;
		registry_now(s->created_at);
		err = registry_begin(rt->reg);
		if (!err)
			err = registry_entity_put(rt->reg, s);
		if (!err)
			err = registry_ledger_put(rt->reg, s->id, &s->ledger);
		if (!err)
			err = registry_metric_add(rt->reg, s->id, "snapshot", now_ms() - t0);
		if (!err)
			err = registry_commit(rt->reg);
		else
			registry_rollback(rt->reg);
		if (err)
			rt->be_ops->snapshot_delete(rt->be, s->id);
	}
	if (err)
		unreserve_locked(rt, s);
	else
		s->busy_creating = false;
	pthread_mutex_unlock(&rt->lock);
	runtime_put(rt, s);
	return err;
}

/* ---- remove ---- */

/* Post-order list of e's subtree including e. */
static int collect(struct entity *e, struct entity ***v, size_t *n)
{
	int err = 0;

	for (size_t i = 0; !err && i < e->nverses; i++)
		err = collect(e->verses[i], v, n);
	for (size_t i = 0; !err && i < e->nsnapshots; i++)
		err = collect(e->snapshots[i], v, n);
	return err ? err : array_add(v, n, e);
}

int runtime_remove(struct runtime *rt, struct entity *e)
{
	struct entity **all = NULL;
	size_t n = 0;
	int err;

	pthread_mutex_lock(&rt->lock);
	if (e->removed) {
		err = -ENOENT;
		goto out_locked;
	}
	if (subtree_has_live(e)) {
		err = -ENOTEMPTY;
		goto out_locked;
	}
	err = collect(e, &all, &n);
	if (err)
		goto out_locked;
	err = registry_begin(rt->reg);
	for (size_t i = 0; !err && i < n; i++)
		err = registry_entity_delete(rt->reg, all[i]->id);
	if (!err)
		err = registry_commit(rt->reg);
	else
		registry_rollback(rt->reg);
	if (err)
		goto out_locked;
	entity_detach(rt, e);
	for (size_t i = 0; i < n; i++) {
		all[i]->removed = true;
		all[i]->refs++;  /* ours, for the teardown below */
	}
	pthread_mutex_unlock(&rt->lock);

	for (size_t i = 0; i < n; i++) {
		sandbox_drop(rt, all[i]);
		pthread_mutex_lock(&rt->lock);
		all[i]->refs--;           /* the tree's */
		pthread_mutex_unlock(&rt->lock);
		runtime_put(rt, all[i]);  /* ours */
	}
	free(all);
	return 0;

out_locked:
	pthread_mutex_unlock(&rt->lock);
	free(all);
	return err;
}

/* ---- exec ---- */

/* A run that was accepted but did not run to its end in the world still
 * leaves its own status (255), empty stdout and a one-line note in stderr:
 * a shell never sees close(2) fail, so these files are what tells. */
static int lost_run(struct run_result *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int lost_run(struct run_result *res, const char *fmt, ...)
{
	va_list ap;
	char *note = NULL;
	int n;

	run_result_release(res);
	memset(res, 0, sizeof(*res));
	va_start(ap, fmt);
	n = vasprintf(&note, fmt, ap);
	va_end(ap);
	res->status = 255;
	res->out = strdup("");
	res->err = n < 0 ? NULL : note;
	res->err_len = n < 0 ? 0 : (size_t)n;
	if (!res->out || !res->err) {
		run_result_release(res);
		return -ENOMEM;
	}
	return 0;
}

int runtime_exec(struct runtime *rt, struct entity *e, const char *code, size_t len, struct run_result *res)
{
	double t0 = now_ms();
	bool ran = false, record;
	int err;

	memset(res, 0, sizeof(*res));
	pthread_mutex_lock(&e->oplock);
	err = sandbox_ensure(rt, e);
	if (err == -EROFS) {
		record = lost_run(res, "[worldfs: not run: this verse was collapsed]\n") == 0;
	} else if (err == -EIO) {
		pthread_mutex_lock(&rt->lock);
		record = lost_run(res, "[worldfs: not run: the world has failed: %s]\n",
				  e->failure ? e->failure : "see info") == 0;
		pthread_mutex_unlock(&rt->lock);
	} else if (err) {
		goto out;  /* removed: nothing to record in */
	} else {
		err = rt->be_ops->exec(e->sb, code, len, res);
		record = ran = err == 0;
		if (err) {
			char why[256];

			snprintf(why, sizeof(why), "sandbox died during a run: %s", strerror(-err));
			rt->be_ops->destroy(e->sb);
			e->sb = NULL;
			mark_failed(rt, e, why);
			record = lost_run(res, "[worldfs: the world died during this run (%s); it is failed now, "
					  "info says why]\n", strerror(-err)) == 0;
			err = -EIO;
		}
	}
	pthread_mutex_lock(&rt->lock);
	if (!e->removed && record) {
		double ms = now_ms() - t0;
		int rerr = registry_begin_lazy(rt->reg);

		if (!rerr)
			rerr = registry_output_put(rt->reg, e->id, res->status, res->out, res->out_len,
						   res->err, res->err_len, ms);
		if (!rerr && ran)
			rerr = registry_metric_add(rt->reg, e->id, "exec", ms);
		if (!rerr)
			rerr = registry_commit(rt->reg);
		else
			registry_rollback(rt->reg);
		if (!rerr) {
			e->has_run = true;
			e->status = res->status;
			e->out_len = res->out_len;
			e->err_len = res->err_len;
		}
		if (!err)
			err = rerr;
	}
	pthread_mutex_unlock(&rt->lock);
	if (!err && res->timed_out)
		err = -ETIMEDOUT;
out:
	pthread_mutex_unlock(&e->oplock);
	return err;
}

/* ---- resolve ---- */

struct saved_state {
	struct entity *e;
	enum entity_state state;
	char resolved_at[32];
};

static int collapse_subtree(struct entity *e, const char *now, struct saved_state **v, size_t *n)
{
	for (size_t i = 0; i < e->nverses; i++) {
		int err = collapse_subtree(e->verses[i], now, v, n);
		if (err)
			return err;
	}
	for (size_t i = 0; i < e->nsnapshots; i++) {
		int err = collapse_subtree(e->snapshots[i], now, v, n);
		if (err)
			return err;
	}
	if (e->kind == ENTITY_SNAPSHOT || (e->state != STATE_RUNNING && e->state != STATE_WON))
		return 0;
	struct saved_state *nv = realloc(*v, (*n + 1) * sizeof(**v));
	if (!nv)
		return -ENOMEM;
	*v = nv;
	nv[*n].e = e;
	nv[*n].state = e->state;
	strcpy(nv[*n].resolved_at, e->resolved_at);
	(*n)++;
	e->state = STATE_COLLAPSED;
	strcpy(e->resolved_at, now);
	return 0;
}

int runtime_resolve(struct runtime *rt, struct entity *parent, const char *winner, uid_t uid)
{
	struct saved_state *changed = NULL;
	struct ledger old_ledger = { 0 };
	struct entity *win = NULL;
	size_t nchanged = 0, nlive = 0;
	int64_t wev = 0, old_wev;
	char now[32], old_winner[NAME_MAX_LEN + 1], oracle[64], *verses = NULL;
	json_t *names;
	double t0 = now_ms(), ms;
	int err = 0;

	pthread_mutex_lock(&rt->lock);
	if (parent->removed) {
		err = -ENOENT;
		goto out;
	}
	names = json_array();
	for (size_t i = 0; i < parent->nverses; i++) {
		struct entity *c = parent->verses[i];
		if (c->busy_creating || c->state != STATE_RUNNING)
			continue;
		nlive++;
		json_array_append_new(names, json_string(c->name));
		if (strcmp(c->name, winner) == 0)
			win = c;
	}
	verses = json_dumps(names, JSON_COMPACT);
	json_decref(names);
	if (nlive == 0) {
		err = -EINVAL;
		goto out;
	}
	if (!win) {
		err = -ENOENT;
		goto out;
	}
	if (!verses) {
		err = -ENOMEM;
		goto out;
	}

	registry_now(now);
	for (size_t i = 0; i < parent->nverses && !err; i++) {
		struct entity *c = parent->verses[i];
		int64_t total;
		if (c == win || c->busy_creating || c->state != STATE_RUNNING)
			continue;
		err = ledger_total(&c->ledger, &total);
		if (!err && __builtin_add_overflow(wev, total, &wev))
			err = -EOVERFLOW;
		if (!err)
			err = collapse_subtree(c, now, &changed, &nchanged);
	}
	old_wev = parent->wev;
	strcpy(old_winner, parent->winner);
	if (!err)
		err = ledger_copy(&old_ledger, &parent->ledger);
	if (!err)
		err = ledger_copy(&parent->ledger, &win->ledger);
	if (err)
		goto undo;
	win->state = STATE_WON;
	strcpy(win->resolved_at, now);
	parent->wev = wev;
	strcpy(parent->winner, win->name);
	snprintf(oracle, sizeof(oracle), "resolve-file:uid=%u", (unsigned)uid);

	err = registry_begin(rt->reg);
	for (size_t i = 0; !err && i < nchanged; i++)
		err = registry_entity_put(rt->reg, changed[i].e);
	if (!err)
		err = registry_entity_put(rt->reg, win);
	if (!err)
		err = registry_entity_put(rt->reg, parent);
	if (!err)
		err = registry_ledger_put(rt->reg, parent->id, &parent->ledger);
	ms = now_ms() - t0;
	if (!err)
		err = registry_resolution_add(rt->reg, parent->id, verses, win->name, oracle, wev, ms);
	if (!err)
		err = registry_metric_add(rt->reg, parent->id, "resolve", ms);
	if (!err)
		err = registry_commit(rt->reg);
	else
		registry_rollback(rt->reg);
	if (!err) {
		for (size_t i = 0; i < nchanged; i++)
			changed[i].e->refs++;  /* for the teardown below */
		goto out;
	}
	win->state = STATE_RUNNING;
	win->resolved_at[0] = '\0';
	parent->wev = old_wev;
	strcpy(parent->winner, old_winner);
	ledger_copy(&parent->ledger, &old_ledger);
undo:
	for (size_t i = 0; i < nchanged; i++) {
		changed[i].e->state = changed[i].state;
		strcpy(changed[i].e->resolved_at, changed[i].resolved_at);
	}
	nchanged = 0;
out:
	pthread_mutex_unlock(&rt->lock);
	if (!err)
		runtime_log("resolved %s: %s won, %zu collapsed, wev %lld", parent->id, winner,
			    nchanged, (long long)wev);
	/* The collapsed verses' sandboxes stop after the resolution is durable. */
	for (size_t i = 0; i < nchanged; i++) {
		sandbox_drop(rt, changed[i].e);
		runtime_put(rt, changed[i].e);
	}
	ledger_release(&old_ledger);
	free(changed);
	free(verses);
	return err;
}

/* ---- values ---- */

int runtime_set_trit(struct runtime *rt, struct entity *e, int trit)
{
	int old, err;

	pthread_mutex_lock(&rt->lock);
	old = e->trit;
	e->trit = trit;
	err = e->removed ? -ENOENT : registry_entity_put(rt->reg, e);
	if (err)
		e->trit = old;
	pthread_mutex_unlock(&rt->lock);
	return err;
}

int runtime_set_prob(struct runtime *rt, struct entity *e, int64_t prob)
{
	int64_t old, sum = 0;
	int err = 0;

	pthread_mutex_lock(&rt->lock);
	if (e->removed) {
		err = -ENOENT;
		goto out;
	}
	if (e->parent && e->state == STATE_RUNNING) {
		for (size_t i = 0; i < e->parent->nverses; i++) {
			struct entity *c = e->parent->verses[i];
			if (c != e && c->state == STATE_RUNNING && !c->busy_creating)
				sum += c->prob;
		}
		if (sum + prob > PROB_ONE) {
			runtime_log("%s: prob: live siblings would sum above 1", e->id);
			err = -EINVAL;
			goto out;
		}
	}
	old = e->prob;
	e->prob = prob;
	err = registry_entity_put(rt->reg, e);
	if (err)
		e->prob = old;
out:
	pthread_mutex_unlock(&rt->lock);
	return err;
}

int runtime_set_balance(struct runtime *rt, struct entity *e, const char *owner, int64_t amount)
{
	int err;

	if (name_check(owner) < 0)
		return -EINVAL;
	pthread_mutex_lock(&rt->lock);
	err = e->removed ? -ENOENT : registry_balance_set(rt->reg, e->id, owner, amount);
	if (!err)
		err = ledger_set(&e->ledger, owner, amount);
	pthread_mutex_unlock(&rt->lock);
	return err;
}

int runtime_delete_balance(struct runtime *rt, struct entity *e, const char *owner)
{
	int err;

	pthread_mutex_lock(&rt->lock);
	if (e->removed || !ledger_get(&e->ledger, owner))
		err = -ENOENT;
	else
		err = registry_balance_delete(rt->reg, e->id, owner);
	if (!err)
		err = ledger_remove(&e->ledger, owner);
	pthread_mutex_unlock(&rt->lock);
	return err;
}

/* ---- info ---- */

char *runtime_info_json(struct runtime *rt, struct entity *e)
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
		sb = NULL;
		if (e->sb) {
			char *d = rt->be_ops->describe(e->sb);
			sb = d ? json_loads(d, 0, NULL) : NULL;
			free(d);
			if (!sb)
				sb = json_object();
			if (!json_object_get(sb, "status"))
				json_object_set_new(sb, "status", json_string("up"));
		} else {
			const char *status = "down";
			if ((e->state == STATE_RUNNING || e->state == STATE_WON) &&
			    rt->be_ops->probe(rt->be, e->id, e->handle) != SANDBOX_GONE)
				status = "suspended";
			sb = json_pack("{s:s,s:s}", "backend", rt->be_ops->name, "status", status);
		}
		json_object_set_new(o, "sandbox", sb);
	}
	if (!o)
		return NULL;
	s = json_dumps(o, JSON_OUT);
	json_decref(o);
	return s;
}

/* ---- open and close ---- */

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
		runtime_log("registry: %s: parent %s missing, skipped", row->id, parent_id);
		return 0;
	}
	e = entity_new(row->kind, row->name);
	if (!e)
		return -ENOMEM;
	{
		struct ledger l = row->ledger;
		pthread_mutex_t m = e->oplock;
		char *failure = row->failure ? strdup(row->failure) : NULL;
		*e = *row;
		e->oplock = m;
		e->ledger = (struct ledger){ 0 };
		e->failure = failure;
		e->refs = 1;
		e->parent = parent;
		e->verses = e->snapshots = NULL;
		e->nverses = e->nsnapshots = 0;
		e->sb = NULL;
		err = ledger_copy(&e->ledger, &l);
	}
	if (!err)
		err = entity_attach(c->rt, e);
	if (!err)
		err = array_add(&c->all, &c->n, e);
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
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
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
	rc = rt->be_ops->init(&rt->be, &rt->cfg, err, errlen);
	if (rc)
		goto fail;
	rc = registry_load(rt->reg, load_one, &c);
	if (rc) {
		snprintf(err, errlen, "%s: cannot load the registry: %s", path, strerror(-rc));
		goto fail;
	}
	/* What was up when worldfs stopped comes back lazily on first use; what
	 * cannot come back is failed now, with the reason, never dropped. */
	for (size_t i = 0; i < c.n; i++) {
		struct entity *e = c.all[i];
		enum sandbox_presence p;
		bool live = e->state == STATE_RUNNING || e->state == STATE_WON;

		if (e->kind == ENTITY_SNAPSHOT)
			continue;
		p = rt->be_ops->probe(rt->be, e->id, e->handle);
		if (live && p == SANDBOX_RUNNING) {
			/* Reattach now (cheap), so a clean unmount suspends it. */
			pthread_mutex_lock(&e->oplock);
			sandbox_ensure(rt, e);
			pthread_mutex_unlock(&e->oplock);
		} else if (live && p == SANDBOX_GONE && e->nsnapshots == 0) {
			mark_failed_locked(rt, e, "sandbox lost while worldfs was down (no process, no saved state)");
		} else if (!live && p != SANDBOX_GONE) {
			rt->be_ops->discard(rt->be, e->id, e->handle);
		}
	}
	rt->be_ops->collect_garbage(rt->be, known_id, &c);
	free(c.all);
	runtime_log("mounted: %zu entities, backend %s, state %s", c.n, rt->be_ops->name, cfg->state_dir);
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
	int err;

	pthread_mutex_lock(&j->e->oplock);
	err = j->rt->be_ops->suspend(j->e->sb);
	j->e->sb = NULL;
	pthread_mutex_unlock(&j->e->oplock);
	if (err)
		runtime_log("%s: suspend failed: %s", j->e->id, strerror(-err));
	return NULL;
}

static void free_tree(struct entity *e)
{
	for (size_t i = 0; i < e->nverses; i++)
		free_tree(e->verses[i]);
	for (size_t i = 0; i < e->nsnapshots; i++)
		free_tree(e->snapshots[i]);
	entity_free(e);
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
	runtime_log("unmounted: %zu sandboxes suspended", n);
	for (size_t i = 0; i < rt->nworlds; i++)
		free_tree(rt->worlds[i]);
	free(rt->worlds);
	rt->worlds = NULL;
	rt->nworlds = 0;
	if (rt->be)
		rt->be_ops->fini(rt->be);
	registry_close(rt->reg);
	if (rt->lock_fd >= 0)
		close(rt->lock_fd);
	rt->lock_fd = -1;
	pthread_mutex_destroy(&rt->lock);
}
