/* test_log.c: the log (fs/log.c) under threads: lines written at once
 * from several threads, while another turns the terminal echo off, each
 * reach STATE/worldfs.log whole, once, stamped; closing the log ends its
 * pump.  Built with -Db_sanitize=thread, ThreadSanitizer watches the pump
 * and the echo switch. */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/log.h"

#define WRITERS 4
#define LINES 300

static void *writer(void *arg)
{
	int id = (int)(intptr_t)arg;

	for (int i = 0; i < LINES; i++)
		worldfs_log("writer %d line %d", id, i);
	return NULL;
}

static void *echo_off(void *arg)
{
	(void)arg;
	worldfs_log_echo(false);
	return NULL;
}

/* Every line of every writer, each once and whole, after a stamp. */
static void lines_whole(void **state)
{
	char dir[] = "/tmp/worldfs-log-XXXXXX", path[64], *line = NULL;
	static bool seen[WRITERS][LINES];
	pthread_t t[WRITERS], off;
	size_t cap = 0;
	int saved, null, n = 0;
	FILE *f;
	(void)state;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/worldfs.log", dir);
	/* The log takes over fd 2 and echoes to what it was: /dev/null here,
	 * so that the echo runs without filling the test's output. */
	saved = dup(2);
	null = open("/dev/null", O_WRONLY);
	assert_true(saved >= 0 && null >= 0);
	dup2(null, 2);
	close(null);
	worldfs_log_open(path, true);
	for (intptr_t i = 0; i < WRITERS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, writer, (void *)i), 0);
	assert_int_equal(pthread_create(&off, NULL, echo_off, NULL), 0);
	for (int i = 0; i < WRITERS; i++)
		pthread_join(t[i], NULL);
	pthread_join(off, NULL);
	worldfs_log_close();
	dup2(saved, 2);
	close(saved);

	f = fopen(path, "r");
	assert_non_null(f);
	while (getline(&line, &cap, f) > 0) {
		int id, i, at = 0;

		/* "2024-01-01T00:00:00.000Z worldfs: writer I line N\n" */
		assert_int_equal(sscanf(line, "%*[0-9T:.Z-] worldfs: writer %d line %d\n%n", &id, &i, &at), 2);
		assert_int_equal((size_t)at, strlen(line));
		assert_true(id >= 0 && id < WRITERS && i >= 0 && i < LINES);
		assert_false(seen[id][i]);
		seen[id][i] = true;
		n++;
	}
	free(line);
	fclose(f);
	assert_int_equal(n, WRITERS * LINES);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(lines_whole),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
