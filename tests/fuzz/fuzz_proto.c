/* fuzz_proto.c: libFuzzer target for what the host reads from a guest's
 * agent port (backend/agent/proto.c, backend/vm/agent.c).  The input is a
 * few bytes of settings and then the bytes the guest sends:
 *   - proto_parse walks the stream frame by frame: it never consumes more
 *     than it has and every payload lies inside the buffer;
 *   - proto_read reads the same stream from a pipe, with a limit function
 *     like the host's (frame_max in agent.c) or none: it returns the same
 *     frames while they are within the limit, then exactly the error the
 *     rest of the stream calls for (-EPROTO or -EPIPE at the end);
 *   - agent_result_parse takes every frame as a RESULT: it accepts one
 *     exactly when the status is 0..255 and both streams fit in the
 *     payload and within stream_max, and copies them as they are. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "backend/agent/proto.h"
#include "backend/backend.h"
#include "backend/vm/vm.h"
#include "tests/fuzz/fuzz.h"

#define FRAMES_MAX 256
#define PIPE_MAX 65536  /* a pipe's default capacity: written whole before reading */

enum {
	NO_LIMIT = 1,     /* proto_read with limit NULL */
	HUGE_STREAMS = 2, /* agent_result_parse with stream_max SIZE_MAX */
};

/* What the host takes of each type: frame_max in agent.c, with the
 * RESULT limit from stream_max as result_max computes it. */
static uint32_t limit(uint8_t type, const void *arg)
{
	const size_t *stream_max = arg;

	switch (type) {
	case PROTO_PONG:
	case PROTO_RESEEDED:
		return 64;
	case PROTO_RESULT:
		return (uint32_t)(16 + 2 * *stream_max);
	default:
		return 0;
	}
}

struct walked {
	struct proto_frame f[FRAMES_MAX];
	size_t n;
	size_t end;   /* bytes of whole frames */
	long last;    /* what proto_parse said after the last whole frame: 0 or -EPROTO */
};

static void walk(const uint8_t *buf, size_t len, struct walked *w)
{
	size_t off = 0;

	w->n = 0;
	for (;;) {
		struct proto_frame f;
		long r = proto_parse(buf + off, len - off, &f);

		if (r <= 0) {
			uint32_t flen = len - off >= 4 ? proto_get_u32(buf + off) : 1;

			CHECK(r == 0 || r == -EPROTO);
			/* -EPROTO exactly for a bad length; 0 while short. */
			CHECK((r == -EPROTO) == (flen == 0 || flen > PROTO_FRAME_MAX));
			CHECK(r == -EPROTO || len - off < 4 || len - off - 4 < flen);
			w->end = off;
			w->last = r;
			return;
		}
		CHECK((size_t)r >= 5 && (size_t)r <= len - off);
		CHECK(f.payload == buf + off + 5);
		CHECK(f.len == (size_t)r - 5);
		CHECK(f.payload + f.len <= buf + len);
		CHECK(f.type == buf[off + 4]);
		if (w->n < FRAMES_MAX)
			w->f[w->n++] = f;
		off += (size_t)r;
		if (w->n == FRAMES_MAX) {
			w->end = off;
			w->last = 0;
			return;
		}
	}
}

/* The same stream through proto_read, from a pipe. */
static void read_back(const uint8_t *buf, size_t len, const struct walked *w, bool no_limit,
		      const size_t *stream_max)
{
	int p[2];
	size_t i;

	if (len > PIPE_MAX || pipe2(p, O_CLOEXEC) < 0)
		return;
	if (fcntl(p[1], F_SETFL, O_NONBLOCK) < 0 || write(p[1], buf, len) != (ssize_t)len) {
		close(p[0]);
		close(p[1]);
		return;
	}
	close(p[1]);
	for (i = 0;; i++) {
		struct proto_frame f;
		uint8_t *b = (uint8_t *)"not set";
		int r = proto_read(p[0], &f, &b, -1, no_limit ? NULL : limit, stream_max);

		if (i < w->n) {
			uint32_t max = no_limit ? PROTO_FRAME_MAX - 1 : limit(w->f[i].type, stream_max);
			bool fits = w->f[i].len <= max && max > 0;

			if (!fits) {
				CHECK(r == -EPROTO && b == NULL);
				break;
			}
			CHECK(r == 0);
			CHECK(f.type == w->f[i].type && f.len == w->f[i].len);
			CHECK(f.payload == b + 5);
			CHECK(memcmp(f.payload, w->f[i].payload, f.len) == 0);
			free(b);
			continue;
		}
		/* Past the frames the walk counted: with FRAMES_MAX of them,
		 * more may follow (a frame read is fine: free it). */
		if (w->n == FRAMES_MAX) {
			CHECK(r == 0 || r == -EPROTO || r == -EPIPE);
			CHECK(r == 0 || b == NULL);
			if (r == 0)
				free(b);
			break;
		}
		CHECK(b == NULL);
		/* The rest after the whole frames: a bad length, a type the
		 * limit refuses, or the end of the stream. */
		size_t left = len - w->end;
		const uint8_t *t = buf + w->end;
		int want = -EPIPE;
		if (w->last == -EPROTO) {
			want = -EPROTO;
		} else if (left >= 5 && !no_limit) {
			uint32_t max = limit(t[4], stream_max);
			if (max == 0 || proto_get_u32(t) - 1 > max)
				want = -EPROTO;
		}
		CHECK(r == want);
		break;
	}
	close(p[0]);
}

static void result(const struct proto_frame *f, size_t stream_max)
{
	struct run_result res;
	uint32_t flags = 0xdeadbeef, out_len = 0;
	int32_t status = -1;
	bool want;
	int r;

	want = f->len >= 16;
	if (want) {
		out_len = proto_get_u32(f->payload + 12);
		status = (int32_t)proto_get_u32(f->payload + 4);
		want = out_len <= f->len - 16 && out_len <= stream_max && f->len - 16 - out_len <= stream_max &&
		       status >= 0 && status <= 255;
	}
	memset(&res, 0, sizeof(res));
	r = agent_result_parse(f, stream_max, &res, &flags);
	if (r < 0) {
		CHECK(r == -EPROTO || r == -ENOMEM);
		CHECK(!want || r == -ENOMEM);
		CHECK(res.out == NULL && res.err == NULL);
		return;
	}
	CHECK(want);
	CHECK(res.status == status);
	CHECK(res.out_len == out_len && res.out_len <= stream_max && res.err_len <= stream_max);
	CHECK(16 + res.out_len + res.err_len == f->len);
	CHECK(memcmp(res.out, f->payload + 16, res.out_len) == 0 && res.out[res.out_len] == '\0');
	CHECK(memcmp(res.err, f->payload + 16 + res.out_len, res.err_len) == 0 && res.err[res.err_len] == '\0');
	CHECK(flags == proto_get_u32(f->payload + 8));
	CHECK(res.timed_out == !!(flags & PROTO_F_TIMED_OUT));
	CHECK(res.truncated == !!(flags & PROTO_F_TRUNCATED));
	CHECK(res.session_reset == !!(flags & PROTO_F_SESSION_RESET));
	run_result_release(&res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	unsigned mode = (unsigned)fuzz_take(&in, 1);
	size_t stream_max = (size_t)fuzz_take(&in, 2);
	static struct walked w;

	if (mode & HUGE_STREAMS)
		stream_max = SIZE_MAX;
	walk(in.p, in.left, &w);
	/* The host's limit for a RESULT must fit in u32: as in result_max. */
	if (!(mode & HUGE_STREAMS))
		read_back(in.p, in.left, &w, mode & NO_LIMIT, &stream_max);
	else
		read_back(in.p, in.left, &w, true, &stream_max);
	for (size_t i = 0; i < w.n; i++)
		result(&w.f[i], stream_max);
	return 0;
}
