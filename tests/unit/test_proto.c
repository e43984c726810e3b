/* test_proto.c: the host <-> agent framing: parsing whole, partial, bad
 * and oversized frames, and round trips through pipes. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/agent/proto.h"
#include "backend/util/clock.h"

/* A frame as the wire carries it. */
static size_t frame(uint8_t *out, uint8_t type, const void *payload, size_t len)
{
	proto_put_u32(out, (uint32_t)len + 1);
	out[4] = type;
	memcpy(out + 5, payload, len);
	return 5 + len;
}

static void test_byte_order(void **state)
{
	uint8_t b[8];

	(void)state;
	proto_put_u32(b, 0x01020304);
	assert_memory_equal(b, "\x01\x02\x03\x04", 4);
	assert_int_equal(proto_get_u32(b), 0x01020304);
	proto_put_u64(b, 0x0102030405060708ull);
	assert_memory_equal(b, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
	assert_true(proto_get_u64(b) == 0x0102030405060708ull);
	proto_put_u32(b, 0xfffffffe);
	assert_int_equal(proto_get_u32(b), 0xfffffffe);
}

static void test_parse_complete(void **state)
{
	uint8_t buf[64];
	struct proto_frame f;
	size_t n = frame(buf, PROTO_PONG, "hello", 5);

	(void)state;
	assert_int_equal(proto_parse(buf, n, &f), n);
	assert_int_equal(f.type, PROTO_PONG);
	assert_int_equal(f.len, 5);
	assert_ptr_equal(f.payload, buf + 5);
	assert_memory_equal(f.payload, "hello", 5);
}

static void test_parse_empty_payload(void **state)
{
	uint8_t buf[8];
	struct proto_frame f;
	size_t n = frame(buf, PROTO_PING, "", 0);

	(void)state;
	assert_int_equal(n, 5);
	assert_int_equal(proto_parse(buf, n, &f), 5);
	assert_int_equal(f.type, PROTO_PING);
	assert_int_equal(f.len, 0);
}

static void test_parse_partial(void **state)
{
	uint8_t buf[64];
	struct proto_frame f;
	size_t n = frame(buf, PROTO_EXEC, "0123456789abcdef", 16), i;

	(void)state;
	for (i = 0; i < n; i++)
		assert_int_equal(proto_parse(buf, i, &f), 0);
	assert_int_equal(proto_parse(buf, n, &f), n);
}

static void test_parse_two_frames(void **state)
{
	uint8_t buf[64];
	struct proto_frame f;
	size_t n1 = frame(buf, PROTO_PING, "", 0);
	size_t n2 = frame(buf + n1, PROTO_RESULT, "xyz", 3);
	long n;

	(void)state;
	n = proto_parse(buf, n1 + n2, &f);
	assert_int_equal(n, n1);
	assert_int_equal(f.type, PROTO_PING);
	n = proto_parse(buf + n1, n2, &f);
	assert_int_equal(n, n2);
	assert_int_equal(f.type, PROTO_RESULT);
	assert_memory_equal(f.payload, "xyz", 3);
}

static void test_parse_malformed(void **state)
{
	uint8_t buf[8] = { 0, 0, 0, 0, PROTO_PING };
	struct proto_frame f;

	(void)state;
	/* A frame without even a type byte. */
	assert_int_equal(proto_parse(buf, sizeof(buf), &f), -EPROTO);
	assert_int_equal(proto_parse(buf, 4, &f), -EPROTO);
}

static void test_parse_oversized(void **state)
{
	uint8_t buf[4];
	struct proto_frame f;

	(void)state;
	/* Refused from the header alone, before waiting for the body. */
	proto_put_u32(buf, PROTO_FRAME_MAX + 1);
	assert_int_equal(proto_parse(buf, 4, &f), -EPROTO);
	proto_put_u32(buf, 0xffffffff);
	assert_int_equal(proto_parse(buf, 4, &f), -EPROTO);
	/* The largest legal frame only needs more bytes. */
	proto_put_u32(buf, PROTO_FRAME_MAX);
	assert_int_equal(proto_parse(buf, 4, &f), 0);
}

static void test_pipe_round_trip(void **state)
{
	uint8_t payload[12 + 7], *buf = NULL;
	struct proto_frame f;
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	proto_put_u32(payload, 7);
	proto_put_u32(payload + 4, 1000);
	proto_put_u32(payload + 8, 4096);
	memcpy(payload + 12, "echo hi", 7);
	assert_int_equal(proto_write(p[1], PROTO_PING, NULL, 0, -1), 0);
	assert_int_equal(proto_write(p[1], PROTO_EXEC, payload, sizeof(payload), -1), 0);

	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, NULL, NULL), 0);
	assert_int_equal(f.type, PROTO_PING);
	assert_int_equal(f.len, 0);
	free(buf);

	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, NULL, NULL), 0);
	assert_int_equal(f.type, PROTO_EXEC);
	assert_int_equal(f.len, sizeof(payload));
	assert_int_equal(proto_get_u32(f.payload), 7);
	assert_int_equal(proto_get_u32(f.payload + 4), 1000);
	assert_int_equal(proto_get_u32(f.payload + 8), 4096);
	assert_memory_equal(f.payload + 12, "echo hi", 7);
	free(buf);
	close(p[0]);
	close(p[1]);
}

static void test_writev_gathers(void **state)
{
	struct iovec iov[3] = {
		{ .iov_base = "abc", .iov_len = 3 },
		{ .iov_base = "", .iov_len = 0 },
		{ .iov_base = "defg", .iov_len = 4 },
	};
	uint8_t *buf = NULL;
	struct proto_frame f;
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	assert_int_equal(proto_writev(p[1], PROTO_RESULT, iov, 3, -1), 0);
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, NULL, NULL), 0);
	assert_int_equal(f.type, PROTO_RESULT);
	assert_int_equal(f.len, 7);
	assert_memory_equal(f.payload, "abcdefg", 7);
	free(buf);
	close(p[0]);
	close(p[1]);
}

static void test_write_too_big(void **state)
{
	struct iovec iov = { .iov_base = "x", .iov_len = PROTO_FRAME_MAX };
	int p[2];

	(void)state;
	/* Checked before anything is written: iov_base is never read. */
	assert_int_equal(pipe(p), 0);
	assert_int_equal(proto_writev(p[1], PROTO_RESULT, &iov, 1, -1), -EMSGSIZE);
	close(p[0]);
	close(p[1]);
}

static void test_write_peer_gone(void **state)
{
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	close(p[0]);
	assert_int_equal(proto_write(p[1], PROTO_PING, NULL, 0, -1), -EPIPE);
	close(p[1]);
}

/* A frame much larger than the pipe, written through a non-blocking fd
 * (as the agent's port is) while a child reads it. */
static void test_large_frame_nonblocking(void **state)
{
	size_t len = 3u << 20, i;
	uint8_t *payload = malloc(len), *buf = NULL;
	struct proto_frame f;
	int p[2], st = 0, ok;
	pid_t pid;

	(void)state;
	assert_non_null(payload);
	for (i = 0; i < len; i++)
		payload[i] = (uint8_t)(i * 7);
	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[1]);
		ok = proto_read(p[0], &f, &buf, now_ms() + 10000, NULL, NULL) == 0 && f.type == PROTO_RESULT &&
		     f.len == len && memcmp(f.payload, payload, len) == 0;
		_exit(ok ? 0 : 1);
	}
	close(p[0]);
	fcntl(p[1], F_SETFL, O_NONBLOCK);
	assert_int_equal(proto_write(p[1], PROTO_RESULT, payload, len, -1), 0);
	close(p[1]);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	free(payload);
}

static void test_read_timeout(void **state)
{
	uint8_t hdr[6], *buf = NULL;
	struct proto_frame f;
	long long t;
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	t = now_ms();
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 50, NULL, NULL), -ETIMEDOUT);
	assert_true(now_ms() - t >= 45);
	assert_null(buf);

	/* Half a frame: still a time-out, not a hang. */
	proto_put_u32(hdr, 10);
	hdr[4] = PROTO_PONG;
	hdr[5] = 'x';
	assert_int_equal(write(p[1], hdr, sizeof(hdr)), sizeof(hdr));
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 50, NULL, NULL), -ETIMEDOUT);
	assert_null(buf);
	close(p[0]);
	close(p[1]);
}

static void test_read_eof(void **state)
{
	uint8_t hdr[5], *buf = NULL;
	struct proto_frame f;
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	close(p[1]);
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, NULL, NULL), -EPIPE);
	close(p[0]);

	/* EOF inside a frame. */
	assert_int_equal(pipe(p), 0);
	proto_put_u32(hdr, 100);
	hdr[4] = PROTO_PONG;
	assert_int_equal(write(p[1], hdr, sizeof(hdr)), sizeof(hdr));
	close(p[1]);
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, NULL, NULL), -EPIPE);
	assert_null(buf);
	close(p[0]);
}

static void test_read_malformed(void **state)
{
	uint8_t hdr[4], *buf = NULL;
	struct proto_frame f;
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	proto_put_u32(hdr, PROTO_FRAME_MAX + 1);
	assert_int_equal(write(p[1], hdr, sizeof(hdr)), sizeof(hdr));
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, NULL, NULL), -EPROTO);
	assert_null(buf);
	proto_put_u32(hdr, 0);
	assert_int_equal(write(p[1], hdr, sizeof(hdr)), sizeof(hdr));
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, NULL, NULL), -EPROTO);
	close(p[0]);
	close(p[1]);
}

/* A peer that stops reading: a non-blocking write gives up at its
 * deadline instead of holding the writer forever. */
static void test_write_deadline(void **state)
{
	static uint8_t code[1 << 20];
	double t;
	int p[2];

	(void)state;
	assert_int_equal(pipe2(p, O_NONBLOCK), 0);
	t = now_ms();
	assert_int_equal(proto_write(p[1], PROTO_EXEC, code, sizeof(code), now_ms() + 100), -ETIMEDOUT);
	assert_true(now_ms() - t >= 95);
	assert_true(now_ms() - t < 5000);
	close(p[0]);
	close(p[1]);
}

static uint32_t host_limits(uint8_t type, const void *arg)
{
	(void)arg;
	return type == PROTO_PONG ? 64 : type == PROTO_RESULT ? 1000 : 0;
}

/* The reader's limits per frame type: a type it does not take and a frame
 * above its type's limit are refused from the header, before anything is
 * allocated or read for them; one at the limit is taken. */
static void test_read_limits(void **state)
{
	uint8_t payload[1000] = { 0 }, *buf = NULL;
	struct proto_frame f;
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	assert_int_equal(proto_write(p[1], PROTO_RESULT, payload, 1000, -1), 0);
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, host_limits, NULL), 0);
	assert_int_equal(f.len, 1000);
	free(buf);
	assert_int_equal(proto_write(p[1], PROTO_PONG, payload, 65, -1), 0);
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, host_limits, NULL), -EPROTO);
	assert_null(buf);
	close(p[0]);
	close(p[1]);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(proto_write(p[1], PROTO_EXEC, payload, 8, -1), 0);
	assert_int_equal(proto_read(p[0], &f, &buf, now_ms() + 1000, host_limits, NULL), -EPROTO);
	assert_null(buf);
	close(p[0]);
	close(p[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_byte_order),
		cmocka_unit_test(test_parse_complete),
		cmocka_unit_test(test_parse_empty_payload),
		cmocka_unit_test(test_parse_partial),
		cmocka_unit_test(test_parse_two_frames),
		cmocka_unit_test(test_parse_malformed),
		cmocka_unit_test(test_parse_oversized),
		cmocka_unit_test(test_pipe_round_trip),
		cmocka_unit_test(test_writev_gathers),
		cmocka_unit_test(test_write_too_big),
		cmocka_unit_test(test_write_peer_gone),
		cmocka_unit_test(test_large_frame_nonblocking),
		cmocka_unit_test(test_read_timeout),
		cmocka_unit_test(test_read_eof),
		cmocka_unit_test(test_read_malformed),
		cmocka_unit_test(test_write_deadline),
		cmocka_unit_test(test_read_limits),
	};

	/* A write to a closed pipe must fail with EPIPE, not kill us. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
