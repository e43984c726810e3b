/* test_registry.c: the SQLite registry: tables, JSON lines, metrics. */
#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "fs/registry.h"

static char dir[64], path[128];

static int setup(void **state)
{
	(void)state;
	strcpy(dir, "/tmp/worldfs-reg-XXXXXX");
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/worldfs.db", dir);
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];
	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

struct seen {
	int n;
	struct entity e[4];
	char parent[4][24];
};

static int remember(void *ctx, struct entity *e, const char *parent_id)
{
	struct seen *s = ctx;
	s->e[s->n] = *e;
	s->e[s->n].ledger = (struct ledger){ 0 };
	ledger_copy(&s->e[s->n].ledger, &e->ledger);
	s->e[s->n].failure = NULL;
	snprintf(s->parent[s->n], 24, "%s", parent_id ? parent_id : "");
	s->n++;
	return 0;
}

static void entities_roundtrip(void **state)
{
	struct registry *r;
	struct entity w = { .id = "w-1", .name = "w", .kind = ENTITY_WORLD, .prob = 1000000000,
			    .mem_mib = 128, .vcpus = 1, .boot_ms = 12.5 };
	struct entity v = { .id = "v-1", .name = "v", .kind = ENTITY_VERSE, .trit = -1,
			    .state = STATE_COLLAPSED, .parent = &w };
	struct seen seen = { 0 };
	char err[128], *buf;
	size_t len;
	(void)state;

	assert_int_equal(registry_open(&r, path, err, sizeof(err)), 0);
	assert_int_equal(registry_entity_put(r, &w), 0);
	assert_int_equal(registry_entity_put(r, &v), 0);
	v.trit = 1;
	assert_int_equal(registry_entity_put(r, &v), 0);  /* update keeps order */
	assert_int_equal(registry_balance_set(r, "v-1", "alice", 42), 0);
	assert_int_equal(registry_balance_set(r, "v-1", "alice", 43), 0);
	assert_int_equal(registry_output_put(r, "v-1", 3, "out", 3, "", 0, 1.0), 0);
	assert_int_equal(registry_output_get(r, "v-1", 1, &buf, &len), 0);
	assert_int_equal(len, 3);
	assert_memory_equal(buf, "out", 3);
	free(buf);
	registry_close(r);

	assert_int_equal(registry_open(&r, path, err, sizeof(err)), 0);
	assert_int_equal(registry_load(r, remember, &seen), 0);
	assert_int_equal(seen.n, 2);
	assert_string_equal(seen.e[0].id, "w-1");
	assert_string_equal(seen.parent[1], "w-1");
	assert_int_equal(seen.e[1].trit, 1);
	assert_int_equal(seen.e[1].state, STATE_COLLAPSED);
	assert_int_equal(seen.e[1].status, 3);
	assert_true(seen.e[1].has_run);
	assert_false(seen.e[0].has_run);
	assert_int_equal(ledger_get(&seen.e[1].ledger, "alice")->amount, 43);
	assert_int_equal(seen.e[0].prob, 1000000000);
	ledger_release(&seen.e[0].ledger);
	ledger_release(&seen.e[1].ledger);

	/* a delete takes the balances and outputs with it */
	assert_int_equal(registry_entity_delete(r, "v-1"), 0);
	assert_int_equal(registry_output_get(r, "v-1", 1, &buf, &len), 0);
	assert_null(buf);
	registry_close(r);
}

static void history_and_metrics(void **state)
{
	struct registry *r;
	char err[128], *buf;
	size_t len;
	json_t *o, *m;
	(void)state;

	assert_int_equal(registry_open(&r, path, err, sizeof(err)), 0);
	assert_int_equal(registry_branch_add(r, "w-1", (const char *[]){ "v-1" }, 1, "fork", 4.5, -1), 0);
	assert_int_equal(registry_branch_add(r, "w-1", (const char *[]){ "v-2", "v-3", "v-4" }, 3, "push_down",
					     3.0, 0), 0);
	assert_int_equal(registry_resolution_add(r, "w-1", "[\"a\",\"b\"]", "a", "test", 140, 2.0), 0);
	for (int i = 1; i <= 20; i++)
		assert_int_equal(registry_metric_add(r, "w-1", "exec", i), 0);

	assert_int_equal(registry_dump(r, "world_branches", -1, &buf, &len), 0);
	assert_true(len > 0 && buf[len - 1] == '\n');
	o = json_loadb(buf, len, JSON_DISABLE_EOF_CHECK, NULL);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "branch_type")), "fork");
	assert_true(json_is_array(json_object_get(o, "child_entity_ids")));
	assert_int_equal(json_integer_value(json_object_get(o, "gf3_sum")), -1);
	json_decref(o);
	/* one push_down row holds every child */
	o = json_loads(strchr(buf, '\n') + 1, JSON_DISABLE_EOF_CHECK, NULL);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "branch_type")), "push_down");
	assert_int_equal(json_array_size(json_object_get(o, "child_entity_ids")), 3);
	assert_string_equal(json_string_value(json_array_get(json_object_get(o, "child_entity_ids"), 2)), "v-4");
	assert_int_equal(json_integer_value(json_object_get(o, "gf3_sum")), 0);
	json_decref(o);
	free(buf);

	assert_int_equal(registry_dump(r, "verse_resolutions", -1, &buf, &len), 0);
	o = json_loadb(buf, len, 0, NULL);
	assert_int_equal(json_integer_value(json_object_get(o, "wev_extracted")), 140);
	assert_int_equal(json_array_size(json_object_get(o, "verses")), 2);
	json_decref(o);
	free(buf);
	assert_int_equal(registry_dump(r, "balances", -1, &buf, &len), -EINVAL);
	/* Another uid sees none of it: w-1 is nobody's. */
	assert_int_equal(registry_dump(r, "world_branches", 1000, &buf, &len), 0);
	assert_int_equal(len, 0);
	free(buf);

	m = registry_metrics(r);
	o = json_object_get(json_object_get(m, "timings_ms"), "exec");
	assert_int_equal(json_integer_value(json_object_get(o, "n")), 20);
	assert_true(json_real_value(json_object_get(o, "p50")) == 10.0);
	assert_true(json_real_value(json_object_get(o, "p95")) == 19.0);
	assert_true(json_real_value(json_object_get(o, "max")) == 20.0);
	/* branching events: the fork and the push_down */
	assert_int_equal(json_integer_value(json_object_get(json_object_get(m, "counts"), "branches")), 2);
	assert_true(json_is_null(json_object_get(json_object_get(json_object_get(m, "timings_ms"), "boot"), "p50")));
	json_decref(m);
	registry_close(r);

	/* the database is in WAL mode with the four World Runtime tables */
	sqlite3 *db;
	sqlite3_stmt *st;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master WHERE name IN"
		" ('world_runtime_entities','world_branches','verse_resolutions','runtime_metrics')",
		-1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), 4);
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	sqlite3_close(db);
}

/* A run's record is committed lazily; the transactions around it still
 * work, and both kinds survive a reopen. */
static void lazy_and_durable_commits(void **state)
{
	struct registry *r;
	char err[128], *buf = NULL;
	size_t len = 0;
	(void)state;

	assert_int_equal(registry_open(&r, path, err, sizeof(err)), 0);
	assert_int_equal(registry_begin_lazy(r), 0);
	assert_int_equal(registry_output_put(r, "w-1", 3, "out", 3, "err!", 4, 1.5), 0);
	assert_int_equal(registry_metric_add(r, "w-1", "exec", 1.5), 0);
	assert_int_equal(registry_finish(r, 0), 0);
	/* a lazy transaction that is rolled back leaves nothing behind */
	assert_int_equal(registry_begin_lazy(r), 0);
	assert_int_equal(registry_metric_add(r, "w-1", "exec", 99), 0);
	assert_int_equal(registry_finish(r, -EIO), -EIO);
	assert_int_equal(registry_begin(r), 0);
	assert_int_equal(registry_branch_add(r, "w-1", (const char *[]){ "v-1" }, 1, "fork", 4.5, 0), 0);
	assert_int_equal(registry_finish(r, 0), 0);
	registry_close(r);

	assert_int_equal(registry_open(&r, path, err, sizeof(err)), 0);
	assert_int_equal(registry_output_get(r, "w-1", 1, &buf, &len), 0);
	assert_int_equal(len, 3);
	assert_memory_equal(buf, "out", 3);
	free(buf);
	json_t *m = registry_metrics(r);
	json_t *o = json_object_get(json_object_get(m, "timings_ms"), "exec");
	assert_int_equal(json_integer_value(json_object_get(o, "n")), 1);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(m, "counts"), "branches")), 1);
	json_decref(m);
	registry_close(r);
}

/* A registry made by worldfs 0.2 (no last_push_down column, branches of
 * type 'live', user_version 0) is migrated when opened: its branches
 * become 'fork', entities gain the column, and nothing else changes. */
static void migrates_older_registries(void **state)
{
	struct registry *r;
	struct entity w = { .kind = ENTITY_WORLD, .state = STATE_RUNNING, .id = "w-1", .name = "w" };
	char err[128], *buf;
	size_t len;
	sqlite3 *db;
	(void)state;

	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
		"CREATE TABLE world_runtime_entities (entity_id TEXT PRIMARY KEY, entity_type TEXT NOT NULL,"
		" parent_id TEXT, snapshot_id TEXT, trit INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,"
		" memory_mib INTEGER, vcpu_count INTEGER, boot_time_ms REAL, created_at TEXT NOT NULL,"
		" resolved_at TEXT, name TEXT NOT NULL, prob_billionths INTEGER NOT NULL DEFAULT 0,"
		" owner_uid INTEGER, owner_gid INTEGER, branch_count INTEGER NOT NULL DEFAULT 0,"
		" wev INTEGER NOT NULL DEFAULT 0, last_winner TEXT, failure TEXT, sandbox_handle TEXT);"
		"CREATE TABLE world_branches (branch_id TEXT PRIMARY KEY, parent_entity_id TEXT NOT NULL,"
		" child_entity_ids TEXT NOT NULL, branch_type TEXT NOT NULL, snapshot_time_ms REAL,"
		" gf3_sum INTEGER, branched_at TEXT NOT NULL);"
		"INSERT INTO world_runtime_entities (entity_id, entity_type, state, created_at, name)"
		" VALUES ('w-1', 'world', 'running', '2026-01-01T00:00:00.000Z', 'w');"
		"INSERT INTO world_branches VALUES ('b-1', 'w-1', '[\"v-1\"]', 'live', 1.0, -1, 'x');"
		"INSERT INTO world_branches VALUES ('b-2', 'w-1', '[\"v-2\"]', 'snapshot', 0, 0, 'x');",
		NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	assert_int_equal(registry_open(&r, path, err, sizeof(err)), 0);
	assert_int_equal(registry_dump(r, "world_branches", -1, &buf, &len), 0);
	assert_non_null(strstr(buf, "\"branch_type\":\"fork\""));
	assert_non_null(strstr(buf, "\"branch_type\":\"snapshot\""));
	assert_null(strstr(buf, "\"live\""));
	free(buf);
	w.push_down = "a b c";
	assert_int_equal(registry_entity_put(r, &w), 0);
	registry_close(r);
	/* and again: already migrated, nothing to do */
	assert_int_equal(registry_open(&r, path, err, sizeof(err)), 0);
	registry_close(r);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	{
		sqlite3_stmt *st;
		assert_int_equal(sqlite3_prepare_v2(db, "SELECT last_push_down, (SELECT user_version FROM"
			" pragma_user_version) FROM world_runtime_entities", -1, &st, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		assert_string_equal((const char *)sqlite3_column_text(st, 0), "a b c");
		assert_int_equal(sqlite3_column_int(st, 1), 2);
		sqlite3_finalize(st);
	}
	sqlite3_close(db);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(entities_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(history_and_metrics, setup, teardown),
		cmocka_unit_test_setup_teardown(migrates_older_registries, setup, teardown),
		cmocka_unit_test_setup_teardown(lazy_and_durable_commits, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
