/* runtime.h: the World Runtime over the tree: create, branch, snapshot,
 * exec, resolve, remove, values.  Every change is committed to the
 * registry before the call returns; backend work runs outside the tree
 * lock, serialized per entity by its oplock.  Implemented by runtime.c
 * (the operations), tree.c (the tree: references, finding, paths) and
 * mount.c (open and close); the tree lock never leaves these files and
 * node.c. */
#ifndef WORLDFS_RUNTIME_H
#define WORLDFS_RUNTIME_H

#include <pthread.h>
#include <stdio.h>

#include "backend/backend.h"
#include "fs/log.h"
#include "fs/registry.h"
#include "fs/world.h"

#define EXEC_CODE_MAX (16u << 20)

struct runtime {
	pthread_mutex_t lock;          /* the tree and the registry */
	struct registry *reg;
	int lock_fd;                   /* flock on STATE/worldfs.lock */
	const struct backend_ops *be_ops;
	struct backend *be;
	struct backend_config cfg;
	struct entity **worlds;
	size_t nworlds;
	uid_t mount_uid;
	gid_t mount_gid;
	time_t mount_time;
	unsigned max_worlds;           /* live worlds + verses per uid but the mounting user's; 0: any */
	struct uid_use {               /* what each uid holds now (runtime_charge) */
		uid_t uid;
		unsigned runs;
		size_t code;
	} *uses;
	size_t nuses;
	unsigned long sb_changes;      /* a sandbox was set or unset (sandbox_set_locked) */
	struct recovery *recovery;     /* runtime_open's background pass, until settled */
	/* idle_suspend (idle.c) */
	unsigned idle_suspend_s;       /* 0: never */
	pthread_t idle_thread;
	bool idle_running;
	bool idle_stop;                /* atomic: the thread is to end */
	pthread_mutex_t idle_mutex;
	pthread_cond_t idle_wake;
	/* Rendered .worldfs files (node.c), reused while nothing changed. */
	struct rendered {
		char *buf;
		size_t len;
		uint64_t changes;          /* registry_changes + sb_changes when made */
		bool valid;
	} meta_cache[8];
};

/* Open the registry under cfg->state_dir, start the backend, load the tree. */
int runtime_open(struct runtime *rt, const struct backend_ops *ops, const struct backend_config *cfg,
		 char *err, size_t errlen);
/* Wait for the recovery runtime_open started (the sandboxes of the loaded
 * registry looked at, reattached or failed, in the background) to end. */
void runtime_settle(struct runtime *rt);
/* Suspend every live sandbox to disk and close everything. */
void runtime_close(struct runtime *rt);
/* Suspend worlds idle for idle_suspend_s seconds from now on (0: never);
 * runtime_close stops it. */
int runtime_idle_start(struct runtime *rt, unsigned idle_suspend_s);
void runtime_idle_stop(struct runtime *rt);
/* A file of e was opened (+1) or closed (-1): while one is open, e is not
 * suspended for idleness. */
void runtime_file_use(struct runtime *rt, struct entity *e, int delta);

/* References: lookups hold one (runtime_get under rt->lock) until runtime_put. */
void runtime_get(struct entity *e);
void runtime_put(struct runtime *rt, struct entity *e);

/* Find a child by name under rt->lock; busy (being made) entities are skipped
 * unless with_busy.  world == NULL looks among the top-level worlds. */
struct entity *runtime_find_verse(struct runtime *rt, struct entity *parent, const char *name, bool with_busy);
struct entity *runtime_find_snapshot(struct entity *w, const char *name, bool with_busy);

int runtime_create_world(struct runtime *rt, const char *name, uid_t uid, gid_t gid);
/* parent is a world/verse (branch from its live state) or a snapshot. */
int runtime_branch(struct runtime *rt, struct entity *parent, const char *name, uid_t uid, gid_t gid);
/* A request on e's guest files (W/fs/), serialized with its runs; the
 * reply payload, malloc'd, in *reply.  -EROFS (collapsed), -EIO (failed,
 * or died now: then marked failed), -ENOTSUP (no file protocol). */
int runtime_fs(struct runtime *rt, struct entity *e, const struct fs_req *req, uint8_t **reply, size_t *len);
/* e->files_gen: it changes when e's files may have (a run, a change made
 * through fs/). */
uint64_t runtime_files_gen(struct runtime *rt, struct entity *e);
/* What was written to W/push_down (or S/push_down): "a b:0.5 c", every
 * verse branched from one instant of parent, all or none. */
int runtime_push_down(struct runtime *rt, struct entity *parent, const char *text, size_t len, uid_t uid,
		      gid_t gid);
int runtime_snapshot(struct runtime *rt, struct entity *w, const char *name, uid_t uid, gid_t gid);
int runtime_remove(struct runtime *rt, struct entity *e);
/* Runs code; -ETIMEDOUT when killed by exec_timeout, -EIO when the world
 * died or had failed, -EROFS in a collapsed verse.  Every run it accepts
 * is recorded with its own status and outputs, also when it failed (124
 * time-out; 255 and a note in stderr otherwise), and res holds them: the
 * caller releases res whatever the result. */
int runtime_exec(struct runtime *rt, struct entity *e, const char *code, size_t len, struct run_result *res);
int runtime_resolve(struct runtime *rt, struct entity *parent, const char *winner, uid_t uid);

int runtime_set_trit(struct runtime *rt, struct entity *e, int trit);
int runtime_set_prob(struct runtime *rt, struct entity *e, int64_t prob);
int runtime_set_balance(struct runtime *rt, struct entity *e, const char *owner, int64_t amount);
int runtime_delete_balance(struct runtime *rt, struct entity *e, const char *owner);

/* What one uid other than the mounting user may hold at once, so that
 * nobody can take every FUSE thread (each run waiting or running holds
 * one) or the host's memory (code written to exec, not yet run). */
#define RUNS_PER_UID 64
#define CODE_PER_UID (256u << 20)
/* Add runs and code bytes (negative: give back) to what uid holds; an
 * addition beyond its limit changes nothing and is -EAGAIN (runs) or
 * -EDQUOT (code), with a log line. */
int runtime_charge(struct runtime *rt, uid_t uid, int runs, long long code);

/* The bar every run, branch and snapshot of e passes: entity_state_errno
 * of e, read under the tree lock. */
int runtime_state_errno(struct runtime *rt, struct entity *e);
/* Give owner a balance of 0 in e unless it has one; *made says whether
 * this call made it. */
int runtime_add_balance(struct runtime *rt, struct entity *e, const char *owner, bool *made);

/* Under rt->lock: gf3 of e's children; e's path below the mount. */
int runtime_gf3(const struct entity *e);
void runtime_path(const struct entity *e, char *out, size_t len);

#endif
