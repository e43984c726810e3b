/* fsserve.h: the guest's side of the file protocol (fsproto.h): one
 * request done on the file tree below rootfd, its reply written out.
 * The agent serves its own root; the unit tests a directory of the host's. */
#ifndef WORLDFS_FSSERVE_H
#define WORLDFS_FSSERVE_H

#include <stddef.h>
#include <stdint.h>

#include "backend/agent/fsproto.h"

/* Do request r on the tree below rootfd (an O_PATH or O_DIRECTORY
 * descriptor): every path is resolved as if rootfd were "/" (.. and
 * symlinks cannot leave it), and the final component is never followed.
 * The reply payload goes into out (at least FS_REPLY_MAX bytes); its
 * length is returned. */
size_t fs_serve(int rootfd, const struct fs_req *r, uint8_t *out);

#endif
