/* qmp.h: a small client for QEMU's machine protocol (QMP): JSON objects,
 * one per line, over a unix socket.  The line splitting and message
 * classification are pure functions so they can be tested without QEMU. */
#ifndef WORLDFS_QMP_H
#define WORLDFS_QMP_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "backend/util/strbuf.h"

#define QMP_LINE_MAX (16u << 20)  /* query-qmp-schema is ~200 KB; leave room */
#define QMP_EVENTS_KEPT 8

/* --- pure parts ---------------------------------------------------------- */

/* Bytes read from the socket, cut into lines.  Zero-initialize before use. */
struct qmp_lines {
	struct strbuf text;
	size_t start;  /* first byte of text not yet returned as a line */
};

/* Append n bytes.  -ENOMEM, or -E2BIG when a line grows past QMP_LINE_MAX
 * (the buffer is then emptied so the stream can resynchronize). */
int qmp_lines_feed(struct qmp_lines *l, const void *data, size_t n);

/* The next complete line, NUL-terminated and without its "\n" or "\r\n",
 * or NULL if none is complete yet.  Valid until the next feed/release. */
char *qmp_lines_next(struct qmp_lines *l, size_t *len);

void qmp_lines_release(struct qmp_lines *l);

enum qmp_kind {
	QMP_GREETING,  /* {"QMP": {...}} */
	QMP_RETURN,    /* {"return": ..., "id": ...} */
	QMP_ERROR,     /* {"error": {"class": ..., "desc": ...}, "id": ...} */
	QMP_EVENT,     /* {"event": NAME, "data": ..., "timestamp": ...} */
};

/* One parsed message.  Everything but root is borrowed from root. */
struct qmp_msg {
	enum qmp_kind kind;
	json_t *root;
	json_t *ret;            /* QMP_RETURN */
	const char *event;      /* QMP_EVENT */
	const char *err_class;  /* QMP_ERROR; "" when absent */
	const char *err_desc;   /* QMP_ERROR; "" when absent */
	bool has_id;
	json_int_t id;          /* only integer ids are recognized (we send those) */
};

/* Parse and classify one line.  0, or -EPROTO for anything that is not a
 * QMP message (not JSON, not an object, no known key); m is then empty. */
int qmp_msg_parse(const char *line, size_t len, struct qmp_msg *m);
void qmp_msg_release(struct qmp_msg *m);

/* --- connection ---------------------------------------------------------- */

struct qmp;

/* Connect to the socket at path, retrying while it does not exist or
 * refuses (QEMU creates it asynchronously) until timeout_ms, then read the
 * greeting and negotiate with qmp_capabilities.  0 or -errno (-ETIMEDOUT). */
int qmp_open(struct qmp **out, const char *path, int timeout_ms);

/* The same over an already connected socket; fd is owned by *out on
 * success and closed on failure. */
int qmp_open_fd(struct qmp **out, int fd, int timeout_ms);

void qmp_close(struct qmp *q);

/* Run one command.  args (may be NULL) is consumed, whatever the outcome.
 * On success *ret (if ret != NULL) holds a new reference to the "return"
 * value.  Asynchronous events and stale replies to earlier, timed-out
 * commands are skipped (events are remembered, see qmp_last_event).
 * Returns 0, -EREMOTEIO when QEMU answered with an error (class and desc
 * in qmp_error_class/qmp_error_desc), -ETIMEDOUT, -EPIPE when QEMU closed
 * the connection, -EPROTO for a line that is not QMP, or -errno. */
int qmp_command(struct qmp *q, const char *name, json_t *args, json_t **ret, int timeout_ms);

/* Like qmp_command("getfd", {"fdname": fdname}), passing fd along with the
 * command (SCM_RIGHTS), so QEMU can use it as "fd:FDNAME" (migration). */
int qmp_send_fd(struct qmp *q, const char *fdname, int fd, int timeout_ms);

/* The error of the last command that failed with -EREMOTEIO; "" otherwise. */
const char *qmp_error_class(const struct qmp *q);
const char *qmp_error_desc(const struct qmp *q);

/* The most recent event named name seen since open (or since
 * qmp_forget_events), borrowed; NULL if none.  Only the last
 * QMP_EVENTS_KEPT events are kept. */
const json_t *qmp_last_event(const struct qmp *q, const char *name);
void qmp_forget_events(struct qmp *q);

#endif
