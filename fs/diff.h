/* diff.h: W/diff, what changed in a world's files since it was made or
 * branched: the guest computes it (backend/agent/fsdiff.h), worldfs
 * fetches it over the file protocol when W/diff is opened. */
#ifndef WORLDFS_DIFF_H
#define WORLDFS_DIFF_H

#include <stddef.h>

#include "fs/runtime.h"

#define DIFF_MAX (64u << 20)  /* the most worldfs takes of a guest's diff */

/* The text, malloc'd in *buf; -errno, the guest's own included, -EFBIG
 * past DIFF_MAX, -EIO for a reply that breaks the protocol. */
int guest_diff(struct runtime *rt, struct entity *e, char **buf, size_t *len);

#endif
