/* log.c: vm_log, the one function backend/vm logs through (log.h). */
#include <stdarg.h>
#include <stdio.h>

#include "backend/util/log.h"
#include "backend/vm/log.h"

void vm_log(const char *id, const char *fmt, ...)
{
	char prefix[96];
	va_list ap;

	if (!id)
		snprintf(prefix, sizeof(prefix), "vm: ");
	else if (!*id)
		prefix[0] = '\0';
	else
		snprintf(prefix, sizeof(prefix), "vm %.80s: ", id);
	va_start(ap, fmt);
	log_vline(prefix, fmt, ap);
	va_end(ap);
}
