/* test_morph.c: the pure parts of the morph backend: the HTTP status ->
 * errno table, back-off and Retry-After, the parsing of instance, snapshot,
 * exec and branch replies, and the session wrapper: encoding, chunking,
 * finding function definitions, the argv it makes, reading its answer;
 * and the wrapper scripts themselves, run here by /bin/sh as Morph's exec
 * would run them (a fresh process each time, HOME = a temp dir). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/morph/api.h"
#include "backend/morph/http.h"
#include "backend/morph/session.h"

/* ---- the status table, back-off, Retry-After ---- */

static void test_status_table(void **state)
{
	static const struct {
		long status;
		int err;
		bool retry;
	} cases[] = {
		{ 401, -EACCES, false }, { 403, -EACCES, false }, { 404, -ENOENT, false },
		{ 409, -EBUSY, false },  { 422, -EINVAL, false }, { 429, -EIO, true },
		{ 500, -EIO, true },     { 502, -EIO, true },     { 503, -EIO, true },
		{ 599, -EIO, true },     { 400, -EIO, false },    { 405, -EIO, false },
		{ 302, -EIO, false },    { 600, -EIO, false },
	};
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool retry = !cases[i].retry;
		assert_int_equal(morph_status_errno(cases[i].status, &retry), cases[i].err);
		assert_int_equal(retry, cases[i].retry);
	}
	assert_int_equal(morph_status_errno(404, NULL), -ENOENT);
}

static void test_backoff(void **state)
{
	(void)state;
	assert_int_equal(morph_backoff_ms(0, -1), MORPH_BACKOFF_BASE_MS);
	assert_int_equal(morph_backoff_ms(1, -1), 2 * MORPH_BACKOFF_BASE_MS);
	assert_int_equal(morph_backoff_ms(2, -1), 4 * MORPH_BACKOFF_BASE_MS);
	assert_int_equal(morph_backoff_ms(3, -1), 8 * MORPH_BACKOFF_BASE_MS);
	assert_int_equal(morph_backoff_ms(6, -1), MORPH_BACKOFF_CAP_MS);
	assert_int_equal(morph_backoff_ms(100, -1), MORPH_BACKOFF_CAP_MS);
	/* Retry-After wins, short or long, up to its own cap. */
	assert_int_equal(morph_backoff_ms(0, 2000), 2000);
	assert_int_equal(morph_backoff_ms(3, 0), 0);
	assert_int_equal(morph_backoff_ms(0, 10 * 60 * 1000), MORPH_RETRY_AFTER_CAP_MS);
	/* All the waits of one request, bounded. */
	long total = 0;
	for (unsigned a = 0; a + 1 < MORPH_ATTEMPTS; a++)
		total += morph_backoff_ms(a, -1);
	assert_true(total <= (MORPH_ATTEMPTS - 1) * (long)MORPH_BACKOFF_CAP_MS);
}

static void test_retry_after(void **state)
{
	time_t now = 1700000000;
	char date[64];
	struct tm tm;
	time_t later = now + 7;

	(void)state;
	assert_int_equal(morph_retry_after_ms("3", now), 3000);
	assert_int_equal(morph_retry_after_ms(" 5 ", now), 5000);
	assert_int_equal(morph_retry_after_ms("0", now), 0);
	assert_int_equal(morph_retry_after_ms("99999999999999", now), MORPH_RETRY_AFTER_CAP_MS);
	assert_int_equal(morph_retry_after_ms("3s", now), -1);
	assert_int_equal(morph_retry_after_ms("soon", now), -1);
	assert_int_equal(morph_retry_after_ms(NULL, now), -1);
	gmtime_r(&later, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	assert_int_equal(morph_retry_after_ms(date, now), 7000);
	assert_int_equal(morph_retry_after_ms(date, now + 100), 0);  /* in the past */
}

/* ---- replies ---- */

static json_t *parse(const char *text)
{
	json_error_t e;
	json_t *j = json_loads(text, JSON_ALLOW_NUL, &e);

	assert_non_null(j);
	return j;
}

static void test_parse_instance(void **state)
{
	struct morph_instance inst;
	json_t *j;

	(void)state;
	j = parse("{\"id\": \"morphvm_abc123\", \"object\": \"instance\", \"created\": 1, \"status\": \"paused\","
		  " \"spec\": {\"vcpus\": 1, \"memory\": 128, \"disk_size\": 700},"
		  " \"refs\": {\"snapshot_id\": \"snapshot_x\", \"image_id\": \"morphvm-minimal\"},"
		  " \"networking\": {\"internal_ip\": null, \"http_services\": []}, \"metadata\": {}}");
	assert_int_equal(morph_parse_instance(j, &inst), 0);
	assert_string_equal(inst.id, "morphvm_abc123");
	assert_string_equal(inst.status, "paused");
	assert_string_equal(inst.snapshot_id, "snapshot_x");
	json_decref(j);

	/* A branch's instances may carry only their id: pending then. */
	j = parse("{\"id\": \"morphvm_b\"}");
	assert_int_equal(morph_parse_instance(j, &inst), 0);
	assert_string_equal(inst.status, "pending");
	assert_string_equal(inst.snapshot_id, "");
	json_decref(j);

	/* No id, an id that cannot go into a path, not an object. */
	const char *bad[] = { "{\"status\": \"ready\"}", "{\"id\": \"../snapshot/x\"}", "{\"id\": \"\"}",
			      "{\"id\": 5}", "[\"morphvm_a\"]", "{\"id\": \"a\", \"status\": 3}",
			      /* A NUL inside: not the id or status it starts like (found by fuzz_morph). */
			      "{\"id\": \"morphvm_a\\u0000/../x\"}", "{\"id\": \"a\", \"status\": \"ready\\u0000x\"}",
			      "{\"id\": \"a\", \"refs\": {\"snapshot_id\": \"s\\u0000\"}}" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		j = parse(bad[i]);
		assert_int_equal(morph_parse_instance(j, &inst), -EIO);
		json_decref(j);
	}
	assert_true(morph_id_ok("snapshot_AZaz09-_"));
	assert_false(morph_id_ok("a/b"));
	assert_false(morph_id_ok("a b"));
	assert_false(morph_id_ok("a?b"));
	assert_false(morph_id_ok(NULL));
}

static void test_parse_snapshot(void **state)
{
	struct morph_snapshot snap;
	json_t *j;

	(void)state;
	j = parse("{\"id\": \"snapshot_1\", \"object\": \"snapshot\", \"created\": 2, \"status\": \"ready\","
		  " \"spec\": {\"vcpus\": 2, \"memory\": 4096, \"disk_size\": 50000},"
		  " \"refs\": {\"image_id\": \"morphvm-minimal\"}, \"digest\": null}");
	assert_int_equal(morph_parse_snapshot(j, &snap), 0);
	assert_string_equal(snap.id, "snapshot_1");
	assert_string_equal(snap.status, "ready");
	assert_int_equal(snap.disk_mb, 50000);
	json_decref(j);
	j = parse("{\"id\": \"snapshot_2\", \"status\": \"pending\"}");
	assert_int_equal(morph_parse_snapshot(j, &snap), 0);
	assert_int_equal(snap.disk_mb, 0);
	json_decref(j);
	j = parse("{\"status\": \"ready\"}");
	assert_int_equal(morph_parse_snapshot(j, &snap), -EIO);
	json_decref(j);
	j = parse("{\"id\": \"snapshot_1\\u0000x\", \"status\": \"ready\"}");
	assert_int_equal(morph_parse_snapshot(j, &snap), -EIO);
	json_decref(j);
}

static void test_parse_exec(void **state)
{
	struct morph_exec x;
	json_t *j;

	(void)state;
	j = parse("{\"exit_code\": 3, \"stdout\": \"a\\u0000b\\n\", \"stderr\": \"\\u00e9\"}");
	assert_int_equal(morph_parse_exec(j, &x), 0);
	assert_int_equal(x.exit_code, 3);
	assert_int_equal(x.out_len, 4);
	assert_memory_equal(x.out, "a\0b\n", 4);
	assert_int_equal(x.err_len, 2);
	assert_string_equal(x.err, "\xc3\xa9");
	morph_exec_release(&x);
	json_decref(j);

	j = parse("{\"exit_code\": -2147483648, \"stdout\": null}");
	assert_int_equal(morph_parse_exec(j, &x), 0);
	assert_int_equal(x.exit_code, INT_MIN);
	morph_exec_release(&x);
	json_decref(j);

	j = parse("{\"exit_code\": 0, \"stdout\": null}");
	assert_int_equal(morph_parse_exec(j, &x), 0);
	assert_int_equal(x.out_len, 0);
	assert_int_equal(x.err_len, 0);
	morph_exec_release(&x);
	json_decref(j);

	const char *bad[] = { "{\"stdout\": \"\", \"stderr\": \"\"}", "{\"exit_code\": \"0\"}",
			      "{\"exit_code\": 0, \"stdout\": 5}", "[]",
			      /* Beyond an int: not wrapped to 0 or 1 (found by fuzz_morph). */
			      "{\"exit_code\": 4294967296}", "{\"exit_code\": -4294967295}" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		j = parse(bad[i]);
		assert_int_equal(morph_parse_exec(j, &x), -EIO);
		assert_null(x.out);
		json_decref(j);
	}
}

static void test_parse_branch(void **state)
{
	struct morph_snapshot snap;
	struct morph_instance inst[2];
	size_t n;
	json_t *j;

	(void)state;
	j = parse("{\"snapshot\": {\"id\": \"snapshot_b\", \"status\": \"ready\"},"
		  " \"instances\": [{\"id\": \"morphvm_1\", \"status\": \"pending\"}, {\"id\": \"morphvm_2\"},"
		  " {\"id\": \"morphvm_3\"}]}");
	assert_int_equal(morph_parse_branch(j, &snap, inst, 2, &n), 0);
	assert_int_equal(n, 3);  /* counted, but only two kept */
	assert_string_equal(snap.id, "snapshot_b");
	assert_string_equal(inst[0].id, "morphvm_1");
	assert_string_equal(inst[1].id, "morphvm_2");
	json_decref(j);
	const char *bad[] = { "{\"snapshot\": {\"id\": \"snapshot_b\"}}", "{\"instances\": []}",
			      "{\"snapshot\": {\"id\": \"snapshot_b\"}, \"instances\": [{}]}" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		j = parse(bad[i]);
		assert_int_equal(morph_parse_branch(j, &snap, inst, 2, &n), -EIO);
		json_decref(j);
	}
}

/* ---- encoding and chunks ---- */

static void test_encode(void **state)
{
	const char code[] = "a\\b\xc3\xa9\xff\0z\xe2\x82\xac\xed\xa0\x80";
	size_t len;
	char *enc;

	(void)state;
	enc = session_encode(code, sizeof(code) - 1, &len);
	assert_non_null(enc);
	/* \ doubled; é and € kept; 0xff, NUL and a UTF-16 surrogate in octal. */
	assert_string_equal(enc, "a\\\\b\xc3\xa9\\0377\\0000z\xe2\x82\xac\\0355\\0240\\0200");
	assert_int_equal(len, strlen(enc));
	/* Valid UTF-8 for JSON. */
	json_t *s = json_stringn(enc, len);
	assert_non_null(s);
	json_decref(s);

	/* A piece never splits \\, \0ooo or a UTF-8 character. */
	assert_int_equal(session_chunk(enc, len, 1), 1);    /* "a" */
	assert_int_equal(session_chunk(enc, len, 2), 1);    /* not half of "\\\\" */
	assert_int_equal(session_chunk(enc, len, 3), 3);
	assert_int_equal(session_chunk(enc, len, 5), 4);    /* "b", not half of é */
	assert_int_equal(session_chunk(enc, len, 6), 6);
	assert_int_equal(session_chunk(enc, len, 10), 6);   /* not part of \0377 */
	assert_int_equal(session_chunk(enc, len, 11), 11);
	assert_int_equal(session_chunk(enc, len, 1000), len);
	assert_int_equal(session_chunk("\\\\", 2, 1), 0);
	free(enc);
}

/* ---- function definitions ---- */

static void expect_fns(const char *code, const char *const *want, size_t nwant)
{
	struct session_fn fns[8];
	size_t n = session_find_functions(code, strlen(code), fns, 8);
	char text[512];

	if (n != nwant)
		fail_msg("%s: %zu definitions found, %zu expected", code, n, nwant);
	for (size_t i = 0; i < n; i++) {
		snprintf(text, sizeof(text), "%.*s=%.*s", (int)fns[i].name_len, code + fns[i].name_off,
			 (int)fns[i].len, code + fns[i].off);
		assert_string_equal(text, want[i]);
	}
}

static void test_find_functions(void **state)
{
	(void)state;
	expect_fns("greet() { echo \"hi $1\"; }\n", (const char *[]){ "greet=greet() { echo \"hi $1\"; }" }, 1);
	expect_fns("X=1\nf ( ) {\n  echo '}'\n  g() { :; }\n}\ny() (cd /; pwd)\n",
		   (const char *[]){ "f=f ( ) {\n  echo '}'\n  g() { :; }\n}", "y=y() (cd /; pwd)" }, 2);
	expect_fns("h()\n{\n  case $1 in a) echo \"${x:-}\" ;; esac\n}", (const char *[]){
		"h=h()\n{\n  case $1 in a) echo \"${x:-}\" ;; esac\n}" }, 1);
	/* Not definitions: quoted, commented, in a here-document, in $(...). */
	expect_fns("echo 'f() { :; }' \"g() { :; }\"\n# h() { :; }\ncat <<EOF\nk() { :; }\nEOF\nx=$(m() { :; })\n",
		   NULL, 0);
	expect_fns("cat <<-'E'\n\tk() { :; }\n\tE\nj() { echo $(( (1+2) * 3 )) `echo }`; }\n",
		   (const char *[]){ "j=j() { echo $(( (1+2) * 3 )) `echo }`; }" }, 1);
	/* Inside a brace group or an if: still carried; inside a subshell: not. */
	expect_fns("{ a() { :; }; }\nif true; then b() { :; }; fi\n( c() { :; } )\n",
		   (const char *[]){ "a=a() { :; }", "b=b() { :; }" }, 2);
	/* Unterminated: nothing half-read. */
	expect_fns("u() { echo\n", NULL, 0);
	/* Calls are not definitions. */
	expect_fns("greet you\necho $(greet me)\n", NULL, 0);
	/* Nesting far deeper than any script: the scan gives up, it does not
	 * overflow the stack (3 MB of "${ crashed it; found by fuzz_session). */
	static const char *const nest[] = { "\"${", "${", "\"$((", "$(" };
	for (size_t k = 0; k < sizeof(nest) / sizeof(nest[0]); k++) {
		size_t unit = strlen(nest[k]), n = 1000000, len = 0;
		char *code = malloc(16 + n * unit);
		struct session_fn fns[2];
		assert_non_null(code);
		len += (size_t)sprintf(code, "a() { :; }\n: ");
		for (size_t i = 0; i < n; i++, len += unit)
			memcpy(code + len, nest[k], unit);
		assert_int_equal(session_find_functions(code, len, fns, 2), 1);
		free(code);
	}
}

/* ---- the argv ---- */

static const char *arg(json_t *argv, size_t i)
{
	return json_string_value(json_array_get(argv, i));
}

static void test_run_command(void **state)
{
	const char code[] = "X=1\nf() { echo f; }\n";
	struct session_fn fns[4];
	size_t nfns = session_find_functions(code, strlen(code), fns, 4), len;
	char *enc = session_encode(code, strlen(code), &len);
	json_t *argv;

	(void)state;
	argv = session_run_command("0123456789abcdef", 7, 1000, enc, fns, nfns, code);
	assert_non_null(argv);
	assert_int_equal(json_array_size(argv), 10 + 3);
	assert_string_equal(arg(argv, 0), "/bin/sh");
	assert_string_equal(arg(argv, 1), "-c");
	assert_non_null(strstr(arg(argv, 2), "timeout -k 2"));
	assert_string_equal(arg(argv, 3), "sh");
	assert_non_null(strstr(arg(argv, 4), ". \"$__wfs_r/code\""));
	assert_string_equal(arg(argv, 5), "0123456789abcdef");
	assert_string_equal(arg(argv, 6), "7");
	assert_string_equal(arg(argv, 7), "1000");
	assert_string_equal(arg(argv, 8), "i");
	assert_string_equal(arg(argv, 9), code);
	assert_string_equal(arg(argv, 10), "f");
	assert_string_equal(arg(argv, 11), "4");
	assert_string_equal(arg(argv, 12), "15");
	json_decref(argv);
	argv = session_run_command("0123456789abcdef", 7, 1000, NULL, NULL, 0, code);
	assert_string_equal(arg(argv, 8), "u");
	assert_string_equal(arg(argv, 9), "");
	json_decref(argv);
	argv = session_upload_command("0123456789abcdef", 3, enc, 4);
	assert_string_equal(arg(argv, 4), "0123456789abcdef");
	assert_string_equal(arg(argv, 5), "X=1\n");
	assert_string_equal(arg(argv, 6), "000003");
	json_decref(argv);
	free(enc);
}

/* Every script the host sends parses as POSIX sh (dash is strict). */
static void test_scripts_parse(void **state)
{
	json_t *cmds[] = { session_run_command("0123456789abcdef", 1, 64, "", NULL, 0, ""),
			   session_upload_command("0123456789abcdef", 0, "", 0), session_fresh_command(),
			   session_ping_command() };

	(void)state;
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		for (size_t k = 2; k <= (i == 0 ? 4u : 2u); k += 2) {
			pid_t pid = fork();
			int st;
			assert_true(pid >= 0);
			if (pid == 0) {
				execl("/bin/sh", "sh", "-n", "-c", arg(cmds[i], k), (char *)NULL);
				_exit(127);
			}
			assert_int_equal(waitpid(pid, &st, 0), pid);
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				fail_msg("script %zu/%zu does not parse:\n%s", i, k, arg(cmds[i], k));
		}
		json_decref(cmds[i]);
	}
}

/* ---- the answer ---- */

static char *dup_text(const char *s)
{
	char *p = strdup(s);

	assert_non_null(p);
	return p;
}

/* session_result on texts. */
static int result(int code, const char *out, const char *err, size_t max, unsigned timeout_s, struct run_result *r)
{
	return session_result("00112233445566ff", code, dup_text(out), strlen(out), dup_text(err), strlen(err), max,
			      timeout_s, r);
}

static void test_result(void **state)
{
	struct run_result r;

	(void)state;
	assert_int_equal(result(3, "hello\n", "worldfs-run 00112233445566ff 3 0 0 6 4\noops", 100, 60, &r), 0);
	assert_int_equal(r.status, 3);
	assert_false(r.timed_out || r.truncated || r.session_reset);
	assert_int_equal(r.out_len, 6);
	assert_memory_equal(r.out, "hello\n", 6);
	assert_int_equal(r.err_len, 4);
	assert_memory_equal(r.err, "oops", 4);
	run_result_release(&r);

	/* Output cut in the instance (total 5000 > 64): the marker follows. */
	char out[65];
	memset(out, 'x', 64);
	out[64] = '\0';
	assert_int_equal(result(0, out, "worldfs-run 00112233445566ff 0 0 0 5000 0\n", 64, 60, &r), 0);
	assert_true(r.truncated);
	assert_int_equal(r.out_len, 64 + strlen("\n[worldfs: output truncated at 64 bytes]\n"));
	assert_memory_equal(r.out + 64, "\n[worldfs: output truncated at 64 bytes]\n", r.out_len - 64);
	run_result_release(&r);

	/* Timed out, and a session that ended. */
	assert_int_equal(result(124, "", "worldfs-run 00112233445566ff 124 1 0 0 5\npart", 100, 2, &r), 0);
	assert_true(r.timed_out);
	assert_int_equal(r.status, 124);
	assert_string_equal(r.err, "part\n[worldfs: run killed after 2000 ms (exec_timeout)]\n");
	run_result_release(&r);
	assert_int_equal(result(5, "", "worldfs-run 00112233445566ff 5 0 1 0 0\n", 100, 2, &r), 0);
	assert_true(r.session_reset);
	assert_int_equal(r.status, 5);
	assert_string_equal(r.err, "[worldfs: session restarted: the session shell exited with status 5]\n");
	run_result_release(&r);

	/* Another nonce's header, or none: taken as it is, capped host-side. */
	assert_int_equal(result(127, "0123456789", "worldfs-run ffffffffffffffff 0 0 0 0 0\n", 8, 2, &r), 0);
	assert_int_equal(r.status, 127);
	assert_true(r.truncated);
	assert_memory_equal(r.out, "01234567\n[worldfs: output truncated at 8 bytes]\n", r.out_len);
	assert_memory_equal(r.err, "worldfs-\n[worldfs: output truncated at 8 bytes]\n", r.err_len);
	run_result_release(&r);
}

/* ---- the wrapper, run as Morph's exec runs it ---- */

struct local {
	char home[64];
};

static int local_setup(void **state)
{
	struct local *l = calloc(1, sizeof(*l));

	snprintf(l->home, sizeof(l->home), "/tmp/test_morph.XXXXXX");
	if (!mkdtemp(l->home))
		return -1;
	*state = l;
	return 0;
}

static int local_teardown(void **state)
{
	struct local *l = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", l->home);
	if (system(cmd) != 0)
		return -1;
	free(l);
	return 0;
}

static void drain(int fd, char **buf, size_t *len)
{
	char chunk[4096];
	ssize_t n = read(fd, chunk, sizeof(chunk));

	if (n > 0) {
		*buf = realloc(*buf, *len + n + 1);
		memcpy(*buf + *len, chunk, n);
		*len += n;
		(*buf)[*len] = '\0';
	}
}

/* Run argv in a fresh process with HOME, as an exec request would. */
static void run_argv(const char *home, json_t *argv, int *code, char **out, size_t *out_len, char **err,
		     size_t *err_len)
{
	int po[2], pe[2], st;
	size_t n = json_array_size(argv);
	char **av = calloc(n + 1, sizeof(*av));
	pid_t pid;

	for (size_t i = 0; i < n; i++)
		av[i] = (char *)arg(argv, i);
	assert_int_equal(pipe(po), 0);
	assert_int_equal(pipe(pe), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(po[1], 1);
		dup2(pe[1], 2);
		close(po[0]);
		close(pe[0]);
		setenv("HOME", home, 1);
		if (chdir(home) < 0)
			_exit(126);
		setpgid(0, 0);
		execv(av[0], av);
		_exit(127);
	}
	close(po[1]);
	close(pe[1]);
	*out = calloc(1, 1);
	*err = calloc(1, 1);
	*out_len = *err_len = 0;
	for (int open_fds = 2; open_fds > 0;) {
		struct pollfd p[2] = { { .fd = po[0], .events = POLLIN }, { .fd = pe[0], .events = POLLIN } };
		assert_true(poll(p, 2, 30000) > 0);
		for (int i = 0; i < 2; i++)
			if (p[i].revents && p[i].fd >= 0) {
				size_t before = i ? *err_len : *out_len;
				drain(p[i].fd, i ? err : out, i ? err_len : out_len);
				if ((i ? *err_len : *out_len) == before) {
					close(p[i].fd);
					if (i)
						pe[0] = -1;
					else
						po[0] = -1;
					open_fds--;
				}
			}
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	*code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	free(av);
}

/* One run of code through the wrapper. */
static void run_code(struct local *l, const char *code, unsigned timeout_s, struct run_result *r)
{
	struct session_fn fns[SESSION_FN_MAX];
	char nonce[SESSION_NONCE_LEN + 1], *out, *err, *enc;
	size_t nfns = session_find_functions(code, strlen(code), fns, SESSION_FN_MAX), len, out_len, err_len;
	json_t *argv;
	int ec;

	session_nonce(nonce);
	enc = session_encode(code, strlen(code), &len);
	argv = session_run_command(nonce, timeout_s, 1000, enc, fns, nfns, code);
	free(enc);
	run_argv(l->home, argv, &ec, &out, &out_len, &err, &err_len);
	json_decref(argv);
	assert_int_equal(session_result(nonce, ec, out, out_len, err, err_len, 1000, timeout_s, r), 0);
}

static void expect_run(struct local *l, const char *code, const char *out, int status)
{
	struct run_result r;

	run_code(l, code, 10, &r);
	if (r.out_len != strlen(out) || memcmp(r.out, out, r.out_len) != 0 || r.status != status)
		fail_msg("%s\n  stdout %.*s (want %s), status %d (want %d)\n  stderr %.*s", code, (int)r.out_len,
			 r.out, out, r.status, status, (int)r.err_len, r.err);
	run_result_release(&r);
}

static void test_session_local(void **state)
{
	struct local *l = *state;
	struct run_result r;
	json_t *fresh = session_fresh_command();
	char *out, *err;
	size_t ol, el;
	int ec;

	run_argv(l->home, fresh, &ec, &out, &ol, &err, &el);
	json_decref(fresh);
	assert_int_equal(ec, 0);
	assert_true(session_ready(out, ol));
	free(out);
	free(err);

	expect_run(l, "X=42; Y=\"it's\n two lines\"; export E=exported\n"
		   "greet() { echo \"hi $1\"; }\nmkdir -p sub && cd sub; umask 027\n", "", 0);
	expect_run(l, "echo \"$X|$Y|$(greet you)|${PWD##*/}|$(umask)\"; sh -c 'echo $E'",
		   "42|it's\n two lines|hi you|sub|0027\nexported\n", 0);
	/* Options of the caller's shell do not leak in, $0 and $@ are plain. */
	expect_run(l, "echo \"$0 $#\"", "sh 0\n", 0);
	/* A syntax error ends the run there; the session keeps what ran. */
	run_code(l, "Z=ran\necho first\nif then fi\n", 10, &r);
	assert_int_equal(r.status, 2);
	assert_memory_equal(r.out, "first\n", r.out_len);
	assert_false(r.session_reset);
	run_result_release(&r);
	expect_run(l, "echo $X $Z; unset -f greet", "42 ran\n", 0);
	expect_run(l, "greet x 2>/dev/null || echo gone", "gone\n", 0);
	/* A time-out: status 124, the session keeps what ran before it. */
	run_code(l, "W=before; sleep 30; W=after", 1, &r);
	assert_true(r.timed_out);
	assert_int_equal(r.status, 124);
	assert_non_null(strstr(r.err, "exec_timeout"));
	run_result_release(&r);
	expect_run(l, "echo $W $X", "before 42\n", 0);
	/* exit ends the session; the next run starts afresh, at HOME. */
	run_code(l, "exit 5", 10, &r);
	assert_int_equal(r.status, 5);
	assert_true(r.session_reset);
	run_result_release(&r);
	expect_run(l, "echo ${X:-unset}; [ \"$PWD\" = \"$HOME\" ] && echo at-home", "unset\nat-home\n", 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status_table),
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_retry_after),
		cmocka_unit_test(test_parse_instance),
		cmocka_unit_test(test_parse_snapshot),
		cmocka_unit_test(test_parse_exec),
		cmocka_unit_test(test_parse_branch),
		cmocka_unit_test(test_encode),
		cmocka_unit_test(test_find_functions),
		cmocka_unit_test(test_run_command),
		cmocka_unit_test(test_scripts_parse),
		cmocka_unit_test(test_result),
		cmocka_unit_test_setup_teardown(test_session_local, local_setup, local_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
