/* fuzz_fsproto.c: libFuzzer target for the guest file protocol's parsers
 * (backend/agent/fsproto.c).  The whole input is taken both ways:
 *   - as a request (host -> guest), fs_req_parse accepts it exactly when
 *     it is well formed as fsproto.h says (a known op; both lengths inside;
 *     the path absolute, without NUL, at most FS_PATH_MAX; path2 only for
 *     RENAME (a path) and SYMLINK (a target, at most FS_PATH_MAX); a READ
 *     at most FS_IO_MAX; data only for WRITE), and else says -EPROTO; what
 *     it accepts, fs_req_head and the data encode again to the same bytes
 *     (but the reserved ones) and so to an equal request;
 *   - as a reply (guest -> host), fs_reply_parse splits off its header,
 *     its body walked as a READDIR reply's entries after the cookie, as
 *     the host does (fs/guest.c): fs_dirent_next accepts an entry exactly
 *     when its name is not empty, ".", "..", holds no '/' or NUL, is at
 *     most FS_PATH_MAX (the host's copy of it) and it and its attr fit; the
 *     position only moves forward, by the entry, and stays within the body;
 *     the attr reads back as fs_attr_put writes it; and as a DIFF reply's
 *     body, fs_diff_parse's data is the rest after FS_DIFF_HDR. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "backend/agent/fsproto.h"
#include "backend/agent/proto.h"
#include "tests/fuzz/fuzz.h"

static size_t u16(const uint8_t *p)
{
	return (size_t)p[0] << 8 | p[1];
}

static bool path_ok(const uint8_t *p, size_t n, bool absolute)
{
	return n > 0 && n <= FS_PATH_MAX && (!absolute || p[0] == '/') && !memchr(p, '\0', n);
}

/* What fsproto.h says of a request, from its bytes. */
static bool req_ok(const uint8_t *p, size_t size)
{
	size_t n1, n2, data_len;
	uint8_t op;

	if (size < FS_REQ_HDR + 4 || (n1 = u16(p + FS_REQ_HDR)) > size - FS_REQ_HDR - 4 ||
	    (n2 = u16(p + FS_REQ_HDR + 2 + n1)) > size - FS_REQ_HDR - 4 - n1)
		return false;
	op = p[4];
	data_len = size - FS_REQ_HDR - 4 - n1 - n2;
	return op >= FS_STAT && op < FS_OP_END && path_ok(p + FS_REQ_HDR + 2, n1, true) &&
	       (op == FS_RENAME || op == FS_SYMLINK ? path_ok(p + FS_REQ_HDR + 4 + n1, n2, op == FS_RENAME)
						     : n2 == 0) &&
	       (op != FS_READ || proto_get_u32(p + 13) <= FS_IO_MAX) && (op == FS_WRITE || data_len == 0) &&
	       data_len <= FS_IO_MAX;
}

static void request(const uint8_t *data, size_t size)
{
	static uint8_t enc[FS_REQ_MAX];
	struct fs_req r, again;
	int rc = fs_req_parse(data, size, &r);
	size_t n;

	CHECK(rc == 0 || rc == -EPROTO);
	CHECK((rc == 0) == req_ok(data, size));
	if (rc < 0)
		return;
	CHECK((const uint8_t *)r.path == data + FS_REQ_HDR + 2 && r.path[0] == '/');
	CHECK((const uint8_t *)r.path2 == data + FS_REQ_HDR + 4 + r.path_len);
	CHECK(r.data == data + size - r.data_len && r.data_len <= FS_IO_MAX);
	CHECK(r.op != FS_READ || r.len <= FS_IO_MAX);
	n = fs_req_head(&r, enc, sizeof(enc));
	CHECK(n > 0 && n + r.data_len == size);
	memcpy(enc + n, r.data, r.data_len);
	CHECK(memcmp(enc, data, 33) == 0 && memcmp(enc + 37, data + 37, size - 37) == 0);
	CHECK(fs_req_parse(enc, size, &again) == 0);
	CHECK(again.id == r.id && again.op == r.op && again.mode == r.mode && again.flags == r.flags &&
	      again.len == r.len && again.off == r.off && again.arg == r.arg);
	CHECK(again.path_len == r.path_len && memcmp(again.path, r.path, r.path_len) == 0);
	CHECK(again.path2_len == r.path2_len && memcmp(again.path2, r.path2, r.path2_len) == 0);
	CHECK(again.data_len == r.data_len && memcmp(again.data, r.data, r.data_len) == 0);
}

/* The length of the well-formed entry at p (left bytes), or 0. */
static size_t entry_ok(const uint8_t *p, size_t left)
{
	size_t n = left >= 2 ? u16(p) : 0;
	const uint8_t *name = p + 2;

	if (n == 0 || n > FS_PATH_MAX || n > left - 2 || left - 2 - n < FS_ATTR_LEN ||
	    memchr(name, '/', n) || memchr(name, '\0', n) || (n == 1 && name[0] == '.') ||
	    (n == 2 && name[0] == '.' && name[1] == '.'))
		return 0;
	return 2 + n + FS_ATTR_LEN;
}

static void dirents(const uint8_t *body, size_t len)
{
	size_t pos = 8, prev, nl = 0, past = len + 1;
	uint8_t put[FS_ATTR_LEN];
	const char *name = NULL;
	struct fs_attr a;
	int k;

	CHECK(fs_dirent_next(body, len, &past, &name, &nl, &a) == -EPROTO && past == len + 1);
	if (len < 8)
		return;
	for (;;) {
		prev = pos;
		k = fs_dirent_next(body, len, &pos, &name, &nl, &a);
		if (k <= 0) {
			CHECK(pos == prev);
			CHECK(k == (prev == len ? 0 : -EPROTO));
			CHECK(k == 0 || entry_ok(body + prev, len - prev) == 0);
			return;
		}
		CHECK(k == 1 && pos > prev && pos <= len);
		CHECK(pos - prev == entry_ok(body + prev, len - prev));
		CHECK((const uint8_t *)name == body + prev + 2 && nl == u16(body + prev));
		fs_attr_put(put, &a);
		CHECK(memcmp(put, body + pos - FS_ATTR_LEN, FS_ATTR_LEN) == 0);
	}
}

static void diff(const uint8_t *body, size_t len)
{
	uint64_t token, total;
	const uint8_t *d;
	size_t dl;
	int rc = fs_diff_parse(body, len, &token, &total, &d, &dl);

	CHECK(rc == (len >= FS_DIFF_HDR ? 0 : -EPROTO));
	if (rc == 0) {
		CHECK(token == proto_get_u64(body) && total == proto_get_u64(body + 8));
		CHECK(d == body + FS_DIFF_HDR && dl == len - FS_DIFF_HDR);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *body;
	uint32_t id, err;
	size_t body_len;
	int rc;

	request(data, size);
	rc = fs_reply_parse(data, size, &id, &err, &body, &body_len);
	CHECK(rc == (size >= FS_REPLY_HDR ? 0 : -EPROTO));
	if (rc < 0)
		return 0;
	CHECK(id == proto_get_u32(data) && err == proto_get_u32(data + 4));
	CHECK(body == data + FS_REPLY_HDR && body_len == size - FS_REPLY_HDR);
	dirents(body, body_len);
	diff(body, body_len);
	return 0;
}
