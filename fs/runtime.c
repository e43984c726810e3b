/* runtime.c: the World Runtime operations on the tree (create, branch,
 * snapshot, remove, exec, resolve, the values).  Order of work in every
 * mutation: validate and reserve under the tree lock, do backend work
 * without it (under the entity's oplock), then commit to the registry
 * (registry_finish) and publish in memory under the tree lock again. */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "fs/tree.h"
#include "backend/util/clock.h"
#include "backend/util/strbuf.h"
#include "backend/util/fault.h"

/* ---- sandboxes ---- */

/* What info shows of a sandbox, from whoever owns it (a backend call:
 * never under the tree lock). */
static char *describe(struct runtime *rt, struct sandbox *sb)
{
	return sb ? rt->be_ops->describe(sb) : NULL;
}

void sandbox_set_locked(struct runtime *rt, struct entity *e, struct sandbox *sb, char *desc, bool saved)
{
	e->sb = sb;
	if (sb) {
		e->used_at = now_ms();
		e->suspended_at[0] = '\0';
	}
	free(e->sb_desc);
	e->sb_desc = sb ? desc : NULL;
	if (!sb)
		free(desc);
	e->sb_saved = !sb && saved;
	rt->sb_changes++;
}

/* Under e->oplock: unset e's sandbox and destroy it (the world died). */
static void sandbox_kill(struct runtime *rt, struct entity *e)
{
	struct sandbox *old = e->sb;

	pthread_mutex_lock(&rt->lock);
	sandbox_set_locked(rt, e, NULL, NULL, false);
	pthread_mutex_unlock(&rt->lock);
	if (old)
		rt->be_ops->destroy(old);
}

/* With e->oplock held: make sure e's sandbox is up, resuming a suspended
 * one or reattaching one that kept running while worldfs was down. */
int sandbox_ensure(struct runtime *rt, struct entity *e)
{
	char handle[BACKEND_HANDLE_MAX] = "";
	struct sandbox *sb = NULL;
	char *desc;
	int err;

	double t0 = now_ms();

	pthread_mutex_lock(&rt->lock);
	err = e->removed ? -ENOENT : entity_state_errno(e);
	e->used_at = t0;
	pthread_mutex_unlock(&rt->lock);
	if (err)
		return err;
	if (e->sb)
		return 0;
	err = rt->be_ops->resume(rt->be, e->id, e->handle, &sb, handle);
	if (err) {
		/* Nothing left to resume (lost while worldfs was down): back to
		 * the latest snapshot, if any.  Other errors fail the world. */
		struct entity *snap = err == -ENOENT ? latest_snapshot(rt, e) : NULL;
		struct branch_info info;

		if (snap) {
			const char *id = e->id;

			err = rt->be_ops->branch(rt->be, NULL, snap->id, &id, 1, &sb, &handle, &info);
			if (!err)
				worldfs_log("%s: sandbox lost; restored from snapshot %s (%s)", e->id,
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
	desc = describe(rt, sb);
	pthread_mutex_lock(&rt->lock);
	/* An rmdir or a resolve does not wait for the oplock: e may have been
	 * removed (its registry row deleted: writing it again would bring e
	 * back at the next mount) or collapsed while it came back. */
	err = e->removed ? -ENOENT : entity_state_errno(e);
	if (!err) {
		int rerr;

		sandbox_set_locked(rt, e, sb, desc, false);
		desc = NULL;
		snprintf(e->handle, sizeof(e->handle), "%s", handle);
		rerr = registry_begin_lazy(rt->reg);
		if (!rerr)
			rerr = registry_entity_put(rt->reg, e);
		if (!rerr)
			rerr = registry_metric_add(rt->reg, e->id, "resume", now_ms() - t0);
		registry_finish(rt->reg, rerr);
	}
	pthread_mutex_unlock(&rt->lock);
	if (err) {
		free(desc);
		rt->be_ops->destroy(sb);
	}
	return err;
}

/* Stop and forget e's sandbox (collapse, remove). */
static void sandbox_drop(struct runtime *rt, struct entity *e)
{
	pthread_mutex_lock(&e->oplock);
	if (e->kind == ENTITY_SNAPSHOT) {
		rt->be_ops->snapshot_delete(rt->be, e->id);
	} else if (e->sb) {
		sandbox_kill(rt, e);
	} else {
		rt->be_ops->discard(rt->be, e->id, e->handle);
	}
	/* Under the tree lock too: registry_entity_put reads the handle
	 * there, and a collapsed verse is still written to (its trit). */
	pthread_mutex_lock(&rt->lock);
	e->handle[0] = '\0';
	pthread_mutex_unlock(&rt->lock);
	pthread_mutex_unlock(&e->oplock);
}

/* ---- create, branch, snapshot ---- */

/* Reserve a name: a busy entity in the tree, so concurrent mkdirs of the same
 * name get EEXIST and rmdir of the parent gets ENOTEMPTY.  It starts with
 * like's memory and vcpus (the mount's for a world) and its parent's
 * balances at this instant; a snapshot also keeps its world's trit and prob. */
static int reserve(struct runtime *rt, struct entity *parent, enum entity_kind kind, const char *name,
		   uid_t uid, gid_t gid, const struct entity *like, struct entity **out)
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
	if (kind != ENTITY_SNAPSHOT && rt->max_worlds && uid != rt->mount_uid &&
	    live_count_of(rt, uid) >= rt->max_worlds) {
		worldfs_log("uid %u holds max_worlds=%u live worlds and verses", (unsigned)uid, rt->max_worlds);
		return -EDQUOT;
	}
	e = entity_new(kind, name);
	if (!e)
		return -ENOMEM;
	e->parent = parent;
	e->uid = uid;
	e->gid = gid;
	e->busy_creating = true;
	e->state = STATE_RUNNING;
	e->prob = kind == ENTITY_WORLD ? PROB_ONE : 0;
	e->mem_mib = like ? like->mem_mib : rt->cfg.mem_mib;
	e->vcpus = like ? like->vcpus : rt->cfg.vcpus;
	if (kind == ENTITY_SNAPSHOT) {
		e->trit = parent->trit;
		e->prob = parent->prob;
	}
	err = parent ? ledger_copy(&e->ledger, &parent->ledger) : 0;
	if (!err)
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
	char handle[BACKEND_HANDLE_MAX] = "", *desc;
	double boot_ms = 0;
	int err;

	pthread_mutex_lock(&rt->lock);
	err = reserve(rt, NULL, ENTITY_WORLD, name, uid, gid, NULL, &e);
	pthread_mutex_unlock(&rt->lock);
	if (err)
		return err;

	err = rt->be_ops->create(rt->be, e->id, e->mem_mib, e->vcpus, &sb, handle, &boot_ms);
	fault_point("create-commit");
	desc = describe(rt, sb);

	pthread_mutex_lock(&rt->lock);
	if (!err) {
		sandbox_set_locked(rt, e, sb, desc, false);
		desc = NULL;
		snprintf(e->handle, sizeof(e->handle), "%s", handle);
		e->boot_ms = boot_ms;
		registry_now(e->created_at);
		err = registry_begin(rt->reg);
		if (!err)
			err = registry_entity_put(rt->reg, e);
		if (!err)
			err = registry_metric_add(rt->reg, e->id, "boot", boot_ms);
		err = registry_finish(rt->reg, err);
		if (err)
			sandbox_set_locked(rt, e, NULL, NULL, false);
	}
	if (err)
		unreserve_locked(rt, e);
	else
		e->busy_creating = false;
	pthread_mutex_unlock(&rt->lock);
	free(desc);
	if (err && sb)
		rt->be_ops->destroy(sb);
	if (!err)
		worldfs_log("created world %s (%s) in %.0f ms", name, e->id, boot_ms);
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

/* Probabilities given with a push_down (items with has_prob) must keep
 * the live children of parent within 1 in sum (rt->lock held). */
static int probs_fit(const struct entity *parent, const struct push_down_item *want, size_t n)
{
	int64_t sum = 0;
	bool any = false;

	for (size_t i = 0; i < n; i++)
		if (want[i].has_prob) {
			sum += want[i].prob;
			any = true;
		}
	if (!any)
		return 0;
	for (size_t i = 0; i < parent->nverses; i++)
		if (parent->verses[i]->state == STATE_RUNNING)
			sum += parent->verses[i]->prob;
	if (sum > PROB_ONE) {
		worldfs_log("%s: push_down: live children's probabilities would sum above 1", parent->id);
		return -EINVAL;
	}
	return 0;
}

/* "a b c": the names of a push_down, malloc'd. */
static char *names_joined(const struct push_down_item *want, size_t n)
{
	struct strbuf sb = STRBUF_INIT;

	for (size_t i = 0; i < n; i++)
		if (strbuf_addf(&sb, "%s%s", i ? " " : "", want[i].name) < 0) {
			strbuf_release(&sb);
			return NULL;
		}
	return strbuf_detach(&sb, NULL);
}

/* Verses want[0..n) from one instant of parent (a live world or verse, or
 * a snapshot), all or none: mkdir (one verse) and push_down.  One
 * branching event in the registry, of type fork (from the live state),
 * snapshot (from a snapshot) or push_down. */
static int branch_set(struct runtime *rt, struct entity *parent, const struct push_down_item *want, size_t n,
		      bool push_down, uid_t uid, gid_t gid)
{
	bool from_snapshot = parent->kind == ENTITY_SNAPSHOT;
	struct entity *src = from_snapshot ? parent->parent : parent; /* whose memory size */
	struct entity **e = calloc(n, sizeof(*e));
	struct sandbox **sb = calloc(n, sizeof(*sb));
	char (*handles)[BACKEND_HANDLE_MAX] = calloc(n, sizeof(*handles));
	const char **ids = calloc(n, sizeof(*ids));
	char **desc = calloc(n, sizeof(*desc));
	char *names = push_down ? names_joined(want, n) : NULL;   /* becomes parent's */
	char *logged = push_down ? names_joined(want, n) : NULL;
	struct branch_info info = { 0 };
	size_t reserved = 0;
	int err = 0;

	if (!e || !sb || !handles || !ids || !desc || (push_down && (!names || !logged))) {
		err = -ENOMEM;
		goto out;
	}
	pthread_mutex_lock(&rt->lock);
	err = from_snapshot ? 0 : entity_state_errno(parent);
	if (!err)
		err = probs_fit(parent, want, n);
	for (; !err && reserved < n; reserved++) {
		err = reserve(rt, parent, ENTITY_VERSE, want[reserved].name, uid, gid, src, &e[reserved]);
		if (err)
			break;
		if (want[reserved].has_prob)
			e[reserved]->prob = want[reserved].prob;
		ids[reserved] = e[reserved]->id;
	}
	if (err)
		for (size_t i = 0; i < reserved; i++)
			unreserve_locked(rt, e[i]);
	pthread_mutex_unlock(&rt->lock);
	if (err)
		goto out;

	if (from_snapshot) {
		err = rt->be_ops->branch(rt->be, NULL, parent->id, ids, n, sb, handles, &info);
	} else {
		struct held_parent h = { .oplock = &parent->oplock, .held = true };

		pthread_mutex_lock(&parent->oplock);
		info.parent_done = parent_release;
		info.parent_done_arg = &h;
		err = sandbox_ensure(rt, parent);
		if (!err)
			err = rt->be_ops->branch(rt->be, parent->sb, NULL, ids, n, sb, handles, &info);
		parent_release(&h);
	}
	fault_point("branch-commit");
	for (size_t i = 0; !err && i < n; i++)
		desc[i] = describe(rt, sb[i]);

	pthread_mutex_lock(&rt->lock);
	/* A live parent may have been collapsed (a resolve above it) or
	 * failed meanwhile: then no verse is made at all. */
	if (!err)
		err = parent->removed ? -ENOENT : from_snapshot ? 0 : entity_state_errno(parent);
	if (!err) {
		unsigned old_count = parent->branch_count;
		char *old_names = parent->push_down;

		for (size_t i = 0; i < n; i++) {
			sandbox_set_locked(rt, e[i], sb[i], desc[i], false);
			desc[i] = NULL;
			snprintf(e[i]->handle, sizeof(e[i]->handle), "%s", handles[i]);
			e[i]->trit = trit_for_child(parent->branch_count++);
			e[i]->boot_ms = info.total_ms;
			registry_now(e[i]->created_at);
			e[i]->busy_creating = false;  /* gf3 below counts it */
		}
		if (push_down)
			parent->push_down = names;
		err = registry_begin(rt->reg);
		for (size_t i = 0; !err && i < n; i++) {
			err = registry_entity_put(rt->reg, e[i]);
			if (!err)
				err = registry_ledger_put(rt->reg, e[i]->id, &e[i]->ledger);
		}
		if (!err)
			err = registry_entity_put(rt->reg, parent);
		if (!err)
			err = registry_branch_add(rt->reg, parent->id, ids, n,
						  push_down ? "push_down" : from_snapshot ? "snapshot" : "fork",
						  info.snapshot_time_ms, runtime_gf3(parent));
		if (!err)
			err = registry_metric_add(rt->reg, push_down ? parent->id : e[0]->id,
						  push_down ? "push_down" : "branch", info.total_ms);
		err = registry_finish(rt->reg, err);
		if (err) {
			parent->branch_count = old_count;
			if (push_down)
				parent->push_down = old_names;
			for (size_t i = 0; i < n; i++)
				e[i]->busy_creating = true;
		} else if (push_down) {
			free(old_names);
			names = NULL;
		}
	}
	if (err)
		for (size_t i = 0; i < n; i++) {
			sandbox_set_locked(rt, e[i], NULL, NULL, false);
			unreserve_locked(rt, e[i]);
		}
	pthread_mutex_unlock(&rt->lock);
	for (size_t i = 0; i < n; i++)
		if (err && sb[i])
			rt->be_ops->destroy(sb[i]);
	if (!err && !push_down)
		worldfs_log("branched %s (%s) from %s in %.0f ms (parent paused %.1f ms)", want[0].name, e[0]->id,
			    parent->id, info.total_ms, info.snapshot_time_ms);
	else if (!err)
		worldfs_log("pushed down %zu verses from %s in %.0f ms (parent paused %.1f ms): %s", n, parent->id,
			    info.total_ms, info.snapshot_time_ms, logged);
out:
	for (size_t i = 0; e && i < reserved; i++)
		runtime_put(rt, e[i]);
	for (size_t i = 0; desc && i < n; i++)
		free(desc[i]);
	free(e);
	free(sb);
	free(handles);
	free(ids);
	free(desc);
	free(names);
	free(logged);
	return err;
}

int runtime_branch(struct runtime *rt, struct entity *parent, const char *name, uid_t uid, gid_t gid)
{
	struct push_down_item one = { .has_prob = false };

	if (strlen(name) > NAME_MAX_LEN)
		return -EINVAL;
	strcpy(one.name, name);
	return branch_set(rt, parent, &one, 1, false, uid, gid);
}

int runtime_push_down(struct runtime *rt, struct entity *parent, const char *text, size_t len, uid_t uid,
		      gid_t gid)
{
	struct push_down_item *want = calloc(PUSH_DOWN_MAX, sizeof(*want));
	size_t n = 0;
	int err;

	if (!want)
		return -ENOMEM;
	err = push_down_parse(text, len, want, &n);
	if (err)
		worldfs_log("%s: push_down: %s", parent->id,
			    err == -E2BIG ? "more than 64 names" : "expected names (NAME or NAME:PROB) apart");
	else
		err = branch_set(rt, parent, want, n, true, uid, gid);
	free(want);
	return err;
}

int runtime_snapshot(struct runtime *rt, struct entity *w, const char *name, uid_t uid, gid_t gid)
{
	struct snapshot_info info = { 0 };
	struct entity *s;
	double t0 = now_ms();
	bool made;
	int err;

	pthread_mutex_lock(&rt->lock);
	err = entity_state_errno(w);
	if (!err)
		err = reserve(rt, w, ENTITY_SNAPSHOT, name, uid, gid, w, &s);
	pthread_mutex_unlock(&rt->lock);
	if (err)
		return err;

	pthread_mutex_lock(&w->oplock);
	err = sandbox_ensure(rt, w);
	if (!err)
		err = rt->be_ops->snapshot(w->sb, s->id, &info);
	pthread_mutex_unlock(&w->oplock);
	fault_point("snapshot-commit");

	pthread_mutex_lock(&rt->lock);
	made = !err;
	/* The same bar as at the start: w may have collapsed meanwhile. */
	if (!err)
		err = w->removed ? -ENOENT : entity_state_errno(w);
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
		err = registry_finish(rt->reg, err);
	}
	if (err && made)
		rt->be_ops->snapshot_delete(rt->be, s->id);
	if (err)
		unreserve_locked(rt, s);
	else
		s->busy_creating = false;
	pthread_mutex_unlock(&rt->lock);
	runtime_put(rt, s);
	return err;
}

/* ---- remove ---- */

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
	err = subtree_collect(e, &all, &n);
	if (err)
		goto out_locked;
	err = registry_begin(rt->reg);
	for (size_t i = 0; !err && i < n; i++)
		err = registry_entity_delete(rt->reg, all[i]->id);
	err = registry_finish(rt->reg, err);
	if (err)
		goto out_locked;
	entity_detach(rt, e);
	for (size_t i = 0; i < n; i++) {
		all[i]->removed = true;
		all[i]->refs++;  /* ours, for the teardown below */
		interrupt_run_locked(rt, all[i]);
	}
	pthread_mutex_unlock(&rt->lock);
	fault_point("remove-drop");

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

void runtime_file_use(struct runtime *rt, struct entity *e, int delta)
{
	/* Reading info or state answers from the registry: it is no use of
	 * the sandbox, and a `watch cat w/info` must not keep w awake. */
	pthread_mutex_lock(&rt->lock);
	e->open_files += (unsigned)delta;
	pthread_mutex_unlock(&rt->lock);
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
		int cut;

		pthread_mutex_lock(&rt->lock);
		e->running = true;
		e->files_gen++;
		pthread_mutex_unlock(&rt->lock);
		err = rt->be_ops->exec(e->sb, code, len, res);
		pthread_mutex_lock(&rt->lock);
		e->running = false;
		e->files_gen++;
		e->used_at = now_ms();
		/* Removed or collapsed meanwhile: an error is the interruption. */
		cut = e->removed ? -ENOENT : e->state == STATE_COLLAPSED ? -EROFS : 0;
		pthread_mutex_unlock(&rt->lock);
		record = ran = err == 0;
		if (!err) {
			/* What the run changed there (the sessions alive). */
			char *desc = describe(rt, e->sb);

			pthread_mutex_lock(&rt->lock);
			sandbox_set_locked(rt, e, e->sb, desc, false);
			pthread_mutex_unlock(&rt->lock);
		} else if (cut) {
			sandbox_kill(rt, e);
			record = lost_run(res, "[worldfs: run cut short: this verse was %s]\n",
					  cut == -ENOENT ? "removed" : "collapsed") == 0;
			err = cut;
		} else {
			char why[256];

			snprintf(why, sizeof(why), "sandbox died during a run: %s", strerror(-err));
			sandbox_kill(rt, e);
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
		rerr = registry_finish(rt->reg, rerr);
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
	if (!err && res->timed_out) {
		worldfs_log("%s: run killed after exec_timeout", e->id);
		err = -ETIMEDOUT;
	}
out:
	pthread_mutex_unlock(&e->oplock);
	return err;
}

/* ---- guest files ---- */

int runtime_fs(struct runtime *rt, struct entity *e, const struct fs_req *req, uint8_t **reply, size_t *len)
{
	int err;

	pthread_mutex_lock(&e->oplock);
	err = sandbox_ensure(rt, e);
	if (!err && !rt->be_ops->fs)
		err = -ENOTSUP;
	if (!err) {
		err = rt->be_ops->fs(e->sb, req, reply, len);
		if (err == -EIO) {
			sandbox_kill(rt, e);
			mark_failed(rt, e, "sandbox died during a file operation in fs/");
		}
	}
	pthread_mutex_lock(&rt->lock);
	e->used_at = now_ms();
	if (req->op != FS_STAT && req->op != FS_READDIR && req->op != FS_READ && req->op != FS_READLINK &&
	    req->op != FS_DIFF)
		e->files_gen++;
	pthread_mutex_unlock(&rt->lock);
	pthread_mutex_unlock(&e->oplock);
	return err;
}

uint64_t runtime_files_gen(struct runtime *rt, struct entity *e)
{
	uint64_t g;

	pthread_mutex_lock(&rt->lock);
	g = e->files_gen;
	pthread_mutex_unlock(&rt->lock);
	return g;
}

/* ---- resolve ---- */

struct saved_state {
	struct entity *e;
	enum entity_state state;
	char resolved_at[32];
};

/* A verse still being made is left alone: its branch finds its parent
 * collapsed when it commits, and undoes itself (see runtime_branch). */
static int collapse_subtree(struct entity *e, const char *now, struct saved_state **v, size_t *n)
{
	if (e->busy_creating)
		return 0;
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
	fault_point("resolve-commit");

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
	err = registry_finish(rt->reg, err);
	if (!err) {
		for (size_t i = 0; i < nchanged; i++) {
			changed[i].e->refs++;  /* for the teardown below */
			interrupt_run_locked(rt, changed[i].e);
		}
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
		worldfs_log("resolved %s: %s won, %zu collapsed, wev %lld", parent->id, winner,
			    nchanged, (long long)wev);
	/* The collapsed verses' sandboxes stop after the resolution is durable. */
	if (nchanged)
		fault_point("resolve-drop");
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

int runtime_state_errno(struct runtime *rt, struct entity *e)
{
	int err;

	pthread_mutex_lock(&rt->lock);
	err = entity_state_errno(e);
	pthread_mutex_unlock(&rt->lock);
	return err;
}

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
			worldfs_log("%s: prob: live siblings would sum above 1", e->id);
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

/* Set owner's amount in e's ledger and the registry (rt->lock held). */
static int set_balance_locked(struct runtime *rt, struct entity *e, const char *owner, int64_t amount)
{
	int err = e->removed ? -ENOENT : registry_balance_set(rt->reg, e->id, owner, amount);

	return err ? err : ledger_set(&e->ledger, owner, amount);
}

int runtime_set_balance(struct runtime *rt, struct entity *e, const char *owner, int64_t amount)
{
	int err;

	if (name_check(owner) < 0)
		return -EINVAL;
	pthread_mutex_lock(&rt->lock);
	err = set_balance_locked(rt, e, owner, amount);
	pthread_mutex_unlock(&rt->lock);
	return err;
}

int runtime_add_balance(struct runtime *rt, struct entity *e, const char *owner, bool *made)
{
	int err = 0;

	*made = false;
	if (name_check(owner) < 0)
		return -EINVAL;
	pthread_mutex_lock(&rt->lock);
	if (e->removed || !ledger_get(&e->ledger, owner))
		*made = !(err = set_balance_locked(rt, e, owner, 0));
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
