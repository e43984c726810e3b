/* api.h: the Morph Cloud objects worldfs uses (instances, snapshots, exec
 * results) and the calls on them, with the paths, query parameters and
 * JSON fields of the public Python SDK (morphcloud/api.py). */
#ifndef WORLDFS_MORPH_API_H
#define WORLDFS_MORPH_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/morph/http.h"

#define MORPH_ID_MAX 128     /* ids are short ("morphvm_...", "snapshot_...") */
#define MORPH_STATUS_MAX 16
#define MORPH_READY_TIMEOUT_MS (300 * 1000)  /* longest wait for an instance or snapshot */

struct morph_instance {
	char id[MORPH_ID_MAX];
	char status[MORPH_STATUS_MAX];    /* pending ready paused saving error */
	char snapshot_id[MORPH_ID_MAX];   /* refs.snapshot_id; "" if absent */
};

struct morph_snapshot {
	char id[MORPH_ID_MAX];
	char status[MORPH_STATUS_MAX];    /* pending ready failed deleting deleted */
	uint64_t disk_mb;                 /* spec.disk_size; 0 if absent */
};

struct morph_exec {
	int exit_code;
	char *out, *err;                  /* malloc'd, NUL-terminated */
	size_t out_len, err_len;
};

void morph_exec_release(struct morph_exec *x);

/* An id fit to go into a URL path unescaped: 1..MORPH_ID_MAX-1 chars of
 * [A-Za-z0-9_-]. */
bool morph_id_ok(const char *id);

/* ---- pure: JSON replies to structs (-EIO when a field is missing) ---- */
int morph_parse_instance(const json_t *j, struct morph_instance *out);
int morph_parse_snapshot(const json_t *j, struct morph_snapshot *out);
int morph_parse_exec(const json_t *j, struct morph_exec *out);
/* {snapshot, instances[]}: at most max instances; *n is how many there were. */
int morph_parse_branch(const json_t *j, struct morph_snapshot *snap, struct morph_instance *inst,
		       size_t max, size_t *n);

/* ---- calls ---- */

/* POST /instance?snapshot_id=ID, tagged with metadata {worldfs_entity: tag}
 * so that a lost reply can be found again (morph_instance_find). */
int morph_instance_start(struct morph_http *h, const char *snapshot_id, const char *tag,
			 struct morph_instance *out);
int morph_instance_get(struct morph_http *h, const char *id, bool quiet_404, struct morph_instance *out);
/* Poll until the instance is ready (0), paused (-EAGAIN), in error or gone. */
int morph_instance_wait(struct morph_http *h, const char *id, struct morph_instance *out);
int morph_instance_delete(struct morph_http *h, const char *id);   /* gone already: 0 */
int morph_instance_pause(struct morph_http *h, const char *id);
int morph_instance_resume(struct morph_http *h, const char *id);
/* POST /instance/ID/snapshot?digest=D, then wait for the snapshot: the
 * digest makes a repeated request return the same snapshot. */
int morph_instance_snapshot(struct morph_http *h, const char *id, const char *digest,
			    struct morph_snapshot *out);
/* POST /instance/ID/branch?count=1: the new snapshot and one instance. */
int morph_instance_branch(struct morph_http *h, const char *id, struct morph_snapshot *snap,
			  struct morph_instance *child);
/* POST /instance/ID/exec {"command": argv}; timeout_ms bounds the request. */
int morph_instance_exec(struct morph_http *h, const char *id, json_t *argv, long timeout_ms,
			bool idempotent, struct morph_exec *out);
/* Ids of the instances tagged with tag (GET /instance?metadata[worldfs_entity]=tag). */
int morph_instance_find(struct morph_http *h, const char *tag, char ids[][MORPH_ID_MAX], size_t max,
			size_t *n);

/* POST /snapshot {image_id, vcpus, memory, disk_size, digest}, then wait. */
int morph_snapshot_create(struct morph_http *h, const char *image_id, unsigned vcpus, unsigned memory_mb,
			  unsigned disk_mb, const char *digest, struct morph_snapshot *out);
int morph_snapshot_wait(struct morph_http *h, const char *id, struct morph_snapshot *out);
int morph_snapshot_delete(struct morph_http *h, const char *id);   /* gone already: 0 */

#endif
