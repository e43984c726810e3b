/* ops.h: the FUSE operations table of worldfs. */
#ifndef WORLDFS_OPS_H
#define WORLDFS_OPS_H

#include <fuse.h>

extern const struct fuse_operations worldfs_ops;

/* The mount's device ("major:minor", from mountinfo): at the first open
 * of a guest file its readahead is raised to the file protocol's piece
 * (/sys/class/bdi/DEV/read_ahead_kb), once the kernel has its INIT
 * answer, which would lower it again. */
void ops_set_device(const char *majmin);

#endif
