/* host.c: what the host offers a VM: KVM where it can run a guest, else
 * QEMU's TCG, and under TCG the TSC rate the guest kernel is told. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
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
