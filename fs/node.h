/* node.h: paths of the mount and the fixed files of each directory,
 * declared once: the table drives lookup, listing, stat and render, and
 * the names it holds are reserved (name_is_reserved, values.h). */
#ifndef WORLDFS_NODE_H
#define WORLDFS_NODE_H

#include <sys/stat.h>

#include "fs/runtime.h"

enum node_type {
	NODE_ROOT,
	NODE_META_DIR,     /* .worldfs/ */
	NODE_META_FILE,
	NODE_ENTITY_DIR,   /* a world, verse or snapshot directory */
	NODE_SNAPSHOT_DIR, /* W/snapshot/ */
	NODE_BALANCE_DIR,  /* W/balance/ */
	NODE_BALANCE_FILE, /* W/balance/OWNER */
	NODE_FILE,         /* a fixed file of an entity directory */
	NODE_GUEST,        /* W/fs and below: the guest's own files (guest.c) */
};

enum file_id {
	F_EXEC, F_STDOUT, F_STDERR, F_STATUS, F_STATE, F_INFO, F_TRIT, F_PROB,
	F_GF3, F_BALANCE, F_PUSH_DOWN, F_RESOLVE, F_WEV, F_SNAPSHOT, F_FS, F_DIFF,
	F_VERSION, F_ENTITIES, F_BRANCHES, F_RESOLUTIONS, F_METRICS,
};

struct file_desc {
	const char *name;
	enum file_id id;
	mode_t world_mode;     /* in a world/verse directory; 0: absent */
	mode_t snapshot_mode;  /* in a snapshot directory; 0: absent */
};

struct node {
	enum node_type type;
	uid_t uid;                     /* who looks: .worldfs shows them their own */
	bool sees_all;                 /* root or the mounting user: everything */
	const struct file_desc *file;  /* NODE_FILE, NODE_META_FILE */
	struct entity *e;              /* referenced; node_release drops it */
	char owner[NAME_MAX_LEN + 1];  /* NODE_BALANCE_FILE */
	const char *guest;             /* NODE_GUEST: the path in the guest ("/", "/srv/a"),
	                                * pointing into the looked-up path */
};

extern const struct file_desc entity_files[];
extern const size_t n_entity_files;
extern const struct file_desc meta_files[];
extern const size_t n_meta_files;

/* Resolve a path for uid; 0 or -ENOENT/-ENOTDIR.  Holds a reference on n->e. */
int node_lookup(struct runtime *rt, const char *path, uid_t uid, struct node *n);
void node_release(struct runtime *rt, struct node *n);

/* The mode bits (with type) of a node, 0 if absent. */
mode_t node_mode(const struct node *n);

/* The names in directory node n, each given to fill(ctx, name), fixed
 * files first; -ENOTDIR for a file.  fill must not call back into the
 * runtime (the tree is locked meanwhile). */
typedef void (*node_fill_fn)(void *ctx, const char *name);
int node_list(struct runtime *rt, const struct node *n, node_fill_fn fill, void *ctx);

/* stat(2) of a node: mode, links, owner, size, times. */
int node_stat(struct runtime *rt, const struct node *n, struct stat *st);

/* Render a file node's content into a malloc'd buffer. */
int node_render(struct runtime *rt, const struct node *n, char **buf, size_t *len);
/* Its size, without loading large outputs. */
int node_size(struct runtime *rt, const struct node *n, off_t *size);

#endif
