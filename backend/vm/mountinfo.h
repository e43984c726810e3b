/* mountinfo.h: reading /proc/self/mountinfo (pure, so it is unit-tested). */
#ifndef WORLDFS_MOUNTINFO_H
#define WORLDFS_MOUNTINFO_H

#include <stdbool.h>
#include <stddef.h>

/* Is mount_point a mount point in text (the contents of a mountinfo file)?
 * If so, and source/fstype are not NULL, the last (topmost) mount's source
 * and filesystem type are copied there (NUL-terminated, cut to n bytes).
 * Mount points in mountinfo escape space, tab, newline and backslash as
 * octal (\040); they are compared unescaped. */
bool mountinfo_find(const char *text, const char *mount_point, char *source, char *fstype, size_t n);

/* The device ("major:minor") of the topmost mount at mount_point in text,
 * into out (n bytes); false if it is not a mount point. */
bool mountinfo_devno(const char *text, const char *mount_point, char *out, size_t n);

/* XFS superblocks start with the magic "XFSB". */
bool xfs_magic(const void *first_bytes, size_t len);

#endif
