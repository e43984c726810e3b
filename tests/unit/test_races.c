/* test_races.c: many threads on one runtime at once, as FUSE's threads
 * would be (fake backend): mkdir of worlds, verses and snapshots, resolve,
 * rmdir of them, runs, values written, and cat of info, .worldfs/entities
 * and directory listings with stat.  Each thread does a fixed number of
 * rounds, first on a fresh mount, then again on its remount while the
 * background recovery still runs.  Every call ends in success or in an
 * error the race explains (EEXIST, ENOENT, ENOTEMPTY, EROFS, EINVAL for
 * resolving nothing live; never EIO); then what memory holds, what the
 * backend runs and what the registry brings back must agree.  Beside it,
 * one race set up step by step: a resolve while the remount's recovery
 * looks for a lost sandbox.  Built with -Db_sanitize=thread (build-tsan),
 * this is where ThreadSanitizer looks. */
#include <jansson.h>
#include <sqlite3.h>
#include <stdint.h>

#include "fs/node.h"
#include "fake_backend.h"

#define ROUNDS 300

static const char *const worlds[] = { "w0", "w1" };
static const char *const verses[] = { "a", "b", "c" };
static const char *const snaps[] = { "s0", "s1" };
#define NWORLDS 2
#define NVERSES 3
#define NSNAPS 2

enum op {
	OP_CREATE, OP_BRANCH, OP_RESOLVE, OP_REMOVE, OP_SNAPSHOT, OP_EXEC, OP_VALUE, OP_READ, OP_LIST, N_OPS
};
static const char *const op_names[N_OPS] = {
	"create", "branch", "resolve", "remove", "snapshot", "exec", "value", "read", "list",
};

/* One thread's work: what it tried, what succeeded, and the first result
 * no race explains (cmocka's asserts belong to the main thread). */
struct worker {
	struct runtime *rt;
	pthread_barrier_t *start;  /* all begin together, or the first may be done before the last starts */
	void *(*fn)(void *);
	unsigned long tried[N_OPS], done[N_OPS];
	char bad[256];
	pthread_t thread;
};

/* rc is 0 or one of the errors listed (the list ends with 0): else the
 * worker remembers what went wrong.  Returns whether rc was fine. */
static bool expect(struct worker *w, enum op op, const char *path, int rc, ...)
{
	va_list ap;
	int ok = 0;

	w->tried[op]++;
	if (rc == 0) {
		w->done[op]++;
		return true;
	}
	va_start(ap, rc);
	while ((ok = va_arg(ap, int)) != 0 && ok != rc)
		;
	va_end(ap);
	if (ok == 0 && !w->bad[0])
		snprintf(w->bad, sizeof(w->bad), "%s %s: %s", op_names[op], path, strerror(-rc));
	return ok != 0;
}

/* The entity directory at path, referenced, as a FUSE call finds it; NULL
 * if it is not there (now). */
static struct entity *find(struct worker *w, const char *path, struct node *n)
{
	int rc = node_lookup(w->rt, path, 0, n);

	if (rc == 0 && n->type == NODE_ENTITY_DIR)
		return n->e;
	if (rc == 0) {
		snprintf(w->bad, sizeof(w->bad), "lookup %s: not a directory", path);
		node_release(w->rt, n);
	} else if (rc != -ENOENT && !w->bad[0]) {
		snprintf(w->bad, sizeof(w->bad), "lookup %s: %s", path, strerror(-rc));
	}
	return NULL;
}

static void create(struct worker *w, const char *name)
{
	expect(w, OP_CREATE, name, runtime_create_world(w->rt, name, 0, 0), -EEXIST, 0);
}

static void branch(struct worker *w, const char *dir, const char *name)
{
	struct node n;
	struct entity *e = find(w, dir, &n);

	if (!e)
		return;
	/* ENOENT: dir went away meanwhile; EROFS: it collapsed. */
	expect(w, OP_BRANCH, dir, runtime_branch(w->rt, e, name, 0, 0), -EEXIST, -ENOENT, -EROFS, 0);
	node_release(w->rt, &n);
}

static void resolve(struct worker *w, const char *dir, const char *winner)
{
	struct node n;
	struct entity *e = find(w, dir, &n);

	if (!e)
		return;
	/* EINVAL: no live verse there; ENOENT: not the winner's. */
	expect(w, OP_RESOLVE, dir, runtime_resolve(w->rt, e, winner, 0), -EINVAL, -ENOENT, 0);
	node_release(w->rt, &n);
}

static void remove_dir(struct worker *w, const char *dir)
{
	struct node n;
	struct entity *e = find(w, dir, &n);

	if (!e)
		return;
	expect(w, OP_REMOVE, dir, runtime_remove(w->rt, e), -ENOENT, -ENOTEMPTY, 0);
	node_release(w->rt, &n);
}

static void snapshot(struct worker *w, const char *dir, const char *name)
{
	struct node n;
	struct entity *e = find(w, dir, &n);

	if (!e)
		return;
	expect(w, OP_SNAPSHOT, dir, runtime_snapshot(w->rt, e, name, 0, 0), -EEXIST, -ENOENT, -EROFS, 0);
	node_release(w->rt, &n);
}

/* A run prints its code (the fake's session): a run that happened shows
 * it, one refused in a collapsed verse says so in its own status. */
static void run(struct worker *w, const char *dir, unsigned round)
{
	struct run_result res;
	struct node n;
	struct entity *e = find(w, dir, &n);
	char code[32];
	int rc, len;

	if (!e)
		return;
	len = snprintf(code, sizeof(code), "echo %u", round);
	rc = runtime_exec(w->rt, e, code, (size_t)len, &res);
	if (expect(w, OP_EXEC, dir, rc, -ENOENT, -EROFS, 0)) {
		if (rc == 0 && (res.status != 0 || res.out_len != (size_t)len || memcmp(res.out, code, len) != 0))
			snprintf(w->bad, sizeof(w->bad), "exec %s: stdout or status is not the run's", dir);
		if (rc == -EROFS && res.status != 255)
			snprintf(w->bad, sizeof(w->bad), "exec %s: refused run has status %d", dir, res.status);
	}
	run_result_release(&res);
	node_release(w->rt, &n);
}

/* echo T > dir/trit and echo N > dir/balance/OWNER: in a collapsed verse
 * too (its values stay writable), so while its sandbox is dropped. */
static void values(struct worker *w, const char *dir, unsigned round)
{
	struct node n;
	struct entity *e = find(w, dir, &n);

	if (!e)
		return;
	expect(w, OP_VALUE, dir, runtime_set_trit(w->rt, e, (int)(round % 3) - 1), -ENOENT, 0);
	expect(w, OP_VALUE, dir, runtime_set_balance(w->rt, e, "alice", round), -ENOENT, 0);
	node_release(w->rt, &n);
}

/* What cat shows in a file: info and .worldfs/entities are lines of JSON;
 * stdout is empty or what a run printed (its code, with the fake). */
static void check_content(struct worker *w, const char *path, const char *buf, size_t len)
{
	char *text = malloc(len + 1), *line, *save = NULL;

	if (!text)
		abort();
	memcpy(text, buf, len);
	text[len] = '\0';
	if (strcmp(strrchr(path, '/'), "/stdout") == 0) {
		if (len && strncmp(text, "echo ", 5) != 0)
			snprintf(w->bad, sizeof(w->bad), "cat %s: not a run's output: %.60s", path, text);
		free(text);
		return;
	}
	if (strlen(text) != len)
		snprintf(w->bad, sizeof(w->bad), "cat %s: a NUL in the text", path);
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		json_t *j = json_loads(line, 0, NULL);

		if (!j)
			snprintf(w->bad, sizeof(w->bad), "cat %s: not JSON: %.100s", path, line);
		json_decref(j);
	}
	free(text);
}

/* cat path, unless it is not there (now). */
static void cat(struct worker *w, const char *path)
{
	struct node n;
	char *buf;
	size_t len;
	int rc = node_lookup(w->rt, path, 0, &n);

	if (rc != 0) {
		if (rc != -ENOENT && !w->bad[0])
			snprintf(w->bad, sizeof(w->bad), "lookup %s: %s", path, strerror(-rc));
		return;
	}
	/* ENOENT: its directory went away since the lookup. */
	rc = node_render(w->rt, &n, &buf, &len);
	if (expect(w, OP_READ, path, rc, -ENOENT, 0) && rc == 0) {
		/* An empty file may come as no buffer at all. */
		if (buf || len)
			check_content(w, path, buf, len);
		free(buf);
	}
	node_release(w->rt, &n);
}

struct names {
	char v[64][NAME_MAX_LEN + 1];
	int n;
};

static void add_name(void *ctx, const char *name)
{
	struct names *l = ctx;

	if (l->n < 64)
		snprintf(l->v[l->n++], sizeof(l->v[0]), "%s", name);
}

/* ls -l dir: each name listed is stat'ed, unless it went away since,
 * and dir is listed again (ls reads until the end), the node held
 * meanwhile as by a readdir that looked dir up just before an rmdir. */
static void list(struct worker *w, const char *dir)
{
	struct names l = { .n = 0 };
	struct node n, c;
	struct stat st;
	char path[160];
	int rc = node_lookup(w->rt, dir, 0, &n);

	if (rc == -ENOENT)
		return;
	if (!expect(w, OP_LIST, dir, rc, 0))
		return;
	/* ENOENT: dir was removed since the lookup. */
	expect(w, OP_LIST, dir, node_list(w->rt, &n, add_name, &l), -ENOENT, 0);
	for (int i = 0; i < l.n; i++) {
		snprintf(path, sizeof(path), "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, l.v[i]);
		if (node_lookup(w->rt, path, 0, &c) != 0)
			continue;
		rc = node_stat(w->rt, &c, &st);
		/* A file of an entity removed since renders ENOENT. */
		if (expect(w, OP_LIST, path, rc, -ENOENT, 0) && rc == 0 && st.st_mode != node_mode(&c))
			snprintf(w->bad, sizeof(w->bad), "stat %s: mode %o, not %o", path, st.st_mode, node_mode(&c));
		node_release(w->rt, &c);
	}
	l.n = 0;
	expect(w, OP_LIST, dir, node_list(w->rt, &n, add_name, &l), -ENOENT, 0);
	node_release(w->rt, &n);
}

/* (a) mkdir W (unless there) and its verses (live, nested, from a
 * snapshot), and resolve. */
static void *brancher(void *arg)
{
	struct worker *w = arg;
	char dir[64], sub[64];

	for (unsigned i = 0; i < ROUNDS && !w->bad[0]; i++) {
		const char *world = worlds[i % NWORLDS];

		snprintf(dir, sizeof(dir), "/%s", world);
		create(w, world);
		branch(w, dir, verses[i % NVERSES]);
		branch(w, dir, verses[(i + 1) % NVERSES]);
		snprintf(sub, sizeof(sub), "/%s/%s", world, verses[i % NVERSES]);
		branch(w, sub, "d");
		if (i % 3 == 0) {
			snprintf(sub, sizeof(sub), "/%s/snapshot/%s", world, snaps[i / NWORLDS % NSNAPS]);
			branch(w, sub, "x");
		}
		if (i % 3 == 2) {
			snprintf(sub, sizeof(sub), "/%s/%s", world, verses[i % NVERSES]);
			resolve(w, sub, "d");
			resolve(w, dir, verses[i % NVERSES]);
		}
	}
	return NULL;
}

/* (b) rmdir verses, snapshots' verses and worlds, and mkdir the worlds again. */
static void *remover(void *arg)
{
	struct worker *w = arg;
	char dir[64];

	for (unsigned i = 0; i < ROUNDS && !w->bad[0]; i++) {
		const char *world = worlds[(i / 2) % NWORLDS];

		snprintf(dir, sizeof(dir), "/%s/%s/d", world, verses[i % NVERSES]);
		remove_dir(w, dir);
		snprintf(dir, sizeof(dir), "/%s/%s", world, verses[(i + 2) % NVERSES]);
		remove_dir(w, dir);
		snprintf(dir, sizeof(dir), "/%s/snapshot/%s/x", world, snaps[i % NSNAPS]);
		remove_dir(w, dir);
		if (i % 4 == 3) {
			snprintf(dir, sizeof(dir), "/%s", world);
			remove_dir(w, dir);
			create(w, world);
		}
	}
	return NULL;
}

/* (c) mkdir W (unless there), mkdir W/snapshot/S and V/snapshot/S, rmdir
 * them (and the verse branched from one first). */
static void *snapshotter(void *arg)
{
	struct worker *w = arg;
	char dir[64];

	for (unsigned i = 0; i < ROUNDS && !w->bad[0]; i++) {
		const char *world = worlds[i % NWORLDS];

		create(w, world);
		snprintf(dir, sizeof(dir), "/%s", world);
		snapshot(w, dir, snaps[i / NWORLDS % NSNAPS]);
		snprintf(dir, sizeof(dir), "/%s/%s", world, verses[i % NVERSES]);
		snapshot(w, dir, snaps[i / NWORLDS % NSNAPS]);
		snprintf(dir, sizeof(dir), "/%s/snapshot/%s/x", world, snaps[(i / NWORLDS + 1) % NSNAPS]);
		remove_dir(w, dir);
		snprintf(dir, sizeof(dir), "/%s/snapshot/%s", world, snaps[(i / NWORLDS + 1) % NSNAPS]);
		remove_dir(w, dir);
		snprintf(dir, sizeof(dir), "/%s/%s/snapshot/%s", world, verses[(i + 1) % NVERSES],
			 snaps[(i / NWORLDS + 1) % NSNAPS]);
		remove_dir(w, dir);
	}
	return NULL;
}

/* (d) mkdir W (unless there), runs in worlds and verses, and their values. */
static void *runner(void *arg)
{
	struct worker *w = arg;
	char dir[64];

	for (unsigned i = 0; i < ROUNDS && !w->bad[0]; i++) {
		const char *world = worlds[i % NWORLDS];

		create(w, world);
		snprintf(dir, sizeof(dir), "/%s", world);
		run(w, dir, i);
		snprintf(dir, sizeof(dir), "/%s/%s", world, verses[i % NVERSES]);
		run(w, dir, i);
		values(w, dir, i);
		snprintf(dir, sizeof(dir), "/%s/%s/d", world, verses[(i + 1) % NVERSES]);
		run(w, dir, i);
		values(w, dir, i);
		snprintf(dir, sizeof(dir), "/%s/snapshot/%s/x", world, snaps[i / NWORLDS % NSNAPS]);
		run(w, dir, i);
	}
	return NULL;
}

/* (e) cat .worldfs/entities, info and the other files; ls -l the directories. */
static void *reader(void *arg)
{
	struct worker *w = arg;
	char path[64];

	for (unsigned i = 0; i < ROUNDS && !w->bad[0]; i++) {
		const char *world = worlds[i % NWORLDS];
		const char *v = verses[i % NVERSES];

		cat(w, "/.worldfs/entities");
		snprintf(path, sizeof(path), "/%s/info", world);
		cat(w, path);
		snprintf(path, sizeof(path), "/%s/%s/info", world, v);
		cat(w, path);
		snprintf(path, sizeof(path), "/%s/snapshot/%s/info", world, snaps[i / NWORLDS % NSNAPS]);
		cat(w, path);
		snprintf(path, sizeof(path), "/%s/%s/stdout", world, v);
		cat(w, path);
		list(w, "/");
		snprintf(path, sizeof(path), "/%s", world);
		list(w, path);
		snprintf(path, sizeof(path), "/%s/%s", world, v);
		list(w, path);
		snprintf(path, sizeof(path), "/%s/snapshot", world);
		list(w, path);
	}
	return NULL;
}

static void *work(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(w->start);
	return w->fn(w);
}

/* ---- what the tree holds once everyone is done ---- */

struct census {
	char lines[512][320];   /* one per entity: path, kind, state, values, last status */
	int n;
	int up;                 /* worlds and verses running or won, their sandbox up */
	int saved;              /* ... suspended (after a remount, until first use) */
	int lost;               /* ... neither */
	int snapshots;
	int busy;               /* still being made */
	int dropped_not;        /* collapsed or failed, and a sandbox still up */
};

static void count(struct census *c, const struct entity *e)
{
	bool live = e->kind != ENTITY_SNAPSHOT && (e->state == STATE_RUNNING || e->state == STATE_WON);
	char path[128], ledger[96] = "";
	size_t at = 0;

	runtime_path(e, path, sizeof(path));
	for (size_t i = 0; i < e->ledger.n && at < sizeof(ledger); i++)
		at += (size_t)snprintf(ledger + at, sizeof(ledger) - at, "%s:%lld,", e->ledger.v[i].owner,
				       (long long)e->ledger.v[i].amount);
	assert_true(c->n < 512);
	snprintf(c->lines[c->n++], sizeof(c->lines[0]), "%s %s %s trit=%d winner=%s wev=%lld ledger=%s status=%d",
		 path, entity_kind_name(e->kind), entity_state_name(e->state), e->trit, e->winner,
		 (long long)e->wev, ledger, e->has_run ? e->status : -1);
	c->busy += e->busy_creating;
	c->up += live && e->sb;
	c->saved += live && !e->sb && e->sb_saved;
	c->lost += live && !e->sb && !e->sb_saved;
	c->snapshots += e->kind == ENTITY_SNAPSHOT;
	c->dropped_not += !live && e->sb;
	for (size_t i = 0; i < e->nverses; i++)
		count(c, e->verses[i]);
	for (size_t i = 0; i < e->nsnapshots; i++)
		count(c, e->snapshots[i]);
}

static int by_text(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void take_census(struct runtime *rt, struct census *c)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_lock(&rt->lock);
	for (size_t i = 0; i < rt->nworlds; i++)
		count(c, rt->worlds[i]);
	pthread_mutex_unlock(&rt->lock);
	qsort(c->lines, (size_t)c->n, sizeof(c->lines[0]), by_text);
}

static void same_tree(const struct census *a, const struct census *b)
{
	assert_int_equal(a->n, b->n);
	for (int i = 0; i < a->n; i++)
		assert_string_equal(a->lines[i], b->lines[i]);
}

/* Rows in a registry table (the runtime closed). */
static long rows(const char *table)
{
	char path[128], sql[128];
	sqlite3 *db;
	sqlite3_stmt *st;
	long n = -1;

	snprintf(path, sizeof(path), "%s/worldfs.db", state_dir);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW)
		n = (long)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* Every worker at once on rt, each for its rounds; then nobody saw an
 * error the races do not explain. */
static void run_workers(struct runtime *rt)
{
	struct worker workers[] = {
		{ .fn = brancher }, { .fn = remover }, { .fn = snapshotter }, { .fn = runner }, { .fn = reader },
	};
	const size_t nworkers = sizeof(workers) / sizeof(workers[0]);
	unsigned long tried[N_OPS] = { 0 }, done[N_OPS] = { 0 }, total = 0;
	pthread_barrier_t start;

	pthread_barrier_init(&start, NULL, (unsigned)nworkers);
	for (size_t i = 0; i < nworkers; i++) {
		workers[i].rt = rt;
		workers[i].start = &start;
		assert_int_equal(pthread_create(&workers[i].thread, NULL, work, &workers[i]), 0);
	}
	for (size_t i = 0; i < nworkers; i++)
		assert_int_equal(pthread_join(workers[i].thread, NULL), 0);
	pthread_barrier_destroy(&start);
	for (size_t i = 0; i < nworkers; i++) {
		if (workers[i].bad[0])
			fail_msg("%s", workers[i].bad);
		for (int op = 0; op < N_OPS; op++) {
			tried[op] += workers[i].tried[op];
			done[op] += workers[i].done[op];
		}
	}
	for (int op = 0; op < N_OPS; op++) {
		print_message("%-8s %5lu calls, %5lu succeeded\n", op_names[op], tried[op], done[op]);
		total += tried[op];
	}
	/* How many of each got through depends on the interleaving: told,
	 * not asserted. */
	print_message("%lu calls in all\n", total);
}

/* Once every call has returned: nothing is left half-made; every running
 * world and verse has its sandbox (or, after a remount, its saved state)
 * and no other has one; the backend runs exactly those and keeps exactly
 * the snapshots the tree shows.  Then rt is closed, and the registry
 * holds one row per entity, a row per snapshot. */
static void check_and_close(struct runtime *rt, struct census *c)
{
	take_census(rt, c);
	assert_int_equal(c->busy, 0);
	assert_int_equal(c->lost, 0);
	assert_int_equal(c->dropped_not, 0);
	assert_int_equal(fake_count(&fake.live), c->up);
	assert_int_equal(fake_count(&fake.snapshots), c->snapshots);
	runtime_close(rt);
	assert_int_equal(fake_count(&fake.live), 0);
	assert_int_equal(rows("world_runtime_entities"), c->n);
	assert_int_equal(rows("snapshots"), c->snapshots);
}

/* All of it at once on one mount, then on the remount while its
 * background pass still looks at the sandboxes it loaded: after each, what
 * memory holds, what the backend runs and what the registry brings back
 * agree (check_and_close, then a remount shows the same tree). */
static void everything_at_once(void **state)
{
	struct backend_config cfg = { .state_dir = state_dir, .mem_mib = 128, .vcpus = 1,
				      .exec_timeout_s = 5, .output_max = 1 << 20 };
	struct census *before = calloc(1, sizeof(*before)), *after = calloc(1, sizeof(*after));
	struct runtime rt;
	char err[256];
	(void)state;

	assert_non_null(before);
	assert_non_null(after);
	open_rt(&rt);
	/* Something to work on from the first round on. */
	for (size_t i = 0; i < NWORLDS; i++) {
		struct worker w = { .rt = &rt };
		char dir[16];

		snprintf(dir, sizeof(dir), "/%s", worlds[i]);
		create(&w, worlds[i]);
		for (size_t j = 0; j < NVERSES; j++)
			branch(&w, dir, verses[j]);
		snapshot(&w, dir, snaps[0]);
		assert_int_equal(w.done[OP_CREATE] + w.done[OP_BRANCH] + w.done[OP_SNAPSHOT], 2 + NVERSES);
	}
	run_workers(&rt);
	check_and_close(&rt, before);

	/* The remount is served at once (no runtime_settle): the workers
	 * race its recovery pass too. */
	memset(&rt, 0, sizeof(rt));
	assert_int_equal(runtime_open(&rt, &fake_ops, &cfg, err, sizeof(err)), 0);
	take_census(&rt, after);
	same_tree(before, after);
	run_workers(&rt);
	runtime_settle(&rt);
	check_and_close(&rt, before);

	open_rt(&rt);
	take_census(&rt, after);
	same_tree(before, after);
	runtime_close(&rt);
	free(before);
	free(after);
}

/* The remount's recovery holds one sandbox's probe (id's) until let go. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t changed;
	const char *id;
	bool held, waiting;
} probe_gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, false, false };

static void probe_waits(const char *id)
{
	pthread_mutex_lock(&probe_gate.lock);
	if (probe_gate.id && strcmp(id, probe_gate.id) == 0) {
		probe_gate.waiting = true;
		pthread_cond_broadcast(&probe_gate.changed);
		while (probe_gate.held)
			pthread_cond_wait(&probe_gate.changed, &probe_gate.lock);
	}
	pthread_mutex_unlock(&probe_gate.lock);
}

struct resolution {
	struct runtime *rt;
	int rc;
};

/* echo b > w/resolve */
static void *resolve_w_b(void *arg)
{
	struct resolution *r = arg;
	struct node n;

	r->rc = node_lookup(r->rt, "/w", 0, &n);
	if (r->rc == 0) {
		r->rc = runtime_resolve(r->rt, n.e, "b", 0);
		node_release(r->rt, &n);
	}
	return NULL;
}

/* cat path, which must be there. */
static char *cat_text(struct runtime *rt, const char *path)
{
	struct node n;
	char *buf;
	size_t len;

	assert_int_equal(node_lookup(rt, path, 0, &n), 0);
	assert_int_equal(node_render(rt, &n, &buf, &len), 0);
	node_release(rt, &n);
	return buf;
}

/* A verse's sandbox was lost while worldfs was down, and the remount's
 * recovery is looking for it when a resolve collapses the verse: it stays
 * collapsed, as the resolve made it, not failed for want of a sandbox it
 * no longer needs. */
static void resolve_during_recovery(void **state)
{
	struct backend_config cfg = { .state_dir = state_dir, .mem_mib = 128, .vcpus = 1,
				      .exec_timeout_s = 5, .output_max = 1 << 20 };
	struct resolution r;
	struct runtime rt;
	struct entity *a;
	char err[256], a_id[24], *text;
	pthread_t t;
	bool collapsed = false;
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "w", 0, 0), 0);
	assert_int_equal(runtime_branch(&rt, verse(&rt, NULL, "w"), "a", 0, 0), 0);
	assert_int_equal(runtime_branch(&rt, verse(&rt, NULL, "w"), "b", 0, 0), 0);
	snprintf(a_id, sizeof(a_id), "%s", verse(&rt, verse(&rt, NULL, "w"), "a")->id);
	runtime_close(&rt);
	fake_lose(a_id);

	probe_gate.id = a_id;
	probe_gate.held = true;
	probe_gate.waiting = false;
	fake_hooks.probe = probe_waits;
	memset(&rt, 0, sizeof(rt));
	assert_int_equal(runtime_open(&rt, &fake_ops, &cfg, err, sizeof(err)), 0);
	pthread_mutex_lock(&probe_gate.lock);
	while (!probe_gate.waiting)
		pthread_cond_wait(&probe_gate.changed, &probe_gate.lock);
	pthread_mutex_unlock(&probe_gate.lock);

	/* The resolve collapses a at once, then waits for a's oplock (the
	 * recovery's) to stop its sandbox. */
	r.rt = &rt;
	assert_int_equal(pthread_create(&t, NULL, resolve_w_b, &r), 0);
	pthread_mutex_lock(&rt.lock);
	a = verse(&rt, verse(&rt, NULL, "w"), "a");
	pthread_mutex_unlock(&rt.lock);
	while (!collapsed) {
		pthread_mutex_lock(&rt.lock);
		collapsed = a->state == STATE_COLLAPSED;
		pthread_mutex_unlock(&rt.lock);
		if (!collapsed)
			usleep(1000);
	}
	pthread_mutex_lock(&probe_gate.lock);
	probe_gate.held = false;
	pthread_cond_broadcast(&probe_gate.changed);
	pthread_mutex_unlock(&probe_gate.lock);
	pthread_join(t, NULL);
	assert_int_equal(r.rc, 0);
	runtime_settle(&rt);
	fake_hooks.probe = NULL;
	probe_gate.id = NULL;

	text = cat_text(&rt, "/w/a/state");
	assert_string_equal(text, "collapsed\n");
	free(text);
	runtime_close(&rt);
	open_rt(&rt);
	text = cat_text(&rt, "/w/a/state");
	assert_string_equal(text, "collapsed\n");
	free(text);
	text = cat_text(&rt, "/w/b/state");
	assert_string_equal(text, "won\n");
	free(text);
	runtime_close(&rt);
}

struct blocked_run {
	struct runtime *rt;
	struct entity *e;
	struct run_result res;
	int rc;
};

static void *run_block(void *arg)
{
	struct blocked_run *b = arg;

	b->rc = runtime_exec(b->rt, b->e, "block", 5, &b->res);
	return NULL;
}

/* rmdir and resolve do not wait for a run to reach its deadline (a guest
 * that never answers holds it up to exec_timeout + 10 s): they interrupt
 * it.  The run then ends at once, its verse removed or collapsed, and a
 * collapsed verse's status and stderr say what happened to the run. */
static void runs_are_interrupted(void **state)
{
	struct blocked_run v = { 0 }, b = { 0 };
	pthread_t tv, tb;
	struct runtime rt;
	struct entity *w;
	char *text;
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "w", 0, 0), 0);
	w = verse(&rt, NULL, "w");
	assert_int_equal(runtime_branch(&rt, w, "a", 0, 0), 0);
	assert_int_equal(runtime_branch(&rt, w, "b", 0, 0), 0);
	assert_int_equal(runtime_branch(&rt, w, "v", 0, 0), 0);
	v = (struct blocked_run){ .rt = &rt, .e = verse(&rt, w, "v") };
	b = (struct blocked_run){ .rt = &rt, .e = verse(&rt, w, "b") };
	runtime_get(v.e);
	assert_int_equal(pthread_create(&tv, NULL, run_block, &v), 0);
	assert_int_equal(pthread_create(&tb, NULL, run_block, &b), 0);
	fake_wait_blocked(2);

	assert_int_equal(runtime_remove(&rt, v.e), 0);
	pthread_join(tv, NULL);
	assert_int_equal(v.rc, -ENOENT);
	runtime_put(&rt, v.e);
	run_result_release(&v.res);

	assert_int_equal(runtime_resolve(&rt, w, "a", 0), 0);
	pthread_join(tb, NULL);
	assert_int_equal(b.rc, -EROFS);
	run_result_release(&b.res);
	assert_int_equal(fake_count(&fake.interrupted), 2);
	text = cat_text(&rt, "/w/b/status");
	assert_string_equal(text, "255\n");
	free(text);
	text = cat_text(&rt, "/w/b/stderr");
	assert_non_null(strstr(text, "run cut short: this verse was collapsed"));
	free(text);
	text = cat_text(&rt, "/w/b/state");
	assert_string_equal(text, "collapsed\n");
	free(text);
	assert_int_equal(fake_count(&fake.live), 2);  /* w and a */
	runtime_close(&rt);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(everything_at_once, setup, teardown),
		cmocka_unit_test_setup_teardown(resolve_during_recovery, setup, teardown),
		cmocka_unit_test_setup_teardown(runs_are_interrupted, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
