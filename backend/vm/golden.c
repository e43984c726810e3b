/* golden.c: the golden state: a world frozen right after its first cold
 * boot, kept per (qemu, kernel, initrd, mem_mib, vcpus, accel).  Every
 * create after the first is a branch from it (clone + restore + reseed),
 * so a cold boot happens once per image and size.
 *
 *   golden/<key>/{config,devstate}   (below STATE/vm)
 *   ram/golden/<key>.ram
 * <key> is "<identity>-<mem>m-<vcpus>c"; a key whose identity no longer
 * matches (an upgraded QEMU or image) is deleted when its size is baked
 * again. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/vm/vm.h"

static uint64_t fnv1a(uint64_t h, const char *text)
{
	for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
		h ^= *c;
		h *= 0x100000001b3ull;
	}
	return h;
}

static int file_identity(const char *path, char *out, size_t n)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return -errno;
	snprintf(out, n, "%s:%lld:%lld.%09ld;", path, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
		 st.st_mtim.tv_nsec);
	return 0;
}

int golden_init(struct backend *b, const char *kernel_args)
{
	const char *files[] = { b->qemu, b->kernel, b->initrd };
	char part[PATH_MAX + 64], extra[512];
	uint64_t h = 0xcbf29ce484222325ull;
	int r;

	if (pathf(b->golden_dir, "%s/golden", b->dir) < 0)
		return -ENAMETOOLONG;
	if (mkdir(b->golden_dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if ((r = file_identity(files[i], part, sizeof(part))) < 0)
			return r;
		h = fnv1a(h, part);
	}
	/* What else the frozen guest was made with; format 1. */
	snprintf(extra, sizeof(extra), "golden-1;%s;%s;tb=%u;machine=%u;", kernel_args, b->kvm ? "kvm" : "tcg",
		 TCG_TB_MIB, MACHINE_CURRENT);
	h = fnv1a(h, extra);
	snprintf(b->golden_id, sizeof(b->golden_id), "%016llx", (unsigned long long)h);
	return 0;
}

static void golden_key(const struct backend *b, unsigned mem_mib, unsigned vcpus, char *out, size_t n)
{
	snprintf(out, n, "%s-%um-%uc", b->golden_id, mem_mib, vcpus);
}

static int golden_paths(const struct backend *b, unsigned mem_mib, unsigned vcpus, char dir[PATH_MAX],
			char ram[PATH_MAX])
{
	char key[80];
	int r;

	golden_key(b, mem_mib, vcpus, key, sizeof(key));
	if ((r = pathf(dir, "%s/%s", b->golden_dir, key)) < 0)
		return r;
	return pathf(ram, "%s/golden/%s.ram", b->ram_dir, key);
}

int golden_open(struct backend *b, unsigned mem_mib, unsigned vcpus, char ram[PATH_MAX])
{
	char dir[PATH_MAX], devstate[PATH_MAX];
	int fd, r;

	if ((r = golden_paths(b, mem_mib, vcpus, dir, ram)) < 0 || (r = pathf(devstate, "%s/devstate", dir)) < 0)
		return r;
	if (!exists(ram))
		return -ENOENT;
	fd = open(devstate, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

void golden_drop(struct backend *b, unsigned mem_mib, unsigned vcpus)
{
	char dir[PATH_MAX], ram[PATH_MAX];

	if (golden_paths(b, mem_mib, vcpus, dir, ram) < 0)
		return;
	rm_tree(dir);
	unlink(ram);
	fsync_path(b->golden_dir);
}

/* Golden states of this size made from other files (an older image). */
static void drop_stale(struct backend *b, unsigned mem_mib, unsigned vcpus)
{
	char suffix[40], ram[PATH_MAX];
	DIR *d = opendir(b->golden_dir);
	struct dirent *e;

	if (!d)
		return;
	snprintf(suffix, sizeof(suffix), "-%um-%uc", mem_mib, vcpus);
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name), k = strlen(suffix);

		if (e->d_name[0] == '.' || n <= k || strcmp(e->d_name + n - k, suffix) != 0 ||
		    strncmp(e->d_name, b->golden_id, strlen(b->golden_id)) == 0)
			continue;
		if (pathf(ram, "%s/golden/%s.ram", b->ram_dir, e->d_name) == 0)
			unlink(ram);
		rm_tree_at(dirfd(d), e->d_name);
	}
	closedir(d);
}

int golden_bake(struct sandbox *s)
{
	struct backend *b = s->b;
	char dir[PATH_MAX], ram[PATH_MAX], tmp[PATH_MAX], ram_tmp[PATH_MAX], key[80];
	double t0 = now_ms(), frozen = 0;
	uint64_t bytes;
	int r;

	golden_key(b, s->mem_mib, s->vcpus, key, sizeof(key));
	if ((r = golden_paths(b, s->mem_mib, s->vcpus, dir, ram)) < 0 ||
	    (r = pathf(tmp, "%s/.%s.tmp", b->golden_dir, key)) < 0 ||
	    (r = pathf(ram_tmp, "%s/golden/.%s.ram.tmp", b->ram_dir, key)) < 0)
		return r;
	/* A golden state of the same key is replaced, never added beside. */
	r = state_freeze(s, dir, tmp, ram, ram_tmp, true, &frozen, &bytes);
	if (r < 0) {
		say(s->id, "golden state %s: %s (the next create boots cold again)", key, strerror(-r));
		return r;
	}
	drop_stale(b, s->mem_mib, s->vcpus);
	fprintf(stderr, "worldfs: vm: golden state %s frozen in %.1f ms (%.0f ms in all): creates branch from it\n",
		key, frozen, now_ms() - t0);
	return 0;
}
