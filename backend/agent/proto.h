/* proto.h: the framed protocol between worldfs (host) and worldfs-agent
 * (guest) over a virtio-serial port.  Shared by both sides.
 *
 * A frame is: u32 length (big-endian, counts type + payload), u8 type,
 * payload.  Integers inside payloads are big-endian.  Frames larger than
 * PROTO_FRAME_MAX are a protocol error. */
#ifndef WORLDFS_PROTO_H
#define WORLDFS_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define PROTO_FRAME_MAX (40u << 20)  /* 16 MiB code or 2 x output_max, with room */
/* The agent's PONG says "worldfs-agent VERSION".  Version 2 (worldfs 0.2)
 * added RESEED2, the session bits and sessions other than sh; a host
 * sends version-1 agents (in states saved by worldfs 0.1) only RESEED.
 * Version 3 added FS: a host sends no FS to an older agent (ENOTSUP).
 * Version 4 added W/diff: FS's MARK and DIFF, and RESEED_DIFF_BASE. */
#define PROTO_VERSION "4"

enum proto_type {
	/* host -> guest */
	PROTO_PING = 1,    /* payload: empty */
	PROTO_EXEC = 2,    /* u32 run_id, u32 timeout_ms, u32 output_max, code bytes */
	PROTO_RESEED = 3,  /* u64 host time (ns since epoch), entropy bytes */
	PROTO_RESEED2 = 4, /* u64 host time, u32 reseed flags, entropy bytes (version 2) */
	PROTO_FS = 5,      /* a file request (fsproto.h; version 3) */
	/* guest -> host */
	PROTO_PONG = 64,   /* agent version text */
	PROTO_RESULT = 65, /* u32 run_id, i32 status, u32 flags, u32 stdout_len, stdout, stderr */
	PROTO_RESEEDED = 66, /* version 1: empty; 2: u32 PROTO_F_SESSION_* bits */
	PROTO_FS_REPLY = 67, /* its reply (fsproto.h) */
};

/* The notes a run's output may end with, in the same words from every
 * backend (the agent, morph's session script) and quoted by the man page.
 * Each is a line of its own; the output before it ends with a newline. */
#define PROTO_NOTE_TRUNCATED "[worldfs: output truncated at %zu bytes]"     /* output_max */
#define PROTO_NOTE_TIMED_OUT "[worldfs: run killed after %u ms (exec_timeout)]" /* timeout_ms */
/* session noun, its status, what the restart lost ("" for sh) */
#define PROTO_NOTE_SESSION_EXITED "[worldfs: session restarted: %s exited with status %d%s]"

/* RESEED2 flags. */
enum proto_reseed_flags {
	/* Also reseed the sessions' interpreters' global generators (Python's
	 * random and numpy.random), not only the kernel's RNG. */
	PROTO_RESEED_SESSIONS = 1,
	/* This guest is a new copy (a branch, or a world made from the golden
	 * state): W/diff's base becomes the files as the last MARK recorded
	 * them, just before the state it started from was frozen. */
	PROTO_RESEED_DIFF_BASE = 2,
};

/* EXEC: timeout_ms 0 means no time limit; output_max 0 means the agent's
 * own cap (16 MiB per stream, which also bounds larger values). */

enum proto_result_flags {
	PROTO_F_TIMED_OUT = 1,
	PROTO_F_TRUNCATED = 2,
	PROTO_F_SESSION_RESET = 4,
	/* Sessions alive after the run (also in RESEEDED), one bit per kind. */
	PROTO_F_SESSION_SH = 1 << 8,
	PROTO_F_SESSION_PYTHON = 1 << 9,
};

struct proto_frame {
	uint8_t type;
	const uint8_t *payload;  /* points into the parsed buffer */
	size_t len;
};

/* Parse one frame from buf[0..len).  Returns the bytes consumed (> 0),
 * 0 if more bytes are needed, or -EPROTO for a malformed frame. */
long proto_parse(const uint8_t *buf, size_t len, struct proto_frame *f);

/* Deadlines are in now_ms() terms (backend/util/clock.h); < 0: none.  The
 * host gives one to every read and write, so that a guest that stops
 * reading or writing its port cannot hold a host thread. */

/* Write one frame (header + payload) to fd, retrying short writes and EINTR.
 * Returns 0 or -errno. */
int proto_write(int fd, uint8_t type, const void *payload, size_t len, double deadline);

/* Same, with the payload gathered from iov[0..iovcnt) (at most
 * PROTO_IOV_MAX entries), so that large replies need no extra copy.  On a
 * non-blocking fd it waits for POLLOUT until deadline (-ETIMEDOUT) and
 * returns -EPIPE once the peer has hung up; a blocking fd is waited on by
 * the kernel, with no deadline.  After an error part of the frame may
 * have gone out: the stream is out of step.  Returns 0 or -errno. */
#define PROTO_IOV_MAX 8
int proto_writev(int fd, uint8_t type, const struct iovec *iov, int iovcnt, double deadline);

/* The largest payload a reader takes for a frame of this type; 0: it
 * takes none of that type. */
typedef uint32_t (*proto_limit_fn)(uint8_t type, const void *arg);

/* Read exactly one frame from fd into a malloc'd buffer (*buf, freed by
 * the caller); f->payload points into it.  A frame whose type limit(type,
 * arg) refuses or whose length is above it is -EPROTO before anything is
 * allocated for it (limit NULL: PROTO_FRAME_MAX for any type).  Returns 0,
 * -ETIMEDOUT, -EPIPE on EOF, -EPROTO or -errno.  After -ETIMEDOUT or
 * -EPROTO part of a frame may have been consumed: the stream is out of
 * step and the caller should reset the connection. */
int proto_read(int fd, struct proto_frame *f, uint8_t **buf, double deadline, proto_limit_fn limit,
	       const void *arg);

/* Big-endian helpers for building and reading payloads. */
void proto_put_u32(uint8_t *p, uint32_t v);
void proto_put_u64(uint8_t *p, uint64_t v);
uint32_t proto_get_u32(const uint8_t *p);
uint64_t proto_get_u64(const uint8_t *p);

#endif
