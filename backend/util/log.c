/* log.c: one log line, whole and clean; see log.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/util/log.h"

void log_vline(const char *prefix, const char *fmt, va_list ap)
{
	char small[2048], *msg = small;
	va_list again;
	int n;

	va_copy(again, ap);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	/* A longer line (long paths) is written whole; cut only without memory. */
	if (n >= (int)sizeof(small)) {
		msg = malloc((size_t)n + 1);
		if (msg)
			vsnprintf(msg, (size_t)n + 1, fmt, again);
		else
			msg = small;
	}
	va_end(again);
	for (char *p = msg; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	/* One fprintf per line, so lines of parallel threads don't mix. */
	fprintf(stderr, "worldfs: %s%s\n", prefix, msg);
	if (msg != small)
		free(msg);
}
