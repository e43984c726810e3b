/* image.c: guest images.  An image directory (backend/image/build-image.sh)
 * holds vmlinux, initrd.cpio.gz, a manifest of key=value lines and, for an
 * image with a root disk (debian), root.img.
 *
 * Every image a VM of this state directory runs is pinned below
 * STATE/vm/images/<digest>/: hard links to the image's files (copies
 * across filesystems).  A VM's config names the digest, and a saved state
 * only loads into a QEMU with the same kernel, initramfs and root disk (its
 * page cache holds the root disk's blocks): rebuilding the image in the
 * build tree (build-image.sh replaces files by rename) or deleting it then
 * changes nothing for the worlds and snapshots already made.  Pinned
 * images that no config names any more are deleted at mount. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/vm/vm.h"

#define MANIFEST_MAX 4096
/* The device the root disk is to the guest: the only virtio-blk device. */
#define ROOT_DEVICE "/dev/vda"

/* The value of key in a manifest's text, or NULL (copied into out). */
static const char *manifest_get(const char *text, const char *key, char *out, size_t n)
{
	size_t k = strlen(key);

	for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		const char *end = strchrnul(line, '\n');

		if ((size_t)(end - line) > k && strncmp(line, key, k) == 0 && line[k] == '=') {
			snprintf(out, n, "%.*s", (int)(end - line - k - 1), line + k + 1);
			return out;
		}
	}
	return NULL;
}

static bool all_of(const char *s, const char *chars)
{
	return *s && strspn(s, chars) == strlen(s);
}

#define LOWER_HEX "0123456789abcdef"
#define NAME_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-"

/* Fill img from the manifest in dir (its files named relative to dir). */
static int manifest_load(const char *dir, struct vm_image *img, char *err, size_t errlen)
{
	char path[PATH_MAX], text[MANIFEST_MAX], v[PATH_MAX];
	unsigned long mem;
	ssize_t n;
	char *end;
	int r;

	if ((r = vm_pathf(path, "%s/manifest", dir)) < 0)
		return r;
	n = io_read_small(path, text, sizeof(text));
	if (n < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror((int)-n));
		return (int)n;
	}
	if (!manifest_get(text, "digest", img->digest, sizeof(img->digest)) || strlen(img->digest) < 16 ||
	    !all_of(img->digest, LOWER_HEX)) {
		snprintf(err, errlen, "%s: no digest= line of 16-64 hex digits", path);
		return -EINVAL;
	}
	if (!manifest_get(text, "name", img->name, sizeof(img->name)) || !all_of(img->name, NAME_CHARS))
		snprintf(img->name, sizeof(img->name), "unnamed");
	img->mem_mib = 128;
	if (manifest_get(text, "mem_mib", v, sizeof(v))) {
		mem = strtoul(v, &end, 10);
		if (*end || mem < 64 || mem > 1024 * 1024) {
			snprintf(err, errlen, "%s: mem_mib=%s: expected 64..1048576", path, v);
			return -EINVAL;
		}
		img->mem_mib = (unsigned)mem;
	}
	img->root[0] = '\0';
	if (manifest_get(text, "root", v, sizeof(v))) {
		if (!all_of(v, NAME_CHARS) || v[0] == '.') {
			snprintf(err, errlen, "%s: root=%s: expected a file name in the image directory", path, v);
			return -EINVAL;
		}
		if ((r = vm_pathf(img->root, "%s/%s", dir, v)) < 0)
			return r;
	}
	img->preload[0] = '\0';
	if (manifest_get(text, "python_preload", v, sizeof(v)) && v[0]) {
		if (strlen(v) >= sizeof(img->preload) ||
		    !all_of(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_. ")) {
			snprintf(err, errlen, "%s: python_preload=%s: expected module names", path, v);
			return -EINVAL;
		}
		snprintf(img->preload, sizeof(img->preload), "%s", v);
	}
	if ((r = vm_pathf(img->kernel, "%s/vmlinux", dir)) < 0 ||
	    (r = vm_pathf(img->initrd, "%s/initrd.cpio.gz", dir)) < 0)
		return r;
	return 0;
}

/* An image directory from before manifests (worldfs 0.1, or made by hand):
 * busybox-like, named by its files' identity. */
static int legacy_load(const char *dir, struct vm_image *img, char *err, size_t errlen)
{
	uint64_t h = VM_FNV1A_INIT;
	int r;

	if ((r = vm_pathf(img->kernel, "%s/vmlinux", dir)) < 0 ||
	    (r = vm_pathf(img->initrd, "%s/initrd.cpio.gz", dir)) < 0)
		return r;
	for (int i = 0; i < 2; i++) {
		const char *f = i ? img->initrd : img->kernel;

		if ((r = vm_fnv1a_file(&h, f)) < 0) {
			snprintf(err, errlen, "%s: %s", f, strerror(-r));
			return r;
		}
	}
	snprintf(img->digest, sizeof(img->digest), "%016llx", (unsigned long long)h);
	snprintf(img->name, sizeof(img->name), "legacy");
	img->mem_mib = 128;
	img->root[0] = img->preload[0] = '\0';
	return 0;
}

/* The rest of in into out with read and write, where copy_file_range
 * cannot cross filesystems (tmpfs). */
static int copy_plain(int in, int out)
{
	static char buf[1 << 16];
	ssize_t n;
	int r;

	while ((n = read(in, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if ((r = write_all(out, buf, (size_t)n)) < 0)
			return r;
	}
	return 0;
}

/* Make dst a copy of src: a hard link where the filesystem allows, else
 * the bytes (copy_file_range, or read and write), synced. */
static int pin_file(const char *src, const char *dst)
{
	struct stat st;
	int in, out, r = 0;

	if (link(src, dst) == 0)
		return vm_fsync_path(dst);
	if (errno != EXDEV && errno != EPERM && errno != EMLINK)
		return -errno;
	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -errno;
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (out < 0 || fstat(in, &st) < 0) {
		r = -errno;
		goto out;
	}
	for (off_t left = st.st_size; left > 0;) {
		ssize_t n = copy_file_range(in, NULL, out, NULL, (size_t)left, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)) {
			r = copy_plain(in, out);
			if (r < 0)
				goto out;
			break;
		}
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			goto out;
		}
		left -= n;
	}
	if (fsync(out) < 0)
		r = -errno;
out:
	if (out >= 0)
		close(out);
	close(in);
	return r;
}

/* The pinned copy of the image in src (described by img) under
 * STATE/vm/images/<digest>; img's paths are rewritten to it. */
static int pin(struct backend *b, const char *src, struct vm_image *img, char *err, size_t errlen)
{
	char dir[PATH_MAX], tmp[PATH_MAX], from[PATH_MAX], to[PATH_MAX], root_name[NAME_MAX + 1];
	/* What an image is: the kernel, the initramfs, and the manifest and
	 * the root disk where it has them. */
	const char *files[4] = { "vmlinux", "initrd.cpio.gz" }, *root = NULL;
	size_t nfiles = 2;
	int r;

	if (img->root[0]) {
		snprintf(root_name, sizeof(root_name), "%s", strrchr(img->root, '/') + 1);
		root = files[nfiles++] = root_name;
	}
	if ((r = vm_pathf(dir, "%s/%s", b->images_dir, img->digest)) < 0 ||
	    (r = vm_pathf(tmp, "%s/.%s.tmp", b->images_dir, img->digest)) < 0 ||
	    (r = vm_pathf(from, "%s/manifest", src)) < 0)
		return r;
	if (vm_exists(from))
		files[nfiles++] = "manifest";
	if (!vm_exists(dir)) {
		vm_rm_tree(tmp);
		if (mkdir(tmp, 0700) < 0) {
			r = -errno;
			snprintf(err, errlen, "%s: %s", tmp, strerror(-r));
			return r;
		}
		for (size_t i = 0; i < nfiles; i++) {
			if ((r = vm_pathf(from, "%s/%s", src, files[i])) < 0 ||
			    (r = vm_pathf(to, "%s/%s", tmp, files[i])) < 0)
				return r;
			if ((r = pin_file(from, to)) < 0) {
				snprintf(err, errlen, "%s -> %s: %s", from, to, strerror(-r));
				vm_rm_tree(tmp);
				return r;
			}
		}
		if ((r = vm_fsync_path(tmp)) < 0 || rename(tmp, dir) < 0 || (r = vm_fsync_path(b->images_dir)) < 0) {
			r = r < 0 ? r : -errno;
			snprintf(err, errlen, "%s: %s", dir, strerror(-r));
			vm_rm_tree(tmp);
			return r;
		}
	}
	snprintf(img->dir, sizeof(img->dir), "%s", dir);
	if ((r = vm_pathf(img->kernel, "%s/vmlinux", dir)) < 0 ||
	    (r = vm_pathf(img->initrd, "%s/initrd.cpio.gz", dir)) < 0 ||
	    (root && (r = vm_pathf(img->root, "%s/%s", dir, root)) < 0))
		return r;
	return 0;
}

/* What the kernel is told besides the backend's own arguments. */
static void image_append(const struct backend *b, struct vm_image *img)
{
	snprintf(img->append, sizeof(img->append), "%s%s", b->append, img->root[0] ? " worldfs.root=" ROOT_DEVICE : "");
}

static struct vm_image *image_add(struct backend *b, const struct vm_image *tmpl)
{
	struct vm_image *img = malloc(sizeof(*img));

	if (!img)
		return NULL;
	*img = *tmpl;
	image_append(b, img);
	img->next = b->images;
	b->images = img;
	return img;
}

int image_open(struct backend *b, const char *spec, const char *base, struct vm_image **out, char *err,
	       size_t errlen)
{
	char src[PATH_MAX], manifest[PATH_MAX];
	struct vm_image tmpl = { 0 }, *img;
	int r;

	/* A name is a directory of base; anything with a slash a path. */
	if (strchr(spec, '/'))
		r = vm_pathf(src, "%s", spec);
	else if (all_of(spec, NAME_CHARS) && spec[0] != '.')
		r = vm_pathf(src, "%s/%s", base, spec);
	else
		r = -EINVAL;
	if (r < 0) {
		snprintf(err, errlen, "image=%s: expected a name (debian, busybox) or a directory", spec);
		return r;
	}
	if (!realpath(src, manifest)) {
		r = -errno;
		snprintf(err, errlen, "image=%s: %s: %s (build it: sh backend/image/build-image.sh NAME --out DIR)",
			 spec, src, strerror(-r));
		return r;
	}
	snprintf(src, sizeof(src), "%s", manifest);
	if ((r = vm_pathf(manifest, "%s/manifest", src)) < 0)
		return r;
	r = vm_exists(manifest) ? manifest_load(src, &tmpl, err, errlen) : legacy_load(src, &tmpl, err, errlen);
	if (r < 0)
		return r;
	if ((r = pin(b, src, &tmpl, err, errlen)) < 0)
		return r;
	pthread_mutex_lock(&b->images_lock);
	for (img = b->images; img && strcmp(img->digest, tmpl.digest) != 0; img = img->next)
		;
	if (!img)
		img = image_add(b, &tmpl);
	pthread_mutex_unlock(&b->images_lock);
	if (!img) {
		snprintf(err, errlen, "image=%s: %s", spec, strerror(ENOMEM));
		return -ENOMEM;
	}
	*out = img;
	return 0;
}

/* The image of configs that name none (states saved by worldfs 0.1): the
 * busybox image of the mount's image place, which is what 0.1 ran, else
 * the mount's own image if it has no root disk (a restore needs the same
 * devices, and only the root disk adds one). */
static const struct vm_image *legacy_image(struct backend *b)
{
	struct vm_image *img = NULL, *copy;
	char err[512];

	pthread_mutex_lock(&b->legacy_lock);
	if (!b->legacy) {
		if (image_open(b, "busybox", b->image_base, &img, err, sizeof(err)) < 0) {
			vm_log(NULL, "the image of worldfs 0.1's states: %s", err);
			img = b->img->root[0] ? NULL : b->img;
		}
		/* A copy of its own, so that vm_config_of() tells it apart. */
		if (img && (copy = malloc(sizeof(*copy)))) {
			*copy = *img;
			copy->next = NULL;
			b->legacy = copy;
		}
	}
	pthread_mutex_unlock(&b->legacy_lock);
	return b->legacy;
}

const struct vm_image *image_find(struct backend *b, const char *digest)
{
	struct vm_image tmpl = { 0 }, *img;
	char dir[PATH_MAX], err[256];

	if (!digest[0])
		return legacy_image(b);
	if (!all_of(digest, LOWER_HEX) || strlen(digest) >= sizeof(tmpl.digest))
		return NULL;
	pthread_mutex_lock(&b->images_lock);
	for (img = b->images; img && strcmp(img->digest, digest) != 0; img = img->next)
		;
	if (!img && vm_pathf(dir, "%s/%s", b->images_dir, digest) == 0) {
		int r = vm_exists(dir) ? 0 : -ENOENT;

		if (r == 0) {
			char manifest[PATH_MAX];

			r = vm_pathf(manifest, "%s/manifest", dir);
			if (r == 0)
				r = vm_exists(manifest) ? manifest_load(dir, &tmpl, err, sizeof(err))
						     : legacy_load(dir, &tmpl, err, sizeof(err));
			/* A legacy image is named by its files' identity,
			 * which the links changed: keep its pinned name. */
			snprintf(tmpl.digest, sizeof(tmpl.digest), "%s", digest);
			snprintf(tmpl.dir, sizeof(tmpl.dir), "%s", dir);
			if (r == 0)
				img = image_add(b, &tmpl);
			else
				vm_log(NULL, "%s", err);
		}
	}
	pthread_mutex_unlock(&b->images_lock);
	if (!img)
		vm_log(NULL, "image %s: not in %s", digest, b->images_dir);
	return img;
}

void image_init(struct backend *b, const char *base)
{
	pthread_mutex_init(&b->images_lock, NULL);
	pthread_mutex_init(&b->legacy_lock, NULL);
	snprintf(b->image_base, sizeof(b->image_base), "%s", base);
}

void image_fini(struct backend *b)
{
	struct vm_image *img;

	while ((img = b->images)) {
		b->images = img->next;
		free(img);
	}
	free((void *)b->legacy);
	b->legacy = NULL;
	pthread_mutex_destroy(&b->images_lock);
	pthread_mutex_destroy(&b->legacy_lock);
}

/* The digests named by the configs in dir's subdirectories. */
static void mark_used(const char *dir, char ***used, size_t *n)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char sub[PATH_MAX], **v;
		struct vm_config c;

		if (e->d_name[0] == '.')
			continue;
		if (vm_pathf(sub, "%s/%s", dir, e->d_name) < 0 || vm_config_read(sub, &c) < 0 || !c.image[0])
			continue;
		v = realloc(*used, (*n + 1) * sizeof(**used));
		if (!v)
			break;
		*used = v;
		if (((*used)[*n] = strdup(c.image)))
			(*n)++;
	}
	closedir(d);
}

void image_collect_garbage(struct backend *b)
{
	char **used = NULL;
	size_t n = 0;
	struct vm_image *img;
	struct dirent *e;
	DIR *d;

	mark_used(b->dir, &used, &n);
	mark_used(b->snap_dir, &used, &n);
	mark_used(b->golden_dir, &used, &n);
	d = opendir(b->images_dir);
	while (d && (e = readdir(d))) {
		bool keep = e->d_name[0] == '.' && (!e->d_name[1] || e->d_name[1] == '.');

		for (size_t i = 0; !keep && i < n; i++)
			keep = strcmp(used[i], e->d_name) == 0;
		for (img = b->images; !keep && img; img = img->next)
			keep = strcmp(img->digest, e->d_name) == 0;
		if (!keep) {
			vm_log(NULL, "image %s: no world or snapshot uses it: deleted", e->d_name);
			vm_rm_tree_at(dirfd(d), e->d_name);
		}
	}
	if (d)
		closedir(d);
	for (size_t i = 0; i < n; i++)
		free(used[i]);
	free(used);
}
