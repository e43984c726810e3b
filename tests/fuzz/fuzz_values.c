/* fuzz_values.c: libFuzzer target for the one-value files' grammar
 * (fs/values.c): every parser gets the whole input as a write(2) would
 * bring it, and each answer is checked against a plain restatement of the
 * grammar in values.h, and by printing what was parsed and parsing it
 * again.  name_is_reserved is node.c's own (linked from worldfs_core). */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "fs/values.h"
#include "tests/fuzz/fuzz.h"

/* The value without its one optional trailing newline. */
static size_t strip_newline(const char *buf, size_t len)
{
	return len > 0 && buf[len - 1] == '\n' ? len - 1 : len;
}

static bool all_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return n > 0;
}

/* values.h: 1-64 of [A-Za-z0-9._-], no leading '.', not reserved. */
static bool name_ok(const char *s, size_t n)
{
	if (n == 0 || n > NAME_MAX_LEN || s[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return !name_is_reserved(s);
}

static void trit(const char *buf, size_t len)
{
	size_t n = strip_newline(buf, len);
	bool want = (n == 1 && (buf[0] == '0' || buf[0] == '1')) ||
		    (n == 2 && (memcmp(buf, "+1", 2) == 0 || memcmp(buf, "-1", 2) == 0));
	int t = 7;

	if (trit_parse(buf, len, &t) == 0) {
		CHECK(want);
		CHECK(t == (buf[0] == '-' ? -1 : buf[n - 1] - '0'));
	} else {
		CHECK(!want);
		CHECK(t == 7);  /* untouched on error */
	}
}

/* A probability printed by prob_format parses back to itself. */
static void prob_round_trip(int64_t p)
{
	char text[32];
	int64_t back = -1;

	prob_format(p, text, sizeof(text));
	CHECK(strlen(text) < 16);  /* values.h: out >= 16 bytes is enough */
	CHECK(prob_parse(text, strlen(text), &back) == 0);
	CHECK(back == p);
}

static void prob(const char *buf, size_t len)
{
	size_t n = strip_newline(buf, len), dots = 0;
	int64_t p = -7;

	if (prob_parse(buf, len, &p) < 0) {
		CHECK(p == -7);
		return;
	}
	CHECK(p >= 0 && p <= PROB_ONE);
	for (size_t i = 0; i < n; i++) {
		CHECK((buf[i] >= '0' && buf[i] <= '9') || buf[i] == '.');
		dots += buf[i] == '.';
	}
	CHECK(dots <= 1);
	prob_round_trip(p);
}

static void amount(const char *buf, size_t len)
{
	size_t n = strip_newline(buf, len);
	const char *d = buf;
	bool want;
	int64_t v = -7;
	char text[32];

	if (n > 1 && d[0] == '+')
		d++, n--;
	want = all_digits(d, n) && !memchr(buf, '\0', len);
	if (want) {
		/* Fits in int64_t: at most 19 digits after the leading zeros,
		 * and not above INT64_MAX. */
		while (n > 1 && d[0] == '0')
			d++, n--;
		want = n < 19 || (n == 19 && memcmp(d, "9223372036854775807", 19) <= 0);
	}
	if (amount_parse(buf, len, &v) < 0) {
		CHECK(!want);
		CHECK(v == -7);
		return;
	}
	CHECK(want);
	CHECK(v >= 0);
	/* The digits (without '+' and leading zeros) are v's decimal. */
	snprintf(text, sizeof(text), "%lld", (long long)v);
	CHECK(strlen(text) == n && memcmp(text, d, n) == 0);
}

static void name(const char *buf, size_t len)
{
	size_t n = strip_newline(buf, len);
	char out[NAME_MAX_LEN + 1], copy[NAME_MAX_LEN + 1];
	bool want = false;

	if (n <= NAME_MAX_LEN && !memchr(buf, '\0', n)) {
		memcpy(copy, buf, n);
		copy[n] = '\0';
		want = name_ok(copy, n);
	}
	memset(out, 'x', sizeof(out));
	if (name_parse(buf, len, out) < 0) {
		CHECK(!want);
		for (size_t i = 0; i < sizeof(out); i++)
			CHECK(out[i] == 'x');
		return;
	}
	CHECK(want);
	CHECK(strlen(out) == n && memcmp(out, buf, n) == 0);
	CHECK(name_check(out) == 0);
}

/* name_check on the input as a C string (up to its first NUL). */
static void check_name(const char *buf, size_t len)
{
	char *s = malloc(len + 1);

	if (!s)
		return;
	memcpy(s, buf, len);
	s[len] = '\0';
	CHECK((name_check(s) == 0) == name_ok(s, strlen(s)));
	CHECK(name_check(s) == 0 || name_check(s) == -EINVAL);
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;

	trit(buf, size);
	prob(buf, size);
	amount(buf, size);
	name(buf, size);
	check_name(buf, size);
	/* Any probability, spelled out by prob_format, parses back. */
	if (size >= 8) {
		uint64_t raw;
		memcpy(&raw, data, 8);
		prob_round_trip((int64_t)(raw % (PROB_ONE + 1)));
	}
	return 0;
}
