/* io.h: descriptor helpers shared by the host and the agent. */
#ifndef WORLDFS_IO_H
#define WORLDFS_IO_H

#include <stddef.h>
#include <sys/types.h>

/* Write all len bytes, across short writes and EINTR.  0 or -errno. */
int write_all(int fd, const void *data, size_t len);

/* Wait until fd has one of events (poll(2) bits) or deadline passes
 * (now_ms() terms; < 0: no deadline), across EINTR.  The revents (which
 * may be POLLHUP, POLLERR or POLLNVAL alone), -ETIMEDOUT, or -errno. */
int io_wait(int fd, short events, double deadline);

/* openat2(2) of path below dirfd with these flags, mode and RESOLVE_*
 * bits, again while a rename races the lookup (EAGAIN): fd or -errno. */
int io_openat2(int dirfd, const char *path, int flags, unsigned mode, unsigned long long resolve);

/* Up to n-1 bytes of a small file in one read (a /proc or /sys file gives
 * all it has), NUL-terminated: how many, or -errno. */
ssize_t io_read_small(const char *path, char *buf, size_t n);

#endif
