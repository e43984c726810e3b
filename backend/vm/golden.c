/* golden.c: the golden state: a world frozen right after its first cold
 * boot (and, where the image asks, a warm-up: its Python session started
 * with the preload modules imported), kept per (qemu, image, mem_mib,
 * vcpus, accel).  Every create after the first is a branch from it (clone
 * + restore + reseed), so a cold boot happens once per image and size.
 *
 *   golden/<key>/{config,devstate}   (below STATE/vm)
 *   ram/golden/<key>.ram
 * <key> is "<identity>-<image>-<mem>m-<vcpus>c".  They are a cache: at
 * mount, those of another identity (an upgraded QEMU or worldfs) or of
 * another image than the mount's (a rebuilt one) are deleted, so that they
 * neither fill the disk nor keep old images pinned.  Each is also kept
 * outside the state directory (cache.c), from where a fresh mount takes
 * the one of its image and size at once. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/vm/vm.h"

#define GOLDEN_KEY_MAX 96
#define WARM_UP_TIMEOUT_MS 300000  /* importing pandas under TCG takes seconds */

/* Delete the golden states that are not of this identity and the mount's
 * image (any size). */
static void golden_sweep(struct backend *b)
{
	char prefix[GOLDEN_KEY_MAX], ram[PATH_MAX];
	DIR *d = opendir(b->golden_dir);
	struct dirent *e;

	if (!d)
		return;
	snprintf(prefix, sizeof(prefix), "%s-%.24s-", b->golden_id, b->img->digest);
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || strncmp(e->d_name, prefix, strlen(prefix)) == 0)
			continue;
		if (vm_pathf(ram, "%s/golden/%s.ram", b->ram_dir, e->d_name) == 0)
			unlink(ram);
		vm_rm_tree_at(dirfd(d), e->d_name);
	}
	closedir(d);
}

int golden_init(struct backend *b, const char *kernel_args)
{
	char extra[512];
	uint64_t h = VM_FNV1A_INIT;
	int r;

	if (vm_pathf(b->golden_dir, "%s/golden", b->dir) < 0)
		return -ENAMETOOLONG;
	if (mkdir(b->golden_dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	if ((r = vm_fnv1a_file(&h, b->qemu)) < 0)
		return r;
	/* What else the frozen guest was made with (the image is in the key);
	 * format 2. */
	snprintf(extra, sizeof(extra), "golden-2;%s;%s;tb=%u;machine=%u;worldfs=%s;", kernel_args,
		 b->kvm ? "kvm" : "tcg", TCG_TB_MIB, MACHINE_CURRENT, WORLDFS_VERSION);
	h = vm_fnv1a(h, extra);
	snprintf(b->golden_id, sizeof(b->golden_id), "%016llx", (unsigned long long)h);
	golden_sweep(b);
	cache_init(b);
	golden_take_cached(b, b->img, b->mem_mib, b->vcpus);
	return 0;
}

static void golden_key(const struct backend *b, const struct vm_image *img, unsigned mem_mib, unsigned vcpus,
		       char *out, size_t n)
{
	snprintf(out, n, "%s-%.24s-%um-%uc", b->golden_id, img->digest, mem_mib, vcpus);
}

static int golden_paths(const struct backend *b, const struct vm_image *img, unsigned mem_mib, unsigned vcpus,
			char dir[PATH_MAX], char ram[PATH_MAX])
{
	char key[GOLDEN_KEY_MAX];
	int r;

	golden_key(b, img, mem_mib, vcpus, key, sizeof(key));
	if ((r = vm_pathf(dir, "%s/%s", b->golden_dir, key)) < 0)
		return r;
	return vm_pathf(ram, "%s/golden/%s.ram", b->ram_dir, key);
}

void golden_take_cached(struct backend *b, const struct vm_image *img, unsigned mem_mib, unsigned vcpus)
{
	char key[GOLDEN_KEY_MAX], dir[PATH_MAX], ram[PATH_MAX], tmp[PATH_MAX], ram_tmp[PATH_MAX];

	if (!b->cow || !b->ram_ready || golden_paths(b, img, mem_mib, vcpus, dir, ram) < 0 || vm_exists(ram))
		return;
	golden_key(b, img, mem_mib, vcpus, key, sizeof(key));
	if (vm_pathf(tmp, "%s/.%s.tmp", b->golden_dir, key) < 0 ||
	    vm_pathf(ram_tmp, "%s/golden/.%s.ram.tmp", b->ram_dir, key) < 0)
		return;
	vm_rm_tree(dir);
	if (cache_get(b, key, dir, tmp, ram, ram_tmp) == 0)
		vm_fsync_path(b->golden_dir);
}

int golden_open(struct backend *b, const struct vm_image *img, unsigned mem_mib, unsigned vcpus,
		char ram[PATH_MAX])
{
	char dir[PATH_MAX], devstate[PATH_MAX];
	int fd, r;

	if ((r = golden_paths(b, img, mem_mib, vcpus, dir, ram)) < 0 ||
	    (r = vm_pathf(devstate, "%s/devstate", dir)) < 0)
		return r;
	if (!vm_exists(ram))
		return -ENOENT;
	fd = open(devstate, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

void golden_drop(struct backend *b, const struct vm_image *img, unsigned mem_mib, unsigned vcpus)
{
	char dir[PATH_MAX], ram[PATH_MAX];

	if (golden_paths(b, img, mem_mib, vcpus, dir, ram) < 0)
		return;
	vm_rm_tree(dir);
	unlink(ram);
	vm_fsync_path(b->golden_dir);
}

/* What the image asks the golden state to hold started: its Python
 * session with the preload modules imported (not bound to names: the
 * session's namespace stays empty), through an ordinary run. */
static void warm_up(struct sandbox *s)
{
	char code[sizeof(s->img->preload) * 2 + 64], mods[sizeof(s->img->preload)], *m, *save = NULL;
	struct run_result res;
	double t0 = now_ms();
	size_t n;
	int r;

	if (!s->img->preload[0])
		return;
	n = (size_t)snprintf(code, sizeof(code), "#!python3\n");
	snprintf(mods, sizeof(mods), "%s", s->img->preload);
	for (m = strtok_r(mods, " ", &save); m && n < sizeof(code); m = strtok_r(NULL, " ", &save))
		n += (size_t)snprintf(code + n, sizeof(code) - n, "__import__('%s')\n", m);
	if (n >= sizeof(code))
		return;
	r = agent_exec(s, code, n, WARM_UP_TIMEOUT_MS, &res);
	if (r < 0)
		vm_log(s->id, "warm-up (import %s): %s", s->img->preload, strerror(-r));
	else if (res.status != 0)
		vm_log(s->id, "warm-up (import %s): status %d: %.300s", s->img->preload, res.status, res.err);
	else
		vm_log(NULL, "golden state of %s: %s imported in %.0f ms", s->img->name,
		       s->img->preload, now_ms() - t0);
	run_result_release(&res);
}

int golden_bake(struct sandbox *s)
{
	struct backend *b = s->b;
	char dir[PATH_MAX], ram[PATH_MAX], tmp[PATH_MAX], ram_tmp[PATH_MAX], key[GOLDEN_KEY_MAX];
	double t0 = now_ms(), frozen = 0;
	uint64_t bytes;
	int r;

	warm_up(s);
	golden_key(b, s->img, s->mem_mib, s->vcpus, key, sizeof(key));
	if ((r = golden_paths(b, s->img, s->mem_mib, s->vcpus, dir, ram)) < 0 ||
	    (r = vm_pathf(tmp, "%s/.%s.tmp", b->golden_dir, key)) < 0 ||
	    (r = vm_pathf(ram_tmp, "%s/golden/.%s.ram.tmp", b->ram_dir, key)) < 0)
		return r;
	/* A golden state of the same key is replaced, never added beside. */
	r = state_freeze(s, dir, tmp, ram, ram_tmp, true, &frozen, &bytes);
	if (r < 0) {
		vm_log(s->id, "golden state %s: %s (the next create boots cold again)", key, strerror(-r));
		return r;
	}
	vm_log(NULL, "golden state %s frozen in %.1f ms (%.0f ms in all): creates branch from it",
	       key, frozen, now_ms() - t0);
	cache_put(b, key, dir, ram);
	return 0;
}
