/* fuzz_qmp.c: libFuzzer target for the pure parts of the QMP client
 * (backend/vm/qmp.c): what QEMU writes to its monitor socket, cut into
 * reads of varying sizes, goes through qmp_lines_feed/qmp_lines_next, and
 * every line through qmp_msg_parse.  The first byte sets the read sizes;
 * the rest is the stream.  Checked: the lines are exactly the stream's
 * "\n"-ended lines (one "\r" before the "\n" dropped), NUL-terminated, and
 * each parsed message is consistent with its JSON. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include <jansson.h>

#include "backend/vm/qmp.h"
#include "tests/fuzz/fuzz.h"

static void message(const char *line, size_t len)
{
	struct qmp_msg m;
	json_t *id;

	memset(&m, 0x5a, sizeof(m));
	if (qmp_msg_parse(line, len, &m) < 0) {
		/* m is left empty */
		CHECK(m.root == NULL && m.ret == NULL && m.event == NULL && !m.has_id);
		return;
	}
	CHECK(json_is_object(m.root));
	id = json_object_get(m.root, "id");
	CHECK(m.has_id == json_is_integer(id));
	CHECK(!m.has_id || m.id == json_integer_value(id));
	switch (m.kind) {
	case QMP_RETURN:
		CHECK(m.ret != NULL && m.ret == json_object_get(m.root, "return"));
		break;
	case QMP_ERROR:
		CHECK(json_is_object(json_object_get(m.root, "error")));
		CHECK(m.err_class != NULL && m.err_desc != NULL);
		/* Strings of the line: readable to their NULs, no longer than it. */
		CHECK(strlen(m.err_class) + strlen(m.err_desc) <= len);
		break;
	case QMP_EVENT:
		CHECK(m.event != NULL && m.event == json_string_value(json_object_get(m.root, "event")));
		break;
	case QMP_GREETING:
		CHECK(json_is_object(json_object_get(m.root, "QMP")));
		break;
	default:
		CHECK(!"a kind qmp.h does not list");
	}
	qmp_msg_release(&m);
	CHECK(m.root == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	unsigned sizes = (unsigned)fuzz_take(&in, 1);
	const char *stream = (const char *)in.p;
	size_t len = in.left, fed = 0, next = 0;  /* next: where the next line starts */
	struct qmp_lines l = { 0 };
	unsigned k = 0;

	while (fed < len) {
		/* Reads of 1 to 64 bytes, varying with the first byte. */
		size_t n = 1 + ((sizes * 37u + k++ * 11u) % 64u);
		char *line;
		size_t ll;

		if (n > len - fed)
			n = len - fed;
		CHECK(qmp_lines_feed(&l, stream + fed, n) == 0);
		fed += n;
		while ((line = qmp_lines_next(&l, &ll))) {
			const char *nl = memchr(stream + next, '\n', fed - next);
			size_t want;

			CHECK(nl != NULL);
			want = (size_t)(nl - (stream + next));
			if (want > 0 && stream[next + want - 1] == '\r')
				want--;
			CHECK(ll == want && memcmp(line, stream + next, ll) == 0 && line[ll] == '\0');
			next = (size_t)(nl - stream) + 1;
			message(line, ll);
		}
		/* No complete line is left behind. */
		CHECK(!memchr(stream + next, '\n', fed - next));
	}
	qmp_lines_release(&l);
	return 0;
}
