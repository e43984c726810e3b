/* test_fsdiff.c: W/diff's manifests and comparison (fsdiff.c) on
 * directories of the host standing in for the guest's layers: each kind
 * of change gives exactly its line, what did not change gives none, and
 * an overlay's whiteouts and opaque directories read as the deletions
 * they are.  (The overlay cases make a 0/0 device and a trusted.* xattr:
 * they need root, and are skipped without it.) */
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
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/agent/fsdiff.h"

static char top[64];

static int setup(void **state)
{
	(void)state;
	strcpy(top, "/tmp/worldfs-diff-XXXXXX");
	umask(022);
	if (!mkdtemp(top))
		return -1;
	return setenv("WFS_TOP", top, 1);
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
	return system(cmd) == 0 ? 0 : -1;
}

/* top/rel, formatted. */
static const char *at(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *at(const char *fmt, ...)
{
	static char bufs[4][512];
	static int k;
	char rel[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rel, sizeof(rel), fmt, ap);
	va_end(ap);
	k = (k + 1) % 4;
	snprintf(bufs[k], sizeof(bufs[k]), "%s/%s", top, rel);
	return bufs[k];
}

static void put(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

/* Rewrite path with text (the same length), then give it its old mtime
 * back: only the content (and ctime) tells. */
static void put_keeping_mtime(const char *path, const char *text)
{
	struct stat st;
	struct timespec ts[2];

	assert_int_equal(stat(path, &st), 0);
	put(path, text);
	ts[0] = st.st_atim;
	ts[1] = st.st_mtim;
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static int dir_fd(const char *path)
{
	int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	return fd;
}

static char *diff(const struct fsd_layer *l, size_t n, const struct fsd_manifest *base)
{
	char *text;
	size_t len;

	assert_int_equal(fsd_diff(l, n, base, &text, &len), 0);
	assert_int_equal(strlen(text), len);
	return text;
}

static void expect(const struct fsd_layer *l, size_t n, const struct fsd_manifest *base, const char *want)
{
	char *text = diff(l, n, base);

	assert_string_equal(text, want);
	free(text);
}

/* A tmpfs-like layer: every kind of change, and none. */
static void each_change_has_its_line(void **state)
{
	static const char *const skip[] = { "/w/run", NULL };
	struct fsd_manifest *base, *mark;
	struct fsd_layer l;

	(void)state;
	assert_int_equal(mkdir(at("w"), 0755), 0);
	assert_int_equal(mkdir(at("w/d"), 0755), 0);
	assert_int_equal(mkdir(at("w/run"), 0755), 0);
	put(at("w/a"), "alpha\n");
	put(at("w/same"), "same\n");
	put(at("w/d/b"), "beta\n");
	put(at("w/moved"), "moving\n");
	put(at("w/mode"), "mode\n");
	put(at("w/linked"), "linked\n");
	put(at("w/run/session"), "1\n");
	assert_int_equal(symlink("a", at("w/ln")), 0);
	l = (struct fsd_layer){ "/w", dir_fd(at("w")), -1, skip };
	assert_int_equal(fsd_take(&l, 1, NULL, &base), 0);
	expect(&l, 1, base, "");

	put_keeping_mtime(at("w/a"), "ALPHA\n");        /* same size, same mtime: the hash tells */
	put(at("w/same"), "same\n");                    /* rewritten as it was: no change */
	assert_int_equal(unlink(at("w/d/b")), 0);
	assert_int_equal(rename(at("w/moved"), at("w/d/here")), 0);
	assert_int_equal(chmod(at("w/mode"), 0600), 0);
	assert_int_equal(link(at("w/linked"), at("w/d/hard")), 0);  /* a new name; linked itself unchanged */
	assert_int_equal(unlink(at("w/ln")), 0);
	assert_int_equal(symlink("b", at("w/ln")), 0);          /* same length, new target */
	assert_int_equal(mkdir(at("w/new"), 0755), 0);
	put(at("w/new/f"), "f\n");
	put(at("w/run/session"), "2 and more\n");               /* skipped */
	put(at("w/a-c"), "sorts before a/ in C\n");
	expect(&l, 1, base,
	       "M\t/w/a\n"
	       "A\t/w/a-c\n"
	       "D\t/w/d/b\n"
	       "A\t/w/d/hard\n"
	       "A\t/w/d/here\n"
	       "M\t/w/ln\n"
	       "M\t/w/mode\n"
	       "D\t/w/moved\n"
	       "A\t/w/new\n"
	       "A\t/w/new/f\n");

	/* A mark taken now is the next copy's base: nothing changed since.
	 * Files unchanged since base keep base's hash (and are equal). */
	assert_int_equal(fsd_take(&l, 1, base, &mark), 0);
	expect(&l, 1, mark, "");
	assert_int_equal(fsd_count(mark), fsd_count(base) + 3);
	/* Removing a directory lists what it held. */
	assert_int_equal(system("rm -rf -- \"$WFS_TOP\"/w/new"), 0);
	put_keeping_mtime(at("w/a"), "alpha\n");
	expect(&l, 1, mark, "M\t/w/a\nD\t/w/new\nD\t/w/new/f\n");
	fsd_free(mark);
	fsd_free(base);
	close(l.fd);
}

/* Paths git would quote are quoted as git does. */
static void odd_names_are_quoted(void **state)
{
	struct fsd_manifest *base;
	struct fsd_layer l;

	(void)state;
	assert_int_equal(mkdir(at("q"), 0755), 0);
	l = (struct fsd_layer){ "/", dir_fd(at("q")), -1, NULL };
	assert_int_equal(fsd_take(&l, 1, NULL, &base), 0);
	put(at("q/two\nlines"), "x");
	put(at("q/tab\there"), "x");
	put(at("q/quote\"back\\"), "x");
	put(at("q/caf\xc3\xa9"), "x");
	expect(&l, 1, base,
	       "A\t/caf\xc3\xa9\n"
	       "A\t\"/quote\\\"back\\\\\"\n"
	       "A\t\"/tab\\there\"\n"
	       "A\t\"/two\\nlines\"\n");
	fsd_free(base);
	close(l.fd);
}

/* Two layers, the second below the first's path: one sorted listing. */
static void layers_are_merged(void **state)
{
	struct fsd_manifest *base;
	struct fsd_layer l[2];

	(void)state;
	assert_int_equal(mkdir(at("r"), 0755), 0);
	assert_int_equal(mkdir(at("t"), 0755), 0);
	l[0] = (struct fsd_layer){ "/", dir_fd(at("r")), -1, NULL };
	l[1] = (struct fsd_layer){ "/tmp", dir_fd(at("t")), -1, NULL };
	assert_int_equal(fsd_take(l, 2, NULL, &base), 0);
	put(at("r/z"), "z");
	put(at("r/a"), "a");
	put(at("t/m"), "m");
	expect(l, 2, base, "A\t/a\nA\t/tmp/m\nA\t/z\n");
	fsd_free(base);
	close(l[0].fd);
	close(l[1].fd);
}

/* An overlay: upper over a read-only lower, as the debian image's root. */
static void overlay_whiteouts_and_opaque_dirs(void **state)
{
	struct fsd_manifest *base;
	struct fsd_layer l;

	(void)state;
	assert_int_equal(system("cd \"$WFS_TOP\" && mkdir -p lo/etc lo/usr/share/doc lo/opt lo/keep up && "
				"echo hosts > lo/etc/hosts && echo a > lo/usr/share/doc/a && "
				"echo b > lo/usr/share/doc/b && echo x > lo/opt/x && echo k > lo/keep/k"), 0);
	if (mknod(at("up/probe"), S_IFCHR | 0600, makedev(0, 0)) < 0 ||
	    setxattr(at("up"), "trusted.overlay.probe", "y", 1, 0) < 0) {
		skip();
		return;
	}
	unlink(at("up/probe"));
	removexattr(at("up"), "trusted.overlay.probe");
	l = (struct fsd_layer){ "/", dir_fd(at("up")), dir_fd(at("lo")), NULL };
	assert_int_equal(fsd_take(&l, 1, NULL, &base), 0);
	expect(&l, 1, base, "");

	/* Copy-up without a change: the same bytes in upper are no change. */
	assert_int_equal(system("cd \"$WFS_TOP\" && mkdir -p up/etc up/keep && cp -p lo/etc/hosts up/etc/hosts && "
				"cp -p lo/keep/k up/keep/k"), 0);
	expect(&l, 1, base, "");
	/* A change to a lower file; a deleted lower tree; an opaque directory
	 * that replaced a lower one; a new file. */
	put(at("up/etc/hosts"), "HOSTS\n");
	assert_int_equal(mkdir(at("up/usr"), 0755), 0);
	assert_int_equal(mkdir(at("up/usr/share"), 0755), 0);
	assert_int_equal(mknod(at("up/usr/share/doc"), S_IFCHR | 0600, makedev(0, 0)), 0);
	assert_int_equal(mkdir(at("up/opt"), 0755), 0);
	assert_int_equal(setxattr(at("up/opt"), "trusted.overlay.opaque", "y", 1, 0), 0);
	put(at("up/opt/y"), "y\n");
	put(at("up/new"), "n\n");
	expect(&l, 1, base,
	       "M\t/etc/hosts\n"
	       "A\t/new\n"
	       "D\t/opt/x\n"
	       "A\t/opt/y\n"
	       "D\t/usr/share/doc\n"
	       "D\t/usr/share/doc/a\n"
	       "D\t/usr/share/doc/b\n");
	fsd_free(base);

	/* A base taken after the deletions: deleting again is nothing, and
	 * bringing a deleted file back is an A. */
	assert_int_equal(fsd_take(&l, 1, NULL, &base), 0);
	expect(&l, 1, base, "");
	assert_int_equal(unlink(at("up/usr/share/doc")), 0);
	expect(&l, 1, base, "A\t/usr/share/doc\nA\t/usr/share/doc/a\nA\t/usr/share/doc/b\n");
	fsd_free(base);
	close(l.fd);
	close(l.lower_fd);
}

/* A directory swapped for a symlink is not followed out of the layer. */
static void symlinked_dirs_are_not_followed(void **state)
{
	struct fsd_manifest *base;
	struct fsd_layer l;

	(void)state;
	assert_int_equal(mkdir(at("s"), 0755), 0);
	assert_int_equal(mkdir(at("s.outside"), 0755), 0);
	put(at("s.outside/secret"), "x");
	l = (struct fsd_layer){ "/", dir_fd(at("s")), -1, NULL };
	assert_int_equal(fsd_take(&l, 1, NULL, &base), 0);
	assert_int_equal(symlink(at("s.outside"), at("s/out")), 0);
	expect(&l, 1, base, "A\t/out\n");
	fsd_free(base);
	close(l.fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(each_change_has_its_line, setup, teardown),
		cmocka_unit_test_setup_teardown(odd_names_are_quoted, setup, teardown),
		cmocka_unit_test_setup_teardown(layers_are_merged, setup, teardown),
		cmocka_unit_test_setup_teardown(overlay_whiteouts_and_opaque_dirs, setup, teardown),
		cmocka_unit_test_setup_teardown(symlinked_dirs_are_not_followed, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
