/* test_values.c: the grammar of names and one-value files. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "fs/values.h"

static void names(void **state)
{
	(void)state;
	assert_int_equal(name_check("universe"), 0);
	assert_int_equal(name_check("a.b_c-9"), 0);
	assert_int_equal(name_check(""), -EINVAL);
	assert_int_equal(name_check(".hidden"), -EINVAL);
	assert_int_equal(name_check("a b"), -EINVAL);
	assert_int_equal(name_check("a/b"), -EINVAL);
	assert_int_equal(name_check("\xc3\xa9"), -EINVAL);
	assert_int_equal(name_check("exec"), -EINVAL);
	assert_int_equal(name_check("snapshot"), -EINVAL);
	char long_name[66];
	memset(long_name, 'x', 65);
	long_name[65] = '\0';
	assert_int_equal(name_check(long_name), -EINVAL);
	long_name[64] = '\0';
	assert_int_equal(name_check(long_name), 0);
}

static void trits(void **state)
{
	int t = 7;
	(void)state;
	assert_int_equal(trit_parse("-1\n", 3, &t), 0);
	assert_int_equal(t, -1);
	assert_int_equal(trit_parse("0", 1, &t), 0);
	assert_int_equal(t, 0);
	assert_int_equal(trit_parse("+1", 2, &t), 0);
	assert_int_equal(t, 1);
	assert_int_equal(trit_parse("2", 1, &t), -EINVAL);
	assert_int_equal(trit_parse("1\n\n", 3, &t), -EINVAL);
	assert_int_equal(trit_parse("", 0, &t), -EINVAL);
	assert_int_equal(t, 1);  /* untouched on error */
	assert_int_equal(trit_for_child(0), -1);
	assert_int_equal(trit_for_child(1), 0);
	assert_int_equal(trit_for_child(2), 1);
	assert_int_equal(trit_for_child(3), -1);
	int three[] = { -1, 0, 1 }, two[] = { 1, 1 };
	assert_int_equal(gf3_sum(three, 3), 0);
	assert_int_equal(gf3_sum(two, 2), -1);
}

static void probs(void **state)
{
	int64_t p = -1;
	char out[32];
	(void)state;
	assert_int_equal(prob_parse("0.45\n", 5, &p), 0);
	assert_int_equal(p, 450000000);
	assert_int_equal(prob_parse("1", 1, &p), 0);
	assert_int_equal(p, PROB_ONE);
	assert_int_equal(prob_parse(".5", 2, &p), 0);
	assert_int_equal(p, 500000000);
	assert_int_equal(prob_parse("1.0000", 6, &p), 0);
	assert_int_equal(prob_parse("1.5", 3, &p), -EINVAL);
	assert_int_equal(prob_parse("-0.1", 4, &p), -EINVAL);
	assert_int_equal(prob_parse("abc", 3, &p), -EINVAL);
	assert_int_equal(prob_parse(".", 1, &p), -EINVAL);
	assert_int_equal(prob_parse("0.1234567891", 12, &p), -EINVAL);
	assert_int_equal(prob_parse("0.1234567890", 12, &p), 0);
	/* exact: 0.45 + 0.35 + 0.20 is one */
	int64_t a, b, c;
	prob_parse("0.45", 4, &a);
	prob_parse("0.35", 4, &b);
	prob_parse("0.20", 4, &c);
	assert_int_equal(a + b + c, PROB_ONE);
	prob_format(450000000, out, sizeof(out));
	assert_string_equal(out, "0.45");
	prob_format(PROB_ONE, out, sizeof(out));
	assert_string_equal(out, "1");
	prob_format(0, out, sizeof(out));
	assert_string_equal(out, "0");
	prob_format(1, out, sizeof(out));
	assert_string_equal(out, "0.000000001");
}

static void amounts(void **state)
{
	int64_t v = 5;
	char name[NAME_MAX_LEN + 1];
	(void)state;
	assert_int_equal(amount_parse("100\n", 4, &v), 0);
	assert_int_equal(v, 100);
	assert_int_equal(amount_parse("0", 1, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(amount_parse("-3", 2, &v), -EINVAL);
	assert_int_equal(amount_parse("ten", 3, &v), -EINVAL);
	assert_int_equal(amount_parse("9223372036854775807", 19, &v), 0);
	assert_int_equal(amount_parse("9223372036854775808", 19, &v), -EINVAL);
	assert_int_equal(v, INT64_MAX);
	assert_int_equal(name_parse("optimal\n", 8, name), 0);
	assert_string_equal(name, "optimal");
	assert_int_equal(name_parse("a b\n", 4, name), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(names),
		cmocka_unit_test(trits),
		cmocka_unit_test(probs),
		cmocka_unit_test(amounts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
