/* tree.h: the runtime's own internals, shared by its files only
 * (runtime.c: the operations; tree.c: the in-memory tree; mount.c: open
 * and close).  node.c and ops.c use runtime.h.  Unless a comment says
 * otherwise, call these with rt->lock held. */
#ifndef WORLDFS_TREE_H
#define WORLDFS_TREE_H

#include "fs/runtime.h"

/* A new entity with a fresh id and one reference (the tree's). */
struct entity *entity_new(enum entity_kind kind, const char *name);
/* Free e; its refs have dropped to 0 (any lock). */
void entity_free(struct entity *e);
/* Put e among its siblings (worlds, its parent's verses or snapshots). */
int entity_attach(struct runtime *rt, struct entity *e);
/* Take e out of the tree; e->removed from now on. */
void entity_detach(struct runtime *rt, struct entity *e);
/* Append e to the array *v of *n entities (any lock). */
int entity_array_add(struct entity ***v, size_t *n, struct entity *e);

/* Does anything below e (children, verses of its snapshots, recursively)
 * still run, or is anything (a verse or a snapshot) being made there? */
bool subtree_has_live(const struct entity *e);
/* How many worlds and verses uid holds that run or are being made. */
size_t live_count_of(struct runtime *rt, uid_t uid);
/* e's subtree, e included, in post-order (children first), appended to *v. */
int subtree_collect(struct entity *e, struct entity ***v, size_t *n);
/* Free e's subtree (at close, with nobody else left). */
void subtree_free(struct entity *e);

/* Mark e failed with the reason, in the log and durably in the registry. */
void mark_failed_locked(struct runtime *rt, struct entity *e, const char *why);
/* Under the tree lock, once e is removed or collapsed: end its run now
 * (the backend's interrupt), rather than wait for the oplock it holds. */
void interrupt_run_locked(struct runtime *rt, struct entity *e);
/* With e->oplock held: suspend e's sandbox to disk (unmount, idle.c). */
void sandbox_suspend(struct runtime *rt, struct entity *e);
/* The same, taking rt->lock; nothing if e was removed meanwhile. */
void mark_failed(struct runtime *rt, struct entity *e, const char *why);
/* e's newest snapshot, referenced, or NULL (takes rt->lock). */
struct entity *latest_snapshot(struct runtime *rt, struct entity *e);

/* runtime.c.  Under rt->lock: e's sandbox is now sb, which desc (taken
 * over) describes; or none (sb NULL), with its state on disk when saved.
 * The caller owns the sandboxes involved (holds e->oplock, or made it) and
 * destroys an old one only after this, outside the tree lock: info reads
 * sb_desc, never a sandbox. */
void sandbox_set_locked(struct runtime *rt, struct entity *e, struct sandbox *sb, char *desc, bool saved);

/* With e->oplock held (not rt->lock): make sure e's sandbox
 * is up, resuming a suspended one or reattaching one that kept running
 * while worldfs was down.  -ENOENT removed, entity_state_errno's errors,
 * -EIO when it cannot come back (e is then failed). */
int sandbox_ensure(struct runtime *rt, struct entity *e);

#endif
