/* api.c: Morph Cloud calls and the parsing of their replies. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/morph/api.h"
#include "backend/util/clock.h"

void morph_exec_release(struct morph_exec *x)
{
	free(x->out);
	free(x->err);
	x->out = x->err = NULL;
	x->out_len = x->err_len = 0;
}

bool morph_id_ok(const char *id)
{
	size_t n = 0;

	if (!id)
		return false;
	for (; id[n]; n++) {
		char ch = id[n];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '_' || ch == '-'))
			return false;
	}
	return n > 0 && n < MORPH_ID_MAX;
}

/* Copy string field key of j into out; a missing optional field gives def. */
static int field(const json_t *j, const char *key, const char *def, char *out, size_t len)
{
	const json_t *v = json_object_get(j, key);
	const char *s = json_string_value(v);

	if (v && !s && !json_is_null(v))
		return -EIO;  /* there, but not a string */
	if (s && strlen(s) != json_string_length(v))
		return -EIO;  /* a NUL inside ("\u0000"): the C string would be a part of it */
	if (!s)
		s = def;
	if (!s || strlen(s) >= len)
		return -EIO;
	memcpy(out, s, strlen(s) + 1);
	return 0;
}

int morph_parse_instance(const json_t *j, struct morph_instance *out)
{
	memset(out, 0, sizeof(*out));
	if (!json_is_object(j) || field(j, "id", NULL, out->id, sizeof(out->id)) < 0 || !morph_id_ok(out->id) ||
	    field(j, "status", "pending", out->status, sizeof(out->status)) < 0 ||
	    field(json_object_get(j, "refs"), "snapshot_id", "", out->snapshot_id, sizeof(out->snapshot_id)) < 0)
		return -EIO;
	return 0;
}

int morph_parse_snapshot(const json_t *j, struct morph_snapshot *out)
{
	json_t *disk;

	memset(out, 0, sizeof(*out));
	if (!json_is_object(j) || field(j, "id", NULL, out->id, sizeof(out->id)) < 0 || !morph_id_ok(out->id) ||
	    field(j, "status", "pending", out->status, sizeof(out->status)) < 0)
		return -EIO;
	disk = json_object_get(json_object_get(j, "spec"), "disk_size");
	if (json_is_integer(disk) && json_integer_value(disk) > 0)
		out->disk_mb = (uint64_t)json_integer_value(disk);
	return 0;
}

static int string_copy(const json_t *s, char **out, size_t *len)
{
	size_t n = json_is_string(s) ? json_string_length(s) : 0;

	if (s && !json_is_string(s) && !json_is_null(s))
		return -EIO;
	*out = malloc(n + 1);
	if (!*out)
		return -ENOMEM;
	if (n)
		memcpy(*out, json_string_value(s), n);
	(*out)[n] = '\0';
	*len = n;
	return 0;
}

int morph_parse_exec(const json_t *j, struct morph_exec *out)
{
	json_t *code = json_object_get(j, "exit_code");
	int err;

	memset(out, 0, sizeof(*out));
	/* An int, not wrapped into one: 4294967296 is not 0, a success. */
	if (!json_is_object(j) || !json_is_integer(code) || json_integer_value(code) < INT_MIN ||
	    json_integer_value(code) > INT_MAX)
		return -EIO;
	out->exit_code = (int)json_integer_value(code);
	err = string_copy(json_object_get(j, "stdout"), &out->out, &out->out_len);
	if (!err)
		err = string_copy(json_object_get(j, "stderr"), &out->err, &out->err_len);
	if (err)
		morph_exec_release(out);
	return err;
}

int morph_parse_branch(const json_t *j, struct morph_snapshot *snap, struct morph_instance *inst,
		       size_t max, size_t *n)
{
	json_t *list = json_object_get(j, "instances");
	int err;

	*n = 0;
	if (!json_is_array(list))
		return -EIO;
	err = morph_parse_snapshot(json_object_get(j, "snapshot"), snap);
	if (err)
		return err;
	for (size_t i = 0; i < json_array_size(list); i++) {
		if (i < max && (err = morph_parse_instance(json_array_get(list, i), &inst[i])) < 0)
			return err;
		(*n)++;
	}
	return 0;
}

/* ---- calls ---- */

static int call(struct morph_http *h, const char *method, const char *path, json_t *body,
		bool idempotent, bool quiet_404, json_t **reply)
{
	struct morph_call c = { .method = method, .path = path, .body = body,
				.idempotent = idempotent, .quiet_404 = quiet_404 };
	json_t *ignored = NULL;
	int err = morph_http_call(h, &c, reply ? reply : &ignored);

	json_decref(ignored);
	return err;
}

static void pause_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int morph_instance_start(struct morph_http *h, const char *snapshot_id, const char *tag,
			 struct morph_instance *out)
{
	char path[64 + MORPH_ID_MAX];
	json_t *body, *reply = NULL;
	int err;

	if (!morph_id_ok(snapshot_id))
		return -EINVAL;
	snprintf(path, sizeof(path), "/instance?snapshot_id=%s", snapshot_id);
	body = json_pack("{s:{s:s}}", "metadata", "worldfs_entity", tag);
	if (!body)
		return -ENOMEM;
	/* Not repeated after a lost reply: it would start a second instance. */
	err = call(h, "POST", path, body, false, false, &reply);
	if (!err && (err = morph_parse_instance(reply, out)) < 0)
		morph_log("POST %s: the reply is not an instance", path);
	json_decref(body);
	json_decref(reply);
	return err;
}

int morph_instance_get(struct morph_http *h, const char *id, bool quiet_404, struct morph_instance *out)
{
	char path[32 + MORPH_ID_MAX];
	json_t *reply = NULL;
	int err;

	if (!morph_id_ok(id))
		return -EINVAL;
	snprintf(path, sizeof(path), "/instance/%s", id);
	err = call(h, "GET", path, NULL, true, quiet_404, &reply);
	if (!err && (err = morph_parse_instance(reply, out)) < 0)
		morph_log("GET %s: the reply is not an instance", path);
	json_decref(reply);
	return err;
}

int morph_instance_wait(struct morph_http *h, const char *id, struct morph_instance *out)
{
	double deadline = now_ms() + MORPH_READY_TIMEOUT_MS;
	long wait = 100;

	for (;;) {
		int err = morph_instance_get(h, id, false, out);
		if (err)
			return err;
		if (strcmp(out->status, "ready") == 0)
			return 0;
		if (strcmp(out->status, "paused") == 0)
			return -EAGAIN;
		if (strcmp(out->status, "error") == 0) {
			morph_log("instance %s: status error", id);
			return -EIO;
		}
		if (now_ms() > deadline) {
			morph_log("instance %s: still %s after %d s", id, out->status, MORPH_READY_TIMEOUT_MS / 1000);
			return -ETIMEDOUT;
		}
		pause_ms(wait);
		wait = wait * 3 / 2 < 1000 ? wait * 3 / 2 : 1000;
	}
}

static int instance_post(struct morph_http *h, const char *id, const char *what, bool quiet_404)
{
	char path[32 + MORPH_ID_MAX];

	if (!morph_id_ok(id))
		return -EINVAL;
	snprintf(path, sizeof(path), "/instance/%s/%s", id, what);
	return call(h, "POST", path, NULL, true, quiet_404, NULL);
}

int morph_instance_delete(struct morph_http *h, const char *id)
{
	char path[32 + MORPH_ID_MAX];
	int err;

	if (!morph_id_ok(id))
		return -EINVAL;
	snprintf(path, sizeof(path), "/instance/%s", id);
	err = call(h, "DELETE", path, NULL, true, true, NULL);
	return err == -ENOENT ? 0 : err;
}

int morph_instance_pause(struct morph_http *h, const char *id)
{
	return instance_post(h, id, "pause", false);
}

int morph_instance_resume(struct morph_http *h, const char *id)
{
	return instance_post(h, id, "resume", false);
}

int morph_instance_snapshot(struct morph_http *h, const char *id, const char *digest,
			    struct morph_snapshot *out)
{
	char path[64 + 2 * MORPH_ID_MAX];
	json_t *body, *reply = NULL;
	int err;

	if (!morph_id_ok(id) || !morph_id_ok(digest))
		return -EINVAL;
	snprintf(path, sizeof(path), "/instance/%s/snapshot?digest=%s", id, digest);
	body = json_pack("{s:{s:s}}", "metadata", "worldfs_snapshot", digest);
	if (!body)
		return -ENOMEM;
	/* The digest makes a repeat return the snapshot the first try made. */
	err = call(h, "POST", path, body, true, false, &reply);
	if (!err && (err = morph_parse_snapshot(reply, out)) < 0)
		morph_log("POST %s: the reply is not a snapshot", path);
	if (!err && strcmp(out->status, "ready") != 0)
		err = morph_snapshot_wait(h, out->id, out);
	json_decref(body);
	json_decref(reply);
	return err;
}

int morph_instance_branch(struct morph_http *h, const char *id, struct morph_snapshot *snap,
			  struct morph_instance *child)
{
	char path[64 + MORPH_ID_MAX];
	json_t *reply = NULL;
	size_t n = 0;
	int err;

	if (!morph_id_ok(id))
		return -EINVAL;
	snprintf(path, sizeof(path), "/instance/%s/branch?count=1", id);
	err = call(h, "POST", path, NULL, false, false, &reply);
	if (!err && ((err = morph_parse_branch(reply, snap, child, 1, &n)) < 0 || n != 1)) {
		morph_log("POST %s: the reply is not {snapshot, instances[1]}", path);
		err = -EIO;
	}
	json_decref(reply);
	return err;
}

int morph_instance_exec(struct morph_http *h, const char *id, json_t *argv, long timeout_ms,
			bool idempotent, struct morph_exec *out)
{
	char path[32 + MORPH_ID_MAX];
	struct morph_call c = { .method = "POST", .path = path, .timeout_ms = timeout_ms,
				.idempotent = idempotent };
	json_t *reply = NULL;
	int err;

	if (!morph_id_ok(id))
		return -EINVAL;
	snprintf(path, sizeof(path), "/instance/%s/exec", id);
	c.body = json_pack("{s:O}", "command", argv);
	if (!c.body)
		return -ENOMEM;
	err = morph_http_call(h, &c, &reply);
	if (!err && (err = morph_parse_exec(reply, out)) < 0)
		morph_log("POST %s: the reply is not {exit_code, stdout, stderr}", path);
	json_decref(c.body);
	json_decref(reply);
	return err;
}

int morph_instance_find(struct morph_http *h, const char *tag, char ids[][MORPH_ID_MAX], size_t max,
			size_t *n)
{
	char path[96 + MORPH_ID_MAX];
	json_t *reply = NULL, *list;
	int err;

	*n = 0;
	if (!morph_id_ok(tag))
		return -EINVAL;
	snprintf(path, sizeof(path), "/instance?metadata%%5Bworldfs_entity%%5D=%s", tag);
	err = call(h, "GET", path, NULL, true, false, &reply);
	if (err)
		return err;
	list = json_object_get(reply, "data");
	if (!json_is_array(list))
		err = -EIO;
	for (size_t i = 0; i < json_array_size(list) && *n < max; i++) {
		struct morph_instance inst;
		json_t *meta = json_object_get(json_array_get(list, i), "metadata");
		const char *t = json_string_value(json_object_get(meta, "worldfs_entity"));
		/* Filter here too, in case the service ignored the filter. */
		if (morph_parse_instance(json_array_get(list, i), &inst) == 0 && t && strcmp(t, tag) == 0)
			memcpy(ids[(*n)++], inst.id, sizeof(inst.id));
	}
	json_decref(reply);
	return err;
}

int morph_snapshot_create(struct morph_http *h, const char *image_id, unsigned vcpus, unsigned memory_mb,
			  unsigned disk_mb, const char *digest, struct morph_snapshot *out)
{
	json_t *body, *reply = NULL;
	int err;

	body = json_pack("{s:s,s:i,s:i,s:i,s:s}", "image_id", image_id, "vcpus", (int)vcpus,
			 "memory", (int)memory_mb, "disk_size", (int)disk_mb, "digest", digest);
	if (!body)
		return -ENOMEM;
	/* Repeatable: the service returns the snapshot that has this digest. */
	err = call(h, "POST", "/snapshot", body, true, false, &reply);
	if (!err && (err = morph_parse_snapshot(reply, out)) < 0)
		morph_log("POST /snapshot: the reply is not a snapshot");
	if (!err && strcmp(out->status, "ready") != 0)
		err = morph_snapshot_wait(h, out->id, out);
	json_decref(body);
	json_decref(reply);
	return err;
}

int morph_snapshot_wait(struct morph_http *h, const char *id, struct morph_snapshot *out)
{
	double deadline = now_ms() + MORPH_READY_TIMEOUT_MS;
	char path[32 + MORPH_ID_MAX];
	long wait = 100;

	if (!morph_id_ok(id))
		return -EINVAL;
	snprintf(path, sizeof(path), "/snapshot/%s", id);
	for (;;) {
		json_t *reply = NULL;
		int err = call(h, "GET", path, NULL, true, false, &reply);
		if (!err && (err = morph_parse_snapshot(reply, out)) < 0)
			morph_log("GET %s: the reply is not a snapshot", path);
		json_decref(reply);
		if (err)
			return err;
		if (strcmp(out->status, "ready") == 0)
			return 0;
		if (strcmp(out->status, "failed") == 0 || strcmp(out->status, "deleting") == 0 ||
		    strcmp(out->status, "deleted") == 0) {
			morph_log("snapshot %s: status %s", id, out->status);
			return -EIO;
		}
		if (now_ms() > deadline) {
			morph_log("snapshot %s: still %s after %d s", id, out->status, MORPH_READY_TIMEOUT_MS / 1000);
			return -ETIMEDOUT;
		}
		pause_ms(wait);
		wait = wait * 3 / 2 < 1000 ? wait * 3 / 2 : 1000;
	}
}

int morph_snapshot_delete(struct morph_http *h, const char *id)
{
	char path[32 + MORPH_ID_MAX];
	int err;

	if (!morph_id_ok(id))
		return -EINVAL;
	snprintf(path, sizeof(path), "/snapshot/%s", id);
	err = call(h, "DELETE", path, NULL, true, true, NULL);
	return err == -ENOENT ? 0 : err;
}
