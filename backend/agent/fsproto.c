/* fsproto.c: see fsproto.h. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "backend/agent/fsproto.h"
#include "backend/agent/proto.h"

static void put_u16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = (uint8_t)v;
}

static uint16_t get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

size_t fs_req_head(const struct fs_req *r, uint8_t *hdr, size_t cap)
{
	size_t n = FS_REQ_HDR + 4 + r->path_len + r->path2_len;

	if (r->path_len > FS_PATH_MAX || r->path2_len > FS_PATH_MAX || r->data_len > FS_IO_MAX || n > cap)
		return 0;
	proto_put_u32(hdr, r->id);
	hdr[4] = r->op;
	proto_put_u32(hdr + 5, r->mode);
	proto_put_u32(hdr + 9, r->flags);
	proto_put_u32(hdr + 13, r->len);
	proto_put_u64(hdr + 17, r->off);
	proto_put_u64(hdr + 25, r->arg);
	/* 33..36: reserved, zero */
	memset(hdr + 33, 0, 4);
	/* path2 is NULL for most ops: memcpy takes no NULL, even for 0 bytes. */
	put_u16(hdr + FS_REQ_HDR, (uint16_t)r->path_len);
	if (r->path_len)
		memcpy(hdr + FS_REQ_HDR + 2, r->path, r->path_len);
	put_u16(hdr + FS_REQ_HDR + 2 + r->path_len, (uint16_t)r->path2_len);
	if (r->path2_len)
		memcpy(hdr + FS_REQ_HDR + 4 + r->path_len, r->path2, r->path2_len);
	return n;
}

static bool path_ok(const char *p, size_t n)
{
	return n > 0 && n <= FS_PATH_MAX && p[0] == '/' && !memchr(p, '\0', n);
}

int fs_req_parse(const uint8_t *p, size_t len, struct fs_req *r)
{
	size_t at = FS_REQ_HDR;

	memset(r, 0, sizeof(*r));
	if (len < FS_REQ_HDR + 4)
		return -EPROTO;
	r->id = proto_get_u32(p);
	r->op = p[4];
	r->mode = proto_get_u32(p + 5);
	r->flags = proto_get_u32(p + 9);
	r->len = proto_get_u32(p + 13);
	r->off = proto_get_u64(p + 17);
	r->arg = proto_get_u64(p + 25);
	r->path_len = get_u16(p + at);
	at += 2;
	if (r->path_len > len - at)
		return -EPROTO;
	r->path = (const char *)p + at;
	at += r->path_len;
	if (len - at < 2)
		return -EPROTO;
	r->path2_len = get_u16(p + at);
	at += 2;
	if (r->path2_len > len - at)
		return -EPROTO;
	r->path2 = (const char *)p + at;
	at += r->path2_len;
	r->data = p + at;
	r->data_len = len - at;
	if (r->op < FS_STAT || r->op >= FS_OP_END || !path_ok(r->path, r->path_len))
		return -EPROTO;
	if ((r->op == FS_RENAME && !path_ok(r->path2, r->path2_len)) ||
	    (r->op == FS_SYMLINK &&
	     (r->path2_len == 0 || r->path2_len > FS_PATH_MAX || memchr(r->path2, '\0', r->path2_len))) ||
	    (r->op != FS_RENAME && r->op != FS_SYMLINK && r->path2_len))
		return -EPROTO;
	if ((r->op == FS_READ && r->len > FS_IO_MAX) || (r->op != FS_WRITE && r->data_len) ||
	    r->data_len > FS_IO_MAX)
		return -EPROTO;
	return 0;
}

void fs_attr_put(uint8_t *p, const struct fs_attr *a)
{
	proto_put_u32(p, a->mode);
	proto_put_u32(p + 4, a->nlink);
	proto_put_u32(p + 8, a->uid);
	proto_put_u32(p + 12, a->gid);
	proto_put_u64(p + 16, a->size);
	proto_put_u64(p + 24, a->ino);
	proto_put_u64(p + 32, a->mtime_ns);
	proto_put_u64(p + 40, a->ctime_ns);
}

void fs_attr_get(const uint8_t *p, struct fs_attr *a)
{
	a->mode = proto_get_u32(p);
	a->nlink = proto_get_u32(p + 4);
	a->uid = proto_get_u32(p + 8);
	a->gid = proto_get_u32(p + 12);
	a->size = proto_get_u64(p + 16);
	a->ino = proto_get_u64(p + 24);
	a->mtime_ns = proto_get_u64(p + 32);
	a->ctime_ns = proto_get_u64(p + 40);
}

int fs_reply_parse(const uint8_t *p, size_t len, uint32_t *id, uint32_t *err, const uint8_t **body,
		   size_t *body_len)
{
	if (len < FS_REPLY_HDR)
		return -EPROTO;
	*id = proto_get_u32(p);
	*err = proto_get_u32(p + 4);
	*body = p + FS_REPLY_HDR;
	*body_len = len - FS_REPLY_HDR;
	return 0;
}

size_t fs_reply_head(uint8_t *out, uint32_t id, int n)
{
	proto_put_u32(out, id);
	proto_put_u32(out + 4, n < 0 ? (uint32_t)-n : 0);
	return FS_REPLY_HDR + (n < 0 ? 0 : (size_t)n);
}

int fs_reply_status(const uint8_t *p, size_t len, const uint8_t **body, size_t *body_len)
{
	uint32_t id, err;

	if (fs_reply_parse(p, len, &id, &err, body, body_len) < 0)
		return -EIO;
	if (err == 0)
		return 0;
	return err < 4096 ? -(int)err : -EIO;
}

int fs_dirent_next(const uint8_t *body, size_t len, size_t *pos, const char **name, size_t *name_len,
		   struct fs_attr *a)
{
	size_t at = *pos, n;

	if (at == len)
		return 0;
	if (at > len || len - at < 2)
		return -EPROTO;
	n = get_u16(body + at);
	at += 2;
	if (n == 0 || n > FS_PATH_MAX || n > len - at || len - at - n < FS_ATTR_LEN)
		return -EPROTO;
	*name = (const char *)body + at;
	*name_len = n;
	if (memchr(*name, '/', n) || memchr(*name, '\0', n) || (n == 1 && (*name)[0] == '.') ||
	    (n == 2 && (*name)[0] == '.' && (*name)[1] == '.'))
		return -EPROTO;
	fs_attr_get(body + at + n, a);
	*pos = at + n + FS_ATTR_LEN;
	return 1;
}

int fs_diff_parse(const uint8_t *body, size_t len, uint64_t *token, uint64_t *total, const uint8_t **data,
		  size_t *data_len)
{
	if (len < FS_DIFF_HDR)
		return -EPROTO;
	*token = proto_get_u64(body);
	*total = proto_get_u64(body + 8);
	*data = body + FS_DIFF_HDR;
	*data_len = len - FS_DIFF_HDR;
	return 0;
}
