/* io.h: descriptor helpers shared by the host and the agent. */
#ifndef WORLDFS_IO_H
#define WORLDFS_IO_H

#include <stddef.h>

/* Write all len bytes, across short writes and EINTR.  0 or -errno. */
int write_all(int fd, const void *data, size_t len);

#endif
