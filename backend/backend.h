/* backend.h: the one interface between the file tree (fs/) and the places
 * where worlds run (backend/vm, backend/morph). */
#ifndef WORLDFS_BACKEND_H
#define WORLDFS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/agent/fsproto.h"

struct backend;   /* one per mount; private to the implementation */
struct sandbox;   /* one running (or suspended) world; private too */

enum accel { ACCEL_AUTO, ACCEL_KVM, ACCEL_TCG };

struct backend_config {
	const char *state_dir;   /* STATE/: the backend keeps its files below STATE/<backend>/ */
	const char *image;       /* vm: the guest image, a name in image_base or a directory */
	const char *image_base;  /* vm: where image names are directories */
	enum accel accel;
	unsigned mem_mib;        /* size of a new top-level world; 0: the backend's (image's) default */
	unsigned vcpus;          /* 0: 1 */
	bool reseed_sessions;    /* reseed=all: a branch or restore also reseeds the
	                          * interpreters' global generators, not only the
	                          * kernel's RNG (a new world always does) */
	unsigned exec_timeout_s; /* longest run of one exec */
	size_t output_max;       /* largest captured stdout/stderr per run */
	const char *morph_url;   /* morph only */
	bool branch_copy;        /* vm: branch by copying memory (0.1), not copy-on-write */
	unsigned pool_size;      /* vm: QEMU processes kept started and waiting; 0: none */
	const char *qemu_user;   /* vm, as root: the user QEMU runs as; NULL: the default */
	const char *morph_snapshot; /* morph: the snapshot new worlds start from, or NULL */
	const char *morph_image;    /* morph: the image a base snapshot is made from, or NULL */
};

/* The result of one run in a world's session. out/err are malloc'd and
 * owned by the caller after exec() returns (free with run_result_release). */
struct run_result {
	int status;          /* exit status of the run (0..255), 124 on time-out */
	bool timed_out;      /* exceeded exec_timeout and was killed; session survives */
	bool truncated;      /* stdout or stderr was cut at output_max (marker appended) */
	bool session_reset;  /* the session shell had to be restarted (exit, or an unkillable run) */
	char *out;
	size_t out_len;
	char *err;
	size_t err_len;
};

void run_result_release(struct run_result *r);

/* What is left of a sandbox that worldfs does not hold. */
enum sandbox_presence {
	SANDBOX_GONE,     /* nothing: it cannot come back */
	SANDBOX_SAVED,    /* its full state is on disk (suspended) */
	SANDBOX_RUNNING,  /* it kept running while worldfs was down: reattachable */
};

/* What a snapshot costs, as recorded in the registry. */
struct snapshot_info {
	uint64_t size_bytes;
	double snapshot_time_ms;  /* how long the world was frozen */
};

/* A branch: what the caller lets go early, and what it cost. */
struct branch_info {
	/* In: called at most once, as soon as the parent's state has been
	 * taken; from then on the backend does not touch the parent, which
	 * may run, be branched again or go away.  May be NULL. */
	void (*parent_done)(void *arg);
	void *parent_done_arg;
	/* Out. */
	double snapshot_time_ms;  /* how long the parent was paused (0 from a named snapshot) */
	double total_ms;          /* until every child's session answered */
};

/* Every function returns 0 or -errno.  Sandboxes are identified by the
 * entity id the registry gives them (1..64 chars of [A-Za-z0-9_-]); a
 * backend may keep files under STATE/<name>/ keyed by that id and must not
 * assume anything else survives a crash.  `handle` is a short string the
 * backend wants persisted with the entity (a pid, an instance id) and given
 * back to reattach() after a restart; at most BACKEND_HANDLE_MAX bytes.
 *
 * Thread safety: calls on different sandboxes may run in parallel; the
 * caller serializes calls on one sandbox. */
#define BACKEND_HANDLE_MAX 128

struct backend_ops {
	const char *name;
	/* Fills in the defaults it chose for what cfg leaves 0 (mem_mib, vcpus). */
	int (*init)(struct backend **out, struct backend_config *cfg, char *err, size_t errlen);
	void (*fini)(struct backend *b);

	/* Boot a fresh world; returns when its session answers. */
	int (*create)(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus,
		      struct sandbox **out, char handle[BACKEND_HANDLE_MAX], double *boot_ms);

	/* Run code in the session (serialized per sandbox by the caller). */
	int (*exec)(struct sandbox *s, const char *code, size_t len, struct run_result *res);

	/* Freeze s's full state under snap_id, durable when this returns; s keeps running. */
	int (*snapshot)(struct sandbox *s, const char *snap_id, struct snapshot_info *info);
	int (*snapshot_delete)(struct backend *b, const char *snap_id);

	/* New sandboxes ids[0..n) (n >= 1), each a copy of one instant: of
	 * parent's live state (parent != NULL: it is paused once for all of
	 * them), or of snapshot snap_id (parent == NULL).  All or none: on
	 * failure no child is left.  out[i] and handles[i] are ids[i]'s. */
	int (*branch)(struct backend *b, struct sandbox *parent, const char *snap_id,
		      const char *const ids[], size_t n, struct sandbox *out[],
		      char handles[][BACKEND_HANDLE_MAX], struct branch_info *info);

	/* Stop the sandbox and delete everything it owns. s is freed. */
	int (*destroy)(struct sandbox *s);

	/* Make the exec running on s end now (it returns an error), killing
	 * the sandbox, which the caller then destroys: for rmdir and resolve,
	 * which do not wait out a run's deadline.  Called with the caller's
	 * locks held, while exec runs in another thread: must not block, and
	 * touches only what exec does not change.  NULL: the run ends by its
	 * own deadline. */
	void (*interrupt)(struct sandbox *s);

	/* Save the full state to disk and stop the sandbox (clean unmount). s is freed. */
	int (*suspend)(struct sandbox *s);
	/* Bring back what suspend() saved, or reattach to a sandbox that kept
	 * running while worldfs was down (handle as create/branch gave it).
	 * -ENOENT: nothing to bring back (the caller marks the world failed). */
	int (*resume)(struct backend *b, const char *id, const char *handle,
		      struct sandbox **out, char new_handle[BACKEND_HANDLE_MAX]);
	/* What resume() would find, without starting anything. */
	enum sandbox_presence (*probe)(struct backend *b, const char *id, const char *handle);

	/* Delete whatever the backend keeps for id while no sandbox is attached
	 * (a suspended state, a process left running by a crashed worldfs). */
	int (*discard)(struct backend *b, const char *id, const char *handle);
	/* After a restart: delete everything kept for ids that known() does not
	 * claim (worlds that were being made when worldfs died). */
	void (*collect_garbage)(struct backend *b, bool (*known)(void *ctx, const char *id), void *ctx);

	/* A request on the guest's own files (W/fs/: backend/agent/fsproto.h),
	 * serialized per sandbox by the caller like exec; its reply payload,
	 * malloc'd, in *reply.  -ENOTSUP where the sandbox has no file
	 * protocol; -EIO when the sandbox died (the caller fails the world).
	 * NULL: no backend support (ENOTSUP). */
	int (*fs)(struct sandbox *s, const struct fs_req *req, uint8_t **reply, size_t *len);

	/* Facts for `info` (pid, accel, ...), as a small JSON object text; malloc'd. */
	char *(*describe)(struct sandbox *s);
};

extern const struct backend_ops vm_backend_ops;
extern const struct backend_ops morph_backend_ops;

const struct backend_ops *backend_find(const char *name);

#endif
