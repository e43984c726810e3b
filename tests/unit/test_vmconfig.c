/* test_vmconfig.c: a VM's config file, which says how to start a QEMU
 * that can load its saved state: memory, vCPUs, RAM kind and machine.
 * States saved by worldfs 0.1 have no machine line and must keep loading
 * into the machine they were made on. */
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
	unsigned mem, vcpus, machine;
	bool cow;
	(void)state;

	assert_int_equal(config_write(dir, 2048, 2, true, MACHINE_CURRENT, true), 0);
	assert_int_equal(config_read(dir, &mem, &vcpus, &cow, &machine), 0);
	assert_int_equal(mem, 2048);
	assert_int_equal(vcpus, 2);
	assert_true(cow);
	assert_int_equal(machine, MACHINE_CURRENT);
	assert_int_equal(config_write(dir, 128, 1, false, MACHINE_PIT, false), 0);
	assert_int_equal(config_read(dir, &mem, &vcpus, &cow, &machine), 0);
	assert_false(cow);
	assert_int_equal(machine, MACHINE_PIT);
}

static void older_and_newer(void **state)
{
	unsigned mem, vcpus, machine = 0;
	bool cow;
	(void)state;

	/* worldfs 0.1 and the first cow states: machine 1 */
	put("mem_mib=128\nvcpus=1\n");
	assert_int_equal(config_read(dir, &mem, &vcpus, &cow, &machine), 0);
	assert_int_equal(machine, MACHINE_PIT);
	put("mem_mib=128\nvcpus=1\nram=file\n");
	assert_int_equal(config_read(dir, &mem, &vcpus, &cow, &machine), 0);
	assert_true(cow);
	assert_int_equal(machine, MACHINE_PIT);
	/* a machine this worldfs does not know is refused, not guessed */
	put("mem_mib=128\nvcpus=1\nmachine=99\n");
	assert_int_equal(config_read(dir, &mem, &vcpus, &cow, &machine), -EINVAL);
	put("mem_mib=0\nvcpus=1\n");
	assert_int_equal(config_read(dir, &mem, &vcpus, &cow, &machine), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(older_and_newer, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
