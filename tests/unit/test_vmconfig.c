/* test_vmconfig.c: a VM's config file, which says how to start a QEMU
 * that can load its saved state: memory, vCPUs, RAM kind, machine and
 * image.  States saved by worldfs 0.1 have no machine or image line and
 * must keep loading into the machine and image they were made with.
 * The QEMU command line such a config starts (qemu_argv), and the vm
 * backend's log lines, which users and tests grep. */
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
	assert_true(io_read_small(path, text, sizeof(text)) > 0);
	assert_string_equal(text, "worldfs: vm w1: agent: 7\n"
				  "worldfs: vm: warm pool: Out of memory: none\n"
				  "worldfs: /dev/kvm: using kvm\n");
}

/* --- the QEMU command line ------------------------------------------------ */

/* A cow world of the debian image under KVM, booting. */
static struct qemu_spec spec_cow(void)
{
	return (struct qemu_spec){
		.qemu = "/usr/bin/qemu-system-x86_64", .id = "w1", .kvm = true, .machine = MACHINE_CURRENT,
		.mem_mib = 2048, .vcpus = 2, .ram = "/st/vm/ram/w1.ram",
		.kernel = "/img/vmlinux", .initrd = "/img/initrd.cpio.gz", .append = "console=ttyS0 quiet",
		.root = "/img/root.img", .qmp_sock = "/st/vm/w1/qmp.sock", .agent_sock = "/st/vm/w1/agent.sock",
		.pidfile = "/st/vm/w1/qemu.pid", .log = "/st/vm/w1/qemu.log", .console_fd = 3,
	};
}

/* argc, after checking that argv ends with NULL within its array. */
static int argc_of(const struct qemu_cmdline *c)
{
	size_t n = sizeof(c->argv) / sizeof(c->argv[0]);

	for (size_t i = 0; i < n; i++)
		if (!c->argv[i])
			return (int)i;
	fail_msg("argv is not NULL-terminated");
	return -1;
}

/* The value after the first opt, NULL if opt is not there. */
static const char *opt(const struct qemu_cmdline *c, const char *name)
{
	for (int i = 0; i < argc_of(c); i++)
		if (strcmp(c->argv[i], name) == 0)
			return c->argv[i + 1];
	return NULL;
}

static bool has(const struct qemu_cmdline *c, const char *arg)
{
	for (int i = 0; i < argc_of(c); i++)
		if (strcmp(c->argv[i], arg) == 0)
			return true;
	return false;
}

static void argv_cow_kvm_boot(void **state)
{
	struct qemu_spec q = spec_cow();
	struct qemu_cmdline c;
	(void)state;

	assert_int_equal(qemu_argv(&q, &c), 0);
	assert_string_equal(c.argv[0], "/usr/bin/qemu-system-x86_64");
	assert_string_equal(opt(&c, "-name"), "worldfs-w1");
	/* no PIT; RAM from the memory backend below */
	assert_string_equal(opt(&c, "-M"), "microvm,x-option-roms=off,rtc=on,isa-serial=on,pit=off,memory-backend=mem");
	assert_string_equal(opt(&c, "-accel"), "kvm");
	assert_string_equal(opt(&c, "-cpu"), "host");
	assert_string_equal(opt(&c, "-m"), "2048");
	assert_string_equal(opt(&c, "-smp"), "2");
	/* the RAM is the file, shared, so that a freeze clones it */
	assert_string_equal(opt(&c, "-object"),
			    "memory-backend-file,id=mem,share=on,size=2048M,mem-path=/st/vm/ram/w1.ram");
	/* the root disk every world of the image shares is never written */
	assert_string_equal(opt(&c, "-drive"), "if=none,id=root,format=raw,readonly=on,file=/img/root.img");
	assert_true(has(&c, "virtio-blk-device,drive=root"));
	assert_string_equal(opt(&c, "-kernel"), "/img/vmlinux");
	assert_string_equal(opt(&c, "-initrd"), "/img/initrd.cpio.gz");
	assert_string_equal(opt(&c, "-append"), "console=ttyS0 quiet");
	/* The console goes into the inherited pipe, never into a file that
	 * the guest could grow without bound. */
	assert_string_equal(opt(&c, "-serial"), "file:/dev/fd/3");
	/* QEMU runs under its own seccomp sandbox. */
	assert_string_equal(opt(&c, "-sandbox"), "on,obsolete=deny,resourcecontrol=deny");
	assert_string_equal(opt(&c, "-qmp"), "unix:/st/vm/w1/qmp.sock,server=on,wait=off");
	assert_string_equal(opt(&c, "-chardev"), "socket,id=agent,path=/st/vm/w1/agent.sock,server=on,wait=off");
	assert_string_equal(opt(&c, "-pidfile"), "/st/vm/w1/qemu.pid");
	assert_string_equal(opt(&c, "-D"), "/st/vm/w1/qemu.log");
	assert_true(has(&c, "-daemonize"));
	/* not confined unless asked (worldfs not root, or qemu_user=root) */
	assert_null(opt(&c, "-runas"));
	assert_null(opt(&c, "-chroot"));
	/* a boot runs at once */
	assert_null(opt(&c, "-incoming"));
	assert_false(has(&c, "-S"));
}

/* 0.1's kind of world: full-copy RAM, the PIT, TCG, no root disk, resumed. */
static void argv_copy_tcg_resume(void **state)
{
	struct qemu_spec q = spec_cow();
	struct qemu_cmdline c;
	char accel[64];
	int argc;
	(void)state;

	q.kvm = false;
	q.machine = MACHINE_PIT;
	q.ram = NULL;
	q.root = "";
	q.mem_mib = 128;
	q.vcpus = 1;
	q.incoming = true;
	assert_int_equal(qemu_argv(&q, &c), 0);
	assert_string_equal(opt(&c, "-M"), "microvm,x-option-roms=off,rtc=on,isa-serial=on");
	snprintf(accel, sizeof(accel), "tcg,tb-size=%u", TCG_TB_MIB);
	assert_string_equal(opt(&c, "-accel"), accel);
	assert_string_equal(opt(&c, "-cpu"), "max");
	assert_string_equal(opt(&c, "-m"), "128");
	assert_string_equal(opt(&c, "-smp"), "1");
	/* anonymous RAM, which the migration stream carries */
	assert_null(opt(&c, "-object"));
	assert_null(opt(&c, "-drive"));
	assert_false(has(&c, "virtio-blk-device,drive=root"));
	/* waits, paused, for the state to load */
	assert_string_equal(opt(&c, "-incoming"), "defer");
	argc = argc_of(&c);
	assert_string_equal(c.argv[argc - 1], "-S");
}

/* As root, QEMU drops to an unprivileged uid:gid once started, with only
 * an empty directory for its root: both together or neither. */
static void argv_confined(void **state)
{
	struct qemu_spec q = spec_cow();
	struct qemu_cmdline c;
	(void)state;

	q.runas = "998:997";
	q.chroot = "/st/vm/empty";
	assert_int_equal(qemu_argv(&q, &c), 0);
	assert_string_equal(opt(&c, "-runas"), "998:997");
	assert_string_equal(opt(&c, "-chroot"), "/st/vm/empty");
	/* the files it needs are still opened by path before the drop */
	assert_string_equal(opt(&c, "-kernel"), "/img/vmlinux");
	assert_string_equal(opt(&c, "-pidfile"), "/st/vm/w1/qemu.pid");
}

/* A cow world on the machine of 0.1 (a snapshot it froze) keeps the PIT. */
static void argv_cow_pit(void **state)
{
	struct qemu_spec q = spec_cow();
	struct qemu_cmdline c;
	(void)state;

	q.machine = MACHINE_PIT;
	q.root = NULL;
	assert_int_equal(qemu_argv(&q, &c), 0);
	assert_string_equal(opt(&c, "-M"), "microvm,x-option-roms=off,rtc=on,isa-serial=on,memory-backend=mem");
	assert_non_null(opt(&c, "-object"));
	assert_null(opt(&c, "-drive"));
}

/* A comma in a path is doubled, else QEMU would split the option there. */
static void argv_commas(void **state)
{
	struct qemu_spec q = spec_cow();
	struct qemu_cmdline c;
	(void)state;

	q.root = "/img/a,b/root.img";
	q.ram = "/st,x/ram/w1.ram";
	assert_int_equal(qemu_argv(&q, &c), 0);
	assert_string_equal(opt(&c, "-drive"), "if=none,id=root,format=raw,readonly=on,file=/img/a,,b/root.img");
	assert_string_equal(opt(&c, "-object"),
			    "memory-backend-file,id=mem,share=on,size=2048M,mem-path=/st,,x/ram/w1.ram");
}

static void argv_too_long(void **state)
{
	static char commas[2 * PATH_MAX];
	struct qemu_spec q = spec_cow();
	struct qemu_cmdline c;
	(void)state;

	/* each comma doubles: twice the room a path may take */
	memset(commas, ',', sizeof(commas) - 1);
	q.root = commas;
	assert_int_equal(qemu_argv(&q, &c), -ENAMETOOLONG);
	q = spec_cow();
	q.ram = commas;
	assert_int_equal(qemu_argv(&q, &c), -ENAMETOOLONG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(older_and_newer, setup, teardown),
		cmocka_unit_test_setup_teardown(log_lines, setup, teardown),
		cmocka_unit_test(argv_cow_kvm_boot),
		cmocka_unit_test(argv_copy_tcg_resume),
		cmocka_unit_test(argv_confined),
		cmocka_unit_test(argv_cow_pit),
		cmocka_unit_test(argv_commas),
		cmocka_unit_test(argv_too_long),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
