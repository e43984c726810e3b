/* fault.c: see fault.h. */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/util/fault.h"

static struct {
	pthread_once_t once;
	char name[64];
	long at;           /* the arrival that crashes; 0: no fault point armed */
	long seen;
	pthread_mutex_t lock;
} fault = { .once = PTHREAD_ONCE_INIT, .lock = PTHREAD_MUTEX_INITIALIZER };

static void fault_read(void)
{
	const char *v = getenv("WORLDFS_FAULT");
	const char *colon;
	size_t n;

	if (!v || !*v)
		return;
	colon = strchr(v, ':');
	n = colon ? (size_t)(colon - v) : strlen(v);
	if (n >= sizeof(fault.name))
		return;
	memcpy(fault.name, v, n);
	fault.name[n] = '\0';
	fault.at = colon ? strtol(colon + 1, NULL, 10) : 1;
}

void fault_point(const char *name)
{
	static const char msg[] = "worldfs: fault point reached (WORLDFS_FAULT): exiting\n";
	bool hit;

	pthread_once(&fault.once, fault_read);
	if (fault.at <= 0 || strcmp(name, fault.name) != 0)
		return;
	pthread_mutex_lock(&fault.lock);
	hit = ++fault.seen == fault.at;
	pthread_mutex_unlock(&fault.lock);
	if (hit) {
		ssize_t w = write(2, msg, sizeof(msg) - 1);

		(void)w;
		_exit(FAULT_EXIT);
	}
}
