/* http.c: Morph Cloud API requests over libcurl.  Easy handles are pooled
 * so that calls reuse their connections; calls on different worlds run in
 * parallel, each on a handle of its own. */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/morph/http.h"
#include "backend/util/clock.h"
#include "backend/util/log.h"
#include "backend/util/strbuf.h"

#define POOL_MAX 16

struct morph_http {
	char *base;            /* without a trailing '/' */
	char *key;             /* only to scrub it from texts we log */
	struct curl_slist *headers;
	pthread_mutex_t lock;
	CURL *pool[POOL_MAX];
	size_t npool;
};

/* The one table: what an HTTP status means to a file operation. */
static const struct {
	long lo, hi;
	int err;
	bool retry;
} status_table[] = {
	{ 401, 401, EACCES, false },  /* the key is wrong */
	{ 403, 403, EACCES, false },  /* the key may not do this */
	{ 404, 404, ENOENT, false },  /* no such instance or snapshot */
	{ 409, 409, EBUSY, false },   /* not in a state for this (paused, in use) */
	{ 422, 422, EINVAL, false },  /* the service rejected the request's fields */
	{ 429, 429, EIO, true },      /* too many requests: back off, then try again */
	{ 500, 599, EIO, true },      /* the service failed: try again, then give up */
	{ 300, 599, EIO, false },     /* anything else is a failure we cannot fix */
};

int morph_status_errno(long status, bool *retry)
{
	for (size_t i = 0; i < sizeof(status_table) / sizeof(status_table[0]); i++)
		if (status >= status_table[i].lo && status <= status_table[i].hi) {
			if (retry)
				*retry = status_table[i].retry;
			return -status_table[i].err;
		}
	if (retry)
		*retry = false;
	return -EIO;
}

long morph_backoff_ms(unsigned attempt, long retry_after_ms)
{
	long ms = MORPH_BACKOFF_BASE_MS;

	if (retry_after_ms >= 0)
		return retry_after_ms < MORPH_RETRY_AFTER_CAP_MS ? retry_after_ms : MORPH_RETRY_AFTER_CAP_MS;
	for (unsigned i = 0; i < attempt && ms < MORPH_BACKOFF_CAP_MS; i++)
		ms *= 2;
	return ms < MORPH_BACKOFF_CAP_MS ? ms : MORPH_BACKOFF_CAP_MS;
}

long morph_retry_after_ms(const char *value, time_t now)
{
	const char *p = value;
	long long secs = 0;
	time_t when;

	if (!value)
		return -1;
	while (isspace((unsigned char)*p))
		p++;
	if (isdigit((unsigned char)*p)) {
		for (; isdigit((unsigned char)*p); p++)
			if (secs < MORPH_RETRY_AFTER_CAP_MS)
				secs = secs * 10 + (*p - '0');
		while (isspace((unsigned char)*p))
			p++;
		if (*p)
			return -1;
		secs *= 1000;
		return secs < MORPH_RETRY_AFTER_CAP_MS ? (long)secs : MORPH_RETRY_AFTER_CAP_MS;
	}
	when = curl_getdate(p, NULL);
	if (when == (time_t)-1)
		return -1;
	if (when <= now)
		return 0;
	secs = (long long)(when - now) * 1000;
	return secs < MORPH_RETRY_AFTER_CAP_MS ? (long)secs : MORPH_RETRY_AFTER_CAP_MS;
}

void morph_log(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vline("morph: ", fmt, ap);
	va_end(ap);
}

/* A text from the service, fit for the log: one line, short, and without
 * the key should the service ever echo it. */
static void log_text(const struct morph_http *h, const char *in, size_t len, char *out, size_t outlen)
{
	size_t klen = strlen(h->key), o = 0;

	for (size_t i = 0; i < len && o + 1 < outlen; i++) {
		if (klen >= 4 && len - i >= klen && memcmp(in + i, h->key, klen) == 0) {
			const char *mask = "[key]";
			for (size_t k = 0; mask[k] && o + 1 < outlen; k++)
				out[o++] = mask[k];
			i += klen - 1;
			continue;
		}
		out[o++] = (in[i] == '\n' || in[i] == '\r' || in[i] == '\t') ? ' ' : in[i];
	}
	out[o] = '\0';
	if (o + 1 >= outlen && outlen > 4)
		memcpy(out + outlen - 4, "...", 4);
}

int morph_http_new(struct morph_http **out, const char *base_url, const char *api_key,
		   char *err, size_t errlen)
{
	struct morph_http *h;
	char *auth = NULL;
	size_t n;

	if (strncmp(base_url, "http://", 7) != 0 && strncmp(base_url, "https://", 8) != 0) {
		snprintf(err, errlen, "morph_url=%s: expected an http:// or https:// URL", base_url);
		return -EINVAL;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(err, errlen, "morph: libcurl does not initialize");
		return -EIO;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		goto nomem;
	pthread_mutex_init(&h->lock, NULL);
	h->base = strdup(base_url);
	h->key = strdup(api_key);
	if (!h->base || !h->key || asprintf(&auth, "Authorization: Bearer %s", api_key) < 0) {
		auth = NULL;
		goto nomem_free;
	}
	n = strlen(h->base);
	while (n > 0 && h->base[n - 1] == '/')
		h->base[--n] = '\0';
	const char *fixed[] = { auth, "Content-Type: application/json", "Accept: application/json",
				"Expect:" };
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
		struct curl_slist *l = curl_slist_append(h->headers, fixed[i]);
		if (!l)
			goto nomem_free;
		h->headers = l;
	}
	/* curl_slist_append copied it; wipe ours. */
	memset(auth, 0, strlen(auth));
	free(auth);
	*out = h;
	return 0;

nomem_free:
	if (auth)
		memset(auth, 0, strlen(auth));
	free(auth);
	morph_http_free(h);
	goto out;
nomem:
	curl_global_cleanup();
out:
	snprintf(err, errlen, "morph: %s", strerror(ENOMEM));
	return -ENOMEM;
}

void morph_http_free(struct morph_http *h)
{
	if (!h)
		return;
	for (size_t i = 0; i < h->npool; i++)
		curl_easy_cleanup(h->pool[i]);
	curl_slist_free_all(h->headers);
	if (h->key)
		memset(h->key, 0, strlen(h->key));
	free(h->key);
	free(h->base);
	pthread_mutex_destroy(&h->lock);
	free(h);
	curl_global_cleanup();
}

static CURL *handle_take(struct morph_http *h)
{
	CURL *c = NULL;

	pthread_mutex_lock(&h->lock);
	if (h->npool > 0)
		c = h->pool[--h->npool];
	pthread_mutex_unlock(&h->lock);
	return c ? c : curl_easy_init();
}

static void handle_give(struct morph_http *h, CURL *c)
{
	pthread_mutex_lock(&h->lock);
	if (h->npool < POOL_MAX) {
		h->pool[h->npool++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&h->lock);
	if (c)
		curl_easy_cleanup(c);
}

/* A reply's body, at most MORPH_BODY_MAX bytes. */
struct body {
	struct strbuf text;
	bool too_big;
};

static size_t body_write(char *data, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t add = size * n;

	if (b->text.len + add + 1 > MORPH_BODY_MAX) {
		b->too_big = true;
		return 0;
	}
	return strbuf_add(&b->text, data, add) ? 0 : add;
}

/* One try.  Returns the HTTP status (> 0), or 0 on a transport failure
 * with the cause in why. */
static long try_once(struct morph_http *h, CURL *c, const struct morph_call *call, const char *url,
		     const char *body, struct body *reply, long *retry_after, char *why, size_t whylen)
{
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_header *ra = NULL;
	long status = 0;
	CURLcode rc;

	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h->headers);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  /* many threads: no SIGALRM for DNS time-outs */
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)MORPH_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, call->timeout_ms > 0 ? call->timeout_ms : (long)MORPH_REQUEST_TIMEOUT_MS);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, body_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, reply);
	/* The bearer key goes to the configured host only. */
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_USERAGENT, "worldfs/" WORLDFS_VERSION);
	/* On a reused connection that dies before any answer, libcurl sends
	 * the request again by itself: not for one that must not be repeated. */
	if (!call->idempotent)
		curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
	if (strcmp(call->method, "GET") == 0) {
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	} else {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, call->method);
		if (strcmp(call->method, "POST") == 0 || body) {
			curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
			curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, body ? (long)strlen(body) : 0L);
		}
	}
	rc = curl_easy_perform(c);
	if (rc != CURLE_OK) {
		if (reply->too_big)
			snprintf(why, whylen, "reply larger than %u bytes", MORPH_BODY_MAX);
		else
			snprintf(why, whylen, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
		return 0;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	*retry_after = -1;
	if (curl_easy_header(c, "Retry-After", 0, CURLH_HEADER, -1, &ra) == CURLHE_OK && ra)
		*retry_after = morph_retry_after_ms(ra->value, time(NULL));
	return status;
}

int morph_http_call(struct morph_http *h, const struct morph_call *call, json_t **reply)
{
	char *url = NULL, *body = NULL, why[512], text[240];
	struct body b = { STRBUF_INIT, false };
	CURL *c = NULL;
	int err = -EIO;

	*reply = NULL;
	if (asprintf(&url, "%s%s", h->base, call->path) < 0) {
		url = NULL;
		return -ENOMEM;
	}
	if (call->body && !(body = json_dumps(call->body, JSON_COMPACT))) {
		err = -ENOMEM;
		goto out;
	}
	if (!(c = handle_take(h))) {
		err = -ENOMEM;
		goto out;
	}
	for (unsigned attempt = 0; attempt < MORPH_ATTEMPTS; attempt++) {
		bool last = attempt + 1 == MORPH_ATTEMPTS, retry = false;
		long retry_after = -1, status;
		json_error_t jerr;

		strbuf_reset(&b.text);
		b.too_big = false;
		status = try_once(h, c, call, url, body, &b, &retry_after, why, sizeof(why));
		if (status >= 200 && status < 300) {
			/* Output may hold NUL bytes (\u0000 in the JSON). */
			*reply = b.text.len ? json_loadb(b.text.buf, b.text.len, JSON_ALLOW_NUL, &jerr) : json_null();
			if (*reply) {
				err = 0;
				goto out;
			}
			log_text(h, b.text.buf, b.text.len < 120 ? b.text.len : 120, text, sizeof(text));
			snprintf(why, sizeof(why), "HTTP %ld but the reply is not JSON (%s): %s", status,
				 jerr.text, text);
			err = -EIO;
			retry = call->idempotent;
		} else if (status == 0) {
			err = -EIO;
			retry = call->idempotent && !b.too_big;
		} else {
			err = morph_status_errno(status, &retry);
			log_text(h, b.text.buf ? b.text.buf : "", b.text.len, text, sizeof(text));
			snprintf(why, sizeof(why), "HTTP %ld%s%s", status, text[0] ? ": " : "", text);
			if (status == 404 && call->quiet_404)
				goto out;
		}
		if (!retry || last) {
			if (retry && last)
				morph_log("%s %s: %s; gave up after %d tries", call->method, call->path, why,
					  MORPH_ATTEMPTS);
			else
				morph_log("%s %s: %s", call->method, call->path, why);
			if (retry)
				err = -EIO;
			goto out;
		}
		long wait = morph_backoff_ms(attempt, retry_after);
		morph_log("%s %s: %s; retry %u of %d in %ld ms", call->method, call->path, why,
			  attempt + 1, MORPH_ATTEMPTS - 1, wait);
		sleep_ms(wait);
	}
out:
	if (c)
		handle_give(h, c);
	strbuf_release(&b.text);
	free(body);
	free(url);
	return err;
}
