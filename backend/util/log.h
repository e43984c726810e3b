/* log.h: how every part of worldfs writes one log line: "worldfs: " and
 * a prefix naming the part, then the message, on stderr (which the log
 * pump, fs/log.c, stamps into STATE/worldfs.log).  Control characters in
 * the message (a newline in a path or in a guest's text) become '?', so
 * one message is always one line and nobody can forge another. */
#ifndef WORLDFS_UTIL_LOG_H
#define WORLDFS_UTIL_LOG_H

#include <stdarg.h>

/* prefix: "" or a part's name and ": " ("vm: ", "morph: "). */
void log_vline(const char *prefix, const char *fmt, va_list ap);

#endif
