/* strbuf.h: the one growable byte buffer, for the host and the agent.
 *
 * git's strbuf.h is the model.  Invariants, kept by every function here:
 *   - len bytes of buf are in use and alloc bytes are allocated;
 *   - buf is NULL exactly when alloc is 0 (a fresh or released buffer);
 *   - otherwise len < alloc and buf[len] == '\0', so buf is always a C
 *     string of what was added (binary data may hold NULs of its own).
 * A buffer starts as STRBUF_INIT (all zero).  Functions that allocate
 * return 0 or -ENOMEM and leave the buffer unchanged when they fail; a
 * size that would overflow size_t is -ENOMEM too.  No function limits the
 * size: a caller that reads from someone untrusted checks len itself. */
#ifndef WORLDFS_STRBUF_H
#define WORLDFS_STRBUF_H

#include <stddef.h>

struct strbuf {
	char *buf;
	size_t len, alloc;
};

#define STRBUF_INIT { 0 }

/* Room for extra more bytes (plus the NUL) without another allocation. */
int strbuf_grow(struct strbuf *sb, size_t extra);

/* Bytes that can be written at buf + len before the next strbuf_grow. */
static inline size_t strbuf_avail(const struct strbuf *sb)
{
	return sb->alloc ? sb->alloc - sb->len - 1 : 0;
}

/* After writing into the room strbuf_grow made: len becomes len (which is
 * at most len + strbuf_avail), and the NUL follows it. */
void strbuf_setlen(struct strbuf *sb, size_t len);

int strbuf_add(struct strbuf *sb, const void *data, size_t len);
int strbuf_addstr(struct strbuf *sb, const char *s);
int strbuf_addf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Take over buf, malloc'ed with alloc bytes of which the first len (<
 * alloc) are in use; what sb held is freed.  buf[len] becomes the NUL. */
void strbuf_attach(struct strbuf *sb, char *buf, size_t len, size_t alloc);

/* Drop len bytes at pos (pos + len <= sb->len): a consumed line, say. */
void strbuf_remove(struct strbuf *sb, size_t pos, size_t len);

/* Empty, keeping the memory for what comes next. */
void strbuf_reset(struct strbuf *sb);

/* The contents as a malloc'ed, NUL-terminated string the caller frees,
 * its length in *len when len is not NULL; the buffer is left empty (as
 * STRBUF_INIT).  NULL only when an empty buffer cannot get its one byte. */
char *strbuf_detach(struct strbuf *sb, size_t *len);

/* Free the memory; the buffer is STRBUF_INIT again. */
void strbuf_release(struct strbuf *sb);

#endif
