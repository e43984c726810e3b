/* session.h: a persistent POSIX sh session on top of Morph's exec, which
 * starts a fresh process for every command.  The session's state lives in
 * files inside the instance, under $HOME/.worldfs/ (so snapshots and
 * branches copy it): the variables (`set`, `export -p`, `readonly -p`
 * output, which POSIX makes re-inputable), the working directory, the
 * umask, and the functions the code defined.  Each run is one exec of
 *
 *     /bin/sh -c OUTER sh INNER NONCE TIMEOUT OUTPUT_MAX MODE CODE [NAME OFF LEN]...
 *
 * OUTER writes the code to a file, runs INNER under timeout(1), caps the
 * output at OUTPUT_MAX bytes and answers with a header line on stderr;
 * INNER restores the state, sources the code, and saves the state again.
 * The NONCE makes the exec request safe to repeat: a repeat waits for the
 * first try's run and answers with its output instead of running again.
 * Everything here but the scripts' run in the instance is pure. */
#ifndef WORLDFS_MORPH_SESSION_H
#define WORLDFS_MORPH_SESSION_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "backend/backend.h"

#define SESSION_NONCE_LEN 16       /* hex digits */
/* The largest argument passed in one exec: Linux refuses single argv
 * strings above 128 KiB (MAX_ARG_STRLEN); code beyond this is uploaded
 * in pieces first. */
#define SESSION_ARG_MAX 100000
#define SESSION_FN_MAX 64          /* function definitions carried per run */

/* A function definition found in the code: the name at code[name_off],
 * the whole definition "name() { ... }" at code[off..off+len). */
struct session_fn {
	size_t name_off, name_len;
	size_t off, len;
};

/* Function definitions `NAME() { ...; }` and `NAME() ( ... )` anywhere in
 * code outside other functions' bodies (not inside quotes, here-documents
 * or comments).  Returns how many were found, at most max. */
size_t session_find_functions(const char *code, size_t len, struct session_fn *fns, size_t max);

/* The code as an argument for printf's %b: backslashes doubled, NUL and
 * bytes that are not UTF-8 (JSON strings must be) written as \0ooo.
 * malloc'd, NUL-terminated; *outlen its length. */
char *session_encode(const char *code, size_t len, size_t *outlen);

/* Length of the longest prefix of enc[0..len) not over max bytes that
 * does not split an escape or a UTF-8 character (0 if max is too small). */
size_t session_chunk(const char *enc, size_t len, size_t max);

/* argv of one run.  enc: the encoded code, or NULL when it was uploaded
 * before with session_upload_command (pieces 0..n-1 under this nonce);
 * code/fns: the decoded code and its functions (offsets into it). */
json_t *session_run_command(const char *nonce, unsigned timeout_s, size_t output_max, const char *enc,
			    const struct session_fn *fns, size_t nfns, const char *code);

/* argv that stores piece `index` of an upload (repeatable). */
json_t *session_upload_command(const char *nonce, unsigned index, const char *piece, size_t len);

/* argv that gives a new world an empty session and answers "worldfs-ready";
 * and the one that only answers (a branch keeps its parent's session). */
json_t *session_fresh_command(void);
json_t *session_ping_command(void);
bool session_ready(const char *out, size_t len);

/* Turn what exec returned into a run result: strip the header, cap each
 * stream at output_max with the same marker as vm, add the notes for a
 * time-out and a session that ended.  A reply without the header (the
 * wrapper itself failed) is taken as it is.  out/err (malloc'ed, each
 * with its NUL after its length) are consumed. */
int session_result(const char *nonce, int exit_code, char *out, size_t out_len, char *err, size_t err_len,
		   size_t output_max, unsigned timeout_s, struct run_result *res);

/* A fresh random nonce (SESSION_NONCE_LEN hex digits). */
void session_nonce(char out[SESSION_NONCE_LEN + 1]);

#endif
