/* files.c: the small file helpers of the vm backend, all named vm_*:
 * paths and ids, durable writes, small reads, trees, programs in PATH,
 * FNV-1a identities of files, and the per-VM config file. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend/vm/vm.h"

int vm_pathf(char out[PATH_MAX], const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, PATH_MAX, fmt, ap);
	va_end(ap);
	return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* Registry ids and snapshot ids become file names: keep them plain. */
int vm_id_check(const char *id)
{
	size_t n = strlen(id);

	if (n == 0 || n > ID_MAX || id[0] == '.')
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_' && id[i] != '.')
			return -EINVAL;
	return 0;
}

/* path and its missing parents, like mkdir -p. */
int vm_mkdir_p(char *path)
{
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0700) < 0 && errno != EEXIST) {
			*p = '/';
			return -errno;
		}
		*p = '/';
	}
	return mkdir(path, 0700) < 0 && errno != EEXIST ? -errno : 0;
}

bool vm_exists(const char *path)
{
	return access(path, F_OK) == 0;
}

int vm_fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		r = -errno;
	close(fd);
	return r;
}

int vm_open_tmp(const char *path)
{
	int fd;

	unlink(path);  /* a crash's leftover */
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	return fd < 0 ? -errno : fd;
}

/* Replace dir/name with text, atomically (temp file, rename) and, if
 * durable, durably (fsync the file before and the dir after the rename). */
int vm_write_file(const char *dir, const char *name, const char *text, bool durable)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	int fd = -1, r;

	if ((r = vm_pathf(tmp, "%s/.%s.tmp", dir, name)) < 0 || (r = vm_pathf(path, "%s/%s", dir, name)) < 0)
		return r;
	fd = vm_open_tmp(tmp);
	if (fd < 0)
		return fd;
	r = write_all(fd, text, strlen(text));
	if (r == 0 && durable && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r == 0 && durable)
		r = vm_fsync_path(dir);
	if (r < 0)
		unlink(tmp);
	return r;
}

/* Read up to n-1 bytes of a small file, NUL-terminated.  Bytes or -errno. */
int vm_rm_tree_at(int parent, const char *name)
{
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct dirent *e;
	DIR *d;
	int r = 0;

	if (fd < 0) {
		if (errno == ENOTDIR || errno == ELOOP)
			return unlinkat(parent, name, 0) < 0 ? -errno : 0;
		return errno == ENOENT ? 0 : -errno;
	}
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((e = readdir(d))) {
		int rr;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (e->d_type == DT_DIR || e->d_type == DT_UNKNOWN)
			rr = vm_rm_tree_at(dirfd(d), e->d_name);
		else
			rr = unlinkat(dirfd(d), e->d_name, 0) < 0 ? -errno : 0;
		if (rr < 0 && rr != -ENOENT && r == 0)
			r = rr;
	}
	closedir(d);
	if (unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r == 0)
		r = -errno;
	return r;
}

/* Remove path and everything below it; a missing path is fine. */
int vm_rm_tree(const char *path)
{
	return vm_rm_tree_at(AT_FDCWD, path);
}

/* name in PATH, then in the sbin directories a non-login root shell may lack. */
int vm_find_program(const char *name, char out[PATH_MAX])
{
	const char *path = getenv("PATH");
	char all[8192];

	snprintf(all, sizeof(all), "%s:/usr/local/sbin:/usr/sbin:/sbin",
		 path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
	for (const char *p = all; *p;) {
		size_t n = strcspn(p, ":");

		if (n > 0 && snprintf(out, PATH_MAX, "%.*s/%s", (int)n, p, name) < PATH_MAX &&
		    access(out, X_OK) == 0)
			return 0;
		p += n;
		if (*p == ':')
			p++;
	}
	return -ENOENT;
}

int vm_config_write(const char *dir, const struct vm_config *c, bool durable)
{
	char text[256];

	snprintf(text, sizeof(text), "mem_mib=%u\nvcpus=%u\n%smachine=%u\n%s%s%s", c->mem_mib, c->vcpus,
		 c->cow ? "ram=file\n" : "", c->machine, c->image[0] ? "image=" : "", c->image,
		 c->image[0] ? "\n" : "");
	return vm_write_file(dir, "config", text, durable);
}

/* A config without a ram= line is a full-copy VM, one without a machine=
 * line machine 1, one without an image= line 0.1's image (worldfs 0.1). */
int vm_config_read(const char *dir, struct vm_config *c)
{
	char path[PATH_MAX], text[256];
	const char *m;
	ssize_t n;
	int r;

	memset(c, 0, sizeof(*c));
	if ((r = vm_pathf(path, "%s/config", dir)) < 0)
		return r;
	n = io_read_small(path, text, sizeof(text));
	if (n < 0)
		return (int)n;
	if (sscanf(text, "mem_mib=%u vcpus=%u", &c->mem_mib, &c->vcpus) != 2 || c->mem_mib == 0 || c->vcpus == 0)
		return -EINVAL;
	c->cow = strstr(text, "\nram=file\n") != NULL;
	c->machine = MACHINE_PIT;
	m = strstr(text, "\nmachine=");
	if (m && (sscanf(m, "\nmachine=%u", &c->machine) != 1 || c->machine < MACHINE_PIT ||
		  c->machine > MACHINE_CURRENT))
		return -EINVAL;  /* a newer worldfs made it */
	m = strstr(text, "\nimage=");
	if (m) {
		size_t k = strspn(m + 7, "0123456789abcdef");

		if (k == 0 || k > IMAGE_DIGEST_MAX || m[7 + k] != '\n')
			return -EINVAL;
		memcpy(c->image, m + 7, k);
		c->image[k] = '\0';
	}
	return 0;
}

void vm_config_of(const struct sandbox *s, struct vm_config *c)
{
	*c = (struct vm_config){ .mem_mib = s->mem_mib, .vcpus = s->vcpus, .cow = s->cow, .machine = s->machine };
	if (s->img && s->img != s->b->legacy)
		snprintf(c->image, sizeof(c->image), "%s", s->img->digest);
}

uint64_t vm_fnv1a(uint64_t h, const char *text)
{
	for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
		h ^= *c;
		h *= 0x100000001b3ull;
	}
	return h;
}

int vm_fnv1a_file(uint64_t *h, const char *path)
{
	char part[PATH_MAX + 64];
	struct stat st;

	if (stat(path, &st) < 0)
		return -errno;
	snprintf(part, sizeof(part), "%s:%lld:%lld.%09ld;", path, (long long)st.st_size,
		 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	*h = vm_fnv1a(*h, part);
	return 0;
}

/* Temporary files and dirs (.NAME.tmp) are what a crash mid-freeze leaves. */
void vm_tmp_sweep(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name);

		if (e->d_name[0] == '.' && n > 5 && strcmp(e->d_name + n - 4, ".tmp") == 0)
			vm_rm_tree_at(dirfd(d), e->d_name);
	}
	closedir(d);
}
