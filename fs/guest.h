/* guest.h: W/fs/, the guest's own files (guest.c).  path is the path in
 * the guest ("/srv/a.csv"); every function returns 0 (or a count) or
 * -errno, the guest's own errno included. */
#ifndef WORLDFS_GUEST_H
#define WORLDFS_GUEST_H

#include <fuse.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "fs/runtime.h"

int guest_getattr(struct runtime *rt, struct entity *e, const char *path, struct stat *st);
int guest_readdir(struct runtime *rt, struct entity *e, const char *path, void *buf, fuse_fill_dir_t fill);
/* O_CREAT with open's O_EXCL and O_TRUNC (flags): the file is then there,
 * a regular file, as open(2) leaves it. */
int guest_create(struct runtime *rt, struct entity *e, const char *path, mode_t mode, int flags);
int guest_read(struct runtime *rt, struct entity *e, const char *path, char *buf, size_t size, off_t off);
int guest_write(struct runtime *rt, struct entity *e, const char *path, const char *buf, size_t size, off_t off);
int guest_truncate(struct runtime *rt, struct entity *e, const char *path, off_t size);
int guest_mkdir(struct runtime *rt, struct entity *e, const char *path, mode_t mode);
int guest_remove(struct runtime *rt, struct entity *e, const char *path, bool dir);
int guest_rename(struct runtime *rt, struct entity *e, const char *from, const char *to, unsigned flags);
int guest_symlink(struct runtime *rt, struct entity *e, const char *target, const char *path);
int guest_chmod(struct runtime *rt, struct entity *e, const char *path, mode_t mode);
int guest_utimens(struct runtime *rt, struct entity *e, const char *path, const struct timespec tv[2]);
int guest_readlink(struct runtime *rt, struct entity *e, const char *path, char *buf, size_t size);

/* What a symlink at link (a guest path) to target reads as through the
 * mount: target itself if it is relative and stays inside the guest's
 * root; else the same place, relative to the link's directory, never
 * above W/fs ("../../etc/passwd" for /a/b/link -> /etc/passwd). */
void guest_link_target(const char *link, const char *target, char *out, size_t size);

#endif
