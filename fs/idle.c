/* idle.c: idle_suspend.  A world or verse whose sandbox is up, with no
 * run, no open file and no other use for idle_suspend seconds, is
 * suspended to disk (its full state, the same suspend as unmount) and its
 * QEMU stops; the next use resumes it (sandbox_ensure), transparently.
 * One thread looks a few times per period; it never waits for an entity
 * that is busy (its oplock held), which is in use by definition. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/tree.h"
#include "backend/util/clock.h"

void sandbox_suspend(struct runtime *rt, struct entity *e)
{
	struct sandbox *sb = e->sb;
	double t0 = now_ms(), ms;
	int err;

	if (!sb)
		return;
	pthread_mutex_lock(&rt->lock);
	sandbox_set_locked(rt, e, NULL, NULL, true);
	registry_now(e->suspended_at);
	pthread_mutex_unlock(&rt->lock);
	err = rt->be_ops->suspend(sb);
	ms = now_ms() - t0;
	if (err) {
		worldfs_log("%s: suspend failed: %s", e->id, strerror(-err));
		return;
	}
	pthread_mutex_lock(&rt->lock);
	if (!e->removed) {
		int rerr = registry_begin_lazy(rt->reg);

		if (!rerr)
			rerr = registry_metric_add(rt->reg, e->id, "suspend", ms);
		registry_finish(rt->reg, rerr);
	}
	pthread_mutex_unlock(&rt->lock);
}

/* Can e be suspended now, as far as the tree says?  rt->lock held. */
static bool idle_locked(const struct runtime *rt, const struct entity *e, double now)
{
	return e->sb && !e->removed && !e->busy_creating && !e->running && e->open_files == 0 &&
	       now - e->used_at >= rt->idle_suspend_s * 1000.0;
}

static int collect_idle(struct runtime *rt, struct entity *e, double now, struct entity ***v, size_t *n)
{
	int err = 0;

	for (size_t i = 0; !err && i < e->nverses; i++)
		err = collect_idle(rt, e->verses[i], now, v, n);
	for (size_t i = 0; !err && i < e->nsnapshots; i++)
		err = collect_idle(rt, e->snapshots[i], now, v, n);
	if (!err && idle_locked(rt, e, now) && !(err = entity_array_add(v, n, e)))
		e->refs++;
	return err;
}

static void idle_pass(struct runtime *rt)
{
	struct entity **idle = NULL;
	size_t n = 0, done = 0;

	pthread_mutex_lock(&rt->lock);
	for (size_t i = 0; i < rt->nworlds; i++)
		collect_idle(rt, rt->worlds[i], now_ms(), &idle, &n);
	pthread_mutex_unlock(&rt->lock);
	for (size_t i = 0; i < n; i++) {
		struct entity *e = idle[i];
		bool still;

		if (!__atomic_load_n(&rt->idle_stop, __ATOMIC_RELAXED) && pthread_mutex_trylock(&e->oplock) == 0) {
			pthread_mutex_lock(&rt->lock);
			still = idle_locked(rt, e, now_ms());
			pthread_mutex_unlock(&rt->lock);
			if (still) {
				sandbox_suspend(rt, e);
				done++;
			}
			pthread_mutex_unlock(&e->oplock);
		}
		runtime_put(rt, e);
	}
	free(idle);
	if (done)
		worldfs_log("idle_suspend: %zu sandboxes idle for %u s suspended", done, rt->idle_suspend_s);
}

static void *idle_main(void *arg)
{
	struct runtime *rt = arg;
	/* A few looks per period, so a world sleeps at most a quarter late. */
	double period = rt->idle_suspend_s * 250.0;

	if (period > 5000)
		period = 5000;
	if (period < 100)
		period = 100;
	pthread_mutex_lock(&rt->idle_mutex);
	while (!__atomic_load_n(&rt->idle_stop, __ATOMIC_RELAXED)) {
		struct timespec until;
		double t = now_ms() + period;

		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += (time_t)(period / 1000);
		until.tv_nsec += (long)((period - (double)(time_t)(period / 1000) * 1000) * 1e6);
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		while (!__atomic_load_n(&rt->idle_stop, __ATOMIC_RELAXED) && now_ms() < t)
			pthread_cond_timedwait(&rt->idle_wake, &rt->idle_mutex, &until);
		if (__atomic_load_n(&rt->idle_stop, __ATOMIC_RELAXED))
			break;
		pthread_mutex_unlock(&rt->idle_mutex);
		idle_pass(rt);
		pthread_mutex_lock(&rt->idle_mutex);
	}
	pthread_mutex_unlock(&rt->idle_mutex);
	return NULL;
}

int runtime_idle_start(struct runtime *rt, unsigned idle_suspend_s)
{
	pthread_condattr_t ca;
	int err;

	rt->idle_suspend_s = idle_suspend_s;
	if (!idle_suspend_s)
		return 0;
	pthread_mutex_init(&rt->idle_mutex, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&rt->idle_wake, &ca);
	pthread_condattr_destroy(&ca);
	__atomic_store_n(&rt->idle_stop, false, __ATOMIC_RELAXED);
	err = pthread_create(&rt->idle_thread, NULL, idle_main, rt);
	if (err) {
		pthread_cond_destroy(&rt->idle_wake);
		pthread_mutex_destroy(&rt->idle_mutex);
		rt->idle_suspend_s = 0;
		return -err;
	}
	rt->idle_running = true;
	return 0;
}

void runtime_idle_stop(struct runtime *rt)
{
	if (!rt->idle_running)
		return;
	pthread_mutex_lock(&rt->idle_mutex);
	__atomic_store_n(&rt->idle_stop, true, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&rt->idle_wake);
	pthread_mutex_unlock(&rt->idle_mutex);
	pthread_join(rt->idle_thread, NULL);
	pthread_cond_destroy(&rt->idle_wake);
	pthread_mutex_destroy(&rt->idle_mutex);
	rt->idle_running = false;
}
