/* world.h: the in-memory world tree, a cache of the registry.  Every
 * change goes to the registry first (registry.h), then here. */
#ifndef WORLDFS_WORLD_H
#define WORLDFS_WORLD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "backend/backend.h"
#include "fs/values.h"

enum entity_kind { ENTITY_WORLD, ENTITY_VERSE, ENTITY_SNAPSHOT };
enum entity_state { STATE_RUNNING, STATE_WON, STATE_COLLAPSED, STATE_FAILED };

struct ledger_entry {
	char owner[NAME_MAX_LEN + 1];
	int64_t amount;
};

/* owner -> amount, kept sorted by owner so listings are stable. */
struct ledger {
	struct ledger_entry *v;
	size_t n, cap;
};

struct entity {
	char id[24];
	char name[NAME_MAX_LEN + 1];
	enum entity_kind kind;
	enum entity_state state;
	/* Directory parent: NULL for a world; the world/verse for a verse
	 * branched live or a snapshot; the snapshot for a verse branched from it. */
	struct entity *parent;
	struct entity **verses;   /* children verses, in creation order */
	size_t nverses;
	struct entity **snapshots; /* world/verse only */
	size_t nsnapshots;
	unsigned branch_count;    /* children ever branched here: the trit cycle */

	int trit;
	int64_t prob;             /* billionths */
	uid_t uid;
	gid_t gid;
	unsigned mem_mib, vcpus;
	double boot_ms;
	char created_at[32];
	char resolved_at[32];
	char *failure;            /* why state is failed; malloc'd */
	struct ledger ledger;
	int64_t wev;
	char winner[NAME_MAX_LEN + 1]; /* of the last resolution here */
	char *push_down;          /* names of the last push_down here ("a b c"), or NULL */

	bool has_run;             /* last run outputs exist */
	int status;
	size_t out_len, err_len;

	uint64_t size_bytes;      /* snapshot */
	double snapshot_ms;       /* snapshot */

	/* Backend side.  sb is NULL while the sandbox is down or suspended;
	 * only the holder of oplock uses it.  What info shows of it is kept
	 * apart (sb_desc, sb_saved: runtime.c's sandbox_set_locked), so that
	 * readers under the tree lock never touch a sandbox. */
	struct sandbox *sb;
	char handle[BACKEND_HANDLE_MAX]; /* set under oplock and the tree lock; read under either */
	char *sb_desc;            /* the backend's description of sb, or NULL */
	bool sb_saved;            /* no sb, but its state is on disk (suspended) */

	pthread_mutex_t oplock;   /* serializes backend work on this entity */
	int refs;                 /* lookups in flight; guarded by the tree lock */
	bool busy_creating;       /* name reserved, not yet in the registry */
	bool removed;             /* detached from the tree; freed at refs == 0 */
	double used_at;           /* now_ms() of its last use (tree lock): idle.c */
	unsigned open_files;      /* descriptors open on its files (tree lock) */
	char suspended_at[32];    /* when its sandbox was last suspended, "" if up */
	uint64_t files_gen;       /* changes at each run's start and end and each change
	                           * made through fs/ (tree lock): guest.c keeps what a
	                           * listing said for one generation */
	bool running;             /* an exec is in the backend (guarded by the tree lock):
	                           * rmdir and resolve interrupt it (interrupt_run_locked) */
};

const char *entity_kind_name(enum entity_kind k);
const char *entity_state_name(enum entity_state s);
/* What e's state lets it do: 0 (running, won: it runs, branches and
 * snapshots), -EROFS (collapsed: nothing runs in it again) or -EIO
 * (failed: its sandbox is gone; info says why). */
int entity_state_errno(const struct entity *e);
int entity_kind_parse(const char *s, enum entity_kind *out);
int entity_state_parse(const char *s, enum entity_state *out);

/* ledger */
int ledger_set(struct ledger *l, const char *owner, int64_t amount);
int ledger_remove(struct ledger *l, const char *owner);
const struct ledger_entry *ledger_get(const struct ledger *l, const char *owner);
int ledger_copy(struct ledger *dst, const struct ledger *src);
void ledger_release(struct ledger *l);
/* Sum of all amounts; -EOVERFLOW if it does not fit. */
int ledger_total(const struct ledger *l, int64_t *out);

#endif
