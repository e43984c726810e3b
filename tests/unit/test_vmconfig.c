/* test_vmconfig.c: a VM's config file, which says how to start a QEMU
 * that can load its saved state: memory, vCPUs, RAM kind, machine and
 * image.  States saved by worldfs 0.1 have no machine or image line and
 * must keep loading into the machine and image they were made with. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/vm/vm.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	strcpy(dir, "/tmp/worldfs-cfg-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	return rm_tree(dir);
}

static void put(const char *text)
{
	assert_int_equal(write_file(dir, "config", text, false), 0);
}

static void round_trip(void **state)
{
	struct vm_config c = { .mem_mib = 2048, .vcpus = 2, .cow = true, .machine = MACHINE_CURRENT,
			       .image = "54b83ec78d1db5ae708ac7d14df212c816bcddc12beec67dd7d2db3c2a04ceca" }, r;
	(void)state;

	assert_int_equal(config_write(dir, &c, true), 0);
	assert_int_equal(config_read(dir, &r), 0);
	assert_int_equal(r.mem_mib, 2048);
	assert_int_equal(r.vcpus, 2);
	assert_true(r.cow);
	assert_int_equal(r.machine, MACHINE_CURRENT);
	assert_string_equal(r.image, c.image);
	c = (struct vm_config){ .mem_mib = 128, .vcpus = 1, .cow = false, .machine = MACHINE_PIT };
	assert_int_equal(config_write(dir, &c, false), 0);
	assert_int_equal(config_read(dir, &r), 0);
	assert_false(r.cow);
	assert_int_equal(r.machine, MACHINE_PIT);
	assert_string_equal(r.image, "");
}

static void older_and_newer(void **state)
{
	struct vm_config c;
	(void)state;

	/* worldfs 0.1 and the first cow states: machine 1, 0.1's image */
	put("mem_mib=128\nvcpus=1\n");
	assert_int_equal(config_read(dir, &c), 0);
	assert_int_equal(c.machine, MACHINE_PIT);
	assert_string_equal(c.image, "");
	put("mem_mib=128\nvcpus=1\nram=file\n");
	assert_int_equal(config_read(dir, &c), 0);
	assert_true(c.cow);
	assert_int_equal(c.machine, MACHINE_PIT);
	/* before images had names: machine 2, no image line */
	put("mem_mib=128\nvcpus=1\nram=file\nmachine=2\n");
	assert_int_equal(config_read(dir, &c), 0);
	assert_int_equal(c.machine, MACHINE_NO_PIT);
	assert_string_equal(c.image, "");
	/* a machine this worldfs does not know is refused, not guessed */
	put("mem_mib=128\nvcpus=1\nmachine=99\n");
	assert_int_equal(config_read(dir, &c), -EINVAL);
	put("mem_mib=0\nvcpus=1\n");
	assert_int_equal(config_read(dir, &c), -EINVAL);
	/* an image line that is not a digest (a path, a traversal) is refused */
	put("mem_mib=128\nvcpus=1\nmachine=2\nimage=../../etc\n");
	assert_int_equal(config_read(dir, &c), -EINVAL);
	put("mem_mib=128\nvcpus=1\nmachine=2\nimage=\n");
	assert_int_equal(config_read(dir, &c), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(older_and_newer, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
