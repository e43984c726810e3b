/* diff.c: see diff.h.  Nothing from the guest is trusted: the text's
 * size is bounded, each piece must be the next piece of the same text,
 * an errno outside 1..4095 is EIO (fs_reply_status). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend/agent/fsproto.h"
#include "fs/diff.h"
#include "fs/log.h"

/* One pass over the guest's text: its first request computes it, the
 * next ones page it out by its token. */
static int diff_fetch(struct runtime *rt, struct entity *e, char **buf, size_t *len)
{
	uint64_t token = 0, total = 0, off = 0;
	char *text = NULL;
	int rc;

	do {
		struct fs_req r = { .op = FS_DIFF, .path = "/", .path_len = 1, .off = off, .arg = token };
		const uint8_t *body, *data;
		uint8_t *reply = NULL;
		size_t rlen = 0, body_len, n;
		uint64_t tk, tot;

		rc = runtime_fs(rt, e, &r, &reply, &rlen);
		if (rc == 0)
			rc = fs_reply_status(reply, rlen, &body, &body_len);
		if (rc == 0 && fs_diff_parse(body, body_len, &tk, &tot, &data, &n) < 0)
			rc = -EIO;
		if (rc == 0 && !text) {
			if (tot > DIFF_MAX) {
				worldfs_log("%s: diff: the guest's text is %llu bytes, more than %u: refused", e->id,
					    (unsigned long long)tot, DIFF_MAX);
				rc = -EFBIG;
			} else if (tk == 0 || !(text = malloc(tot + 1))) {
				rc = tk == 0 ? -EIO : -ENOMEM;
			}
			token = tk;
			total = tot;
		}
		/* Each piece is the same text's, and the next piece of it. */
		if (rc == 0 && (tk != token || tot != total || n > total - off || (n == 0 && off < total)))
			rc = -EIO;
		if (rc == 0) {
			memcpy(text + off, data, n);
			off += n;
		}
		free(reply);
	} while (rc == 0 && off < total);
	if (rc < 0) {
		free(text);
		return rc;
	}
	text[total] = '\0';
	*buf = text;
	*len = (size_t)total;
	return 0;
}

int guest_diff(struct runtime *rt, struct entity *e, char **buf, size_t *len)
{
	int rc = -ESTALE;

	*buf = NULL;
	*len = 0;
	/* ESTALE: another reader's diff replaced this one's text midway. */
	for (int tries = 0; rc == -ESTALE && tries < 3; tries++)
		rc = diff_fetch(rt, e, buf, len);
	if (rc < 0 && rc != -EFBIG && rc != -ENOENT)
		worldfs_log("%s: diff: %s", e->id, rc == -ENODATA ? "the guest has no record of its files to compare with"
							       : strerror(-rc));
	return rc;
}
