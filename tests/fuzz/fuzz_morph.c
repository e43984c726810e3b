/* fuzz_morph.c: libFuzzer target for the parsers of the Morph Cloud API's
 * replies (backend/morph/api.c).  The input is a reply's body, loaded as
 * morph_http_call loads it (json_loadb with JSON_ALLOW_NUL), and given to
 * every morph_parse_* of api.h, and each element of a "data" list to
 * morph_parse_instance as morph_instance_find does.  Each parser must
 * accept exactly the replies api.h describes, and what it returns must be
 * bounded (ids fit for a URL path, statuses within their arrays) and equal
 * to the JSON it came from. */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include <jansson.h>

#include "backend/morph/api.h"
#include "tests/fuzz/fuzz.h"

#define BRANCH_MAX 2  /* morph_instance_branch asks for 1; room for more */

/* A string field as api.c's field() should take it: absent or null gives
 * def; anything but a string, or a string with a NUL in it, is refused. */
static const char *field_or(const json_t *j, const char *key, const char *def, bool *ok)
{
	const json_t *v = json_object_get(j, key);

	*ok = true;
	if (!v || json_is_null(v))
		return def;
	if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
		*ok = false;
	return json_string_value(v);
}

/* Does this JSON make an instance?  Its id, status and refs.snapshot_id
 * in *id, *status, *snap. */
static bool instance_ok(const json_t *j, const char **id, const char **status, const char **snap)
{
	bool a, b, c;

	if (!json_is_object(j))
		return false;
	*id = field_or(j, "id", NULL, &a);
	*status = field_or(j, "status", "pending", &b);
	*snap = field_or(json_object_get(j, "refs"), "snapshot_id", "", &c);
	return a && b && c && *id && morph_id_ok(*id) && strlen(*status) < MORPH_STATUS_MAX &&
	       strlen(*snap) < MORPH_ID_MAX;
}

static int instance(const json_t *j, struct morph_instance *out)
{
	const char *id = NULL, *status = NULL, *snap = NULL;
	bool want = instance_ok(j, &id, &status, &snap);
	int r = morph_parse_instance(j, out);

	CHECK(r == 0 || r == -EIO);
	CHECK((r == 0) == want);
	if (r == 0) {
		CHECK(morph_id_ok(out->id) && strcmp(out->id, id) == 0);
		CHECK(strcmp(out->status, status) == 0);
		CHECK(strcmp(out->snapshot_id, snap) == 0);
	}
	return r;
}

static bool snapshot_ok(const json_t *j, const char **id, const char **status)
{
	bool a, b;

	if (!json_is_object(j))
		return false;
	*id = field_or(j, "id", NULL, &a);
	*status = field_or(j, "status", "pending", &b);
	return a && b && *id && morph_id_ok(*id) && strlen(*status) < MORPH_STATUS_MAX;
}

static int snapshot(const json_t *j, struct morph_snapshot *out)
{
	const char *id = NULL, *status = NULL;
	bool want = snapshot_ok(j, &id, &status);
	const json_t *disk = json_object_get(json_object_get(j, "spec"), "disk_size");
	int r = morph_parse_snapshot(j, out);

	CHECK(r == 0 || r == -EIO);
	CHECK((r == 0) == want);
	if (r == 0) {
		CHECK(morph_id_ok(out->id) && strcmp(out->id, id) == 0);
		CHECK(strcmp(out->status, status) == 0);
		if (json_is_integer(disk) && json_integer_value(disk) > 0)
			CHECK(out->disk_mb == (uint64_t)json_integer_value(disk));
		else
			CHECK(out->disk_mb == 0);
	}
	return r;
}

/* A stream of an exec reply: absent, null or a string. */
static bool stream_ok(const json_t *s)
{
	return !s || json_is_null(s) || json_is_string(s);
}

static void stream_same(const json_t *s, const char *text, size_t len)
{
	size_t n = json_is_string(s) ? json_string_length(s) : 0;

	CHECK(text != NULL && len == n && text[len] == '\0');
	CHECK(n == 0 || memcmp(text, json_string_value(s), n) == 0);
}

static void exec(const json_t *j)
{
	const json_t *out = json_object_get(j, "stdout"), *err = json_object_get(j, "stderr");
	const json_t *code = json_object_get(j, "exit_code");
	/* An exit code an int cannot hold is refused, not wrapped (2^32 would
	 * read as 0, a success). */
	bool want = json_is_object(j) && json_is_integer(code) && json_integer_value(code) >= INT_MIN &&
		    json_integer_value(code) <= INT_MAX && stream_ok(out) && stream_ok(err);
	struct morph_exec x;
	int r;

	memset(&x, 0x5a, sizeof(x));
	r = morph_parse_exec(j, &x);
	CHECK(r == 0 || r == -EIO || r == -ENOMEM);
	if (r < 0) {
		CHECK(!want || r == -ENOMEM);
		CHECK(x.out == NULL && x.err == NULL);  /* nothing to release */
		return;
	}
	CHECK(want);
	CHECK(x.exit_code == json_integer_value(code));
	stream_same(out, x.out, x.out_len);
	stream_same(err, x.err, x.err_len);
	morph_exec_release(&x);
}

static void branch(const json_t *j)
{
	struct morph_snapshot snap, s2;
	struct morph_instance inst[BRANCH_MAX], i2;
	const json_t *list = json_object_get(j, "instances");
	bool want = json_is_array(list) && snapshot(json_object_get(j, "snapshot"), &s2) == 0;
	size_t n = 7;
	int r;

	for (size_t i = 0; want && i < json_array_size(list) && i < BRANCH_MAX; i++)
		want = instance(json_array_get(list, i), &i2) == 0;
	r = morph_parse_branch(j, &snap, inst, BRANCH_MAX, &n);
	CHECK(r == 0 || r == -EIO);
	CHECK((r == 0) == want);
	if (r < 0)
		return;
	/* n counts them all; the first BRANCH_MAX are parsed. */
	CHECK(n == json_array_size(list));
	CHECK(morph_id_ok(snap.id));
	for (size_t i = 0; i < n && i < BRANCH_MAX; i++)
		CHECK(morph_id_ok(inst[i].id) && strlen(inst[i].status) < MORPH_STATUS_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *root = json_loadb((const char *)data, size, JSON_ALLOW_NUL, NULL);
	struct morph_instance inst;
	struct morph_snapshot snap;
	const json_t *list;

	if (!root)
		return 0;
	instance(root, &inst);
	snapshot(root, &snap);
	exec(root);
	branch(root);
	/* GET /instance?metadata...: {"data": [instance...]} */
	list = json_object_get(root, "data");
	for (size_t i = 0; i < json_array_size(list); i++)
		instance(json_array_get(list, i), &inst);
	json_decref(root);
	return 0;
}
