/* registry.h: the SQLite registry (WAL), the source of truth.  Callers
 * serialize access (the tree lock); each mutating call is one transaction
 * unless wrapped in registry_begin ... registry_finish. */
#ifndef WORLDFS_REGISTRY_H
#define WORLDFS_REGISTRY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "fs/world.h"

struct registry;

/* How every JSON text of the mount is printed: one line, keys in order,
 * reals with 10 significant digits (0.45 stays 0.45). */
#define JSON_OUT (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10))

/* Now as ISO 8601 UTC with milliseconds; a fresh random id "PREFIX-16hex". */
void registry_now(char out[32]);
void registry_new_id(const char *prefix, char out[24]);

int registry_open(struct registry **out, const char *path, char *err, size_t errlen);
void registry_close(struct registry *r);

/* Group several changes into one transaction: registry_begin (durable)
 * or registry_begin_lazy (see registry.c), then the changes, each only
 * while err is still 0, then registry_finish(r, err), which commits when
 * err is 0 and rolls back otherwise, and returns err or the commit's
 * error.  This is the only way a transaction ends:
 *
 *	err = registry_begin(reg);
 *	if (!err)
 *		err = registry_entity_put(reg, e);
 *	err = registry_finish(reg, err);
 */
int registry_begin(struct registry *r);
int registry_begin_lazy(struct registry *r);
int registry_finish(struct registry *r, int err);
/* Grows with every row written (rolled back or not): what was read from
 * the registry is still current while it has not moved. */
uint64_t registry_changes(struct registry *r);

/* The entity row (and for snapshots the snapshots row); insert or update. */
int registry_entity_put(struct registry *r, const struct entity *e);
/* Delete the entity with its balances, outputs and snapshot row. */
int registry_entity_delete(struct registry *r, const char *id);

int registry_balance_set(struct registry *r, const char *id, const char *owner, int64_t amount);
int registry_balance_delete(struct registry *r, const char *id, const char *owner);
int registry_ledger_put(struct registry *r, const char *id, const struct ledger *l);

int registry_output_put(struct registry *r, const char *id, int status,
			const char *out, size_t out_len, const char *err, size_t err_len,
			double duration_ms);
/* which: 1 stdout, 2 stderr.  *buf malloc'd (NULL with *len 0 when none). */
int registry_output_get(struct registry *r, const char *id, int which, char **buf, size_t *len);

int registry_branch_add(struct registry *r, const char *parent_id, const char *const child_ids[], size_t n,
			const char *branch_type, double snapshot_time_ms, int gf3);
int registry_resolution_add(struct registry *r, const char *parent_id, const char *verses_json,
			    const char *winner, const char *oracle, int64_t wev, double pull_up_ms);
/* op: boot, branch, snapshot, exec, resolve. */
int registry_metric_add(struct registry *r, const char *entity_id, const char *op, double ms);

/* Load every entity (parents before children) with balances and last-output
 * sizes; cb returns 0 to go on.  The entity passed is a temporary: copy it. */
int registry_load(struct registry *r, int (*cb)(void *ctx, struct entity *e,
						const char *parent_id), void *ctx);

/* JSON lines of world_branches / verse_resolutions, malloc'd: every row,
 * or (owner >= 0) only the rows of entities that uid owns. */
int registry_dump(struct registry *r, const char *table, long long owner, char **out, size_t *len);
/* The .worldfs/metrics object: counts and p50/p95/max timings (new reference). */
json_t *registry_metrics(struct registry *r);

#endif
