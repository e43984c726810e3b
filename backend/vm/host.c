/* host.c: what the host offers a VM: KVM where it can run a guest, else
 * QEMU's TCG; under TCG the TSC rate the guest kernel is told; and, where
 * worldfs runs as root, the user and the empty root QEMU is confined to. */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/vm/vm.h"

static bool cpu_has_virt(void)
{
	FILE *f = fopen("/proc/cpuinfo", "re");
	char line[8192];
	bool yes = false;

	if (!f)
		return false;
	while (!yes && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "flags", 5) != 0)
			continue;
		char *save = NULL;

		for (char *t = strtok_r(line, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save))
			if (strcmp(t, "vmx") == 0 || strcmp(t, "svm") == 0)
				yes = true;
		break;
	}
	fclose(f);
	return yes;
}

/* KVM (accel=auto) only where it can run a stock guest kernel: /dev/kvm
 * without vmx/svm in the CPU's flags may be PVM (a KVM that runs in a
 * guest without hardware virtualization), which only runs guest kernels
 * built for it. */
bool host_use_kvm(enum accel accel)
{
	int fd;

	if (accel == ACCEL_KVM)
		return true;
	if (accel == ACCEL_TCG)
		return false;
	if (!cpu_has_virt()) {
		vm_log(VM_LOG_HOST, "/dev/kvm: no vmx/svm, using tcg");
		return false;
	}
	fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		vm_log(VM_LOG_HOST, "/dev/kvm: %s, using tcg", strerror(errno));
		return false;
	}
	close(fd);
	vm_log(VM_LOG_HOST, "/dev/kvm: using kvm");
	return true;
}

/* The host's TSC rate in kHz, measured; 0 if unknown.  Under TCG the
 * guest's TSC is the host's, and the guest's own calibration against the
 * emulated PIT fails often enough on a loaded host (the kernel then marks
 * the TSC unusable and hangs on this clockless machine) that we tell it. */
unsigned long host_tsc_khz(void)
{
#if defined(__x86_64__) || defined(__i386__)
	double t0, t1;
	uint64_t c0, c1;

	t0 = now_ms();
	c0 = __builtin_ia32_rdtsc();
	sleep_ms(20);
	t1 = now_ms();
	c1 = __builtin_ia32_rdtsc();
	if (t1 <= t0 || c1 <= c0)
		return 0;
	return (unsigned long)((double)(c1 - c0) / (t1 - t0) + 0.5);
#else
	return 0;
#endif
}

/* The uid and gid of user name, or -errno (ENOENT: no such user). */
static int user_ids(const char *name, uid_t *uid, gid_t *gid)
{
	struct passwd pw, *found = NULL;
	char buf[4096];
	int r = getpwnam_r(name, &pw, buf, sizeof(buf), &found);

	if (r)
		return -r;
	if (!found)
		return -ENOENT;
	*uid = pw.pw_uid;
	*gid = pw.pw_gid;
	return 0;
}

/* b->dir/empty: a directory only root can change, with nothing in it. */
static int empty_root(struct backend *b, char *err, size_t errlen)
{
	struct stat st;
	int r;

	if ((r = vm_pathf(b->empty_dir, "%s/empty", b->dir)) < 0 ||
	    ((r = mkdir(b->empty_dir, 0555) < 0 ? -errno : 0) < 0 && r != -EEXIST) ||
	    (r = lstat(b->empty_dir, &st) < 0 ? -errno : 0) < 0) {
		snprintf(err, errlen, "%s/empty: %s", b->dir, strerror(-r));
		return r;
	}
	if (!S_ISDIR(st.st_mode) || st.st_uid != 0) {
		snprintf(err, errlen, "%s: not a directory of root's", b->empty_dir);
		return -EPERM;
	}
	if ((st.st_mode & 07777) != 0555 && chmod(b->empty_dir, 0555) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", b->empty_dir, strerror(-r));
		return r;
	}
	return 0;
}

int host_confine(struct backend *b, const char *user, char *err, size_t errlen)
{
	const char *name = user ? user : "worldfs";
	uid_t uid;
	gid_t gid;
	int r;

	b->runas[0] = '\0';
	if (geteuid() != 0) {
		if (user) {
			snprintf(err, errlen, "qemu_user=%s: only where worldfs runs as root", user);
			return -EPERM;
		}
		return 0;  /* QEMU runs as we do: nothing to drop */
	}
	if (strcmp(name, "root") == 0) {
		vm_log(VM_LOG_HOST, "qemu_user=root: QEMU keeps root's privileges");
		return 0;
	}
	r = user_ids(name, &uid, &gid);
	if (r == -ENOENT && !user) {
		vm_log(VM_LOG_HOST, "no user \"worldfs\" (contrib/bootstrap.sh makes it): QEMU runs as nobody");
		name = "nobody";
		r = user_ids(name, &uid, &gid);
	}
	if (r < 0) {
		snprintf(err, errlen, "qemu_user=%s: %s", name, r == -ENOENT ? "no such user" : strerror(-r));
		return r == -ENOENT ? -EINVAL : r;
	}
	if (uid == 0 || gid == 0) {
		snprintf(err, errlen, "qemu_user=%s: has root's uid or gid (say qemu_user=root to mean it)", name);
		return -EINVAL;
	}
	if ((r = empty_root(b, err, errlen)) < 0)
		return r;
	snprintf(b->runas, sizeof(b->runas), "%u:%u", (unsigned)uid, (unsigned)gid);
	vm_log(VM_LOG_HOST, "QEMU runs as %s (%s), confined to %s", name, b->runas, b->empty_dir);
	return 0;
}
