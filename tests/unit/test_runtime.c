/* test_runtime.c: the World Runtime over a fake backend: trits, gf3,
 * probabilities, balances inherited on branch, resolve/WEV arithmetic,
 * removal rules, and the registry bringing the tree back after a restart. */
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "backend/agent/fsproto.h"
#include "backend/agent/proto.h"
#include "fs/diff.h"
#include "fs/node.h"
#include "fake_backend.h"

/* Another operation in the middle of a branch's or a snapshot's backend
 * work: fn runs on its own thread, and the backend call returns once fn
 * has finished or happened() says its effect is there (fn may go on to
 * wait for the entity this backend call holds). */
static struct {
	struct runtime *rt;
	int (*fn)(void);
	bool (*happened)(void);
	pthread_t thread;
	bool started;
	atomic_bool finished;    /* read by the waiting thread while fn runs */
	int rc;
} midway;

static void *midway_run(void *arg)
{
	(void)arg;
	midway.rc = midway.fn();
	midway.finished = true;
	return NULL;
}

static void midway_now(void)
{
	if (!midway.fn || midway.started)
		return;
	midway.started = true;
	pthread_create(&midway.thread, NULL, midway_run, NULL);
	for (int i = 0; i < 5000 && !midway.finished; i++) {
		bool seen;
		pthread_mutex_lock(&midway.rt->lock);
		seen = midway.happened && midway.happened();
		pthread_mutex_unlock(&midway.rt->lock);
		if (seen)
			break;
		usleep(1000);
	}
}

/* After the call under test has returned. */
static int midway_join(void)
{
	pthread_join(midway.thread, NULL);
	midway.fn = NULL;
	midway.happened = NULL;
	midway.started = midway.finished = false;
	return midway.rc;
}

/* A slow branch: once it has let the parent go, the parent must answer an
 * exec while the child is still starting. */
static struct {
	struct runtime *rt;
	struct entity *parent;
	bool on;
	int exec_rc;            /* what the parent's exec returned */
	bool exec_in_time;      /* ... before the child was done */
} slow;

static void *slow_exec(void *arg)
{
	struct run_result res;

	(void)arg;
	slow.exec_rc = runtime_exec(slow.rt, slow.parent, "echo", 4, &res);
	if (slow.exec_rc == 0)
		run_result_release(&res);
	return NULL;
}

static void slow_child_start(struct branch_info *i, pthread_t *t)
{
	struct timespec until;

	if (i->parent_done)
		i->parent_done(i->parent_done_arg);
	pthread_create(t, NULL, slow_exec, NULL);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	slow.exec_in_time = pthread_timedjoin_np(*t, NULL, &until) == 0;
}

/* In the middle of a branch's backend work: an operation midway, or the
 * slow branch above. */
static void branch_hook(struct sandbox *parent, struct branch_info *i)
{
	pthread_t t;

	if (midway.fn && i->parent_done)
		i->parent_done(i->parent_done_arg);
	midway_now();
	if (slow.on && parent) {
		slow_child_start(i, &t);
		if (!slow.exec_in_time)
			pthread_detach(t);  /* it runs once the branch returns */
	}
}

/* A probe that does not answer until the test lets it (morph's is an HTTP
 * request per world): the mount must not wait for it. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t open;
	bool held;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false };

static void probe_hook(const char *id)
{
	(void)id;
	pthread_mutex_lock(&gate.lock);
	while (gate.held)
		pthread_cond_wait(&gate.open, &gate.lock);
	pthread_mutex_unlock(&gate.lock);
}

/* The World Runtime scenario: push down, strategies, resolve optimal. */
static void scenario(void **state)
{
	struct runtime rt;
	struct entity *u, *nash, *opt, *chaos;
	int64_t p45 = 450000000, p35 = 350000000, p20 = 200000000;
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "universe", 0, 0), 0);
	assert_int_equal(runtime_create_world(&rt, "universe", 0, 0), -EEXIST);
	assert_int_equal(runtime_create_world(&rt, "bad name", 0, 0), -EINVAL);
	assert_int_equal(runtime_create_world(&rt, "trit", 0, 0), -EINVAL);
	u = verse(&rt, NULL, "universe");
	assert_non_null(u);
	assert_int_equal(u->trit, 0);
	assert_int_equal(u->prob, PROB_ONE);
	assert_int_equal(runtime_set_balance(&rt, u, "alice", 100), 0);
	assert_int_equal(runtime_set_balance(&rt, u, "bob", 50), 0);

	assert_int_equal(runtime_branch(&rt, u, "nash", 0, 0), 0);
	assert_int_equal(runtime_branch(&rt, u, "optimal", 0, 0), 0);
	assert_int_equal(runtime_branch(&rt, u, "chaos", 0, 0), 0);
	nash = verse(&rt, u, "nash");
	opt = verse(&rt, u, "optimal");
	chaos = verse(&rt, u, "chaos");
	assert_int_equal(nash->trit, -1);
	assert_int_equal(opt->trit, 0);
	assert_int_equal(chaos->trit, 1);
	assert_int_equal(runtime_gf3(u), 0);
	/* balances inherited at the branch */
	assert_int_equal(ledger_get(&opt->ledger, "alice")->amount, 100);
	assert_int_equal(ledger_get(&chaos->ledger, "bob")->amount, 50);

	assert_int_equal(runtime_set_prob(&rt, nash, p45), 0);
	assert_int_equal(runtime_set_prob(&rt, opt, p35), 0);
	assert_int_equal(runtime_set_prob(&rt, chaos, p20 + 1), -EINVAL);
	assert_int_equal(chaos->prob, 0);
	assert_int_equal(runtime_set_prob(&rt, chaos, p20), 0);

	/* strategies change the verses' balances */
	assert_int_equal(runtime_set_balance(&rt, nash, "alice", 80), 0);
	assert_int_equal(runtime_set_balance(&rt, opt, "alice", 130), 0);
	assert_int_equal(runtime_set_balance(&rt, opt, "carol", 7), 0);
	assert_int_equal(runtime_delete_balance(&rt, chaos, "bob"), 0);
	assert_int_equal(runtime_set_balance(&rt, chaos, "alice", 10), 0);
	assert_int_equal(runtime_delete_balance(&rt, chaos, "nobody"), -ENOENT);

	assert_int_equal(runtime_resolve(&rt, u, "nobody", 0), -ENOENT);
	assert_int_equal(runtime_resolve(&rt, u, "optimal", 0), 0);
	assert_int_equal(opt->state, STATE_WON);
	assert_int_equal(nash->state, STATE_COLLAPSED);
	assert_int_equal(chaos->state, STATE_COLLAPSED);
	/* WEV = nash (80 + 50) + chaos (10) */
	assert_int_equal(u->wev, 140);
	assert_string_equal(u->winner, "optimal");
	/* the winner's balances are the parent's now */
	assert_int_equal(u->ledger.n, 3);
	assert_int_equal(ledger_get(&u->ledger, "alice")->amount, 130);
	assert_int_equal(ledger_get(&u->ledger, "carol")->amount, 7);
	/* no live children left */
	assert_int_equal(runtime_resolve(&rt, u, "optimal", 0), -EINVAL);
	assert_int_equal(fake.live, 2);  /* universe and the winner */

	/* the collapsed verse refuses runs, and says so in its own outputs
	 * (a shell never sees close(2) fail) */
	struct run_result r;
	assert_int_equal(runtime_exec(&rt, nash, "true", 4, &r), -EROFS);
	assert_int_equal(r.status, 255);
	assert_non_null(strstr(r.err, "collapsed"));
	assert_int_equal(nash->status, 255);
	assert_int_equal(nash->err_len, r.err_len);
	run_result_release(&r);
	assert_int_equal(runtime_exec(&rt, opt, "fail", 4, &r), 0);
	assert_int_equal(r.status, 3);
	run_result_release(&r);
	runtime_close(&rt);
	assert_int_equal(fake.live, 0);

	/* after a restart the whole tree is back */
	open_rt(&rt);
	u = verse(&rt, NULL, "universe");
	assert_non_null(u);
	opt = verse(&rt, u, "optimal");
	nash = verse(&rt, u, "nash");
	assert_non_null(opt);
	assert_int_equal(opt->state, STATE_WON);
	assert_int_equal(nash->state, STATE_COLLAPSED);
	assert_int_equal(opt->prob, p35);
	assert_int_equal(opt->has_run, true);
	assert_int_equal(opt->status, 3);
	assert_int_equal(opt->out_len, 4);
	assert_int_equal(u->wev, 140);
	assert_int_equal(ledger_get(&u->ledger, "alice")->amount, 130);
	assert_int_equal(u->branch_count, 3);
	/* a suspended world resumes on first use */
	assert_int_equal(runtime_exec(&rt, u, "true", 4, &r), 0);
	run_result_release(&r);
	runtime_close(&rt);
}

static void snapshots_and_removal(void **state)
{
	struct runtime rt;
	struct entity *w, *s, *v, *a;
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "w", 0, 0), 0);
	w = verse(&rt, NULL, "w");
	assert_int_equal(runtime_set_balance(&rt, w, "alice", 5), 0);
	assert_int_equal(runtime_snapshot(&rt, w, "s", 0, 0), 0);
	assert_int_equal(runtime_snapshot(&rt, w, "s", 0, 0), -EEXIST);
	s = runtime_find_snapshot(w, "s", false);
	assert_non_null(s);
	assert_int_equal(runtime_set_balance(&rt, w, "alice", 9), 0);
	assert_int_equal(runtime_branch(&rt, s, "v", 0, 0), 0);
	assert_int_equal(runtime_branch(&rt, s, "x", 0, 0), 0);
	v = verse(&rt, s, "v");
	/* the snapshot's ledger, not the live one */
	assert_int_equal(ledger_get(&v->ledger, "alice")->amount, 5);
	assert_int_equal(v->trit, -1);
	assert_int_equal(runtime_branch(&rt, w, "a", 0, 0), 0);
	a = verse(&rt, w, "a");
	assert_int_equal(a->trit, -1);
	assert_int_equal(ledger_get(&a->ledger, "alice")->amount, 9);

	assert_int_equal(runtime_remove(&rt, w), -ENOTEMPTY);
	assert_int_equal(runtime_remove(&rt, s), -ENOTEMPTY);
	/* resolve under the snapshot: its own ledger, the live world untouched */
	assert_int_equal(runtime_set_balance(&rt, v, "alice", 1), 0);
	assert_int_equal(runtime_resolve(&rt, s, "x", 0), 0);
	assert_int_equal(s->wev, 1);
	assert_int_equal(ledger_get(&s->ledger, "alice")->amount, 5);
	assert_int_equal(ledger_get(&w->ledger, "alice")->amount, 9);
	assert_int_equal(w->wev, 0);
	assert_int_equal(runtime_remove(&rt, a), 0);
	assert_null(verse(&rt, w, "a"));
	/* won and collapsed verses do not block */
	assert_int_equal(runtime_remove(&rt, w), 0);
	assert_null(verse(&rt, NULL, "w"));
	assert_int_equal(fake.live, 0);
	runtime_close(&rt);

	open_rt(&rt);
	assert_int_equal(rt.nworlds, 0);
	runtime_close(&rt);
}

struct listing {
	char names[64][NAME_MAX_LEN + 1];
	int n;
};

static void collect_name(void *ctx, const char *name)
{
	struct listing *l = ctx;

	assert_true(l->n < 64);
	snprintf(l->names[l->n++], NAME_MAX_LEN + 1, "%s", name);
}

/* What a directory lists, looked up one by one: each name is there, with
 * the mode stat gives it.  Returns how many entries are directories. */
static int list_and_walk(struct runtime *rt, const char *dir, struct listing *l)
{
	struct node n, c;
	struct stat st;
	char path[256];
	int dirs = 0;

	memset(l, 0, sizeof(*l));
	assert_int_equal(node_lookup(rt, dir, 0, &n), 0);
	assert_int_equal(node_list(rt, &n, collect_name, l), 0);
	node_release(rt, &n);
	for (int i = 0; i < l->n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, l->names[i]);
		assert_int_equal(node_lookup(rt, path, 0, &c), 0);
		assert_int_equal(node_stat(rt, &c, &st), 0);
		assert_int_equal(st.st_mode, node_mode(&c));
		dirs += S_ISDIR(st.st_mode);
		node_release(rt, &c);
	}
	return dirs;
}

static bool listed(const struct listing *l, const char *name)
{
	for (int i = 0; i < l->n; i++)
		if (strcmp(l->names[i], name) == 0)
			return true;
	return false;
}

/* One table drives lookup, listing, stat and the names a verse may not
 * take: no verse can be named like a file of its directory, a listing
 * shows exactly what lookup finds, a snapshot shows only its own files. */
static void the_file_table(void **state)
{
	struct runtime rt;
	struct listing l;
	struct entity *w;
	bool made;
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "w", 0, 0), 0);
	w = verse(&rt, NULL, "w");
	for (size_t i = 0; i < n_entity_files; i++)
		assert_int_equal(runtime_branch(&rt, w, entity_files[i].name, 0, 0), -EINVAL);
	assert_int_equal(runtime_branch(&rt, w, "v", 0, 0), 0);
	assert_int_equal(runtime_add_balance(&rt, w, "alice", &made), 0);
	assert_true(made);
	assert_int_equal(runtime_add_balance(&rt, w, "alice", &made), 0);
	assert_false(made);
	assert_int_equal(runtime_snapshot(&rt, w, "s", 0, 0), 0);

	/* exec..fs, then the verse v: balance/, snapshot/, fs/ and v are dirs */
	assert_int_equal(list_and_walk(&rt, "/w", &l), 4);
	assert_int_equal(l.n, (int)n_entity_files + 1);
	assert_true(listed(&l, "exec") && listed(&l, "v"));
	/* a snapshot: info, gf3, balance/, push_down, resolve, wev; no exec, no snapshot/ */
	assert_int_equal(list_and_walk(&rt, "/w/snapshot/s", &l), 1);
	assert_int_equal(l.n, 6);
	assert_false(listed(&l, "exec"));
	assert_false(listed(&l, "snapshot"));
	list_and_walk(&rt, "/w/balance", &l);
	assert_int_equal(l.n, 1);
	assert_string_equal(l.names[0], "alice");
	list_and_walk(&rt, "/", &l);
	assert_true(listed(&l, ".worldfs") && listed(&l, "w"));
	list_and_walk(&rt, "/.worldfs", &l);
	assert_int_equal(l.n, (int)n_meta_files);

	/* what a collapsed verse refuses */
	assert_int_equal(runtime_branch(&rt, w, "x", 0, 0), 0);
	assert_int_equal(runtime_resolve(&rt, w, "v", 0), 0);
	assert_int_equal(runtime_state_errno(&rt, verse(&rt, w, "v")), 0);
	assert_int_equal(runtime_state_errno(&rt, verse(&rt, w, "x")), -EROFS);
	assert_int_equal(runtime_branch(&rt, verse(&rt, w, "x"), "y", 0, 0), -EROFS);
	runtime_close(&rt);
}

static struct runtime *race_rt;
static struct entity *race_w, *race_b;

static int resolve_w_a(void) { return runtime_resolve(race_rt, race_w, "a", 0); }
static int remove_w(void) { return runtime_remove(race_rt, race_w); }
static bool b_collapsed(void) { return race_b->state == STATE_COLLAPSED; }
static bool w_removed(void) { return race_w->removed; }

static void race_setup(struct runtime *rt)
{
	open_rt(rt);
	assert_int_equal(runtime_create_world(rt, "w", 0, 0), 0);
	race_rt = rt;
	race_w = verse(rt, NULL, "w");
	assert_int_equal(runtime_branch(rt, race_w, "a", 0, 0), 0);
	assert_int_equal(runtime_branch(rt, race_w, "b", 0, 0), 0);
	race_b = verse(rt, race_w, "b");
	midway.rt = rt;
}

/* mkdir w/b/x while w resolves to a: b collapses, and x is not made at
 * all: no verse, no sandbox, no registry row. */
static void resolve_racing_branch(void **state)
{
	struct runtime rt;
	(void)state;

	race_setup(&rt);
	midway.fn = resolve_w_a;
	midway.happened = b_collapsed;
	assert_int_equal(runtime_branch(&rt, race_b, "x", 0, 0), -EROFS);
	assert_int_equal(midway_join(), 0);
	assert_null(verse(&rt, race_b, "x"));
	assert_int_equal(race_b->state, STATE_COLLAPSED);
	assert_int_equal(fake.live, 2);  /* w and a */
	runtime_close(&rt);
	open_rt(&rt);
	assert_null(verse(&rt, verse(&rt, verse(&rt, NULL, "w"), "b"), "x"));
	runtime_close(&rt);
}

/* mkdir w/b/snapshot/s while w resolves to a: the snapshot of the now
 * collapsed b is not kept, and its files are deleted. */
static void resolve_racing_snapshot(void **state)
{
	struct runtime rt;
	(void)state;

	race_setup(&rt);
	midway.fn = resolve_w_a;
	midway.happened = b_collapsed;
	assert_int_equal(runtime_snapshot(&rt, race_b, "s", 0, 0), -EROFS);
	assert_int_equal(midway_join(), 0);
	assert_null(runtime_find_snapshot(race_b, "s", true));
	assert_int_equal(fake.snapshots_deleted, 1);
	runtime_close(&rt);
}

/* rmdir w while mkdir w/snapshot/s runs: the rmdir waits for nothing and
 * fails with ENOTEMPTY; the snapshot is made whole. */
static void rmdir_racing_snapshot(void **state)
{
	struct runtime rt;
	(void)state;

	race_setup(&rt);
	assert_int_equal(runtime_resolve(&rt, race_w, "a", 0), 0);
	assert_int_equal(runtime_remove(&rt, verse(&rt, race_w, "a")), 0);
	assert_int_equal(runtime_remove(&rt, race_b), 0);
	midway.fn = remove_w;
	midway.happened = w_removed;
	assert_int_equal(runtime_snapshot(&rt, race_w, "s", 0, 0), 0);
	assert_int_equal(midway_join(), -ENOTEMPTY);
	assert_non_null(runtime_find_snapshot(race_w, "s", false));
	assert_int_equal(fake.snapshots_deleted, 0);
	assert_int_equal(runtime_remove(&rt, race_w), 0);
	assert_null(verse(&rt, NULL, "w"));
	runtime_close(&rt);
}

static atomic_bool reading;   /* the readers go on while it is true */

/* cat .worldfs/entities and cat w/b/info, over and over. */
static void *read_info(void *arg)
{
	struct runtime *rt = arg;
	const char *paths[] = { "/.worldfs/entities", "/w/b/info", "/w/info" };
	struct node n;
	char *buf;
	size_t len;

	while (reading)
		for (size_t i = 0; i < 3; i++)
			if (node_lookup(rt, paths[i], 0, &n) == 0) {
				if (node_render(rt, &n, &buf, &len) == 0)
					free(buf);
				node_release(rt, &n);
			}
	return NULL;
}

/* info and .worldfs/entities are read while sandboxes go away (resolve,
 * rmdir, a world dying mid-run): what they show comes from the runtime,
 * never from a sandbox that another thread may be destroying. */
static void info_while_sandboxes_go(void **state)
{
	struct runtime rt;
	struct entity *w;
	struct node n;
	pthread_t t;
	char *buf;
	size_t len;
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "w", 0, 0), 0);
	w = verse(&rt, NULL, "w");
	reading = true;
	pthread_create(&t, NULL, read_info, &rt);
	for (int round = 0; round < 50; round++) {
		assert_int_equal(runtime_branch(&rt, w, "a", 0, 0), 0);
		assert_int_equal(runtime_branch(&rt, w, "b", 0, 0), 0);
		assert_int_equal(runtime_resolve(&rt, w, "a", 0), 0);
		assert_int_equal(runtime_remove(&rt, verse(&rt, w, "a")), 0);
		assert_int_equal(runtime_remove(&rt, verse(&rt, w, "b")), 0);
	}
	reading = false;
	pthread_join(t, NULL);
	/* The description is the one taken when the sandbox was set. */
	assert_int_equal(node_lookup(&rt, "/w/info", 0, &n), 0);
	assert_int_equal(node_render(&rt, &n, &buf, &len), 0);
	assert_non_null(strstr(buf, "\"status\":\"up\""));
	assert_non_null(strstr(buf, w->id));
	free(buf);
	node_release(&rt, &n);
	runtime_close(&rt);
}

/* A remount is served before the backend has said anything about the
 * sandboxes: they show as suspended, and first use brings them back. */
static void remount_does_not_wait(void **state)
{
	struct backend_config cfg = { .state_dir = state_dir, .mem_mib = 128, .vcpus = 1,
				      .exec_timeout_s = 5, .output_max = 1 << 20 };
	struct run_result res;
	struct runtime rt;
	struct node n;
	char err[256], *buf;
	size_t len;
	(void)state;

	open_rt(&rt);
	for (int i = 0; i < 20; i++) {
		char name[16];

		snprintf(name, sizeof(name), "w%d", i);
		assert_int_equal(runtime_create_world(&rt, name, 0, 0), 0);
	}
	runtime_close(&rt);
	assert_int_equal(fake.nsuspended, 20);

	gate.held = true;
	memset(&rt, 0, sizeof(rt));
	assert_int_equal(runtime_open(&rt, &fake_ops, &cfg, err, sizeof(err)), 0);
	assert_int_equal(node_lookup(&rt, "/w7/info", 0, &n), 0);
	assert_int_equal(node_render(&rt, &n, &buf, &len), 0);
	assert_non_null(strstr(buf, "\"status\":\"suspended\""));
	free(buf);
	node_release(&rt, &n);
	pthread_mutex_lock(&gate.lock);
	gate.held = false;
	pthread_cond_broadcast(&gate.open);
	pthread_mutex_unlock(&gate.lock);
	assert_int_equal(runtime_exec(&rt, verse(&rt, NULL, "w7"), "echo", 4, &res), 0);
	assert_memory_equal(res.out, "echo", 4);
	run_result_release(&res);
	runtime_settle(&rt);
	runtime_close(&rt);
}

static void parent_runs_while_child_starts(void **state)
{
	struct runtime rt;
	struct entity *w;
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "w", 0, 0), 0);
	w = verse(&rt, NULL, "w");
	slow.rt = &rt;
	slow.parent = w;
	slow.exec_rc = 1;
	slow.exec_in_time = false;
	slow.on = true;
	assert_int_equal(runtime_branch(&rt, w, "v", 0, 0), 0);
	slow.on = false;
	assert_true(slow.exec_in_time);
	assert_int_equal(slow.exec_rc, 0);
	assert_non_null(verse(&rt, w, "v"));
	runtime_close(&rt);
}

/* The registry's branching events as one string: "TYPE:NCHILDREN:GF3 ...". */
static void branch_rows(struct runtime *rt, char *out, size_t n)
{
	char *buf = NULL, *line, *save = NULL;
	size_t len, used = 0;

	out[0] = '\0';
	assert_int_equal(registry_dump(rt->reg, "world_branches", -1, &buf, &len), 0);
	for (line = buf ? strtok_r(buf, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
		json_t *o = json_loads(line, 0, NULL);

		assert_non_null(o);
		used += (size_t)snprintf(out + used, n - used, "%s%s:%zu:%lld", used ? " " : "",
					 json_string_value(json_object_get(o, "branch_type")),
					 json_array_size(json_object_get(o, "child_entity_ids")),
					 (long long)json_integer_value(json_object_get(o, "gf3_sum")));
		json_decref(o);
	}
	free(buf);
}

/* push_down: every verse from one instant, one branching event with all
 * of them and a balanced set, all or none, from a world or a snapshot,
 * and its names read back, also after a restart. */
static void push_down(void **state)
{
	struct runtime rt;
	struct entity *u, *s;
	char rows[256];
	const char *set = "nash optimal:0.5 chaos:0.25\n";
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "universe", 0, 0), 0);
	u = verse(&rt, NULL, "universe");
	assert_int_equal(runtime_set_balance(&rt, u, "alice", 100), 0);
	assert_int_equal(runtime_push_down(&rt, u, set, strlen(set), 0, 0), 0);
	assert_int_equal(verse(&rt, u, "nash")->trit, -1);
	assert_int_equal(verse(&rt, u, "optimal")->trit, 0);
	assert_int_equal(verse(&rt, u, "chaos")->trit, 1);
	assert_int_equal(verse(&rt, u, "optimal")->prob, PROB_ONE / 2);
	assert_int_equal(verse(&rt, u, "chaos")->prob, PROB_ONE / 4);
	assert_int_equal(verse(&rt, u, "nash")->prob, 0);
	assert_int_equal(ledger_get(&verse(&rt, u, "chaos")->ledger, "alice")->amount, 100);
	assert_int_equal(runtime_gf3(u), 0);
	assert_string_equal(u->push_down, "nash optimal chaos");
	branch_rows(&rt, rows, sizeof(rows));
	assert_string_equal(rows, "push_down:3:0");
	assert_int_equal(fake_count(&fake.live), 4);

	/* all or none: a taken name, a repeated one, probabilities above 1,
	 * no names, too many names; nothing is made, nothing recorded */
	assert_int_equal(runtime_push_down(&rt, u, "x nash", 6, 0, 0), -EEXIST);
	assert_int_equal(runtime_push_down(&rt, u, "x y x", 5, 0, 0), -EINVAL);
	assert_int_equal(runtime_push_down(&rt, u, "x:0.2 y:0.1", 11, 0, 0), -EINVAL);
	assert_int_equal(runtime_push_down(&rt, u, " \n", 2, 0, 0), -EINVAL);
	assert_int_equal(runtime_push_down(&rt, u, "x exec", 6, 0, 0), -EINVAL);
	{
		char many[PUSH_DOWN_MAX * 8];
		size_t len = 0;

		for (int i = 0; i <= PUSH_DOWN_MAX; i++)
			len += (size_t)snprintf(many + len, sizeof(many) - len, "v%d ", i);
		assert_int_equal(runtime_push_down(&rt, u, many, len, 0, 0), -E2BIG);
	}
	assert_null(verse(&rt, u, "x"));
	assert_int_equal(u->nverses, 3);
	assert_int_equal(fake_count(&fake.live), 4);
	branch_rows(&rt, rows, sizeof(rows));
	assert_string_equal(rows, "push_down:3:0");

	/* max_worlds counts the whole set: a uid with room for 2 gets none of 3 */
	rt.max_worlds = 3;
	assert_int_equal(runtime_create_world(&rt, "mine", 1000, 1000), 0);
	assert_int_equal(runtime_push_down(&rt, verse(&rt, NULL, "mine"), "p q r", 5, 1000, 1000), -EDQUOT);
	assert_int_equal(verse(&rt, NULL, "mine")->nverses, 0);
	rt.max_worlds = 0;

	/* from a snapshot: trits continue the snapshot's own cycle */
	assert_int_equal(runtime_snapshot(&rt, u, "s", 0, 0), 0);
	s = runtime_find_snapshot(u, "s", false);
	assert_non_null(s);
	assert_int_equal(runtime_push_down(&rt, s, "p q r", 5, 0, 0), 0);
	assert_int_equal(verse(&rt, s, "p")->trit, -1);
	assert_int_equal(runtime_gf3(s), 0);
	assert_string_equal(s->push_down, "p q r");
	branch_rows(&rt, rows, sizeof(rows));
	assert_string_equal(rows, "push_down:3:0 push_down:3:0");
	runtime_close(&rt);

	open_rt(&rt);
	u = verse(&rt, NULL, "universe");
	assert_string_equal(u->push_down, "nash optimal chaos");
	assert_string_equal(runtime_find_snapshot(u, "s", false)->push_down, "p q r");
	assert_int_equal(u->branch_count, 3);
	runtime_close(&rt);
}

/* Is e's sandbox down, within about 10 s?  (idle_suspend=1 looks every
 * 250 ms.) */
static bool sandbox_goes_down(struct runtime *rt, struct entity *e, double seconds)
{
	for (int i = 0; i < seconds * 20; i++) {
		bool down;

		pthread_mutex_lock(&rt->lock);
		down = e->sb == NULL;
		pthread_mutex_unlock(&rt->lock);
		if (down)
			return true;
		usleep(50000);
	}
	return false;
}

/* idle_suspend: a world nobody uses is suspended (info says when), one
 * with an open file is not, and the next use resumes it; both are timed
 * into the metrics. */
static void idle_worlds_sleep(void **state)
{
	struct runtime rt;
	struct entity *w, *busy;
	struct run_result r;
	char *info;
	size_t len;
	json_t *m;
	struct node n;
	(void)state;

	open_rt(&rt);
	assert_int_equal(runtime_create_world(&rt, "w", 0, 0), 0);
	assert_int_equal(runtime_create_world(&rt, "busy", 0, 0), 0);
	w = verse(&rt, NULL, "w");
	busy = verse(&rt, NULL, "busy");
	runtime_file_use(&rt, busy, 1);  /* say, cat > busy/exec still writing */
	assert_int_equal(runtime_idle_start(&rt, 1), 0);
	assert_true(sandbox_goes_down(&rt, w, 10));
	assert_non_null(w->suspended_at[0] ? w : NULL);
	assert_int_equal(node_lookup(&rt, "/w/info", 0, &n), 0);
	assert_int_equal(node_render(&rt, &n, &info, &len), 0);
	node_release(&rt, &n);
	assert_non_null(strstr(info, "\"status\":\"suspended\""));
	assert_non_null(strstr(info, "\"suspended_at\":\"20"));
	free(info);
	/* the open file keeps busy up */
	assert_false(sandbox_goes_down(&rt, busy, 2));
	runtime_file_use(&rt, busy, -1);
	assert_true(sandbox_goes_down(&rt, busy, 10));

	/* the next use resumes it, transparently */
	assert_int_equal(runtime_exec(&rt, w, "back", 4, &r), 0);
	assert_memory_equal(r.out, "back", 4);
	run_result_release(&r);
	assert_null(w->suspended_at[0] ? w : NULL);
	m = registry_metrics(rt.reg);
	assert_true(json_integer_value(json_object_get(json_object_get(json_object_get(m, "timings_ms"), "suspend"),
						       "n")) >= 2);
	assert_true(json_integer_value(json_object_get(json_object_get(json_object_get(m, "timings_ms"), "resume"),
						       "n")) >= 1);
	json_decref(m);
	runtime_close(&rt);
}

/* ---- W/diff: nothing the guest says is believed ---- */

/* How the fake guest answers DIFF: its text, cut in pieces of `piece`
 * bytes, and one way to lie. */
static struct {
	const char *text;
	uint64_t total;          /* claimed; 0: strlen(text) */
	size_t piece;
	enum { HONEST, NEW_TOKEN, STALL, OVERRUN, BAD_ERRNO, STALE_ONCE, STALE_ALWAYS, SHORT } lie;
	uint32_t err;            /* the guest's errno, 0: none */
	int requests, stales;
} guest;

static int guest_diff_reply(const struct fs_req *req, uint8_t **reply, size_t *len)
{
	size_t total = guest.total ? guest.total : strlen(guest.text), n = 0;
	uint64_t token = req->arg ? req->arg : 42;
	uint32_t err = guest.err;
	uint8_t *p;

	guest.requests++;
	if (req->op != FS_DIFF)
		return -ENOTSUP;
	if (req->off < strlen(guest.text))
		n = strlen(guest.text) - req->off < guest.piece ? strlen(guest.text) - req->off : guest.piece;
	if (guest.lie == NEW_TOKEN && req->arg)
		token++;
	if (guest.lie == STALL && req->off)
		n = 0;
	if (guest.lie == OVERRUN)
		n = guest.piece;  /* past the text's end */
	if (guest.lie == BAD_ERRNO)
		err = 99999;
	if (req->arg && (guest.lie == STALE_ALWAYS || (guest.lie == STALE_ONCE && !guest.stales))) {
		guest.stales++;
		err = ESTALE;
	}
	p = calloc(1, FS_REPLY_HDR + FS_DIFF_HDR + n + 64);
	proto_put_u32(p, req->id);
	proto_put_u32(p + 4, err);
	*len = FS_REPLY_HDR;
	if (!err && guest.lie != SHORT) {
		proto_put_u64(p + FS_REPLY_HDR, token);
		proto_put_u64(p + FS_REPLY_HDR + 8, total);
		/* An overrun's bytes past the text are zeros. */
		if (req->off < strlen(guest.text))
			memcpy(p + FS_REPLY_HDR + FS_DIFF_HDR, guest.text + req->off,
			       n < strlen(guest.text) - req->off ? n : strlen(guest.text) - req->off);
		*len += FS_DIFF_HDR + n;
	} else if (!err) {
		*len += 9;
	}
	*reply = p;
	return 0;
}

static int diff_of(struct runtime *rt, struct entity *e, char **text)
{
	size_t len;
	int rc;

	guest.requests = guest.stales = 0;
	*text = NULL;
	rc = guest_diff(rt, e, text, &len);
	if (rc == 0)
		assert_int_equal(strlen(*text), len);
	return rc;
}

static void diff_replies_are_checked(void **state)
{
	static const char text[] = "A\t/a\nM\t/b\nD\t/c/d\n";
	struct runtime rt;
	struct entity *w;
	char *got;

	(void)state;
	open_rt(&rt);
	fake_hooks.fs = guest_diff_reply;
	assert_int_equal(runtime_create_world(&rt, "w", 0, 0), 0);
	w = verse(&rt, NULL, "w");
	memset(&guest, 0, sizeof(guest));
	guest.text = text;
	guest.piece = 5;
	assert_int_equal(diff_of(&rt, w, &got), 0);
	assert_string_equal(got, text);
	assert_int_equal(guest.requests, 4);  /* 19 bytes in pieces of 5 */
	free(got);
	guest.lie = STALE_ONCE;  /* another reader's diff replaced the text: start over */
	assert_int_equal(diff_of(&rt, w, &got), 0);
	assert_string_equal(got, text);
	free(got);
	guest.lie = STALE_ALWAYS;  /* three tries, then give up */
	assert_int_equal(diff_of(&rt, w, &got), -ESTALE);
	assert_int_equal(guest.stales, 3);
	guest.lie = HONEST;
	guest.total = DIFF_MAX + 1ull;  /* more than worldfs takes */
	assert_int_equal(diff_of(&rt, w, &got), -EFBIG);
	assert_int_equal(guest.requests, 1);
	guest.total = 0;
	for (int lie = NEW_TOKEN; lie <= SHORT; lie++) {
		if (lie == STALE_ONCE || lie == STALE_ALWAYS)
			continue;
		guest.lie = lie;
		assert_int_equal(diff_of(&rt, w, &got), -EIO);
		assert_null(got);
	}
	guest.lie = HONEST;
	guest.err = ENODATA;  /* the guest's own errno comes through */
	assert_int_equal(diff_of(&rt, w, &got), -ENODATA);
	guest.err = 0;
	guest.text = "";
	assert_int_equal(diff_of(&rt, w, &got), 0);
	assert_string_equal(got, "");
	free(got);
	fake_hooks.fs = NULL;
	runtime_close(&rt);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(scenario, setup, teardown),
		cmocka_unit_test_setup_teardown(diff_replies_are_checked, setup, teardown),
		cmocka_unit_test_setup_teardown(push_down, setup, teardown),
		cmocka_unit_test_setup_teardown(idle_worlds_sleep, setup, teardown),
		cmocka_unit_test_setup_teardown(snapshots_and_removal, setup, teardown),
		cmocka_unit_test_setup_teardown(parent_runs_while_child_starts, setup, teardown),
		cmocka_unit_test_setup_teardown(the_file_table, setup, teardown),
		cmocka_unit_test_setup_teardown(resolve_racing_branch, setup, teardown),
		cmocka_unit_test_setup_teardown(resolve_racing_snapshot, setup, teardown),
		cmocka_unit_test_setup_teardown(rmdir_racing_snapshot, setup, teardown),
		cmocka_unit_test_setup_teardown(info_while_sandboxes_go, setup, teardown),
		cmocka_unit_test_setup_teardown(remount_does_not_wait, setup, teardown),
	};
	fake_hooks.snapshot = midway_now;
	fake_hooks.branch = branch_hook;
	fake_hooks.probe = probe_hook;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
