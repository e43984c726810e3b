/* test_vmconfig.c: a VM's config file, which says how to start a QEMU
 * that can load its saved state: memory, vCPUs, RAM kind, machine and
 * image.  States saved by worldfs 0.1 have no machine or image line and
 * must keep loading into the machine and image they were made with.
 * Also the vm backend's log lines, which users and tests grep. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
	return vm_rm_tree(dir);
}

static void put(const char *text)
{
	assert_int_equal(vm_write_file(dir, "config", text, false), 0);
}

static void round_trip(void **state)
{
	struct vm_config c = { .mem_mib = 2048, .vcpus = 2, .cow = true, .machine = MACHINE_CURRENT,
			       .image = "54b83ec78d1db5ae708ac7d14df212c816bcddc12beec67dd7d2db3c2a04ceca" }, r;
	(void)state;

	assert_int_equal(vm_config_write(dir, &c, true), 0);
	assert_int_equal(vm_config_read(dir, &r), 0);
	assert_int_equal(r.mem_mib, 2048);
	assert_int_equal(r.vcpus, 2);
	assert_true(r.cow);
	assert_int_equal(r.machine, MACHINE_CURRENT);
	assert_string_equal(r.image, c.image);
	c = (struct vm_config){ .mem_mib = 128, .vcpus = 1, .cow = false, .machine = MACHINE_PIT };
	assert_int_equal(vm_config_write(dir, &c, false), 0);
	assert_int_equal(vm_config_read(dir, &r), 0);
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
	assert_int_equal(vm_config_read(dir, &c), 0);
	assert_int_equal(c.machine, MACHINE_PIT);
	assert_string_equal(c.image, "");
	put("mem_mib=128\nvcpus=1\nram=file\n");
	assert_int_equal(vm_config_read(dir, &c), 0);
	assert_true(c.cow);
	assert_int_equal(c.machine, MACHINE_PIT);
	/* before images had names: machine 2, no image line */
	put("mem_mib=128\nvcpus=1\nram=file\nmachine=2\n");
	assert_int_equal(vm_config_read(dir, &c), 0);
	assert_int_equal(c.machine, MACHINE_NO_PIT);
	assert_string_equal(c.image, "");
	/* a machine this worldfs does not know is refused, not guessed */
	put("mem_mib=128\nvcpus=1\nmachine=99\n");
	assert_int_equal(vm_config_read(dir, &c), -EINVAL);
	put("mem_mib=0\nvcpus=1\n");
	assert_int_equal(vm_config_read(dir, &c), -EINVAL);
	/* an image line that is not a digest (a path, a traversal) is refused */
	put("mem_mib=128\nvcpus=1\nmachine=2\nimage=../../etc\n");
	assert_int_equal(vm_config_read(dir, &c), -EINVAL);
	put("mem_mib=128\nvcpus=1\nmachine=2\nimage=\n");
	assert_int_equal(vm_config_read(dir, &c), -EINVAL);
}

/* What vm_log writes for each kind of line, read back from stderr. */
static void log_lines(void **state)
{
	char path[PATH_MAX], text[512];
	int fd, saved;
	(void)state;

	snprintf(path, sizeof(path), "%s/log", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	saved = dup(2);
	assert_true(saved >= 0);
	dup2(fd, 2);
	vm_log("w1", "%s: %d", "agent", 7);
	vm_log(NULL, "warm pool: %s: none", "Out of memory");
	vm_log(VM_LOG_HOST, "/dev/kvm: using kvm");
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(fd);
	assert_true(vm_read_small(path, text, sizeof(text)) > 0);
	assert_string_equal(text, "worldfs: vm w1: agent: 7\n"
				  "worldfs: vm: warm pool: Out of memory: none\n"
				  "worldfs: /dev/kvm: using kvm\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(older_and_newer, setup, teardown),
		cmocka_unit_test_setup_teardown(log_lines, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
