/* morph.c: the morph backend: every world is a Morph Cloud instance, every
 * snapshot a Morph snapshot, driven over the REST API (api.c); the session
 * is carried between execs by session.c.  What worldfs must find again
 * after a crash is kept in small files under STATE/morph/:
 *   instances/ENTITY   the instance id (and the snapshot a live branch made
 *                      for it, deleted with it), written as soon as the
 *                      instance exists, so that a half-made world is
 *                      collected at the next mount;
 *   snapshots/ENTITY   the Morph snapshot id of a worldfs snapshot.
 * The backend handle is the instance id. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/morph/api.h"
#include "backend/morph/http.h"
#include "backend/morph/record.h"
#include "backend/morph/session.h"
#include "backend/util/clock.h"

#define DEFAULT_URL "https://cloud.morph.so/api"
#define DEFAULT_IMAGE "morphvm-minimal"
#define DEFAULT_EXEC_TIMEOUT_S 60
#define DEFAULT_MEM_MIB 128
#define DEFAULT_OUTPUT_MAX (1u << 20)
#define DISK_MB 4096              /* disk of a base snapshot made from an image */
#define EXEC_GRACE_MS 10000       /* beyond exec_timeout: the wrapper's own work and the network */
#define SESSION_CHECK_TIMEOUT_MS 60000
#define BASES_MAX 16
#define FOUND_MAX 8

struct base {
	unsigned vcpus, mem_mib;
	char id[MORPH_ID_MAX];
};

struct backend {
	struct morph_http *http;
	char dir[PATH_MAX - 256];    /* STATE/morph; room below it for kind/id */
	char snapshot[MORPH_ID_MAX]; /* -o morph_snapshot, or "" */
	char *image;                 /* -o morph_image */
	unsigned exec_timeout_s;
	size_t output_max;
	pthread_mutex_t lock;        /* bases */
	struct base bases[BASES_MAX];
	size_t nbases;
};

struct sandbox {
	struct backend *b;
	char id[65];                         /* the entity's */
	char instance[MORPH_ID_MAX];
	char branch_snapshot[MORPH_ID_MAX];  /* made by a live branch for this one, or "" */
};

/* ---- instances ---- */

static struct sandbox *sandbox_new(struct backend *b, const char *id)
{
	struct sandbox *s = calloc(1, sizeof(*s));

	if (s) {
		s->b = b;
		snprintf(s->id, sizeof(s->id), "%s", id);
	}
	return s;
}

/* Delete s's instance, the snapshot its branch made, and the record.  The
 * record stays if the service could not be told: the next mount retries. */
static int sandbox_delete(struct sandbox *s)
{
	int err = 0;

	if (s->instance[0])
		err = morph_instance_delete(s->b->http, s->instance);
	if (!err && s->branch_snapshot[0]) {
		int e = morph_snapshot_delete(s->b->http, s->branch_snapshot);
		if (e)
			morph_log("snapshot %s (made to branch %s): not deleted: %s", s->branch_snapshot, s->id,
				  strerror(-e));
	}
	if (!err)
		morph_record_remove(s->b->dir, "instances", s->id);
	else
		morph_log("%s: instance %s not deleted: %s (retried at the next mount)", s->id, s->instance,
			  strerror(-err));
	return err;
}

/* A start whose reply was lost may still have made an instance: find the
 * instances tagged with this entity and delete them. */
static void delete_tagged(struct backend *b, const char *tag)
{
	char ids[FOUND_MAX][MORPH_ID_MAX];
	size_t n = 0;

	if (morph_instance_find(b->http, tag, ids, FOUND_MAX, &n) < 0) {
		morph_log("%s: cannot list its instances; one may be left over", tag);
		return;
	}
	for (size_t i = 0; i < n && i < FOUND_MAX; i++)
		if (morph_instance_delete(b->http, ids[i]) == 0)
			morph_log("%s: deleted instance %s left by a failed start", tag, ids[i]);
}

/* Run one of the session's fixed commands; the session answers or -EIO. */
static int session_check(struct sandbox *s, bool fresh)
{
	json_t *argv = fresh ? session_fresh_command() : session_ping_command();
	struct morph_exec x = { 0 };
	int err;

	if (!argv)
		return -ENOMEM;
	err = morph_instance_exec(s->b->http, s->instance, argv, SESSION_CHECK_TIMEOUT_MS, true, &x);
	json_decref(argv);
	if (!err && !session_ready(x.out, x.out_len)) {
		char text[160];
		snprintf(text, sizeof(text), "%.*s", (int)(x.err_len < 120 ? x.err_len : 120), x.err);
		text[strcspn(text, "\n")] = '\0';
		morph_log("instance %s: the session does not answer (status %d): %s", s->instance, x.exit_code, text);
		err = -EIO;
	}
	morph_exec_release(&x);
	return err;
}

/* Wait for s's new instance and its session; on failure delete it all. */
static int sandbox_finish(struct sandbox *s, bool fresh)
{
	struct morph_instance inst;
	int err;

	err = morph_record_write(s->b->dir, "instances", s->id, s->instance, s->branch_snapshot);
	if (!err)
		err = morph_instance_wait(s->b->http, s->instance, &inst);
	if (err == -EAGAIN)
		err = -EIO;  /* paused under our feet */
	if (!err)
		err = session_check(s, fresh);
	if (err)
		sandbox_delete(s);
	return err;
}

/* A new instance from a Morph snapshot, for entity s->id. */
static int sandbox_start(struct sandbox *s, const char *snapshot_id, bool fresh)
{
	struct morph_instance inst;
	int err;

	err = morph_instance_start(s->b->http, snapshot_id, s->id, &inst);
	if (err == -EIO)
		delete_tagged(s->b, s->id);
	if (err)
		return err;
	memcpy(s->instance, inst.id, sizeof(s->instance));
	return sandbox_finish(s, fresh);
}

/* The snapshot new top-level worlds start from: -o morph_snapshot, or one
 * made once per size from the image (the digest makes the service return
 * the same snapshot to every mount that asks for the same thing). */
static int base_snapshot(struct backend *b, unsigned vcpus, unsigned mem_mib, char out[MORPH_ID_MAX])
{
	struct morph_snapshot snap;
	char digest[MORPH_ID_MAX];
	size_t n;
	int err;

	if (b->snapshot[0]) {
		memcpy(out, b->snapshot, MORPH_ID_MAX);
		return 0;
	}
	pthread_mutex_lock(&b->lock);
	for (size_t i = 0; i < b->nbases; i++)
		if (b->bases[i].vcpus == vcpus && b->bases[i].mem_mib == mem_mib) {
			memcpy(out, b->bases[i].id, MORPH_ID_MAX);
			pthread_mutex_unlock(&b->lock);
			return 0;
		}
	pthread_mutex_unlock(&b->lock);

	n = (size_t)snprintf(digest, sizeof(digest), "worldfs-base-%s-%uc-%um-%ud", b->image, vcpus, mem_mib, DISK_MB);
	for (size_t i = 0; i < n && i < sizeof(digest); i++)
		if (!((digest[i] >= 'a' && digest[i] <= 'z') || (digest[i] >= 'A' && digest[i] <= 'Z') ||
		      (digest[i] >= '0' && digest[i] <= '9') || digest[i] == '-'))
			digest[i] = '_';
	err = morph_snapshot_create(b->http, b->image, vcpus, mem_mib, DISK_MB, digest, &snap);
	if (err) {
		morph_log("cannot make a base snapshot of image %s (%u vCPU, %u MiB): %s", b->image, vcpus, mem_mib,
			  strerror(-err));
		return err;
	}
	morph_log("base snapshot %s: image %s, %u vCPU, %u MiB", snap.id, b->image, vcpus, mem_mib);
	pthread_mutex_lock(&b->lock);
	if (b->nbases < BASES_MAX) {
		b->bases[b->nbases].vcpus = vcpus;
		b->bases[b->nbases].mem_mib = mem_mib;
		memcpy(b->bases[b->nbases++].id, snap.id, MORPH_ID_MAX);
	}
	pthread_mutex_unlock(&b->lock);
	memcpy(out, snap.id, MORPH_ID_MAX);
	return 0;
}

/* ---- backend_ops ---- */

static int mkdir_private(const char *path)
{
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static void morph_fini(struct backend *b);

static int morph_init(struct backend **out, struct backend_config *cfg, char *err, size_t errlen)
{
	const char *key = getenv("MORPH_API_KEY");
	const char *url = cfg->morph_url && *cfg->morph_url ? cfg->morph_url : DEFAULT_URL;
	struct backend *b;
	char path[PATH_MAX];
	int rc;

	if (!key || !*key) {
		snprintf(err, errlen, "backend=morph: MORPH_API_KEY is not set: export your Morph Cloud API key "
			 "in the environment of worldfs");
		return -EINVAL;
	}
	if (cfg->morph_snapshot && !morph_id_ok(cfg->morph_snapshot)) {
		snprintf(err, errlen, "morph_snapshot=%s: not a snapshot id", cfg->morph_snapshot);
		return -EINVAL;
	}
	if (cfg->morph_image && (!*cfg->morph_image || strlen(cfg->morph_image) >= MORPH_ID_MAX)) {
		snprintf(err, errlen, "morph_image=%s: not an image id", cfg->morph_image);
		return -EINVAL;
	}
	b = calloc(1, sizeof(*b));
	if (!b) {
		snprintf(err, errlen, "morph: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	pthread_mutex_init(&b->lock, NULL);
	/* A Morph instance's size has no image to come from. */
	if (!cfg->mem_mib)
		cfg->mem_mib = DEFAULT_MEM_MIB;
	if (!cfg->vcpus)
		cfg->vcpus = 1;
	b->exec_timeout_s = cfg->exec_timeout_s ? cfg->exec_timeout_s : DEFAULT_EXEC_TIMEOUT_S;
	b->output_max = cfg->output_max ? cfg->output_max : DEFAULT_OUTPUT_MAX;
	if (cfg->morph_snapshot)
		snprintf(b->snapshot, sizeof(b->snapshot), "%s", cfg->morph_snapshot);
	b->image = strdup(cfg->morph_image ? cfg->morph_image : DEFAULT_IMAGE);
	if (!b->image) {
		rc = -ENOMEM;
		snprintf(err, errlen, "morph: %s", strerror(ENOMEM));
		goto fail;
	}
	if (snprintf(b->dir, sizeof(b->dir), "%s/morph", cfg->state_dir) >= (int)sizeof(b->dir)) {
		rc = -ENAMETOOLONG;
		snprintf(err, errlen, "%s/morph: %s", cfg->state_dir, strerror(ENAMETOOLONG));
		goto fail;
	}
	rc = mkdir_private(b->dir);
	for (int i = 0; !rc && i < 2; i++) {
		snprintf(path, sizeof(path), "%s/%s", b->dir, i ? "snapshots" : "instances");
		rc = mkdir_private(path);
	}
	if (rc) {
		snprintf(err, errlen, "%s: %s", b->dir, strerror(-rc));
		goto fail;
	}
	rc = morph_http_new(&b->http, url, key, err, errlen);
	if (rc)
		goto fail;
	if (b->snapshot[0])
		morph_log("%s, worlds start from snapshot %s", url, b->snapshot);
	else
		morph_log("%s, worlds start from image %s", url, b->image);
	*out = b;
	return 0;
fail:
	morph_fini(b);
	return rc;
}

static void morph_fini(struct backend *b)
{
	if (!b)
		return;
	morph_http_free(b->http);
	free(b->image);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

static int morph_create(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus,
			struct sandbox **out, char handle[BACKEND_HANDLE_MAX], double *boot_ms)
{
	double t0 = now_ms();
	char base[MORPH_ID_MAX];
	struct sandbox *s;
	int err;

	err = base_snapshot(b, vcpus, mem_mib, base);
	if (err)
		return err;
	if (!(s = sandbox_new(b, id)))
		return -ENOMEM;
	err = sandbox_start(s, base, true);
	if (err) {
		free(s);
		return err;
	}
	snprintf(handle, BACKEND_HANDLE_MAX, "%s", s->instance);
	*boot_ms = now_ms() - t0;
	*out = s;
	return 0;
}

/* Code too large for one argument goes ahead in pieces (each repeatable). */
static int upload(struct sandbox *s, const char *nonce, const char *enc, size_t len)
{
	unsigned index = 0;

	for (size_t off = 0; off < len; index++) {
		size_t n = session_chunk(enc + off, len - off, SESSION_ARG_MAX);
		struct morph_exec x = { 0 };
		json_t *argv;
		int err;

		if (n == 0)
			return -EINVAL;
		argv = session_upload_command(nonce, index, enc + off, n);
		if (!argv)
			return -ENOMEM;
		err = morph_instance_exec(s->b->http, s->instance, argv, MORPH_REQUEST_TIMEOUT_MS, true, &x);
		json_decref(argv);
		if (!err && x.exit_code != 0) {
			morph_log("instance %s: upload of the code failed (status %d)", s->instance, x.exit_code);
			err = -EIO;
		}
		morph_exec_release(&x);
		if (err)
			return err;
		off += n;
	}
	return 0;
}

/* Resume s's instance if it is paused; 0 when it is ready. */
static int wake(struct sandbox *s)
{
	struct morph_instance inst;
	int err = morph_instance_get(s->b->http, s->instance, false, &inst);

	if (err || strcmp(inst.status, "paused") != 0)
		return err ? err : -EBUSY;
	morph_log("%s: instance %s was paused: resuming it", s->id, s->instance);
	err = morph_instance_resume(s->b->http, s->instance);
	return err ? err : morph_instance_wait(s->b->http, s->instance, &inst);
}

static int morph_exec(struct sandbox *s, const char *code, size_t len, struct run_result *res)
{
	struct session_fn fns[SESSION_FN_MAX];
	char nonce[SESSION_NONCE_LEN + 1];
	struct morph_exec x = { 0 };
	size_t enc_len, nfns;
	char *enc;
	json_t *argv = NULL;
	bool inline_code;
	int err;

	memset(res, 0, sizeof(*res));
	session_nonce(nonce);
	enc = session_encode(code, len, &enc_len);
	if (!enc)
		return -ENOMEM;
	nfns = session_find_functions(code, len, fns, SESSION_FN_MAX);
	inline_code = enc_len <= SESSION_ARG_MAX;
	err = inline_code ? 0 : upload(s, nonce, enc, enc_len);
	if (!err) {
		argv = session_run_command(nonce, s->b->exec_timeout_s, s->b->output_max, inline_code ? enc : NULL,
					   fns, nfns, code);
		if (!argv)
			err = -ENOMEM;
	}
	free(enc);
	if (!err)
		err = morph_instance_exec(s->b->http, s->instance, argv,
					  (long)s->b->exec_timeout_s * 1000 + EXEC_GRACE_MS, true, &x);
	/* Paused behind our back (a TTL, the console): resume, then the same
	 * request again (same nonce: the code runs once). */
	if (err == -EBUSY && wake(s) == 0)
		err = morph_instance_exec(s->b->http, s->instance, argv,
					  (long)s->b->exec_timeout_s * 1000 + EXEC_GRACE_MS, true, &x);
	json_decref(argv);
	if (err)
		return err;
	return session_result(nonce, x.exit_code, x.out, x.out_len, x.err, x.err_len, s->b->output_max,
			      s->b->exec_timeout_s, res);
}

static int morph_snapshot(struct sandbox *s, const char *snap_id, struct snapshot_info *info)
{
	struct morph_snapshot snap;
	char digest[MORPH_ID_MAX];
	double t0 = now_ms();
	int err;

	snprintf(digest, sizeof(digest), "worldfs-%s", snap_id);
	err = morph_instance_snapshot(s->b->http, s->instance, digest, &snap);
	if (err)
		return err;
	info->snapshot_time_ms = now_ms() - t0;
	info->size_bytes = snap.disk_mb << 20;
	err = morph_record_write(s->b->dir, "snapshots", snap_id, snap.id, NULL);
	if (err && morph_snapshot_delete(s->b->http, snap.id) < 0)
		morph_log("snapshot %s of %s is left over", snap.id, s->id);
	return err;
}

static int morph_snapshot_delete_op(struct backend *b, const char *snap_id)
{
	char sid[MORPH_ID_MAX];
	int err = morph_record_read(b->dir, "snapshots", snap_id, sid, NULL);

	if (err == -ENOENT)
		return 0;
	if (err)
		return err;
	err = morph_snapshot_delete(b->http, sid);
	if (err)
		morph_log("snapshot %s (%s): not deleted: %s (retried at the next mount)", sid, snap_id, strerror(-err));
	else
		morph_record_remove(b->dir, "snapshots", snap_id);
	return err;
}

static int morph_branch_one(struct backend *b, struct sandbox *parent, const char *snap_id,
			    const char *child_id, struct sandbox **out,
			    char handle[BACKEND_HANDLE_MAX], struct branch_info *info)
{
	double t0 = now_ms();
	struct sandbox *s = sandbox_new(b, child_id);
	int err;

	if (!s)
		return -ENOMEM;
	if (parent) {
		struct morph_snapshot snap;
		struct morph_instance inst;
		err = morph_instance_branch(b->http, parent->instance, &snap, &inst);
		info->snapshot_time_ms = now_ms() - t0;
		if (err == -EIO)
			morph_log("%s: a branch of instance %s may have been made without a reply", child_id,
				  parent->instance);
		if (!err) {
			memcpy(s->instance, inst.id, sizeof(s->instance));
			memcpy(s->branch_snapshot, snap.id, sizeof(s->branch_snapshot));
			err = sandbox_finish(s, false);
		}
	} else {
		char sid[MORPH_ID_MAX];
		info->snapshot_time_ms = 0;
		err = morph_record_read(b->dir, "snapshots", snap_id, sid, NULL);
		if (!err)
			err = sandbox_start(s, sid, false);
	}
	if (err) {
		free(s);
		return err;
	}
	info->total_ms = now_ms() - t0;
	snprintf(handle, BACKEND_HANDLE_MAX, "%s", s->instance);
	*out = s;
	return 0;
}

static int morph_destroy(struct sandbox *s)
{
	int err = sandbox_delete(s);

	free(s);
	return err;
}

/* Several children are branched one after another (each live branch is a
 * Morph snapshot of the parent's instance, so the parent pauses for each);
 * if one fails, those made are deleted. */
static int morph_branch(struct backend *b, struct sandbox *parent, const char *snap_id,
			const char *const ids[], size_t n, struct sandbox *out[],
			char handles[][BACKEND_HANDLE_MAX], struct branch_info *info)
{
	double t0 = now_ms(), paused = 0;
	int err = 0;
	size_t i;

	for (i = 0; i < n && !err; i++) {
		err = morph_branch_one(b, parent, snap_id, ids[i], &out[i], handles[i], info);
		paused += info->snapshot_time_ms;
	}
	if (info->parent_done)
		info->parent_done(info->parent_done_arg);
	if (err) {
		for (i--; i-- > 0;)
			morph_destroy(out[i]);
		return err;
	}
	info->snapshot_time_ms = paused;
	info->total_ms = now_ms() - t0;
	return 0;
}

/* Clean unmount: pause the instance (Morph keeps its memory and disk). */
static int morph_suspend(struct sandbox *s)
{
	int err = morph_instance_pause(s->b->http, s->instance);
	struct morph_instance inst;

	if (err && morph_instance_get(s->b->http, s->instance, true, &inst) == 0 &&
	    strcmp(inst.status, "paused") == 0)
		err = 0;
	if (err)
		morph_log("%s: instance %s not paused (%s): it keeps running", s->id, s->instance, strerror(-err));
	free(s);
	return err;
}

/* The instance of entity id: the handle the registry kept, or our record. */
static int instance_of(struct backend *b, const char *id, const char *handle, char inst[MORPH_ID_MAX],
		       char branch_snapshot[MORPH_ID_MAX])
{
	char rec[MORPH_ID_MAX] = "", bsnap[MORPH_ID_MAX] = "";
	bool have_rec = morph_record_read(b->dir, "instances", id, rec, bsnap) == 0;

	if (handle && morph_id_ok(handle))
		snprintf(inst, MORPH_ID_MAX, "%s", handle);
	else if (have_rec)
		memcpy(inst, rec, MORPH_ID_MAX);
	else
		return -ENOENT;
	if (branch_snapshot)
		snprintf(branch_snapshot, MORPH_ID_MAX, "%s", have_rec && strcmp(rec, inst) == 0 ? bsnap : "");
	return 0;
}

static int morph_resume(struct backend *b, const char *id, const char *handle,
			struct sandbox **out, char new_handle[BACKEND_HANDLE_MAX])
{
	struct morph_instance inst;
	struct sandbox *s = sandbox_new(b, id);
	int err;

	if (!s)
		return -ENOMEM;
	err = instance_of(b, id, handle, s->instance, s->branch_snapshot);
	if (!err)
		err = morph_instance_get(b->http, s->instance, true, &inst);
	if (!err && strcmp(inst.status, "error") == 0) {
		morph_log("%s: instance %s is in error: deleted", id, s->instance);
		sandbox_delete(s);
		err = -ENOENT;
	} else if (err == -ENOENT && s->instance[0]) {
		morph_log("%s: instance %s is gone", id, s->instance);
		morph_record_remove(b->dir, "instances", id);
	}
	/* Paused by a clean unmount: resume it; pending or saving: wait. */
	for (int tries = 0; !err && strcmp(inst.status, "ready") != 0 && tries < 2; tries++) {
		if (strcmp(inst.status, "paused") == 0 && (err = morph_instance_resume(b->http, s->instance)) < 0)
			break;
		err = morph_instance_wait(b->http, s->instance, &inst);
		if (err == -EAGAIN)
			err = 0;  /* paused again: once more */
	}
	if (!err && strcmp(inst.status, "ready") != 0)
		err = -EIO;
	if (!err)
		err = morph_record_write(b->dir, "instances", id, s->instance, s->branch_snapshot);
	if (err) {
		free(s);
		return err;
	}
	snprintf(new_handle, BACKEND_HANDLE_MAX, "%s", s->instance);
	*out = s;
	return 0;
}

static enum sandbox_presence morph_probe(struct backend *b, const char *id, const char *handle)
{
	char iid[MORPH_ID_MAX];
	struct morph_instance inst;
	int err = instance_of(b, id, handle, iid, NULL);

	if (err)
		return SANDBOX_GONE;
	err = morph_instance_get(b->http, iid, true, &inst);
	if (err == -ENOENT)
		return SANDBOX_GONE;
	if (err)
		return SANDBOX_SAVED;  /* the service did not say: keep it, look again on use */
	if (strcmp(inst.status, "error") == 0)
		return SANDBOX_GONE;
	return strcmp(inst.status, "paused") == 0 ? SANDBOX_SAVED : SANDBOX_RUNNING;
}

static int morph_discard(struct backend *b, const char *id, const char *handle)
{
	struct sandbox s = { .b = b };

	snprintf(s.id, sizeof(s.id), "%s", id);
	if (instance_of(b, id, handle, s.instance, s.branch_snapshot) < 0)
		return 0;
	return sandbox_delete(&s);
}

static void morph_collect_garbage(struct backend *b, bool (*known)(void *ctx, const char *id), void *ctx)
{
	static const char *const kinds[] = { "instances", "snapshots" };

	for (size_t k = 0; k < 2; k++) {
		char path[PATH_MAX];
		struct dirent *de;
		DIR *d;

		snprintf(path, sizeof(path), "%s/%s", b->dir, kinds[k]);
		if (!(d = opendir(path)))
			continue;
		while ((de = readdir(d))) {
			char first[MORPH_ID_MAX], second[MORPH_ID_MAX];
			if (!morph_id_ok(de->d_name) || strlen(de->d_name) >= sizeof(((struct sandbox *)0)->id) ||
			    known(ctx, de->d_name))
				continue;
			if (morph_record_read(b->dir, kinds[k], de->d_name, first, second) < 0)
				continue;
			if (k == 0) {
				struct sandbox s = { .b = b };
				memcpy(s.id, de->d_name, strlen(de->d_name) + 1);
				memcpy(s.instance, first, sizeof(s.instance));
				memcpy(s.branch_snapshot, second, sizeof(s.branch_snapshot));
				if (sandbox_delete(&s) == 0)
					morph_log("%s: deleted instance %s of an unfinished world", de->d_name, first);
			} else if (morph_snapshot_delete(b->http, first) == 0) {
				morph_record_remove(b->dir, kinds[k], de->d_name);
				morph_log("%s: deleted snapshot %s of an unfinished snapshot", de->d_name, first);
			}
		}
		closedir(d);
	}
}

static char *morph_describe(struct sandbox *s)
{
	json_t *o = json_pack("{s:s,s:s}", "backend", "morph", "instance_id", s->instance);
	char *text;

	if (!o)
		return NULL;
	if (s->branch_snapshot[0])
		json_object_set_new(o, "branch_snapshot_id", json_string(s->branch_snapshot));
	text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return text;
}

const struct backend_ops morph_backend_ops = {
	.name = "morph",
	.init = morph_init,
	.fini = morph_fini,
	.create = morph_create,
	.exec = morph_exec,
	.snapshot = morph_snapshot,
	.snapshot_delete = morph_snapshot_delete_op,
	.branch = morph_branch,
	.destroy = morph_destroy,
	.suspend = morph_suspend,
	.resume = morph_resume,
	.probe = morph_probe,
	.discard = morph_discard,
	.collect_garbage = morph_collect_garbage,
	.describe = morph_describe,
};
