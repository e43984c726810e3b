/* fsproto.h: the guest file protocol behind W/fs/: the payloads of the
 * PROTO_FS (host -> guest) and PROTO_FS_REPLY (guest -> host) frames.
 * Shared by the host, which encodes requests and decodes replies, and the
 * agent, which does the reverse (fsserve.c).  Pure functions.
 *
 * A request is stateless (a path, never a handle), like NFSv3's, so that
 * nothing in the guest outlives a request: a branch, snapshot or suspend
 * between two requests is always clean.  Large files go a chunk
 * (FS_IO_MAX) per request.
 *
 *   request: u32 id, u8 op, u32 mode, u32 flags, u32 len, u64 off, u64 arg,
 *            u16 path_len, path, u16 path2_len, path2, data (the rest)
 *   reply:   u32 id, u32 errno (0: done), body
 *
 * Paths are absolute in the guest ("/srv/a.csv"), without NUL, at most
 * FS_PATH_MAX bytes.  What each op uses, and its reply body:
 *   STAT     path                          -> attr
 *   READDIR  path, off = cookie (0: start) -> u64 next cookie (0: no more),
 *                                             then per entry: u16 name_len,
 *                                             name, attr (no . or ..)
 *   READ     path, off, len                -> the bytes (fewer at the end)
 *   WRITE    path, off, data               -> u32 bytes written
 *   CREATE   path, mode, flags (FS_EXCL, FS_TRUNC) -> attr
 *   TRUNCATE path, off = size              -> -
 *   MKDIR    path, mode                    -> attr
 *   UNLINK, RMDIR  path                    -> -
 *   RENAME   path -> path2, flags (RENAME_NOREPLACE, RENAME_EXCHANGE)
 *   READLINK path                          -> the target
 *   SYMLINK  path2 = the target, path = the link -> attr
 *   CHMOD    path, mode                    -> -
 *   UTIMENS  path, off = atime ns, arg = mtime ns (FS_TIME_NOW, FS_TIME_OMIT)
 *   MARK     path "/"                      -> - (the files are recorded: a
 *                                             copy started from the state
 *                                             frozen next diffs against them)
 *   DIFF     path "/", off, arg = token    -> u64 token, u64 total, the
 *            (0: compute it now)              text's bytes from off (W/diff;
 *                                             the token names the text
 *                                             computed, kept until its last
 *                                             byte is sent; an unknown
 *                                             token is ESTALE)
 * An attr is: u32 mode, u32 nlink, u32 uid, u32 gid, u64 size, u64 ino,
 * u64 mtime ns, u64 ctime ns. */
#ifndef WORLDFS_FSPROTO_H
#define WORLDFS_FSPROTO_H

#include <stddef.h>
#include <stdint.h>

enum fs_op {
	FS_STAT = 1,
	FS_READDIR,
	FS_READ,
	FS_WRITE,
	FS_CREATE,
	FS_TRUNCATE,
	FS_MKDIR,
	FS_UNLINK,
	FS_RMDIR,
	FS_RENAME,
	FS_READLINK,
	FS_SYMLINK,
	FS_CHMOD,
	FS_UTIMENS,
	FS_MARK,
	FS_DIFF,
	FS_OP_END,
};

#define FS_IO_MAX (1u << 20)         /* the most one READ or WRITE moves */
#define FS_DIR_BUDGET (64u << 10)    /* the most a READDIR reply's entries take */
#define FS_PATH_MAX 4096
#define FS_REQ_HDR 37                /* the fixed part, up to path_len */
#define FS_REQ_MAX (FS_REQ_HDR + 2 * (2 + FS_PATH_MAX) + FS_IO_MAX)
#define FS_REPLY_HDR 8
#define FS_REPLY_MAX (FS_REPLY_HDR + FS_IO_MAX)
#define FS_ATTR_LEN 48
#define FS_EXCL 1                    /* CREATE: fail with EEXIST if it exists */
#define FS_TRUNC 2                   /* CREATE: empty it if it exists */
#define FS_DIFF_HDR 16               /* DIFF's reply: token, total */
#define FS_TIME_NOW (UINT64_MAX - 1)
#define FS_TIME_OMIT UINT64_MAX

struct fs_attr {
	uint32_t mode, nlink, uid, gid;
	uint64_t size, ino, mtime_ns, ctime_ns;
};

struct fs_req {
	uint32_t id;
	uint8_t op;
	uint32_t mode, flags, len;
	uint64_t off, arg;
	const char *path, *path2;    /* not NUL-terminated: see the lengths */
	size_t path_len, path2_len;
	const uint8_t *data;
	size_t data_len;
};

/* The request's fixed part and paths into hdr (at least FS_REQ_HDR + 4 +
 * both paths' lengths), its length returned; the data follows it in a
 * frame of its own iov.  0 if a path or the data is too long. */
size_t fs_req_head(const struct fs_req *r, uint8_t *hdr, size_t cap);

/* Parse a request.  0, or -EPROTO for anything malformed: an unknown op,
 * a length past the end, a path that is empty, relative, too long or
 * holds a NUL, a READ longer than FS_IO_MAX, data with any op but WRITE. */
int fs_req_parse(const uint8_t *p, size_t len, struct fs_req *r);

void fs_attr_put(uint8_t *p, const struct fs_attr *a);
void fs_attr_get(const uint8_t *p, struct fs_attr *a);

/* A reply's id, errno and body.  0, or -EPROTO if shorter than its header. */
int fs_reply_parse(const uint8_t *p, size_t len, uint32_t *id, uint32_t *err, const uint8_t **body,
		   size_t *body_len);

/* A reply's header into out: id, and the errno of n < 0 (0 otherwise);
 * the reply's length, FS_REPLY_HDR plus n body bytes when n >= 0. */
size_t fs_reply_head(uint8_t *out, uint32_t id, int n);

/* A reply as its receiver takes it: 0 with its body, the guest's errno
 * (-1..-4095), or -EIO for a reply shorter than its header or an errno
 * outside 1..4095 (nothing from the guest is believed). */
int fs_reply_status(const uint8_t *p, size_t len, const uint8_t **body, size_t *body_len);

/* The next READDIR entry in body[*pos..len): its name (not terminated)
 * and attr.  1, 0 at the end, -EPROTO when malformed (a name that is
 * empty, ".", "..", longer than FS_PATH_MAX, holds '/' or NUL, or runs past the
 * end). */
int fs_dirent_next(const uint8_t *body, size_t len, size_t *pos, const char **name, size_t *name_len,
		   struct fs_attr *a);

/* A DIFF reply's body: its token, the text's total length and the bytes
 * it carries.  0, or -EPROTO if shorter than its header. */
int fs_diff_parse(const uint8_t *body, size_t len, uint64_t *token, uint64_t *total, const uint8_t **data,
		  size_t *data_len);

#endif
