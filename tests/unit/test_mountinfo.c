/* test_mountinfo.c: finding a mount point in /proc/self/mountinfo text
 * (escapes, optional fields, the topmost of stacked mounts) and the XFS
 * superblock magic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backend/vm/mountinfo.h"

static const char sample[] =
	"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
	"60 22 0:52 / /tmp/st/vm/ram rw,relatime shared:30 - tmpfs tmpfs rw\n"
	"61 60 7:1 / /tmp/st/vm/ram rw,relatime shared:31 - xfs /dev/loop1 rw,discard\n"
	"62 22 7:2 / /tmp/with\\040space/ram rw - xfs /dev/loop2 rw\n"
	"63 22 0:60 / /tmp/fuse rw,nosuid master:4 propagate_from:2 - fuse.worldfs worldfs rw\n"
	"64 22 7:3 / /tmp/no-newline rw - xfs /dev/loop3 rw";

static void test_find_topmost(void **state)
{
	char src[64], type[64];

	(void)state;
	assert_true(mountinfo_find(sample, "/tmp/st/vm/ram", src, type, sizeof(src)));
	assert_string_equal(src, "/dev/loop1");
	assert_string_equal(type, "xfs");
}

static void test_find_root_and_optional_fields(void **state)
{
	char src[64], type[64];

	(void)state;
	assert_true(mountinfo_find(sample, "/", src, type, sizeof(src)));
	assert_string_equal(src, "/dev/vda");
	assert_string_equal(type, "ext4");
	assert_true(mountinfo_find(sample, "/tmp/fuse", src, type, sizeof(src)));
	assert_string_equal(src, "worldfs");
	assert_string_equal(type, "fuse.worldfs");
}

/* A mount's device, for its /sys/class/bdi entry: the topmost one's. */
static void test_devno(void **state)
{
	char dev[16];

	(void)state;
	assert_true(mountinfo_devno(sample, "/tmp/fuse", dev, sizeof(dev)));
	assert_string_equal(dev, "0:60");
	assert_true(mountinfo_devno(sample, "/tmp/st/vm/ram", dev, sizeof(dev)));
	assert_string_equal(dev, "7:1");
	assert_true(mountinfo_devno(sample, "/tmp/no-newline", dev, sizeof(dev)));
	assert_string_equal(dev, "7:3");
	assert_false(mountinfo_devno(sample, "/tmp", dev, sizeof(dev)));
}

static void test_find_escaped(void **state)
{
	char src[64];

	(void)state;
	assert_true(mountinfo_find(sample, "/tmp/with space/ram", src, NULL, sizeof(src)));
	assert_string_equal(src, "/dev/loop2");
	assert_false(mountinfo_find(sample, "/tmp/with\\040space/ram", NULL, NULL, 0));
}

static void test_not_found(void **state)
{
	(void)state;
	assert_false(mountinfo_find(sample, "/tmp/st/vm", NULL, NULL, 0));
	assert_false(mountinfo_find(sample, "/tmp/st/vm/ram/", NULL, NULL, 0));
	assert_false(mountinfo_find("", "/", NULL, NULL, 0));
	assert_false(mountinfo_find("garbage without fields\n\n", "/", NULL, NULL, 0));
}

static void test_last_line_without_newline(void **state)
{
	char src[8];

	(void)state;
	assert_true(mountinfo_find(sample, "/tmp/no-newline", src, NULL, sizeof(src)));
	assert_string_equal(src, "/dev/lo");  /* cut to the buffer */
}

static void test_xfs_magic(void **state)
{
	(void)state;
	assert_true(xfs_magic("XFSB\0\0\x10\0", 8));
	assert_false(xfs_magic("XFS", 3));
	assert_false(xfs_magic("\x53\xef\0\0", 4));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find_topmost),
		cmocka_unit_test(test_devno),
		cmocka_unit_test(test_find_root_and_optional_fields),
		cmocka_unit_test(test_find_escaped),
		cmocka_unit_test(test_not_found),
		cmocka_unit_test(test_last_line_without_newline),
		cmocka_unit_test(test_xfs_magic),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
