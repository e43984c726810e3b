/* fsdiff.h: W/diff, in the guest.  A manifest records the guest's
 * writable file layers (path, type, mode, owner, size, mtime, ctime,
 * inode, and a content hash of files up to FSD_HASH_MAX); the agent takes
 * one at each mark (before a snapshot, a branch or the golden state is
 * frozen) and compares the live layers with its base when W/diff is read.
 *
 * A layer is a tree the guest can write: a tmpfs, or an overlay's upper
 * directory over its read-only lower one.  For an overlay only the upper
 * directory is walked, which holds exactly what the guest changed: a
 * whiteout (a 0/0 character device) is a deletion, an opaque directory
 * (trusted.overlay.opaque) hides what the lower one holds.  So a diff
 * costs what changed since boot, not the size of the root disk.
 *
 * Pure functions of the file trees given; the unit tests run them on
 * directories of the host. */
#ifndef WORLDFS_FSDIFF_H
#define WORLDFS_FSDIFF_H

#include <stddef.h>
#include <stdint.h>

#define FSD_HASH_MAX (1u << 20)    /* files up to this size are compared by content */
#define FSD_ENTRIES_MAX 1000000u   /* paths in a manifest */
#define FSD_BUDGET_MS 20000        /* the most a manifest or a diff may take */
#define FSD_LAYERS_MAX 8

struct fsd_layer {
	const char *at;             /* where the guest sees it: "/", "/tmp" */
	int fd;                     /* its own tree (an overlay's upper directory) */
	int lower_fd;               /* an overlay's lower directory, or -1 */
	const char *const *skip;    /* guest paths left out (NULL-terminated), or NULL */
};

struct fsd_manifest;

/* Record the layers (the same array, in the same order, for every call).
 * A file unchanged since prev (same inode, size, mtime and ctime) keeps
 * prev's hash instead of being read again.  A directory on another
 * device (a mount point) is left out, as is what lies deeper than a
 * guest path can name (FS_PATH_MAX).  0, or -E2BIG past FSD_ENTRIES_MAX
 * paths, -ETIMEDOUT past FSD_BUDGET_MS, -ENOMEM. */
int fsd_take(const struct fsd_layer *l, size_t n, const struct fsd_manifest *prev, struct fsd_manifest **out);
void fsd_free(struct fsd_manifest *m);
/* How many paths m holds. */
size_t fsd_count(const struct fsd_manifest *m);

/* What changed in the layers since base, as lines "A\tPATH", "M\tPATH",
 * "D\tPATH" sorted by path (bytewise).  A path holding a control
 * character, '"' or '\' is written in double quotes with C escapes, as
 * git does.  A directory is M only when its mode or owner changed (what
 * it holds has lines of its own); a file is M when its type, mode,
 * owner or content changed: equal inode, mtime and ctime is unchanged,
 * and a file up to FSD_HASH_MAX whose size is unchanged is compared by
 * hash.  *text is malloc'd.  Errors as fsd_take. */
int fsd_diff(const struct fsd_layer *l, size_t n, const struct fsd_manifest *base, char **text, size_t *len);

#endif
