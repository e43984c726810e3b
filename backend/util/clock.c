/* clock.c: monotonic milliseconds; see clock.h. */
#include <errno.h>
#include <stdint.h>
#include <time.h>

#include "backend/util/clock.h"

double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

int ms_left(double deadline)
{
	double left;

	if (deadline < 0)
		return -1;
	left = deadline - now_ms();
	return left <= 0 ? 0 : left >= INT32_MAX ? INT32_MAX : (int)left + 1;
}

void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}
