/* ops.h: the FUSE operations table of worldfs. */
#ifndef WORLDFS_OPS_H
#define WORLDFS_OPS_H

#include <fuse.h>

extern const struct fuse_operations worldfs_ops;

#endif
