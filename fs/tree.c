/* tree.c: the in-memory world tree: entities, their references, their
 * places among their siblings, finding them by name, walking subtrees,
 * marking one failed, and what each uid holds (live worlds, runs, code).  Callers hold rt->lock unless a function says
 * otherwise. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/tree.h"

struct entity *entity_new(enum entity_kind kind, const char *name)
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

void entity_free(struct entity *e)
{
	free(e->verses);
	free(e->snapshots);
	free(e->failure);
	free(e->push_down);
	free(e->sb_desc);
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

int entity_array_add(struct entity ***v, size_t *n, struct entity *e)
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

int entity_attach(struct runtime *rt, struct entity *e)
{
	struct entity ***v;
	size_t *n;

	entity_siblings(rt, e, &v, &n);
	return entity_array_add(v, n, e);
}

void entity_detach(struct runtime *rt, struct entity *e)
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

/* Running, or being made (a snapshot too: its files are being written). */
static bool is_live(const struct entity *e)
{
	return e->busy_creating || (e->kind != ENTITY_SNAPSHOT && e->state == STATE_RUNNING);
}

bool subtree_has_live(const struct entity *e)
{
	for (size_t i = 0; i < e->nverses; i++)
		if (is_live(e->verses[i]) || subtree_has_live(e->verses[i]))
			return true;
	for (size_t i = 0; i < e->nsnapshots; i++)
		if (is_live(e->snapshots[i]) || subtree_has_live(e->snapshots[i]))
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
void mark_failed_locked(struct runtime *rt, struct entity *e, const char *why)
{
	char path[1024];

	runtime_path(e, path, sizeof(path));
	worldfs_log("%s (%s): failed: %s", path, e->id, why);
	e->state = STATE_FAILED;
	free(e->failure);
	e->failure = strdup(why);
	registry_entity_put(rt->reg, e);
}

void interrupt_run_locked(struct runtime *rt, struct entity *e)
{
	/* e->running is set only while e->sb is attached and exec holds it,
	 * so the sandbox cannot be destroyed under the call. */
	if (e->running && e->sb && rt->be_ops->interrupt)
		rt->be_ops->interrupt(e->sb);
}

void mark_failed(struct runtime *rt, struct entity *e, const char *why)
{
	pthread_mutex_lock(&rt->lock);
	if (!e->removed)
		mark_failed_locked(rt, e, why);
	pthread_mutex_unlock(&rt->lock);
}

/* e's newest snapshot, referenced, or NULL.  None once e is removed: an
 * rmdir frees the snapshots it took out while e->snapshots still points
 * to them (the caller's own check of e->removed was under an earlier
 * hold of the lock). */
struct entity *latest_snapshot(struct runtime *rt, struct entity *e)
{
	struct entity *snap = NULL;

	pthread_mutex_lock(&rt->lock);
	for (size_t i = e->removed ? 0 : e->nsnapshots; i-- > 0;)
		if (!e->snapshots[i]->busy_creating) {
			snap = e->snapshots[i];
			runtime_get(snap);
			break;
		}
	pthread_mutex_unlock(&rt->lock);
	return snap;
}

/* Post-order list of e's subtree including e. */
static size_t live_below(const struct entity *e, uid_t uid)
{
	size_t n = e->uid == uid && e->kind != ENTITY_SNAPSHOT && is_live(e);

	for (size_t i = 0; i < e->nverses; i++)
		n += live_below(e->verses[i], uid);
	for (size_t i = 0; i < e->nsnapshots; i++)
		n += live_below(e->snapshots[i], uid);
	return n;
}

size_t live_count_of(struct runtime *rt, uid_t uid)
{
	size_t n = 0;

	for (size_t i = 0; i < rt->nworlds; i++)
		n += live_below(rt->worlds[i], uid);
	return n;
}

int subtree_collect(struct entity *e, struct entity ***v, size_t *n)
{
	int err = 0;

	for (size_t i = 0; !err && i < e->nverses; i++)
		err = subtree_collect(e->verses[i], v, n);
	for (size_t i = 0; !err && i < e->nsnapshots; i++)
		err = subtree_collect(e->snapshots[i], v, n);
	return err ? err : entity_array_add(v, n, e);
}

void subtree_free(struct entity *e)
{
	for (size_t i = 0; i < e->nverses; i++)
		subtree_free(e->verses[i]);
	for (size_t i = 0; i < e->nsnapshots; i++)
		subtree_free(e->snapshots[i]);
	entity_free(e);
}

/* What one uid holds now (runtime.h): runs and code bytes. */
int runtime_charge(struct runtime *rt, uid_t uid, int runs, long long code)
{
	struct uid_use *u = NULL;
	int err = 0;

	pthread_mutex_lock(&rt->lock);
	for (size_t i = 0; i < rt->nuses && !u; i++)
		if (rt->uses[i].uid == uid)
			u = &rt->uses[i];
	if (!u && (runs > 0 || code > 0)) {
		struct uid_use *v = realloc(rt->uses, (rt->nuses + 1) * sizeof(*v));

		if (!v) {
			err = -ENOMEM;
			goto out;
		}
		rt->uses = v;
		u = &v[rt->nuses++];
		*u = (struct uid_use){ .uid = uid };
	}
	if (!u)
		goto out;
	if (uid != rt->mount_uid && runs > 0 && u->runs + (unsigned)runs > RUNS_PER_UID) {
		worldfs_log("uid %u has %u runs waiting or running, the most one user may: refused", (unsigned)uid,
			    u->runs);
		err = -EAGAIN;
	} else if (uid != rt->mount_uid && code > 0 && u->code + (size_t)code > CODE_PER_UID) {
		worldfs_log("uid %u holds %zu bytes of code not yet run, the most one user may: refused", (unsigned)uid,
			    u->code);
		err = -EDQUOT;
	} else {
		u->runs = runs < 0 && (unsigned)-runs > u->runs ? 0 : u->runs + runs;
		u->code = code < 0 && (size_t)-code > u->code ? 0 : u->code + code;
	}
out:
	pthread_mutex_unlock(&rt->lock);
	return err;
}
