/* log.c: vm_log, the one function backend/vm logs through (log.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/vm/log.h"

void vm_log(const char *id, const char *fmt, ...)
{
	char small[2048], *msg = small;
	va_list ap, again;
	int n;

	va_start(ap, fmt);
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
	va_end(ap);
	if (!id)
		fprintf(stderr, "worldfs: vm: %s\n", msg);
	else if (!*id)
		fprintf(stderr, "worldfs: %s\n", msg);
	else
		fprintf(stderr, "worldfs: vm %s: %s\n", id, msg);
	if (msg != small)
		free(msg);
}
