/* test_strbuf.c: the shared growable buffer keeps its invariants (NUL
 * after len, NULL exactly when nothing is allocated) through every call,
 * and a failed growth changes nothing. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/util/strbuf.h"

static void invariants(const struct strbuf *sb)
{
	if (!sb->alloc) {
		assert_null(sb->buf);
		assert_int_equal(sb->len, 0);
		return;
	}
	assert_non_null(sb->buf);
	assert_true(sb->len < sb->alloc);
	assert_int_equal(sb->buf[sb->len], '\0');
}

static void test_add_and_addf(void **state)
{
	struct strbuf sb = STRBUF_INIT;

	(void)state;
	invariants(&sb);
	assert_int_equal(strbuf_addstr(&sb, "run "), 0);
	assert_int_equal(strbuf_addf(&sb, "%d %s", 42, "x"), 0);
	invariants(&sb);
	assert_string_equal(sb.buf, "run 42 x");
	assert_int_equal(sb.len, 8);
	/* Binary data with NULs keeps its length. */
	assert_int_equal(strbuf_add(&sb, "\0z", 2), 0);
	assert_int_equal(sb.len, 10);
	assert_memory_equal(sb.buf + 8, "\0z", 2);
	invariants(&sb);
	strbuf_release(&sb);
	invariants(&sb);
}

/* Growth across many doublings, and a long formatted string (the text
 * that morph's old helper cut at 255 characters). */
static void test_grows(void **state)
{
	struct strbuf sb = STRBUF_INIT;
	char big[1000];

	(void)state;
	for (int i = 0; i < 100000; i++)
		assert_int_equal(strbuf_add(&sb, "ab", 2), 0);
	assert_int_equal(sb.len, 200000);
	assert_int_equal(sb.buf[199999], 'b');
	invariants(&sb);
	strbuf_reset(&sb);
	memset(big, 'q', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(strbuf_addf(&sb, "<%s>", big), 0);
	assert_int_equal(sb.len, sizeof(big) + 1);
	assert_int_equal(sb.buf[sb.len - 1], '>');
	invariants(&sb);
	strbuf_release(&sb);
}

static void test_overflow_changes_nothing(void **state)
{
	struct strbuf sb = STRBUF_INIT;

	(void)state;
	assert_int_equal(strbuf_addstr(&sb, "keep"), 0);
	assert_int_equal(strbuf_grow(&sb, SIZE_MAX - 2), -ENOMEM);
	assert_string_equal(sb.buf, "keep");
	invariants(&sb);
	strbuf_release(&sb);
}

/* The line-consumer pattern: read into the room grow made, then remove
 * what was used from the front. */
static void test_avail_setlen_remove(void **state)
{
	struct strbuf sb = STRBUF_INIT;

	(void)state;
	assert_int_equal(strbuf_avail(&sb), 0);
	assert_int_equal(strbuf_grow(&sb, 16), 0);
	assert_true(strbuf_avail(&sb) >= 16);
	memcpy(sb.buf, "one\ntwo\n", 8);
	strbuf_setlen(&sb, 8);
	invariants(&sb);
	strbuf_remove(&sb, 0, 4);
	assert_string_equal(sb.buf, "two\n");
	strbuf_remove(&sb, 0, 0);
	assert_string_equal(sb.buf, "two\n");
	strbuf_remove(&sb, 1, 2);
	assert_string_equal(sb.buf, "t\n");
	invariants(&sb);
	strbuf_release(&sb);
}

static void test_detach_and_attach(void **state)
{
	struct strbuf sb = STRBUF_INIT;
	size_t len = 99;
	char *p;

	(void)state;
	/* An empty buffer still detaches as a string. */
	p = strbuf_detach(&sb, &len);
	assert_non_null(p);
	assert_string_equal(p, "");
	assert_int_equal(len, 0);
	free(p);
	assert_int_equal(strbuf_addstr(&sb, "hello"), 0);
	p = strbuf_detach(&sb, &len);
	assert_string_equal(p, "hello");
	assert_int_equal(len, 5);
	invariants(&sb);
	/* Attach takes the memory over; truncating by setlen keeps the NUL. */
	strbuf_attach(&sb, p, 5, 6);
	strbuf_setlen(&sb, 2);
	assert_string_equal(sb.buf, "he");
	assert_int_equal(strbuf_addstr(&sb, "y"), 0);
	assert_string_equal(sb.buf, "hey");
	invariants(&sb);
	strbuf_release(&sb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_and_addf),
		cmocka_unit_test(test_grows),
		cmocka_unit_test(test_overflow_changes_nothing),
		cmocka_unit_test(test_avail_setlen_remove),
		cmocka_unit_test(test_detach_and_attach),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
