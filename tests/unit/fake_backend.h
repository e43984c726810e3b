/* fake_backend.h: a backend that keeps nothing but names and counts, and
 * the helpers around it (a state directory per test, open_rt, verse), for
 * the runtime's unit tests (test_runtime.c, test_races.c).  Each test file
 * includes it once: everything here is static.
 *
 * backend.h lets the runtime call it on different sandboxes in parallel,
 * so what it counts (sandboxes up, snapshots kept, suspended ids) is under
 * its own lock, as a real backend's would be.  A test reaches into the
 * middle of a backend call through fake_hooks. */
#ifndef WORLDFS_TESTS_FAKE_BACKEND_H
#define WORLDFS_TESTS_FAKE_BACKEND_H

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/runtime.h"

#define FAKE_SUSPENDED_MAX 256

struct backend {
	pthread_mutex_t lock;           /* everything below */
	char suspended[FAKE_SUSPENDED_MAX][24];
	int nsuspended;
	int live;                       /* sandboxes up */
	int snapshots;                  /* snapshots made and not deleted */
	int snapshots_deleted;
	int blocked;                    /* runs of "block" waiting */
	int interrupted;                /* runs ended by interrupt */
	pthread_cond_t changed;         /* blocked or an interrupt */
};
struct sandbox {
	struct backend *b;
	char id[24];
	bool interrupt;                 /* under b->lock */
};

static struct backend fake = { .lock = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER };

/* What a test runs in the middle of a backend call; NULL: nothing.  Kept
 * across tests (setup does not clear them). */
static struct {
	void (*snapshot)(void);                                         /* before it is taken */
	void (*branch)(struct sandbox *parent, struct branch_info *i);  /* before the child is up */
	void (*probe)(const char *id);                                  /* before it answers */
	/* The guest's answer to a file request (-ENOTSUP when NULL). */
	int (*fs)(const struct fs_req *req, uint8_t **reply, size_t *len);
} fake_hooks;

/* The count under the fake's lock, for a test that reads it while
 * others may still be working. */
static inline int fake_count(const int *what)
{
	int n;

	pthread_mutex_lock(&fake.lock);
	n = *what;
	pthread_mutex_unlock(&fake.lock);
	return n;
}

/* id's sandbox was lost while worldfs was down: its probe finds nothing. */
static inline void fake_lose(const char *id)
{
	pthread_mutex_lock(&fake.lock);
	for (int i = 0; i < fake.nsuspended; i++)
		if (strcmp(fake.suspended[i], id) == 0)
			fake.suspended[i][0] = '\0';
	pthread_mutex_unlock(&fake.lock);
}

static int f_init(struct backend **out, struct backend_config *cfg, char *err, size_t len)
{
	(void)cfg; (void)err; (void)len;
	*out = &fake;
	return 0;
}
static void f_fini(struct backend *b) { (void)b; }
static struct sandbox *up(struct backend *b, const char *id, char handle[BACKEND_HANDLE_MAX])
{
	struct sandbox *s = calloc(1, sizeof(*s));

	/* Backend calls run on the runtime's threads: no cmocka assert there. */
	if (!s)
		abort();
	s->b = b;
	snprintf(s->id, sizeof(s->id), "%s", id);
	snprintf(handle, BACKEND_HANDLE_MAX, "fake:%s", id);
	pthread_mutex_lock(&b->lock);
	b->live++;
	pthread_mutex_unlock(&b->lock);
	return s;
}
static int f_create(struct backend *b, const char *id, unsigned mem, unsigned vcpus,
		    struct sandbox **out, char handle[BACKEND_HANDLE_MAX], double *ms)
{
	(void)mem; (void)vcpus;
	*out = up(b, id, handle);
	*ms = 1;
	return 0;
}
/* A run of "block" waits until it is interrupted (the sandbox dies:
 * -EIO), or 5 s (it then ends normally, as a slow run would). */
static int f_block(struct sandbox *s)
{
	struct backend *b = s->b;
	struct timespec until;
	int r = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	pthread_mutex_lock(&b->lock);
	b->blocked++;
	pthread_cond_broadcast(&b->changed);
	while (!s->interrupt && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&b->changed, &b->lock, &until);
	b->blocked--;
	r = s->interrupt ? -EIO : 0;
	b->interrupted += s->interrupt;
	pthread_mutex_unlock(&b->lock);
	return r;
}
static void f_interrupt(struct sandbox *s)
{
	pthread_mutex_lock(&s->b->lock);
	s->interrupt = true;
	pthread_cond_broadcast(&s->b->changed);
	pthread_mutex_unlock(&s->b->lock);
}
/* Wait until n runs of "block" wait. */
static inline void fake_wait_blocked(int n)
{
	pthread_mutex_lock(&fake.lock);
	while (fake.blocked < n)
		pthread_cond_wait(&fake.changed, &fake.lock);
	pthread_mutex_unlock(&fake.lock);
}
/* The run's stdout is its code; "fail" exits with 3. */
static int f_exec(struct sandbox *s, const char *code, size_t len, struct run_result *r)
{
	memset(r, 0, sizeof(*r));
	if (len == 5 && memcmp(code, "block", 5) == 0) {
		int err = f_block(s);

		if (err)
			return err;
	}
	r->out = malloc(len + 1);
	if (!r->out)
		return -ENOMEM;
	memcpy(r->out, code, len);
	r->out_len = len;
	r->status = len == 4 && memcmp(code, "fail", 4) == 0 ? 3 : 0;
	return 0;
}
static int f_snapshot(struct sandbox *s, const char *snap, struct snapshot_info *i)
{
	(void)snap;
	if (fake_hooks.snapshot)
		fake_hooks.snapshot();
	pthread_mutex_lock(&s->b->lock);
	s->b->snapshots++;
	pthread_mutex_unlock(&s->b->lock);
	i->size_bytes = 4096;
	i->snapshot_time_ms = 1;
	return 0;
}
static int f_snapshot_delete(struct backend *b, const char *snap)
{
	(void)snap;
	pthread_mutex_lock(&b->lock);
	b->snapshots--;
	b->snapshots_deleted++;
	pthread_mutex_unlock(&b->lock);
	return 0;
}
static int f_branch(struct backend *b, struct sandbox *parent, const char *snap, const char *const ids[],
		    size_t n, struct sandbox *out[], char handles[][BACKEND_HANDLE_MAX], struct branch_info *i)
{
	(void)snap;
	if (fake_hooks.branch)
		fake_hooks.branch(parent, i);
	for (size_t k = 0; k < n; k++)
		out[k] = up(b, ids[k], handles[k]);
	i->snapshot_time_ms = 1;
	i->total_ms = 2;
	return 0;
}
/* Stopping takes a while (a QEMU quits): whoever still holds the pointer
 * meanwhile holds freed memory. */
static int f_destroy(struct sandbox *s)
{
	struct backend *b = s->b;

	pthread_mutex_lock(&b->lock);
	b->live--;
	pthread_mutex_unlock(&b->lock);
	free(s);
	usleep(300);
	return 0;
}
static int f_suspend(struct sandbox *s)
{
	struct backend *b = s->b;

	pthread_mutex_lock(&b->lock);
	if (b->nsuspended == FAKE_SUSPENDED_MAX)
		abort();  /* a test with more worlds than that: raise it */
	snprintf(b->suspended[b->nsuspended++], 24, "%s", s->id);
	pthread_mutex_unlock(&b->lock);
	return f_destroy(s);
}
static enum sandbox_presence f_probe(struct backend *b, const char *id, const char *handle)
{
	enum sandbox_presence p = SANDBOX_GONE;

	(void)handle;
	if (fake_hooks.probe)
		fake_hooks.probe(id);
	pthread_mutex_lock(&b->lock);
	for (int i = 0; i < b->nsuspended; i++)
		if (strcmp(b->suspended[i], id) == 0)
			p = SANDBOX_SAVED;
	pthread_mutex_unlock(&b->lock);
	return p;
}
/* Coming back takes a while too (a QEMU restores the saved state): time
 * for an rmdir or a resolve meanwhile. */
static int f_resume(struct backend *b, const char *id, const char *handle, struct sandbox **out,
		    char nh[BACKEND_HANDLE_MAX])
{
	if (f_probe(b, id, handle) == SANDBOX_GONE)
		return -ENOENT;
	usleep(300);
	*out = up(b, id, nh);
	return 0;
}
static int f_discard(struct backend *b, const char *id, const char *h) { (void)b; (void)id; (void)h; return 0; }
static void f_gc(struct backend *b, bool (*known)(void *, const char *), void *ctx) { (void)b; (void)known; (void)ctx; }
/* Reads the sandbox, as a real backend does: a sandbox already destroyed
 * is a use after free, which the AddressSanitizer build reports. */
static char *f_describe(struct sandbox *s)
{
	char *text;

	return asprintf(&text, "{\"backend\":\"fake\",\"id\":\"%s\"}", s->id) < 0 ? NULL : text;
}

/* Files in the guest: what the test's hook answers, or none. */
static int f_fs(struct sandbox *s, const struct fs_req *req, uint8_t **reply, size_t *len)
{
	(void)s;
	return fake_hooks.fs ? fake_hooks.fs(req, reply, len) : -ENOTSUP;
}

static const struct backend_ops fake_ops = {
	.name = "fake", .init = f_init, .fini = f_fini, .create = f_create, .exec = f_exec,
	.snapshot = f_snapshot, .snapshot_delete = f_snapshot_delete, .branch = f_branch,
	.destroy = f_destroy, .suspend = f_suspend, .resume = f_resume, .probe = f_probe,
	.discard = f_discard, .collect_garbage = f_gc, .describe = f_describe, .interrupt = f_interrupt, .fs = f_fs,
};

/* ---- helpers ---- */

static char state_dir[64];

static inline void open_rt(struct runtime *rt)
{
	struct backend_config cfg = { .state_dir = state_dir, .mem_mib = 128, .vcpus = 1,
				      .exec_timeout_s = 5, .output_max = 1 << 20 };
	char err[256];

	memset(rt, 0, sizeof(*rt));
	assert_int_equal(runtime_open(rt, &fake_ops, &cfg, err, sizeof(err)), 0);
	runtime_settle(rt);
}

/* A world (p NULL) or verse by name; rt->lock is not taken: only for a
 * test whose other threads are done. */
static inline struct entity *verse(struct runtime *rt, struct entity *p, const char *name)
{
	return runtime_find_verse(rt, p, name, false);
}

/* A fresh state directory and a fake with nothing up. */
static inline int setup(void **state)
{
	(void)state;
	strcpy(state_dir, "/tmp/worldfs-test-XXXXXX");
	assert_non_null(mkdtemp(state_dir));
	pthread_mutex_lock(&fake.lock);
	memset(fake.suspended, 0, sizeof(fake.suspended));
	fake.nsuspended = fake.live = fake.snapshots = fake.snapshots_deleted = 0;
	pthread_mutex_unlock(&fake.lock);
	return 0;
}

static inline int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", state_dir);
	return system(cmd) == 0 ? 0 : -1;
}

#endif
