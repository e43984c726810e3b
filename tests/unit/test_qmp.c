/* test_qmp.c: QMP line splitting and message classification, and the
 * client's command loop against a scripted peer on a socketpair. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/vm/qmp.h"

#define GREETING "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": [\"oob\"]}}\r\n"

static void feed(struct qmp_lines *l, const char *s)
{
	assert_int_equal(qmp_lines_feed(l, s, strlen(s)), 0);
}

static void test_lines_partial(void **state)
{
	struct qmp_lines l = { 0 };
	size_t len;
	char *line;

	(void)state;
	feed(&l, "{\"retu");
	assert_null(qmp_lines_next(&l, &len));
	feed(&l, "rn\": {}}\r");
	assert_null(qmp_lines_next(&l, &len));
	feed(&l, "\n{\"event\": \"STOP\"}\n\n{\"ret");
	line = qmp_lines_next(&l, &len);
	assert_non_null(line);
	assert_string_equal(line, "{\"return\": {}}");
	assert_int_equal(len, strlen(line));
	assert_string_equal(qmp_lines_next(&l, &len), "{\"event\": \"STOP\"}");
	assert_string_equal(qmp_lines_next(&l, &len), "");
	assert_int_equal(len, 0);
	assert_null(qmp_lines_next(&l, &len));
	feed(&l, "urn\": 1}\n");
	assert_string_equal(qmp_lines_next(&l, &len), "{\"return\": 1}");
	assert_null(qmp_lines_next(&l, &len));
	qmp_lines_release(&l);
}

static void test_lines_too_long(void **state)
{
	struct qmp_lines l = { 0 };
	size_t n = QMP_LINE_MAX / 4;
	char *big = malloc(n);

	(void)state;
	assert_non_null(big);
	memset(big, 'x', n);
	for (int i = 0; i < 4; i++)
		assert_int_equal(qmp_lines_feed(&l, big, n), 0);
	assert_int_equal(qmp_lines_feed(&l, "x", 1), -E2BIG);
	/* The stream resynchronizes at the next line. */
	feed(&l, "\n{\"return\": {}}\n");
	assert_string_equal(qmp_lines_next(&l, NULL), "");
	assert_string_equal(qmp_lines_next(&l, NULL), "{\"return\": {}}");
	free(big);
	qmp_lines_release(&l);
}

static void test_parse_greeting(void **state)
{
	struct qmp_msg m;

	(void)state;
	assert_int_equal(qmp_msg_parse(GREETING, strlen(GREETING) - 2, &m), 0);
	assert_int_equal(m.kind, QMP_GREETING);
	assert_false(m.has_id);
	qmp_msg_release(&m);
}

static void test_parse_return(void **state)
{
	const char *s = "{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": 7}";
	struct qmp_msg m;

	(void)state;
	assert_int_equal(qmp_msg_parse(s, strlen(s), &m), 0);
	assert_int_equal(m.kind, QMP_RETURN);
	assert_true(m.has_id);
	assert_int_equal(m.id, 7);
	assert_string_equal(json_string_value(json_object_get(m.ret, "status")), "running");
	qmp_msg_release(&m);
	assert_null(m.root);
}

static void test_parse_error(void **state)
{
	const char *s = "{\"id\": 3, \"error\": {\"class\": \"CommandNotFound\", "
			"\"desc\": \"The command nope has not been found\"}}";
	const char *bare = "{\"error\": {}}";
	struct qmp_msg m;

	(void)state;
	assert_int_equal(qmp_msg_parse(s, strlen(s), &m), 0);
	assert_int_equal(m.kind, QMP_ERROR);
	assert_int_equal(m.id, 3);
	assert_string_equal(m.err_class, "CommandNotFound");
	assert_string_equal(m.err_desc, "The command nope has not been found");
	qmp_msg_release(&m);

	assert_int_equal(qmp_msg_parse(bare, strlen(bare), &m), 0);
	assert_int_equal(m.kind, QMP_ERROR);
	assert_false(m.has_id);
	assert_string_equal(m.err_class, "");
	assert_string_equal(m.err_desc, "");
	qmp_msg_release(&m);
}

static void test_parse_event(void **state)
{
	const char *s = "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, "
			"\"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}";
	struct qmp_msg m;

	(void)state;
	assert_int_equal(qmp_msg_parse(s, strlen(s), &m), 0);
	assert_int_equal(m.kind, QMP_EVENT);
	assert_string_equal(m.event, "MIGRATION");
	qmp_msg_release(&m);
}

static void test_parse_garbage(void **state)
{
	static const char *const bad[] = {
		"", "garbage", "{\"return\": ", "[1, 2]", "42", "{}",
		"{\"hello\": 1}", "{\"error\": \"no\"}", "{\"event\": 5}",
		"{\"QMP\": 1}", "{\"return\": 1, \"return\": 2}",
	};
	struct qmp_msg m;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(qmp_msg_parse(bad[i], strlen(bad[i]), &m), -EPROTO);
		assert_null(m.root);
	}
}

/* --- against a scripted peer --------------------------------------------- */

struct peer {
	int sv[2];  /* [0] the client's end (owned by struct qmp once open), [1] ours */
};

static void say(struct peer *p, const char *s)
{
	assert_int_equal(write(p->sv[1], s, strlen(s)), (ssize_t)strlen(s));
}

/* Everything the client has sent so far. */
static char *heard(struct peer *p)
{
	static char buf[8192];
	ssize_t n = recv(p->sv[1], buf, sizeof(buf) - 1, MSG_DONTWAIT);

	buf[n < 0 ? 0 : n] = '\0';
	return buf;
}

static struct qmp *open_scripted(struct peer *p)
{
	struct qmp *q = NULL;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p->sv), 0);
	say(p, GREETING);
	say(p, "{\"return\": {}, \"id\": 1}\r\n");
	assert_int_equal(qmp_open_fd(&q, p->sv[0], 1000), 0);
	assert_non_null(strstr(heard(p), "\"execute\":\"qmp_capabilities\""));
	return q;
}

static void test_command_events_first(void **state)
{
	struct peer p;
	struct qmp *q = open_scripted(&p);
	json_t *ret = NULL;
	const json_t *ev;

	(void)state;
	say(&p, "{\"event\": \"STOP\", \"data\": {}}\r\n");
	say(&p, "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"active\"}}\r\n");
	say(&p, "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}\r\n");
	say(&p, "{\"return\": {\"status\": \"paused\"}, \"id\": 2}\r\n");
	assert_int_equal(qmp_command(q, "query-status", NULL, &ret, 1000), 0);
	assert_string_equal(json_string_value(json_object_get(ret, "status")), "paused");
	json_decref(ret);
	assert_non_null(strstr(heard(&p), "\"execute\":\"query-status\""));

	ev = qmp_last_event(q, "MIGRATION");
	assert_non_null(ev);
	assert_string_equal(json_string_value(json_object_get(json_object_get(ev, "data"), "status")),
			    "completed");
	assert_non_null(qmp_last_event(q, "STOP"));
	assert_null(qmp_last_event(q, "RESUME"));
	qmp_forget_events(q);
	assert_null(qmp_last_event(q, "STOP"));
	qmp_close(q);
	close(p.sv[1]);
}

static void test_command_args_and_error(void **state)
{
	struct peer p;
	struct qmp *q = open_scripted(&p);
	json_t *ret = NULL;

	(void)state;
	say(&p, "{\"id\": 2, \"error\": {\"class\": \"GenericError\", \"desc\": \"no migration\"}}\n");
	assert_int_equal(qmp_command(q, "migrate", json_pack("{s:s}", "uri", "fd:x"), &ret, 1000),
			 -EREMOTEIO);
	assert_null(ret);
	assert_string_equal(qmp_error_class(q), "GenericError");
	assert_string_equal(qmp_error_desc(q), "no migration");
	assert_non_null(strstr(heard(&p), "\"arguments\":{\"uri\":\"fd:x\"}"));

	/* The next success clears the error. */
	say(&p, "{\"return\": {}, \"id\": 3}\n");
	assert_int_equal(qmp_command(q, "cont", NULL, NULL, 1000), 0);
	assert_string_equal(qmp_error_class(q), "");
	qmp_close(q);
	close(p.sv[1]);
}

static void test_command_stale_reply_and_timeout(void **state)
{
	struct peer p;
	struct qmp *q = open_scripted(&p);
	json_t *ret = NULL;

	(void)state;
	/* No answer: time-out. */
	assert_int_equal(qmp_command(q, "query-migrate", NULL, &ret, 50), -ETIMEDOUT);
	/* Its late answer must not be taken for the next command's. */
	say(&p, "{\"return\": {\"status\": \"active\"}, \"id\": 2}\n");
	say(&p, "{\"return\": {\"status\": \"completed\"}, \"id\": 3}\n");
	assert_int_equal(qmp_command(q, "query-migrate", NULL, &ret, 1000), 0);
	assert_string_equal(json_string_value(json_object_get(ret, "status")), "completed");
	json_decref(ret);
	qmp_close(q);
	close(p.sv[1]);
}

static void test_command_garbage_then_recover(void **state)
{
	struct peer p;
	struct qmp *q = open_scripted(&p);

	(void)state;
	say(&p, "this is not json\n");
	assert_int_equal(qmp_command(q, "stop", NULL, NULL, 1000), -EPROTO);
	say(&p, "{\"return\": {}, \"id\": 3}\n");
	assert_int_equal(qmp_command(q, "stop", NULL, NULL, 1000), 0);
	qmp_close(q);
	close(p.sv[1]);
}

static void test_command_peer_gone(void **state)
{
	struct peer p;
	struct qmp *q = open_scripted(&p);

	(void)state;
	say(&p, "{\"return\": {}, \"i");  /* cut mid-line */
	close(p.sv[1]);
	assert_int_equal(qmp_command(q, "quit", NULL, NULL, 1000), -EPIPE);
	qmp_close(q);
}

static void test_open_bad_greeting(void **state)
{
	struct peer p;
	struct qmp *q = NULL;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p.sv), 0);
	say(&p, "{\"return\": {}}\n");
	assert_int_equal(qmp_open_fd(&q, p.sv[0], 1000), -EPROTO);
	assert_null(q);
	close(p.sv[1]);
}

static void test_open_no_socket(void **state)
{
	struct qmp *q = NULL;

	(void)state;
	assert_int_equal(qmp_open(&q, "/nonexistent/worldfs-test/qmp.sock", 50), -ETIMEDOUT);
	assert_null(q);
}

static void test_send_fd(void **state)
{
	struct peer p;
	struct qmp *q = open_scripted(&p);
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof(int))];
	} ctl;
	char buf[512];
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) - 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = ctl.space, .msg_controllen = sizeof(ctl.space) };
	struct cmsghdr *c;
	ssize_t n;
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC), got;

	(void)state;
	assert_true(fd >= 0);
	say(&p, "{\"return\": {}, \"id\": 2}\n");
	assert_int_equal(qmp_send_fd(q, "snap", fd, 1000), 0);
	n = recvmsg(p.sv[1], &mh, MSG_DONTWAIT);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_non_null(strstr(buf, "\"execute\":\"getfd\""));
	assert_non_null(strstr(buf, "\"fdname\":\"snap\""));
	c = CMSG_FIRSTHDR(&mh);
	assert_non_null(c);
	assert_int_equal(c->cmsg_type, SCM_RIGHTS);
	memcpy(&got, CMSG_DATA(c), sizeof(int));
	assert_true(got >= 0);
	close(got);
	close(fd);
	qmp_close(q);
	close(p.sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines_partial),
		cmocka_unit_test(test_lines_too_long),
		cmocka_unit_test(test_parse_greeting),
		cmocka_unit_test(test_parse_return),
		cmocka_unit_test(test_parse_error),
		cmocka_unit_test(test_parse_event),
		cmocka_unit_test(test_parse_garbage),
		cmocka_unit_test(test_command_events_first),
		cmocka_unit_test(test_command_args_and_error),
		cmocka_unit_test(test_command_stale_reply_and_timeout),
		cmocka_unit_test(test_command_garbage_then_recover),
		cmocka_unit_test(test_command_peer_gone),
		cmocka_unit_test(test_open_bad_greeting),
		cmocka_unit_test(test_open_no_socket),
		cmocka_unit_test(test_send_fd),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
