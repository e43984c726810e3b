/* fuzz_session.c: libFuzzer target for the host's side of the morph
 * backend's sh session (backend/morph/session.c, functions.c).  The first
 * byte picks what the rest goes to:
 *   0: session_result, with the reply of a run (exit code, stdout, stderr
 *      as Morph's exec returns them) after a few bytes of settings: the
 *      status is 0..255, each stream is what came, cut at output_max,
 *      plus the notes only, and session_ready agrees with its definition;
 *   1: session_find_functions on code, on a small stack: the definitions
 *      found lie inside the code, in order and apart, each "NAME ( ) {...}"
 *      or "(...)", and the scan's depth does not grow with the code;
 *   2: session_encode and session_chunk: the encoding is one JSON can
 *      carry (UTF-8, no NUL) and decodes as printf %b does to the code,
 *      whole and cut into chunks. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <jansson.h>

#include "backend/backend.h"
#include "backend/morph/session.h"
#include "tests/fuzz/fuzz.h"

#define NONCE "00112233445566ff"
#define READY "worldfs-ready"
#define TRUNCATED "[worldfs: output truncated at "
#define NOTES_MAX 256  /* the notes session_result may add, with room */
#define SCAN_STACK (64 << 10)

/* A malloc'd copy with a NUL after it, as the exec reply's strings are. */
static char *copy(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);

	if (s) {
		memcpy(s, p, n);
		s[n] = '\0';
	}
	return s;
}

static bool ready(const char *s, size_t n)
{
	return n >= strlen(READY) && memcmp(s, READY, strlen(READY)) == 0;
}

static void result(struct fuzz_in *in)
{
	int exit_code = (int)(int32_t)fuzz_take(in, 4);
	size_t output_max = (size_t)fuzz_take(in, 2);
	unsigned timeout_s = (unsigned)fuzz_take(in, 4);
	size_t out_len = in->left ? (size_t)fuzz_take(in, 2) % (in->left + 1) : 0;
	size_t err_len = in->left - out_len;
	char *out = copy(in->p, out_len), *err = copy(in->p + out_len, err_len);
	const char *err_in = (const char *)in->p + out_len;  /* the input's err, kept */
	const char *nl = memchr(err_in, '\n', err_len);
	struct run_result res;
	size_t keep;
	int r;

	if (!out || !err) {
		free(out);
		free(err);
		return;
	}
	CHECK(session_ready(out, out_len) == ready(out, out_len));
	CHECK(session_ready(err, err_len) == ready(err, err_len));
	r = session_result(NONCE, exit_code, out, out_len, err, err_len, output_max, timeout_s, &res);
	if (r < 0) {
		CHECK(r == -ENOMEM);
		return;
	}
	CHECK(res.status >= 0 && res.status <= 255);
	CHECK(!res.timed_out || res.status == 124);
	/* stdout: what came, cut at output_max, and a note if cut. */
	CHECK(res.out != NULL && res.out[res.out_len] == '\0');
	keep = out_len < output_max ? out_len : output_max;
	CHECK(res.out_len >= keep && res.out_len <= output_max + NOTES_MAX);
	CHECK(memcmp(res.out, in->p, keep) == 0);
	CHECK(out_len <= output_max || res.truncated);
	/* stderr: what came, or what followed the header line, cut likewise,
	 * then the notes. */
	CHECK(res.err != NULL && res.err[res.err_len] == '\0');
	CHECK(res.err_len <= output_max + NOTES_MAX);
	if (!res.truncated && !res.timed_out && !res.session_reset) {
		/* No note was added: the stream itself. */
		bool whole = res.err_len <= err_len && memcmp(res.err, err_in, res.err_len) == 0;
		bool after = nl && res.err_len <= err_len - (size_t)(nl + 1 - err_in) &&
			     memcmp(res.err, nl + 1, res.err_len) == 0;
		CHECK(whole || after);
	}
	if (res.truncated)
		CHECK(memmem(res.out, res.out_len, TRUNCATED, strlen(TRUNCATED)) ||
		      memmem(res.err, res.err_len, TRUNCATED, strlen(TRUNCATED)));
	run_result_release(&res);
}

static bool is_name(const char *s, size_t n)
{
	if (n == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '_'))
			return false;
	return true;
}

static void *functions(void *arg)
{
	struct fuzz_in *in = arg;
	size_t max = (size_t)fuzz_take(in, 1) % (SESSION_FN_MAX + 1);
	const char *code = (const char *)in->p;
	size_t len = in->left, n, all, end = 0;
	struct session_fn fns[SESSION_FN_MAX], every[SESSION_FN_MAX];

	n = session_find_functions(code, len, fns, max);
	CHECK(n <= max);
	for (size_t i = 0; i < n; i++) {
		const struct session_fn *f = &fns[i];
		size_t j = f->name_off + f->name_len;

		CHECK(f->off <= len && f->len <= len - f->off);
		CHECK(f->off >= end);  /* in order, apart */
		end = f->off + f->len;
		CHECK(f->name_off == f->off && f->name_len < f->len);
		CHECK(is_name(code + f->name_off, f->name_len));
		while (j < end && (code[j] == ' ' || code[j] == '\t'))
			j++;
		CHECK(j < end && code[j] == '(');
		CHECK(code[end - 1] == '}' || code[end - 1] == ')');
	}
	/* A smaller max finds the first ones of a larger one. */
	all = session_find_functions(code, len, every, SESSION_FN_MAX);
	CHECK(all >= n && memcmp(every, fns, n * sizeof(fns[0])) == 0);
	return NULL;
}

/* The scan on a small stack: a recursion that grows with the code (the
 * host scans up to 16 MiB of it on a FUSE thread) overflows it within
 * libFuzzer's input sizes, and ASan reports the overflow. */
static void functions_small_stack(struct fuzz_in *in)
{
	pthread_attr_t attr;
	pthread_t t;

	CHECK(pthread_attr_init(&attr) == 0);
	CHECK(pthread_attr_setstacksize(&attr, SCAN_STACK) == 0);
	CHECK(pthread_create(&t, &attr, functions, in) == 0);
	CHECK(pthread_join(t, NULL) == 0);
	pthread_attr_destroy(&attr);
}

/* Append to out what printf %b makes of enc[0..len), as session.h's
 * encoding uses it: "\\\\" and "\\0ooo"; nothing else may follow a
 * backslash.  Returns the new length of out. */
static size_t decode(const char *enc, size_t len, uint8_t *out, size_t at)
{
	for (size_t i = 0; i < len;) {
		if (enc[i] != '\\') {
			out[at++] = (uint8_t)enc[i++];
			continue;
		}
		CHECK(i + 1 < len);
		if (enc[i + 1] == '\\') {
			out[at++] = '\\';
			i += 2;
			continue;
		}
		CHECK(enc[i + 1] == '0' && i + 5 <= len);
		unsigned v = 0;
		for (size_t k = i + 2; k < i + 5; k++) {
			CHECK(enc[k] >= '0' && enc[k] <= '7');
			v = v * 8 + (unsigned)(enc[k] - '0');
		}
		CHECK(v <= 255);
		out[at++] = (uint8_t)v;
		i += 5;
	}
	return at;
}

/* What JSON can carry in a string: UTF-8 without NUL. */
static bool json_safe(const char *s, size_t n)
{
	json_t *j;

	if (memchr(s, '\0', n))
		return false;
	j = json_stringn(s, n);
	json_decref(j);
	return j != NULL;
}

static void encoding(struct fuzz_in *in)
{
	size_t max = (size_t)fuzz_take(in, 1);
	const char *code = (const char *)in->p;
	size_t len = in->left, enc_len, at = 0, pos = 0;
	char *enc = session_encode(code, len, &enc_len);
	uint8_t *back;

	CHECK(session_chunk(code, len, max) <= max && session_chunk(code, len, max) <= len);
	if (!enc)
		return;
	CHECK(enc[enc_len] == '\0' && enc_len <= 5 * len);
	CHECK(json_safe(enc, enc_len));
	back = malloc(len + 1);
	if (!back) {
		free(enc);
		return;
	}
	CHECK(decode(enc, enc_len, back, 0) == len && memcmp(back, code, len) == 0);
	/* In chunks of at most max bytes, each one whole escapes and
	 * characters (an escape is 5 bytes at most). */
	while (pos < enc_len) {
		size_t c = session_chunk(enc + pos, enc_len - pos, max);

		CHECK(c <= max && c <= enc_len - pos);
		if (c == 0) {
			CHECK(max < 5);
			break;
		}
		CHECK(json_safe(enc + pos, c));
		at = decode(enc + pos, c, back, at);
		pos += c;
	}
	if (pos == enc_len)
		CHECK(at == len && memcmp(back, code, len) == 0);
	free(back);
	free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };

	switch (fuzz_take(&in, 1) % 3) {
	case 0:
		result(&in);
		break;
	case 1:
		functions_small_stack(&in);
		break;
	default:
		encoding(&in);
		break;
	}
	return 0;
}
