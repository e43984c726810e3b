/* test_fsserve.c: the guest's file server (fsserve.c) and the file
 * protocol's codec (fsproto.c), on a temporary directory of the host's
 * standing in for the guest's root: every request goes through the codec
 * as the host would send it, and every reply is read as the host reads
 * it.  Nothing may reach outside the root, by .., by an absolute symlink
 * or by a symlink at the end. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/agent/fsserve.h"
#include "backend/agent/proto.h"

static char root[64], outside[80];
static int rootfd = -1;
static uint8_t *out;

static int setup(void **state)
{
	(void)state;
	strcpy(root, "/tmp/worldfs-fs-XXXXXX");
	if (!mkdtemp(root))
		return -1;
	snprintf(outside, sizeof(outside), "%s.outside", root);
	if (mkdir(outside, 0700) < 0)
		return -1;
	rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	out = malloc(FS_REPLY_MAX);
	return rootfd < 0 || !out ? -1 : 0;
}

static int teardown(void **state)
{
	char cmd[256];
	(void)state;
	close(rootfd);
	free(out);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", root, outside);
	return system(cmd) == 0 ? 0 : -1;
}

/* Send r as the host would (encoded, parsed back as the agent would),
 * serve it; the errno of the reply, its body in *body. */
static uint32_t call(struct fs_req r, const uint8_t **body, size_t *body_len)
{
	static uint32_t next_id = 1;
	uint8_t *wire = malloc(FS_REQ_MAX);
	struct fs_req parsed;
	uint32_t id, err;
	const uint8_t *b;
	size_t n, bl;

	assert_non_null(wire);
	r.id = next_id++;
	n = fs_req_head(&r, wire, FS_REQ_MAX);
	assert_true(n > 0);
	if (r.data_len)
		memcpy(wire + n, r.data, r.data_len);
	assert_int_equal(fs_req_parse(wire, n + r.data_len, &parsed), 0);
	n = fs_serve(rootfd, &parsed, out);
	free(wire);
	assert_int_equal(fs_reply_parse(out, n, &id, &err, &b, &bl), 0);
	assert_int_equal(id, r.id);
	if (body)
		*body = b;
	if (body_len)
		*body_len = bl;
	return err;
}

static struct fs_req req(uint8_t op, const char *path)
{
	return (struct fs_req){ .op = op, .path = path, .path_len = strlen(path) };
}

static uint32_t stat_of(const char *path, struct fs_attr *a)
{
	const uint8_t *b;
	size_t n;
	uint32_t err = call(req(FS_STAT, path), &b, &n);

	if (!err) {
		assert_int_equal(n, FS_ATTR_LEN);
		fs_attr_get(b, a);
	}
	return err;
}

static void files(void **state)
{
	static uint8_t big[FS_IO_MAX];
	struct fs_req r;
	struct fs_attr a;
	const uint8_t *b;
	size_t n;
	(void)state;

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7 + 3);
	/* create, write at offsets across two chunks, read back */
	r = req(FS_CREATE, "/data.bin");
	r.mode = 0640;
	r.flags = FS_EXCL;
	assert_int_equal(call(r, &b, &n), 0);
	assert_int_equal(n, FS_ATTR_LEN);
	assert_int_equal(call(r, NULL, NULL), EEXIST);
	r = req(FS_WRITE, "/data.bin");
	r.data = big;
	r.data_len = sizeof(big);
	assert_int_equal(call(r, &b, &n), 0);
	assert_int_equal(proto_get_u32(b), FS_IO_MAX);
	r.off = FS_IO_MAX;
	r.data_len = 100;
	assert_int_equal(call(r, NULL, NULL), 0);
	assert_int_equal(stat_of("/data.bin", &a), 0);
	assert_int_equal(a.size, FS_IO_MAX + 100);
	assert_int_equal(a.mode, S_IFREG | 0640);
	r = req(FS_READ, "/data.bin");
	r.off = 10;
	r.len = FS_IO_MAX;
	assert_int_equal(call(r, &b, &n), 0);
	assert_int_equal(n, FS_IO_MAX);
	assert_memory_equal(b, big + 10, FS_IO_MAX - 10);
	assert_memory_equal(b + FS_IO_MAX - 10, big, 10);
	r.off = FS_IO_MAX + 90;
	assert_int_equal(call(r, &b, &n), 0);
	assert_int_equal(n, 10);  /* short at the end */
	/* truncate, chmod, utimens */
	r = req(FS_TRUNCATE, "/data.bin");
	r.off = 5;
	assert_int_equal(call(r, NULL, NULL), 0);
	r = req(FS_CHMOD, "/data.bin");
	r.mode = 0600;
	assert_int_equal(call(r, NULL, NULL), 0);
	r = req(FS_UTIMENS, "/data.bin");
	r.off = FS_TIME_OMIT;
	r.arg = 1234567890123456789ull;
	assert_int_equal(call(r, NULL, NULL), 0);
	assert_int_equal(stat_of("/data.bin", &a), 0);
	assert_int_equal(a.size, 5);
	assert_int_equal(a.mode, S_IFREG | 0600);
	assert_int_equal(a.mtime_ns, 1234567890123456789ull);
	/* errors come back as the same errno */
	assert_int_equal(stat_of("/nope", &a), ENOENT);
	r = req(FS_READ, "/nope/x");
	r.len = 1;
	assert_int_equal(call(r, NULL, NULL), ENOENT);
	assert_int_equal(call(req(FS_RMDIR, "/data.bin"), NULL, NULL), ENOTDIR);
	assert_int_equal(call(req(FS_UNLINK, "/"), NULL, NULL), EISDIR);
}

static void dirs_and_names(void **state)
{
	char name[300], path[400];
	const uint8_t *b;
	size_t n, pos, seen = 0, pages = 0;
	uint64_t cookie = 0;
	struct fs_req r;
	bool *found = calloc(1000, sizeof(bool));
	(void)state;

	assert_non_null(found);
	r = req(FS_MKDIR, "/d");
	r.mode = 0755;
	assert_int_equal(call(r, NULL, NULL), 0);
	assert_int_equal(call(r, NULL, NULL), EEXIST);
	/* 1000 files with long names: READDIR pages through them by cookie */
	for (int i = 0; i < 1000; i++) {
		memset(name, 'x', 200);
		snprintf(name + 200, sizeof(name) - 200, "%04d", i);
		snprintf(path, sizeof(path), "/d/%s", name);
		r = req(FS_CREATE, path);
		r.mode = 0644;
		assert_int_equal(call(r, NULL, NULL), 0);
	}
	do {
		const char *nm;
		size_t nl;
		struct fs_attr a;
		int k;

		r = req(FS_READDIR, "/d");
		r.off = cookie;
		assert_int_equal(call(r, &b, &n), 0);
		assert_true(n >= 8 && n - 8 <= FS_DIR_BUDGET);
		cookie = proto_get_u64(b);
		pos = 8;
		while ((k = fs_dirent_next(b, n, &pos, &nm, &nl, &a)) == 1) {
			int i = atoi(nm + 200);

			assert_int_equal(nl, 204);
			assert_false(found[i]);
			assert_int_equal(a.mode, S_IFREG | 0644);
			found[i] = true;
			seen++;
		}
		assert_int_equal(k, 0);
		pages++;
	} while (cookie);
	assert_int_equal(seen, 1000);
	assert_true(pages > 1);
	free(found);
	/* rename: plain, refused over an existing one with NOREPLACE */
	r = (struct fs_req){ .op = FS_RENAME, .path = "/d", .path_len = 2, .path2 = "/e", .path2_len = 2 };
	assert_int_equal(call(r, NULL, NULL), 0);
	r.path = "/e", r.path2 = "/data2";
	r.path_len = 2, r.path2_len = 6;
	assert_int_equal(call(req(FS_MKDIR, "/data2"), NULL, NULL), 0);
	r.flags = 1;  /* RENAME_NOREPLACE */
	assert_int_equal(call(r, NULL, NULL), EEXIST);
	assert_int_equal(call(req(FS_RMDIR, "/e"), NULL, NULL), ENOTEMPTY);
	assert_int_equal(call(req(FS_RMDIR, "/data2"), NULL, NULL), 0);
	assert_int_equal(call(req(FS_RMDIR, "/"), NULL, NULL), EBUSY);
}

/* The root is the world's: neither .., nor an absolute symlink, nor a
 * symlink at a path's end reaches the host's files. */
static void nothing_escapes(void **state)
{
	char secret[128], target[160];
	struct fs_req r;
	struct fs_attr a;
	const uint8_t *b;
	size_t n;
	int fd;
	(void)state;

	snprintf(secret, sizeof(secret), "%s/secret", outside);
	fd = open(secret, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0 && write(fd, "host", 4) == 4);
	close(fd);
	/* .. stays at the root */
	snprintf(target, sizeof(target), "/../../../..%s", secret);
	assert_int_equal(stat_of(target, &a), ENOENT);
	/* an absolute symlink in the middle resolves inside the root */
	r = (struct fs_req){ .op = FS_SYMLINK, .path = "/up", .path_len = 3, .path2 = outside,
			     .path2_len = strlen(outside) };
	assert_int_equal(call(r, NULL, NULL), 0);
	assert_int_equal(stat_of("/up/secret", &a), ENOENT);
	r = req(FS_READ, "/up/secret");
	r.len = 4;
	assert_int_equal(call(r, NULL, NULL), ENOENT);
	/* it reads back as written, and stat shows the link itself */
	assert_int_equal(call(req(FS_READLINK, "/up"), &b, &n), 0);
	assert_int_equal(n, strlen(outside));
	assert_memory_equal(b, outside, n);
	assert_int_equal(stat_of("/up", &a), 0);
	assert_true(S_ISLNK(a.mode));
	/* a symlink at the end is never followed: not read, not written,
	 * not chmod'ed, not truncated */
	r = (struct fs_req){ .op = FS_SYMLINK, .path = "/s", .path_len = 2, .path2 = secret,
			     .path2_len = strlen(secret) };
	assert_int_equal(call(r, NULL, NULL), 0);
	r = req(FS_READ, "/s");
	r.len = 4;
	assert_int_equal(call(r, NULL, NULL), ELOOP);
	r = req(FS_WRITE, "/s");
	r.data = (const uint8_t *)"evil";
	r.data_len = 4;
	assert_int_equal(call(r, NULL, NULL), ELOOP);
	r = req(FS_CHMOD, "/s");
	r.mode = 0777;
	assert_int_equal(call(r, NULL, NULL), EOPNOTSUPP);
	r = req(FS_TRUNCATE, "/s");
	assert_int_equal(call(r, NULL, NULL), ELOOP);
	/* the host's file is as it was */
	{
		struct stat st;
		char buf[8] = "";

		fd = open(secret, O_RDONLY);
		assert_int_equal(read(fd, buf, sizeof(buf)), 4);
		close(fd);
		assert_memory_equal(buf, "host", 4);
		assert_int_equal(stat(secret, &st), 0);
		assert_int_equal(st.st_mode & 07777, 0600);
	}
}

/* What the host may send is checked before anything is done. */
static void malformed(void **state)
{
	uint8_t wire[256];
	struct fs_req r, p;
	size_t n;
	(void)state;

	r = req(FS_STAT, "relative");
	n = fs_req_head(&r, wire, sizeof(wire));
	assert_int_equal(fs_req_parse(wire, n, &p), -EPROTO);
	r = req(FS_STAT, "/a\0b");
	r.path_len = 4;
	n = fs_req_head(&r, wire, sizeof(wire));
	assert_int_equal(fs_req_parse(wire, n, &p), -EPROTO);
	r = req(FS_READ, "/a");
	r.len = FS_IO_MAX + 1;
	n = fs_req_head(&r, wire, sizeof(wire));
	assert_int_equal(fs_req_parse(wire, n, &p), -EPROTO);
	r = req(FS_STAT, "/a");
	n = fs_req_head(&r, wire, sizeof(wire));
	wire[n] = 'x';  /* data with a STAT */
	assert_int_equal(fs_req_parse(wire, n + 1, &p), -EPROTO);
	r = req(FS_OP_END, "/a");
	n = fs_req_head(&r, wire, sizeof(wire));
	assert_int_equal(fs_req_parse(wire, n, &p), -EPROTO);
	r = req(FS_STAT, "/a");
	n = fs_req_head(&r, wire, sizeof(wire));
	for (size_t cut = 0; cut < n; cut++)
		assert_int_equal(fs_req_parse(wire, cut, &p), -EPROTO);
	assert_int_equal(fs_req_parse(wire, n, &p), 0);
	/* a READDIR entry the host would take from a hostile guest */
	{
		uint8_t body[2 + 2 + FS_ATTR_LEN] = { 0, 2, '.', '.' };
		const char *nm;
		size_t nl, pos = 0;
		struct fs_attr a;

		assert_int_equal(fs_dirent_next(body, sizeof(body), &pos, &nm, &nl, &a), -EPROTO);
		body[3] = '/';
		pos = 0;
		assert_int_equal(fs_dirent_next(body, sizeof(body), &pos, &nm, &nl, &a), -EPROTO);
		body[1] = 200;  /* past the end */
		pos = 0;
		assert_int_equal(fs_dirent_next(body, sizeof(body), &pos, &nm, &nl, &a), -EPROTO);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(files, setup, teardown),
		cmocka_unit_test_setup_teardown(dirs_and_names, setup, teardown),
		cmocka_unit_test_setup_teardown(nothing_escapes, setup, teardown),
		cmocka_unit_test_setup_teardown(malformed, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
