/* registry.c: SQLite registry in WAL mode with the World Runtime tables
 * plus balances, snapshots and last outputs. */
#include <errno.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "fs/log.h"
#include "fs/registry.h"

struct registry {
	sqlite3 *db;
	bool lazy;  /* the open transaction commits with synchronous=NORMAL */
};

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS world_runtime_entities ("
	" entity_id TEXT PRIMARY KEY, entity_type TEXT NOT NULL, parent_id TEXT,"
	" snapshot_id TEXT, trit INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,"
	" memory_mib INTEGER, vcpu_count INTEGER, boot_time_ms REAL,"
	" created_at TEXT NOT NULL, resolved_at TEXT,"
	/* worldfs's own columns */
	" name TEXT NOT NULL, prob_billionths INTEGER NOT NULL DEFAULT 0,"
	" owner_uid INTEGER, owner_gid INTEGER, branch_count INTEGER NOT NULL DEFAULT 0,"
	" wev INTEGER NOT NULL DEFAULT 0, last_winner TEXT, failure TEXT, sandbox_handle TEXT,"
	" last_push_down TEXT);"
	"CREATE TABLE IF NOT EXISTS world_branches ("
	" branch_id TEXT PRIMARY KEY, parent_entity_id TEXT NOT NULL, child_entity_ids TEXT NOT NULL,"
	" branch_type TEXT NOT NULL, snapshot_time_ms REAL, gf3_sum INTEGER, branched_at TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS verse_resolutions ("
	" resolution_id TEXT PRIMARY KEY, parent_entity_id TEXT NOT NULL, verses TEXT NOT NULL,"
	" winning_verse TEXT NOT NULL, oracle_source TEXT, wev_extracted INTEGER NOT NULL,"
	" pull_up_time_ms REAL, resolved_at TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS runtime_metrics ("
	" metric_id INTEGER PRIMARY KEY AUTOINCREMENT, entity_id TEXT, boot_time_ms REAL,"
	" snapshot_time_ms REAL, branch_time_ms REAL, memory_overhead_mb REAL,"
	" measured_at TEXT NOT NULL, operation TEXT, duration_ms REAL);"
	"CREATE TABLE IF NOT EXISTS balances ("
	" entity_id TEXT NOT NULL, owner TEXT NOT NULL, amount INTEGER NOT NULL,"
	" PRIMARY KEY (entity_id, owner));"
	"CREATE TABLE IF NOT EXISTS snapshots ("
	" snapshot_id TEXT PRIMARY KEY, entity_id TEXT NOT NULL, name TEXT NOT NULL,"
	" size_bytes INTEGER, snapshot_time_ms REAL, created_at TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS last_outputs ("
	" entity_id TEXT PRIMARY KEY, status INTEGER NOT NULL, stdout BLOB, stderr BLOB,"
	" duration_ms REAL, finished_at TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS metrics_by_op ON runtime_metrics(operation, duration_ms);";

static int sqlite_errno(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK: case SQLITE_DONE: case SQLITE_ROW: return 0;
	case SQLITE_FULL: return -ENOSPC;
	case SQLITE_NOMEM: return -ENOMEM;
	case SQLITE_BUSY: case SQLITE_LOCKED: return -EBUSY;
	case SQLITE_CONSTRAINT: return -EEXIST;
	case SQLITE_READONLY: case SQLITE_PERM: return -EACCES;
	default: return -EIO;
	}
}

static int fail(struct registry *r, int rc, const char *what)
{
	worldfs_log("registry: %s: %s", what, sqlite3_errmsg(r->db));
	return sqlite_errno(rc);
}

/* Now as ISO 8601 UTC with milliseconds. */
void registry_now(char out[32])
{
	struct timespec ts;
	struct tm tm;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(ts.tv_nsec / 1000000) % 1000u);
}

void registry_new_id(const char *prefix, char out[24])
{
	unsigned char b[8];

	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
		memset(b, 0, sizeof(b));
	snprintf(out, 24, "%s-%02x%02x%02x%02x%02x%02x%02x%02x", prefix,
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
}

/* A registry made by an earlier worldfs (PRAGMA user_version below
 * REGISTRY_VERSION) is brought up to this one's, in one transaction:
 *   2: entities gain last_push_down; branch_type 'live' becomes 'fork'. */
#define REGISTRY_VERSION 2

static int migrate(struct registry *r, char **msg)
{
	sqlite3_stmt *st = NULL;
	int version = 0, rc;

	rc = sqlite3_prepare_v2(r->db, "PRAGMA user_version", -1, &st, NULL);
	if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	if (rc != SQLITE_OK || version >= REGISTRY_VERSION)
		return rc;
	rc = sqlite3_exec(r->db, "BEGIN IMMEDIATE", NULL, NULL, msg);
	if (rc != SQLITE_OK)
		return rc;
	/* A table the schema above just made has the column already. */
	if (sqlite3_prepare_v2(r->db, "SELECT last_push_down FROM world_runtime_entities LIMIT 0", -1, &st,
			       NULL) != SQLITE_OK)
		rc = sqlite3_exec(r->db, "ALTER TABLE world_runtime_entities ADD COLUMN last_push_down TEXT",
				  NULL, NULL, msg);
	sqlite3_finalize(st);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(r->db, "UPDATE world_branches SET branch_type='fork' WHERE branch_type='live';"
				  " PRAGMA user_version=2; COMMIT", NULL, NULL, msg);
	if (rc != SQLITE_OK)
		sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
	else if (version > 0 || sqlite3_total_changes(r->db) > 0)
		worldfs_log("registry: migrated from version %d to %d", version, REGISTRY_VERSION);
	return rc;
}

int registry_open(struct registry **out, const char *path, char *err, size_t errlen)
{
	struct registry *r = calloc(1, sizeof(*r));
	char *msg = NULL;
	int rc;

	if (!r)
		return -ENOMEM;
	rc = sqlite3_open_v2(path, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			     SQLITE_OPEN_FULLMUTEX, NULL);
	if (rc != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(r->db, 5000);
	/* WAL + FULL: a commit is on disk before the syscall it acknowledges returns. */
	rc = sqlite3_exec(r->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL, &msg);
	if (rc != SQLITE_OK)
		goto fail;
	rc = sqlite3_exec(r->db, schema, NULL, NULL, &msg);
	if (rc != SQLITE_OK)
		goto fail;
	rc = migrate(r, &msg);
	if (rc != SQLITE_OK)
		goto fail;
	*out = r;
	return 0;
fail:
	snprintf(err, errlen, "%s: %s", path, msg ? msg : (r->db ? sqlite3_errmsg(r->db) : "cannot open"));
	sqlite3_free(msg);
	sqlite3_close(r->db);
	free(r);
	return sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
}

void registry_close(struct registry *r)
{
	if (!r)
		return;
	sqlite3_close(r->db);
	free(r);
}

static int exec_sql(struct registry *r, const char *sql)
{
	int rc = sqlite3_exec(r->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : fail(r, rc, sql);
}

static void registry_rollback(struct registry *r);

int registry_begin(struct registry *r) { return exec_sql(r, "BEGIN IMMEDIATE"); }

/* A transaction whose commit is not flushed to disk: it survives worldfs
 * being killed and a clean reboot, and a power loss takes it only together
 * with everything after it (WAL order).  For what a run leaves (its output,
 * its time): the run's effects in the guest are not durable either until
 * a snapshot, and after a crash the world comes back from that snapshot,
 * so the record and the state are lost together.  The next durable commit
 * flushes it too.  SQLite takes the level only outside a transaction. */
int registry_begin_lazy(struct registry *r)
{
	int rc = exec_sql(r, "PRAGMA synchronous=NORMAL");

	if (rc == 0)
		r->lazy = true;
	if (rc == 0 && (rc = exec_sql(r, "BEGIN IMMEDIATE")) < 0)
		registry_rollback(r);
	return rc;
}

static void end_lazy(struct registry *r)
{
	if (r->lazy && exec_sql(r, "PRAGMA synchronous=FULL") == 0)
		r->lazy = false;
}

/* A failed COMMIT leaves the transaction open: roll it back, or every
 * later BEGIN would fail. */
static int registry_commit(struct registry *r)
{
	int rc = exec_sql(r, "COMMIT");

	if (rc < 0)
		sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
	end_lazy(r);
	return rc;
}

static void registry_rollback(struct registry *r)
{
	sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
	end_lazy(r);
}

uint64_t registry_changes(struct registry *r)
{
	return (uint64_t)sqlite3_total_changes64(r->db);
}

int registry_finish(struct registry *r, int err)
{
	if (err) {
		registry_rollback(r);
		return err;
	}
	return registry_commit(r);
}

/* Prepare, bind with a tiny format ("t" text or NULL, "i" int64, "d" double,
 * "b" blob+len), step to completion. */
static int run(struct registry *r, const char *sql, const char *fmt, ...)
{
	sqlite3_stmt *st = NULL;
	va_list ap;
	int rc, i = 1;

	rc = sqlite3_prepare_v2(r->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(r, rc, "prepare");
	va_start(ap, fmt);
	for (const char *f = fmt; *f; f++, i++) {
		switch (*f) {
		case 't': {
			const char *s = va_arg(ap, const char *);
			rc = s ? sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
			break;
		}
		case 'i': rc = sqlite3_bind_int64(st, i, va_arg(ap, int64_t)); break;
		case 'd': rc = sqlite3_bind_double(st, i, va_arg(ap, double)); break;
		case 'b': {
			const void *p = va_arg(ap, const void *);
			size_t n = va_arg(ap, size_t);
			rc = sqlite3_bind_blob64(st, i, p ? p : "", n, SQLITE_TRANSIENT);
			break;
		}
		}
		if (rc != SQLITE_OK)
			break;
	}
	va_end(ap);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
		rc = fail(r, rc, sql);
		sqlite3_finalize(st);
		return rc;
	}
	sqlite3_finalize(st);
	return 0;
}

int registry_entity_put(struct registry *r, const struct entity *e)
{
	const char *snapshot_id = NULL;
	char created[32];
	int err;

	if (e->kind == ENTITY_SNAPSHOT)
		snapshot_id = e->id;
	else if (e->parent && e->parent->kind == ENTITY_SNAPSHOT)
		snapshot_id = e->parent->id;
	if (e->created_at[0])
		strcpy(created, e->created_at);
	else
		registry_now(created);
	err = run(r,
		  "INSERT INTO world_runtime_entities (entity_id, entity_type, parent_id, snapshot_id,"
		  " trit, state, memory_mib, vcpu_count, boot_time_ms, created_at, resolved_at, name,"
		  " prob_billionths, owner_uid, owner_gid, branch_count, wev, last_winner, failure,"
		  " sandbox_handle, last_push_down) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,"
		  "?16,?17,?18,?19,?20,?21)"
		  " ON CONFLICT(entity_id) DO UPDATE SET trit=?5, state=?6, boot_time_ms=?9,"
		  " resolved_at=?11, prob_billionths=?13, branch_count=?16, wev=?17, last_winner=?18,"
		  " failure=?19, sandbox_handle=?20, last_push_down=?21",
		  "ttttitiidtttiiiiitttt",
		  e->id, entity_kind_name(e->kind), e->parent ? e->parent->id : NULL, snapshot_id,
		  (int64_t)e->trit, entity_state_name(e->state), (int64_t)e->mem_mib,
		  (int64_t)e->vcpus, e->boot_ms, created, e->resolved_at[0] ? e->resolved_at : NULL,
		  e->name, e->prob, (int64_t)e->uid, (int64_t)e->gid, (int64_t)e->branch_count,
		  e->wev, e->winner[0] ? e->winner : NULL, e->failure, e->handle[0] ? e->handle : NULL,
		  e->push_down);
	if (err || e->kind != ENTITY_SNAPSHOT)
		return err;
	return run(r, "INSERT INTO snapshots (snapshot_id, entity_id, name, size_bytes, snapshot_time_ms,"
		   " created_at) VALUES (?1,?2,?3,?4,?5,?6) ON CONFLICT(snapshot_id) DO UPDATE SET"
		   " size_bytes=?4, snapshot_time_ms=?5",
		   "tttidt", e->id, e->parent ? e->parent->id : NULL, e->name,
		   (int64_t)e->size_bytes, e->snapshot_ms, created);
}

int registry_entity_delete(struct registry *r, const char *id)
{
	int err = run(r, "DELETE FROM world_runtime_entities WHERE entity_id=?1", "t", id);

	if (!err)
		err = run(r, "DELETE FROM balances WHERE entity_id=?1", "t", id);
	if (!err)
		err = run(r, "DELETE FROM last_outputs WHERE entity_id=?1", "t", id);
	if (!err)
		err = run(r, "DELETE FROM snapshots WHERE snapshot_id=?1", "t", id);
	return err;
}

int registry_balance_set(struct registry *r, const char *id, const char *owner, int64_t amount)
{
	return run(r, "INSERT INTO balances (entity_id, owner, amount) VALUES (?1,?2,?3)"
		   " ON CONFLICT(entity_id, owner) DO UPDATE SET amount=?3", "tti", id, owner, amount);
}

int registry_balance_delete(struct registry *r, const char *id, const char *owner)
{
	return run(r, "DELETE FROM balances WHERE entity_id=?1 AND owner=?2", "tt", id, owner);
}

int registry_ledger_put(struct registry *r, const char *id, const struct ledger *l)
{
	int err = run(r, "DELETE FROM balances WHERE entity_id=?1", "t", id);

	for (size_t i = 0; !err && i < l->n; i++)
		err = registry_balance_set(r, id, l->v[i].owner, l->v[i].amount);
	return err;
}

int registry_output_put(struct registry *r, const char *id, int status,
			const char *out, size_t out_len, const char *err, size_t err_len,
			double duration_ms)
{
	char now[32];

	registry_now(now);
	return run(r, "INSERT OR REPLACE INTO last_outputs (entity_id, status, stdout, stderr,"
		   " duration_ms, finished_at) VALUES (?1,?2,?3,?4,?5,?6)", "tibbdt",
		   id, (int64_t)status, out, out_len, err, err_len, duration_ms, now);
}

int registry_output_get(struct registry *r, const char *id, int which, char **buf, size_t *len)
{
	sqlite3_stmt *st = NULL;
	int rc;

	*buf = NULL;
	*len = 0;
	rc = sqlite3_prepare_v2(r->db, which == 1 ? "SELECT stdout FROM last_outputs WHERE entity_id=?1"
				: "SELECT stderr FROM last_outputs WHERE entity_id=?1", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(r, rc, "prepare");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		size_t n = (size_t)sqlite3_column_bytes(st, 0);
		const void *p = sqlite3_column_blob(st, 0);
		if (n) {
			*buf = malloc(n);
			if (!*buf) {
				sqlite3_finalize(st);
				return -ENOMEM;
			}
			memcpy(*buf, p, n);
			*len = n;
		}
		rc = SQLITE_DONE;
	}
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : fail(r, rc, "output");
}

int registry_branch_add(struct registry *r, const char *parent_id, const char *const child_ids[], size_t n,
			const char *branch_type, double snapshot_time_ms, int gf3)
{
	char id[24], now[32], *kids = NULL;
	json_t *a = json_array();
	int err;

	for (size_t i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_string(child_ids[i])) < 0) {
			json_decref(a);
			a = NULL;
		}
	kids = a ? json_dumps(a, JSON_COMPACT) : NULL;
	json_decref(a);
	if (!kids)
		return -ENOMEM;
	registry_new_id("b", id);
	registry_now(now);
	err = run(r, "INSERT INTO world_branches (branch_id, parent_entity_id, child_entity_ids,"
		  " branch_type, snapshot_time_ms, gf3_sum, branched_at) VALUES (?1,?2,?3,?4,?5,?6,?7)",
		  "ttttdit", id, parent_id, kids, branch_type, snapshot_time_ms, (int64_t)gf3, now);
	free(kids);
	return err;
}

int registry_resolution_add(struct registry *r, const char *parent_id, const char *verses_json,
			    const char *winner, const char *oracle, int64_t wev, double pull_up_ms)
{
	char id[24], now[32];

	registry_new_id("r", id);
	registry_now(now);
	return run(r, "INSERT INTO verse_resolutions (resolution_id, parent_entity_id, verses,"
		   " winning_verse, oracle_source, wev_extracted, pull_up_time_ms, resolved_at)"
		   " VALUES (?1,?2,?3,?4,?5,?6,?7,?8)", "tttttidt",
		   id, parent_id, verses_json, winner, oracle, wev, pull_up_ms, now);
}

int registry_metric_add(struct registry *r, const char *entity_id, const char *op, double ms)
{
	char now[32];

	registry_now(now);
	/* The original columns carry the figure for their operation; the
	 * operation/duration pair carries every operation. */
	return run(r, "INSERT INTO runtime_metrics (entity_id, boot_time_ms, snapshot_time_ms,"
		   " branch_time_ms, measured_at, operation, duration_ms) VALUES (?1,"
		   " CASE WHEN ?2='boot' THEN ?3 END, CASE WHEN ?2='snapshot' THEN ?3 END,"
		   " CASE WHEN ?2='branch' THEN ?3 END, ?4, ?2, ?3)", "ttdt", entity_id, op, ms, now);
}

static void col_text(sqlite3_stmt *st, int i, char *dst, size_t n)
{
	const unsigned char *s = sqlite3_column_text(st, i);

	snprintf(dst, n, "%s", s ? (const char *)s : "");
}

int registry_load(struct registry *r, int (*cb)(void *ctx, struct entity *e, const char *parent_id),
		  void *ctx)
{
	sqlite3_stmt *st = NULL, *bal = NULL;
	int rc, err = 0;

	rc = sqlite3_prepare_v2(r->db,
		"SELECT e.entity_id, e.entity_type, e.parent_id, e.trit, e.state, e.memory_mib,"
		" e.vcpu_count, e.boot_time_ms, e.created_at, e.resolved_at, e.name, e.prob_billionths,"
		" e.owner_uid, e.owner_gid, e.branch_count, e.wev, e.last_winner, e.failure,"
		" e.sandbox_handle, s.size_bytes, s.snapshot_time_ms, o.status, length(o.stdout),"
		" length(o.stderr), e.last_push_down"
		" FROM world_runtime_entities e LEFT JOIN snapshots s ON s.snapshot_id = e.entity_id"
		" LEFT JOIN last_outputs o ON o.entity_id = e.entity_id ORDER BY e.rowid", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(r, rc, "load");
	rc = sqlite3_prepare_v2(r->db, "SELECT owner, amount FROM balances WHERE entity_id=?1",
				-1, &bal, NULL);
	if (rc != SQLITE_OK) {
		sqlite3_finalize(st);
		return fail(r, rc, "load");
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct entity e = { 0 };
		char kind[16], state[16], parent[24], failure[512];

		col_text(st, 0, e.id, sizeof(e.id));
		col_text(st, 1, kind, sizeof(kind));
		col_text(st, 2, parent, sizeof(parent));
		col_text(st, 4, state, sizeof(state));
		if (entity_kind_parse(kind, &e.kind) < 0 || entity_state_parse(state, &e.state) < 0) {
			worldfs_log("registry: entity %s: bad type/state, skipped", e.id);
			continue;
		}
		e.trit = sqlite3_column_int(st, 3);
		e.mem_mib = (unsigned)sqlite3_column_int(st, 5);
		e.vcpus = (unsigned)sqlite3_column_int(st, 6);
		e.boot_ms = sqlite3_column_double(st, 7);
		col_text(st, 8, e.created_at, sizeof(e.created_at));
		col_text(st, 9, e.resolved_at, sizeof(e.resolved_at));
		col_text(st, 10, e.name, sizeof(e.name));
		e.prob = sqlite3_column_int64(st, 11);
		e.uid = (uid_t)sqlite3_column_int64(st, 12);
		e.gid = (gid_t)sqlite3_column_int64(st, 13);
		e.branch_count = (unsigned)sqlite3_column_int(st, 14);
		e.wev = sqlite3_column_int64(st, 15);
		col_text(st, 16, e.winner, sizeof(e.winner));
		col_text(st, 17, failure, sizeof(failure));
		e.failure = failure[0] ? failure : NULL;
		col_text(st, 18, e.handle, sizeof(e.handle));
		e.size_bytes = (uint64_t)sqlite3_column_int64(st, 19);
		e.snapshot_ms = sqlite3_column_double(st, 20);
		e.has_run = sqlite3_column_type(st, 21) != SQLITE_NULL;
		e.status = sqlite3_column_int(st, 21);
		e.out_len = (size_t)sqlite3_column_int64(st, 22);
		e.err_len = (size_t)sqlite3_column_int64(st, 23);
		e.push_down = (char *)sqlite3_column_text(st, 24);  /* the callback copies it */

		sqlite3_reset(bal);
		sqlite3_bind_text(bal, 1, e.id, -1, SQLITE_TRANSIENT);
		while (!err && sqlite3_step(bal) == SQLITE_ROW)
			err = ledger_set(&e.ledger, (const char *)sqlite3_column_text(bal, 0),
					 sqlite3_column_int64(bal, 1));
		if (!err)
			err = cb(ctx, &e, parent[0] ? parent : NULL);
		ledger_release(&e.ledger);
		if (err)
			break;
	}
	if (!err && rc != SQLITE_DONE)
		err = fail(r, rc, "load");
	sqlite3_finalize(bal);
	sqlite3_finalize(st);
	return err;
}

/* Each row as one JSON object line; columns holding JSON arrays are embedded. */
int registry_dump(struct registry *r, const char *table, long long owner, char **out, size_t *len)
{
	char sql[256];
	sqlite3_stmt *st = NULL;
	char *buf = NULL;
	size_t n = 0;
	FILE *f;
	int rc;

	if (strcmp(table, "world_branches") && strcmp(table, "verse_resolutions"))
		return -EINVAL;
	snprintf(sql, sizeof(sql), "SELECT t.* FROM %s t WHERE ?1 < 0 OR t.parent_entity_id IN"
		 " (SELECT entity_id FROM world_runtime_entities WHERE owner_uid = ?1) ORDER BY t.rowid", table);
	rc = sqlite3_prepare_v2(r->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(r, rc, "dump");
	sqlite3_bind_int64(st, 1, owner);
	f = open_memstream(&buf, &n);
	if (!f) {
		sqlite3_finalize(st);
		return -ENOMEM;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		json_t *o = json_object();
		for (int i = 0; i < sqlite3_column_count(st); i++) {
			const char *name = sqlite3_column_name(st, i);
			json_t *v;
			switch (sqlite3_column_type(st, i)) {
			case SQLITE_INTEGER: v = json_integer(sqlite3_column_int64(st, i)); break;
			case SQLITE_FLOAT: v = json_real(sqlite3_column_double(st, i)); break;
			case SQLITE_NULL: v = json_null(); break;
			default: {
				const char *s = (const char *)sqlite3_column_text(st, i);
				v = (s[0] == '[') ? json_loads(s, 0, NULL) : NULL;
				if (!v)
					v = json_string(s);
			}
			}
			json_object_set_new(o, name, v);
		}
		json_dumpf(o, f, JSON_OUT);
		fputc('\n', f);
		json_decref(o);
	}
	fclose(f);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		free(buf);
		return fail(r, rc, "dump");
	}
	*out = buf;
	*len = n;
	return 0;
}

static int64_t count(struct registry *r, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int64_t v = 0;

	if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* p50/p95/max of one operation's durations, nearest-rank. */
static json_t *timing(struct registry *r, const char *op)
{
	sqlite3_stmt *st = NULL;
	double *v = NULL;
	size_t n = 0, cap = 0;
	json_t *o;

	if (sqlite3_prepare_v2(r->db, "SELECT duration_ms FROM runtime_metrics WHERE operation=?1"
			       " ORDER BY duration_ms", -1, &st, NULL) != SQLITE_OK)
		return json_null();
	sqlite3_bind_text(st, 1, op, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (n == cap) {
			double *nv = realloc(v, (cap = cap ? cap * 2 : 64) * sizeof(*v));
			if (!nv)
				break;
			v = nv;
		}
		v[n++] = sqlite3_column_double(st, 0);
	}
	sqlite3_finalize(st);
	if (n == 0)
		o = json_pack("{s:i,s:n,s:n,s:n}", "n", 0, "p50", "p95", "max");
	else
		o = json_pack("{s:I,s:f,s:f,s:f}", "n", (json_int_t)n,
			      "p50", v[(n * 50 + 99) / 100 - 1], "p95", v[(n * 95 + 99) / 100 - 1],
			      "max", v[n - 1]);
	free(v);
	return o;
}

json_t *registry_metrics(struct registry *r)
{
	static const char *const ops[] = { "boot", "branch", "push_down", "snapshot", "exec", "resolve",
					   "suspend", "resume" };
	json_t *t = json_object();

	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		json_object_set_new(t, ops[i], timing(r, ops[i]));
	return json_pack("{s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I},s:o}", "counts",
		"worlds", (json_int_t)count(r, "SELECT count(*) FROM world_runtime_entities WHERE entity_type='world'"),
		"verses", (json_int_t)count(r, "SELECT count(*) FROM world_runtime_entities WHERE entity_type='verse'"),
		"snapshots", (json_int_t)count(r, "SELECT count(*) FROM world_runtime_entities WHERE entity_type='snapshot'"),
		"live", (json_int_t)count(r, "SELECT count(*) FROM world_runtime_entities WHERE entity_type!='snapshot' AND state='running'"),
		"branches", (json_int_t)count(r, "SELECT count(*) FROM world_branches"),
		"resolutions", (json_int_t)count(r, "SELECT count(*) FROM verse_resolutions"),
		"execs", (json_int_t)count(r, "SELECT count(*) FROM runtime_metrics WHERE operation='exec'"),
		"timings_ms", t);
}
