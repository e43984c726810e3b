/* log.h: worldfs's log.  worldfs_log writes one line to stderr.  After
 * worldfs_log_open, stderr (of the whole process: ours, the backends',
 * libfuse's, SQLite's) feeds the log file STATE/worldfs.log, each line
 * timestamped, and is echoed to the original stderr while echo is on. */
#ifndef WORLDFS_LOG_H
#define WORLDFS_LOG_H

#include <stdbool.h>

/* Control characters in the message (a newline in a path) become '?'. */
void worldfs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Call it after any fork: it starts a thread. */
void worldfs_log_open(const char *path, bool echo);
void worldfs_log_echo(bool echo);
/* Back to the original stderr (or /dev/null); the pump ends. */
void worldfs_log_close(void);

#endif
