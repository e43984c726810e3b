/* log.c: the log.  Everything written to stderr in this process (ours,
 * the backends', libfuse's, SQLite's) goes through a pipe to one thread
 * that stamps each line into STATE/worldfs.log and, while echoing, copies
 * it to the terminal worldfs was started from. */
#include <fcntl.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "backend/util/log.h"
#include "fs/log.h"
#include "fs/registry.h"

static struct {
	FILE *file;
	int echo_fd;          /* the original stderr, or -1 */
	pthread_t thread;
	bool running;
	pthread_mutex_t lock;
} log_sink = { .echo_fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER };

static void *log_pump(void *arg)
{
	FILE *in = fdopen((int)(intptr_t)arg, "r");
	char *line = NULL, now[32];
	size_t cap = 0;
	ssize_t n;

	if (!in)
		return NULL;
	while ((n = getline(&line, &cap, in)) > 0) {
		registry_now(now);
		pthread_mutex_lock(&log_sink.lock);
		if (log_sink.file)
			fprintf(log_sink.file, "%s %s%s", now, line, line[n - 1] == '\n' ? "" : "\n");
		if (log_sink.echo_fd >= 0 && write(log_sink.echo_fd, line, (size_t)n) < 0) {
			/* the terminal is gone: the file still has it */
		}
		pthread_mutex_unlock(&log_sink.lock);
	}
	free(line);
	fclose(in);
	return NULL;
}

void worldfs_log_open(const char *path, bool echo)
{
	/* Private (it holds names and failure texts of every user's worlds),
	 * also when an older worldfs made it with the umask's mode. */
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600), p[2];

	if (fd >= 0 && (fchmod(fd, 0600) < 0 || !(log_sink.file = fdopen(fd, "a"))))
		close(fd);
	if (log_sink.file)
		setvbuf(log_sink.file, NULL, _IOLBF, 0);
	if (pipe2(p, O_CLOEXEC) < 0)
		return;
	log_sink.echo_fd = echo ? fcntl(2, F_DUPFD_CLOEXEC, 3) : -1;
	fflush(stderr);
	dup2(p[1], 2);
	close(p[1]);
	setvbuf(stderr, NULL, _IOLBF, 0);
	log_sink.running = pthread_create(&log_sink.thread, NULL, log_pump, (void *)(intptr_t)p[0]) == 0;
	if (!log_sink.running) {
		close(p[0]);
		if (log_sink.echo_fd >= 0)
			dup2(log_sink.echo_fd, 2);
	}
}

void worldfs_log_echo(bool echo)
{
	pthread_mutex_lock(&log_sink.lock);
	if (!echo && log_sink.echo_fd >= 0) {
		close(log_sink.echo_fd);
		log_sink.echo_fd = -1;
	}
	pthread_mutex_unlock(&log_sink.lock);
}

void worldfs_log_close(void)
{
	int null = open("/dev/null", O_WRONLY | O_CLOEXEC);

	fflush(stderr);
	/* The pipe's last writer is fd 2: replacing it ends the pump. */
	if (log_sink.echo_fd >= 0)
		dup2(log_sink.echo_fd, 2);
	else if (null >= 0)
		dup2(null, 2);
	if (null >= 0)
		close(null);
	if (log_sink.running) {
		/* A child that kept a copy of fd 2 would hold the pipe open:
		 * wait a little, then leave the pump to the process exit. */
		struct timespec deadline;

		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_sec += 2;
		if (pthread_timedjoin_np(log_sink.thread, NULL, &deadline) != 0)
			return;
	}
	log_sink.running = false;
	worldfs_log_echo(false);
	if (log_sink.file)
		fclose(log_sink.file);
	log_sink.file = NULL;
}

void worldfs_log(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vline("", fmt, ap);
	va_end(ap);
}
