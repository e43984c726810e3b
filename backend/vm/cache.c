/* cache.c: golden states kept outside any state directory, so that the
 * first create on a fresh mount (a new state=, or after the old one was
 * deleted) is a clone of a frozen world, not a cold boot.
 *
 *   CACHE/golden/<key>/{config,devstate,ram,manifest}
 *
 * CACHE is $WORLDFS_CACHE, else /var/cache/worldfs for root (where the
 * image builder keeps its own cache) or $XDG_CACHE_HOME/worldfs (default
 * ~/.cache/worldfs), made 0700.  <key> is the golden key (golden.c): the
 * identity of QEMU, worldfs, kernel arguments, accelerator and machine,
 * then image digest, memory and vCPUs; entries of another identity are
 * stale and deleted at mount.
 *
 * An entry is written into .<key>.<pid>.tmp, fsynced and renamed: it is
 * there whole or not at all.  Its manifest holds the size and a hash of
 * the devstate and of the RAM's contents (every 4 KiB page that is not
 * zero, with its offset, so holes and written zeros hash alike).  Taking
 * an entry copies it into the state directory (the RAM sparsely) while
 * hashing what it copies; a mismatch drops the entry and the copy, and
 * that create boots cold and caches a new one. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/vm/vm.h"

#define PAGE 4096
#define CHUNK (1 << 20)
#define MANIFEST_MAX 512

/* FNV-1a over 64-bit words: contents only need to be told apart from a
 * corrupted copy, and a byte at a time would cost seconds per GiB. */
static uint64_t mix(uint64_t h, uint64_t w)
{
	return (h ^ w) * 0x100000001b3ull;
}

static uint64_t hash_page(uint64_t h, off_t off, const unsigned char *p)
{
	uint64_t w;

	h = mix(h, (uint64_t)off);
	for (size_t i = 0; i < PAGE; i += 8) {
		memcpy(&w, p + i, 8);
		h = mix(h, w);
	}
	return h;
}

static bool page_is_zero(const unsigned char *p)
{
	static const unsigned char zero[PAGE];

	return memcmp(p, zero, PAGE) == 0;
}

/* Copy src to dst (truncated to src's size first) without its holes and
 * zero pages, hashing the pages copied; or, with dst < 0, only hash. */
static int copy_hash(int src, int dst, uint64_t *hash, off_t *size_out)
{
	unsigned char *buf = malloc(CHUNK + PAGE);
	uint64_t h = VM_FNV1A_INIT;
	struct stat st;
	off_t off = 0;
	int r = 0;

	if (!buf)
		return -ENOMEM;
	if (fstat(src, &st) < 0 || (dst >= 0 && ftruncate(dst, st.st_size) < 0)) {
		r = -errno;
		goto out;
	}
	while (off < st.st_size) {
		off_t data = lseek(src, off, SEEK_DATA), hole;

		if (data < 0) {
			r = errno == ENXIO ? 0 : -errno;
			break;
		}
		hole = lseek(src, data, SEEK_HOLE);
		if (hole < 0) {
			r = -errno;
			break;
		}
		/* Whole pages: an extent starts and ends on one (the RAM file
		 * is a multiple of pages, written by pages). */
		data &= ~(off_t)(PAGE - 1);
		for (off = data; off < hole; off += CHUNK) {
			size_t want = (size_t)(hole - off < CHUNK ? hole - off : CHUNK), len;
			ssize_t got = pread(src, buf, want, off);

			if (got < 0) {
				r = -errno;
				goto out;
			}
			if (got == 0)
				break;
			/* A last partial page (a small file's end) counts padded
			 * with zeros, and is written as long as it is. */
			len = (size_t)got;
			memset(buf + len, 0, (PAGE - len % PAGE) % PAGE);
			for (size_t p = 0; p < len; p += PAGE) {
				size_t run = PAGE, put;

				if (page_is_zero(buf + p))
					continue;
				h = hash_page(h, off + (off_t)p, buf + p);
				while (p + run < len && !page_is_zero(buf + p + run)) {
					h = hash_page(h, off + (off_t)(p + run), buf + p + run);
					run += PAGE;
				}
				put = p + run > len ? len - p : run;
				if (dst >= 0 && pwrite(dst, buf + p, put, off + (off_t)p) != (ssize_t)put) {
					r = errno ? -errno : -EIO;
					goto out;
				}
				p += run - PAGE;
			}
			if ((size_t)got < want)
				break;
		}
		off = hole;
	}
	*hash = h;
	*size_out = st.st_size;
out:
	free(buf);
	return r;
}

static int copy_file_hash(const char *from, const char *to, bool durable, uint64_t *hash, off_t *size)
{
	int src = open(from, O_RDONLY | O_CLOEXEC), dst = -1, r;

	if (src < 0)
		return -errno;
	if (to && (dst = vm_open_tmp(to)) < 0) {
		close(src);
		return dst;
	}
	r = copy_hash(src, dst, hash, size);
	if (!r && dst >= 0 && durable && fsync(dst) < 0)
		r = -errno;
	close(src);
	if (dst >= 0 && close(dst) < 0 && !r)
		r = -errno;
	return r;
}

/* What a manifest says of an entry, or what a copy of one found. */
struct sums {
	uint64_t dev_hash, ram_hash;
	off_t dev_size, ram_size;
};

/* A golden state's files, from_dir/{devstate,config} into to_dir (made
 * afresh) and from_ram to to_ram, durably, with the sums of what was
 * copied. */
static int copy_state(const char *from_dir, const char *from_ram, const char *to_dir, const char *to_ram,
		      struct sums *out)
{
	char from[PATH_MAX], to[PATH_MAX];
	uint64_t h;
	off_t n;
	int r;

	vm_rm_tree(to_dir);
	if (mkdir(to_dir, 0700) < 0)
		return -errno;
	if ((r = vm_pathf(from, "%s/devstate", from_dir)) < 0 || (r = vm_pathf(to, "%s/devstate", to_dir)) < 0 ||
	    (r = copy_file_hash(from, to, true, &out->dev_hash, &out->dev_size)) < 0 ||
	    (r = vm_pathf(from, "%s/config", from_dir)) < 0 || (r = vm_pathf(to, "%s/config", to_dir)) < 0 ||
	    (r = copy_file_hash(from, to, true, &h, &n)) < 0)
		return r;
	return copy_file_hash(from_ram, to_ram, true, &out->ram_hash, &out->ram_size);
}

int cache_init(struct backend *b)
{
	const char *env = getenv("WORLDFS_CACHE"), *home = getenv("HOME"), *xdg = getenv("XDG_CACHE_HOME");
	char base[PATH_MAX], prefix[64];
	struct dirent *e;
	DIR *d;
	int r;

	b->cache_dir[0] = '\0';
	if (env && env[0])
		r = vm_pathf(base, "%s", env);
	else if (geteuid() == 0)
		r = vm_pathf(base, "/var/cache/worldfs");
	else if (xdg && xdg[0] == '/')
		r = vm_pathf(base, "%s/worldfs", xdg);
	else if (home && home[0] == '/')
		r = vm_pathf(base, "%s/.cache/worldfs", home);
	else
		return -ENOENT;
	if (r < 0 || (r = vm_pathf(b->cache_dir, "%s/golden", base)) < 0 || (r = vm_mkdir_p(b->cache_dir)) < 0) {
		vm_log(VM_LOG_HOST, "%s/golden: %s: golden states are not cached", base, strerror(-r));
		b->cache_dir[0] = '\0';
		return r;
	}
	chmod(base, 0700);
	chmod(b->cache_dir, 0700);
	/* Stale: another QEMU, worldfs or kernel command line; and leftovers. */
	snprintf(prefix, sizeof(prefix), "%s-", b->golden_id);
	d = opendir(b->cache_dir);
	while (d && (e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
		    (e->d_name[0] != '.' && strncmp(e->d_name, prefix, strlen(prefix)) == 0))
			continue;
		vm_rm_tree_at(dirfd(d), e->d_name);
	}
	if (d)
		closedir(d);
	return 0;
}

void cache_put(struct backend *b, const char *key, const char *dir, const char *ram)
{
	char tmp[PATH_MAX], final[PATH_MAX], to_ram[PATH_MAX], manifest[MANIFEST_MAX];
	struct sums sum;
	double t0 = now_ms();
	int r;

	if (!b->cache_dir[0])
		return;
	if ((r = vm_pathf(tmp, "%s/.%s.%d.tmp", b->cache_dir, key, (int)getpid())) < 0 ||
	    (r = vm_pathf(final, "%s/%s", b->cache_dir, key)) < 0 || (r = vm_pathf(to_ram, "%s/ram", tmp)) < 0)
		goto fail;
	if ((r = copy_state(dir, ram, tmp, to_ram, &sum)) < 0)
		goto fail_tmp;
	snprintf(manifest, sizeof(manifest), "worldfs-golden 1\nkey=%s\ndevstate=%jd %016" PRIx64 "\nram=%jd %016" PRIx64 "\n",
		 key, (intmax_t)sum.dev_size, sum.dev_hash, (intmax_t)sum.ram_size, sum.ram_hash);
	if ((r = vm_write_file(tmp, "manifest", manifest, true)) < 0)
		goto fail_tmp;
	vm_rm_tree(final);  /* a stale one of the same key */
	if (rename(tmp, final) < 0) {
		r = -errno;
		goto fail_tmp;
	}
	vm_fsync_path(b->cache_dir);
	vm_log(NULL, "golden state %s cached in %s (%.0f ms)", key, b->cache_dir, now_ms() - t0);
	return;
fail_tmp:
	vm_rm_tree(tmp);
fail:
	vm_log(NULL, "golden state %s: not cached in %s: %s", key, b->cache_dir, strerror(-r));
}

/* The manifest's size and hash of one file ("devstate" or "ram"). */
static int manifest_entry(const char *manifest, const char *name, off_t *size, uint64_t *hash)
{
	char want[32];
	const char *p;
	intmax_t sz;

	snprintf(want, sizeof(want), "\n%s=", name);
	p = strstr(manifest, want);
	if (!p || sscanf(p + strlen(want), "%jd %" SCNx64, &sz, hash) != 2)
		return -EINVAL;
	*size = (off_t)sz;
	return 0;
}

int cache_get(struct backend *b, const char *key, const char *dir, const char *tmp, const char *ram,
	      const char *ram_tmp)
{
	char entry[PATH_MAX], path[PATH_MAX], manifest[MANIFEST_MAX], want_key[128];
	struct sums want, got;
	double t0 = now_ms();
	ssize_t n;
	int r;

	if (!b->cache_dir[0])
		return -ENOENT;
	if ((r = vm_pathf(entry, "%s/%s", b->cache_dir, key)) < 0 || (r = vm_pathf(path, "%s/manifest", entry)) < 0)
		return r;
	n = io_read_small(path, manifest, sizeof(manifest));
	if (n < 0)
		return (int)n;
	snprintf(want_key, sizeof(want_key), "\nkey=%s\n", key);
	if (strncmp(manifest, "worldfs-golden 1\n", 17) != 0 || !strstr(manifest, want_key) ||
	    manifest_entry(manifest, "devstate", &want.dev_size, &want.dev_hash) < 0 ||
	    manifest_entry(manifest, "ram", &want.ram_size, &want.ram_hash) < 0) {
		r = -EINVAL;
		goto bad;
	}
	if ((r = vm_pathf(path, "%s/ram", entry)) < 0 || (r = copy_state(entry, path, tmp, ram_tmp, &got)) < 0)
		goto out;
	if (got.dev_hash != want.dev_hash || got.dev_size != want.dev_size || got.ram_hash != want.ram_hash ||
	    got.ram_size != want.ram_size) {
		r = -EBADMSG;
		goto bad;
	}
	/* The RAM first: a state dir without its RAM file is no golden state. */
	if (rename(ram_tmp, ram) < 0 || rename(tmp, dir) < 0) {
		r = -errno;
		unlink(ram);
		goto out;
	}
	vm_log(NULL, "golden state %s taken from %s in %.0f ms", key, b->cache_dir, now_ms() - t0);
	return 0;
bad:
	vm_log(NULL, "golden state %s in %s: %s: dropped (the next create boots cold and caches it again)", key,
	       b->cache_dir, r == -EBADMSG ? "its contents do not match its manifest" : "no valid manifest");
	vm_rm_tree(entry);
out:
	vm_rm_tree(tmp);
	unlink(ram_tmp);
	return r;
}
