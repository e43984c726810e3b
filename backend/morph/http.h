/* http.h: the HTTP face of the morph backend: one JSON request to the Morph
 * Cloud API with the bearer key, bounded time-outs, retries with capped
 * exponential back-off, and the one table from HTTP status to errno. */
#ifndef WORLDFS_MORPH_HTTP_H
#define WORLDFS_MORPH_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define MORPH_ATTEMPTS 5                 /* tries of one request, the first included */
#define MORPH_BACKOFF_BASE_MS 250        /* wait before the first retry; doubles after */
#define MORPH_BACKOFF_CAP_MS 8000        /* longest wait between two tries */
#define MORPH_RETRY_AFTER_CAP_MS 30000   /* longest Retry-After honoured */
#define MORPH_CONNECT_TIMEOUT_MS 10000
#define MORPH_REQUEST_TIMEOUT_MS 60000   /* any call but exec */
#define MORPH_BODY_MAX (256u << 20)      /* largest response body accepted */

struct morph_http;

struct morph_call {
	const char *method;   /* GET, POST, DELETE */
	const char *path;     /* below the base URL, with its query: "/instance/ID/exec" */
	json_t *body;         /* request body, or NULL (sent as no body) */
	long timeout_ms;      /* whole request; 0: MORPH_REQUEST_TIMEOUT_MS */
	/* The request may be sent again after a failure that leaves unknown
	 * whether it was done (a time-out, a dropped connection, a reply
	 * that does not parse).  Requests that create something without a
	 * key that makes a repeat harmless set this false. */
	bool idempotent;
	bool quiet_404;       /* a 404 is an expected answer: do not log it */
};

/* Make a client for base_url (http:// or https://) with the API key.
 * The key is kept only in the Authorization header text. */
int morph_http_new(struct morph_http **out, const char *base_url, const char *api_key,
		   char *err, size_t errlen);
void morph_http_free(struct morph_http *h);

/* Send one call, retrying as the table says.  0 with *reply (a JSON value,
 * the caller's to json_decref; json null for an empty body) on a 2xx, else
 * -errno: from the status table for an HTTP error, -EIO for a failure of
 * the transport or a reply that is not JSON.  Failures and retries are
 * logged; the key never is. */
int morph_http_call(struct morph_http *h, const struct morph_call *c, json_t **reply);

/* ---- pure parts (unit tested) ---- */

/* errno for an HTTP status >= 300, and whether the status is worth a retry
 * (429, 5xx: the service says it did nothing, or is overloaded). */
int morph_status_errno(long status, bool *retry);

/* How long to wait before try number attempt+1 (attempt 0: after the first
 * failure); retry_after_ms >= 0 is what the service asked for. */
long morph_backoff_ms(unsigned attempt, long retry_after_ms);

/* A Retry-After header value (delta-seconds or an HTTP date) in ms from
 * now, capped at MORPH_RETRY_AFTER_CAP_MS; -1 if it does not parse. */
long morph_retry_after_ms(const char *value, time_t now);

/* "worldfs: morph: ..." on stderr. */
void morph_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
