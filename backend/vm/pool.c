/* pool.c: the warm pool: QEMU processes started ahead with -incoming
 * defer, so a branch or create skips QEMU's start-up (~60 ms).  A member
 * lives in STATE/vm/.pool-<hex>/ and maps ram/.pool-<hex>.ram (empty,
 * sparse).  Taking one renames both to the new world's names: QEMU keeps
 * its open files, mappings and bound sockets; the state's RAM is then
 * cloned into the renamed file (FICLONE replaces the data under QEMU's
 * mapping, which it has not touched yet) and the device state loaded.
 * qemu.origin in the dir keeps the name QEMU was started under (its
 * -pidfile argument, by which it is known again).
 *
 * Members exist for the default size only, and only while some world is
 * up or went down less than POOL_LINGER_MS ago: an idle mount holds no
 * spare QEMU, and a script that removes its last world and creates the
 * next still finds one waiting. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend/vm/vm.h"

#define POOL_MAX 64
#define POOL_RETRY_MS 5000  /* after a member failed to start */
#define POOL_LINGER_MS 5000 /* members kept after the last world went */

struct pool {
	struct backend *b;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	unsigned size;
	struct sandbox *ready[POOL_MAX];
	unsigned nready;
	unsigned live;      /* sandboxes up (pool_hold - pool_release) */
	double idle_since;  /* when live last fell to 0 */
	bool stopping;
	double retry_at;    /* no new member before this (start failures) */
};

/* A new member: its dir, an empty RAM file, QEMU waiting for a state. */
static int member_start(struct backend *b, struct sandbox **out)
{
	char ram[PATH_MAX], origin[PATH_MAX + 2];
	uint8_t rnd[8];
	struct sandbox *s = calloc(1, sizeof(*s));
	int r;

	if (!s)
		return -ENOMEM;
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd)) {
		free(s);
		return -EIO;
	}
	s->b = b;
	s->dirfd = s->agent = -1;
	s->img = b->img;
	s->mem_mib = b->mem_mib;
	s->vcpus = b->vcpus;
	s->cow = true;
	s->machine = MACHINE_CURRENT;
	snprintf(s->id, sizeof(s->id), ".pool-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
		 rnd[4], rnd[5], rnd[6], rnd[7]);
	if ((r = vm_pathf(s->dir, "%s/%s", b->dir, s->id)) < 0 || (r = ram_path(b, s->id, ram)) < 0) {
		free(s);
		return r;
	}
	if (mkdir(s->dir, 0700) < 0) {
		r = -errno;
		free(s);
		return r;
	}
	if ((r = sandbox_open_dir(s)) < 0 || (r = ram_create(ram, s->mem_mib)) < 0 ||
	    (r = qemu_launch(s, true)) < 0)
		goto fail;
	snprintf(origin, sizeof(origin), "%s\n", s->dir);
	if ((r = vm_write_file(s->dir, "qemu.origin", origin, false)) < 0)
		goto fail;
	*out = s;
	return 0;
fail:
	sandbox_discard(s);
	return r;
}

static void *pool_main(void *arg)
{
	struct pool *p = arg;

	pthread_mutex_lock(&p->lock);
	while (!p->stopping) {
		if (p->live > 0 && p->nready < p->size && now_ms() >= p->retry_at) {
			struct sandbox *s = NULL;
			int r;

			pthread_mutex_unlock(&p->lock);
			r = member_start(p->b, &s);
			pthread_mutex_lock(&p->lock);
			if (r < 0) {
				vm_log("pool", "starting a waiting qemu: %s (retrying in %d s)", strerror(-r),
				       POOL_RETRY_MS / 1000);
				p->retry_at = now_ms() + POOL_RETRY_MS;
			} else if (p->stopping) {
				pthread_mutex_unlock(&p->lock);
				sandbox_discard(s);
				pthread_mutex_lock(&p->lock);
			} else {
				p->ready[p->nready++] = s;
			}
			continue;
		}
		if (p->live == 0 && p->nready > 0 && now_ms() >= p->idle_since + POOL_LINGER_MS) {
			struct sandbox *s = p->ready[--p->nready];

			pthread_mutex_unlock(&p->lock);
			sandbox_discard(s);
			pthread_mutex_lock(&p->lock);
			continue;
		}
		if ((p->live > 0 && p->nready < p->size) || (p->live == 0 && p->nready > 0)) {
			/* waiting out a retry delay, or the linger before emptying */
			struct timespec ts;
			long ms = ms_left(p->live > 0 ? p->retry_at : p->idle_since + POOL_LINGER_MS);

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += ms / 1000;
			ts.tv_nsec += (ms % 1000) * 1000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&p->cond, &p->lock, &ts);
			continue;
		}
		pthread_cond_wait(&p->cond, &p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int pool_start(struct backend *b, unsigned size)
{
	struct pool *p;

	if (size == 0)
		return 0;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->b = b;
	p->size = size > POOL_MAX ? POOL_MAX : size;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	if (pthread_create(&p->thread, NULL, pool_main, p) != 0) {
		pthread_cond_destroy(&p->cond);
		pthread_mutex_destroy(&p->lock);
		free(p);
		return -EAGAIN;
	}
	b->pool = p;
	return 0;
}

void pool_stop(struct backend *b)
{
	struct pool *p = b->pool;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
	pthread_join(p->thread, NULL);
	for (unsigned i = 0; i < p->nready; i++)
		sandbox_discard(p->ready[i]);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
	b->pool = NULL;
}

void pool_hold(struct backend *b)
{
	struct pool *p = b->pool;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->live++;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

void pool_release(struct backend *b)
{
	struct pool *p = b->pool;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	if (p->live > 0 && --p->live == 0) {
		p->idle_since = now_ms();
		pthread_cond_signal(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
}

int pool_take(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus, struct sandbox **out)
{
	struct pool *p = b->pool;
	char dir[PATH_MAX], ram_from[PATH_MAX], ram_to[PATH_MAX];
	struct sandbox *s = NULL;
	struct vm_config c;
	int r;

	if (!p || mem_mib != b->mem_mib || vcpus != b->vcpus)
		return -ENOENT;
	if ((r = vm_id_check(id)) < 0 || (r = vm_pathf(dir, "%s/%s", b->dir, id)) < 0 ||
	    (r = ram_path(b, id, ram_to)) < 0)
		return r;
	pthread_mutex_lock(&p->lock);
	while (!s && p->nready > 0) {
		char st[32] = "";

		s = p->ready[--p->nready];
		/* Still waiting for a state, and answering? */
		if (qemu_status(s, st, sizeof(st)) < 0 || strcmp(st, "inmigrate") != 0) {
			vm_log(s->id, "a waiting qemu is %s: discarded", st[0] ? st : "gone");
			pthread_mutex_unlock(&p->lock);
			sandbox_discard(s);
			pthread_mutex_lock(&p->lock);
			s = NULL;
		}
	}
	/* The refill waits for pool_hold(): a QEMU starting beside the
	 * state being loaded would slow the load down. */
	pthread_mutex_unlock(&p->lock);
	if (!s)
		return -ENOENT;
	if ((r = ram_path(b, s->id, ram_from)) < 0)
		goto fail;
	fault_point("pool-take");
	if (renameat2(AT_FDCWD, s->dir, AT_FDCWD, dir, RENAME_NOREPLACE) < 0) {
		r = -errno;
		goto fail;
	}
	snprintf(s->dir, sizeof(s->dir), "%s", dir);
	snprintf(s->id, sizeof(s->id), "%s", id);
	if (rename(ram_from, ram_to) < 0) {
		r = -errno;
		vm_log(id, "%s: %s", ram_to, strerror(-r));
		goto fail;
	}
	vm_config_of(s, &c);
	if ((r = vm_config_write(s->dir, &c, false)) < 0) {
		vm_log(id, "%s/config: %s", s->dir, strerror(-r));
		goto fail;
	}
	*out = s;
	return 0;
fail:
	/* Under whichever names it has got to. */
	if (strcmp(s->id, id) == 0)
		unlink(ram_from);
	sandbox_discard(s);
	return r == -EEXIST || r == -ENOTEMPTY ? -EEXIST : r;
}

/* Members of a worldfs that was killed: stop their QEMUs, delete them. */
void pool_sweep(struct backend *b)
{
	DIR *d = opendir(b->dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		struct sandbox *s;

		if (strncmp(e->d_name, ".pool-", 6) != 0 || strlen(e->d_name) > ID_MAX)
			continue;
		s = calloc(1, sizeof(*s));
		if (!s)
			break;
		s->b = b;
		s->dirfd = s->agent = -1;
		snprintf(s->id, sizeof(s->id), "%s", e->d_name);
		if (vm_pathf(s->dir, "%s/%s", b->dir, e->d_name) < 0) {
			free(s);
			continue;
		}
		qemu_origin(s->dir, s->qdir);
		s->pid = qemu_pid_from_file(s->dir);
		if (!qemu_pid_is_ours(s->pid, s->qdir))
			s->pid = 0;
		sandbox_discard(s);
	}
	closedir(d);
	/* RAM files whose dir went first */
	if (!b->ram_ready || !(d = opendir(b->ram_dir)))
		return;
	while ((e = readdir(d)))
		if (strncmp(e->d_name, ".pool-", 6) == 0)
			unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
}
