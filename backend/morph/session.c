/* session.c: the sh wrapper that carries a world's session from one Morph
 * exec to the next (see session.h), and the host's side of it: encoding
 * the code, finding its function definitions, reading the answer. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "backend/morph/session.h"
#include "backend/agent/proto.h"
#include "backend/util/strbuf.h"

/* OUTER: $1 INNER, $2 nonce, $3 timeout (s), $4 output cap (bytes), $5 mode
 * (i: the code is $6, %b-encoded; u: it was uploaded), then NAME OFF LEN
 * for each function definition in the code.
 *
 * The run directory run.NONCE is made with mkdir, which is atomic: a
 * repeated request finds it and waits for the first one's answer; `seen`
 * catches a repeat that comes after the directory was cleaned up.  The
 * run's stdout and stderr go to files (a background process may keep
 * writing to them; they are unlinked, never reused), and at most the cap
 * of each goes back.  Status: INNER writes it when the code ends (or
 * exits); no status file means the run was killed: by the timeout (status
 * 124 or, after -k, 137, once the time is up), or by something else (an
 * `exec` or a signal), which ends the session like a dead session shell. */
static const char outer_script[] =
	"D=${HOME:-/root}/.worldfs\n"
	"I=$1 N=$2 T=$3 M=$4 C=$5 X=$6\n"
	"shift 6\n"
	"R=$D/run.$N\n"
	"(umask 077 && mkdir -p \"$D/fn\") || exit 125\n"
	"if mkdir \"$R\" 2>/dev/null; then\n"
	"\tif grep -qxF \"$N\" \"$D/seen\" 2>/dev/null; then\n"
	"\t\trmdir \"$R\"\n"
	"\t\techo \"worldfs: run $N was answered before\" >&2\n"
	"\t\texit 125\n"
	"\tfi\n"
	"\techo \"$N\" >>\"$D/seen\"\n"
	"\tif [ \"$C\" = u ]; then\n"
	"\t\tcat \"$D/up.$N\".* >\"$R/code\" && rm -f \"$D/up.$N\".*\n"
	"\telse\n"
	"\t\tprintf '%b' \"$X\" >\"$R/code\"\n"
	"\tfi\n"
	"\tmkdir \"$R/fn\"\n"
	"\twhile [ $# -ge 3 ]; do\n"
	"\t\tdd if=\"$R/code\" of=\"$R/fn/$1\" bs=1 skip=\"$2\" count=\"$3\" 2>/dev/null\n"
	"\t\tshift 3\n"
	"\tdone\n"
	"\tt0=$(date +%s)\n"
	"\tif command -v timeout >/dev/null 2>&1; then\n"
	"\t\ttimeout -k 2 \"$T\" /bin/sh -c \"$I\" sh \"$D\" \"$R\" >\"$R/out\" 2>\"$R/err\" </dev/null\n"
	"\t\ts=$?\n"
	"\telse\n"
	"\t\t/bin/sh -c \"$I\" sh \"$D\" \"$R\" >\"$R/out\" 2>\"$R/err\" </dev/null &\n"
	"\t\tp=$!\n"
	"\t\t(sleep \"$T\"; : >\"$R/killed\"; kill -TERM \"$p\"; sleep 2; kill -KILL \"$p\") >/dev/null 2>&1 &\n"
	"\t\tw=$!\n"
	"\t\twait \"$p\"\n"
	"\t\ts=$?\n"
	"\t\tkill \"$w\" 2>/dev/null\n"
	"\tfi\n"
	"\tt=0 r=0\n"
	"\tif [ -f \"$R/status\" ]; then\n"
	"\t\tread -r s <\"$R/status\"\n"
	"\telif [ -f \"$R/killed\" ] || { [ \"$s\" -eq 124 ] || [ \"$s\" -eq 137 ]; } &&\n"
	"\t\t[ $(($(date +%s) - t0)) -ge \"$T\" ]; then\n"
	"\t\tt=1 s=124\n"
	"\telse\n"
	"\t\tr=1\n"
	"\tfi\n"
	"\t[ -f \"$R/reset\" ] && r=1\n"
	"\tif [ $r = 1 ]; then\n"
	"\t\trm -rf \"$D/vars\" \"$D/cwd\" \"$D/umask\" \"$D/fn\"\n"
	"\t\tmkdir \"$D/fn\"\n"
	"\tfi\n"
	"\tprintf 'worldfs-run %s %d %d %d %d %d\\n' \"$N\" \"$s\" \"$t\" \"$r\" \\\n"
	"\t\t\"$(($(wc -c <\"$R/out\")))\" \"$(($(wc -c <\"$R/err\")))\" >\"$R/head\"\n"
	"\t: >\"$R/done\"\n"
	"\tfor x in \"$D\"/run.*; do\n"
	"\t\t[ \"$x\" = \"$R\" ] || rm -rf \"$x\"\n"
	"\tdone\n"
	"\ttail -n 32 \"$D/seen\" >\"$D/seen.new\" && mv \"$D/seen.new\" \"$D/seen\"\n"
	"else\n"
	"\twhile [ ! -f \"$R/done\" ]; do\n"
	"\t\tsleep 1\n"
	"\tdone\n"
	"fi\n"
	"cat \"$R/head\" >&2\n"
	"dd if=\"$R/out\" bs=\"$M\" count=1 2>/dev/null\n"
	"dd if=\"$R/err\" bs=\"$M\" count=1 >&2 2>/dev/null\n"
	"read -r _ _ s _ <\"$R/head\"\n"
	"exit \"$s\"\n";

/* INNER: $1 the session directory D, $2 the run directory R.
 *
 * Restore: the cwd and umask are read first, while PATH is the
 * instance's; then the variables; then the functions (last, so that a
 * function named like a command cannot disturb the restore).  The code is
 * sourced, so a syntax error ends the run where it stands with status 2,
 * as in a script.  Save: after the code, from an EXIT trap when the shell
 * exits early, from a TERM trap when timeout(1) stops the run (the session
 * keeps what the run did before it was stopped).  An early exit whose code
 * parses was `exit` (or `set -e`, or an error of a special built-in): the
 * session ends, as a session shell would.  Functions: POSIX sh cannot list
 * them, so the host finds their definitions in the code; a definition is
 * kept while `command -V` says the name is a function.  Variables that
 * belong to the shell (PPID, LINENO, bash's read-only ones) are not
 * carried, nor are traps and `set -o` options.
 *
 * The code's first line: "#!/ABS/PATH [ARG]" runs it as a one-off script
 * of that interpreter (split as the kernel splits a "#!" line), in the
 * session's directory and environment; "#!python3" and "#!python" name
 * the persistent Python session, which Morph instances do not have:
 * status 127 and a note. */
static const char inner_script[] =
	"readonly __wfs_d=\"$1\" __wfs_r=\"$2\"\n"
	"set --\n"
	"__wfs_save() {\n"
	"\t__wfs_st=$1\n"
	"\ttrap - EXIT TERM\n"
	"\tset +eu\n"
	"\t__wfs_v=$(set; export -p; readonly -p)\n"
	"\tPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
	"\tcommand printf '%s\\n' \"$__wfs_v\" |\n"
	"\t\tcommand grep -v -E '^(export |readonly )?(PPID|LINENO|EUID|UID|SHELLOPTS|BASH[A-Z_]*|__wfs_[a-z_]*)=' \\\n"
	"\t\t>\"$__wfs_r/vars\"\n"
	"\tcommand pwd >\"$__wfs_r/cwd\" 2>/dev/null\n"
	"\tcommand umask >\"$__wfs_r/umask\"\n"
	"\tfor __wfs_f in \"$__wfs_r\"/fn/* \"$__wfs_d\"/fn/*; do\n"
	"\t\tcommand [ -f \"$__wfs_f\" ] || continue\n"
	"\t\t__wfs_n=${__wfs_f##*/}\n"
	"\t\tcase $(command -V \"$__wfs_n\" 2>/dev/null) in\n"
	"\t\t\"$__wfs_n is a\"*function*) command mv -f \"$__wfs_f\" \"$__wfs_d/fn/$__wfs_n\" 2>/dev/null ;;\n"
	"\t\t*) command rm -f \"$__wfs_f\" ;;\n"
	"\t\tesac\n"
	"\tdone\n"
	"\tif /bin/sh -n \"$__wfs_r/vars\" 2>/dev/null; then\n"
	"\t\tcommand mv -f \"$__wfs_r/vars\" \"$__wfs_r/cwd\" \"$__wfs_r/umask\" \"$__wfs_d/\"\n"
	"\telse\n"
	"\t\tcommand printf '[worldfs: the session variables could not be saved]\\n' >&2\n"
	"\tfi\n"
	"\tcommand [ \"${2-}\" = term ] || command printf '%s\\n' \"$__wfs_st\" >\"$__wfs_r/status\"\n"
	"}\n"
	"__wfs_exit() {\n"
	"\tif /bin/sh -n \"$__wfs_r/code\" 2>/dev/null; then\n"
	"\t\tcommand printf '%s\\n' \"$1\" >\"$__wfs_r/status\"\n"
	"\t\t: >\"$__wfs_r/reset\"\n"
	"\telse\n"
	"\t\t__wfs_save \"$1\"\n"
	"\tfi\n"
	"}\n"
	"__wfs_c=\n"
	"__wfs_m=\n"
	"[ -f \"$__wfs_d/cwd\" ] && __wfs_c=$(cat \"$__wfs_d/cwd\")\n"
	"[ -f \"$__wfs_d/umask\" ] && __wfs_m=$(cat \"$__wfs_d/umask\")\n"
	"[ -f \"$__wfs_d/vars\" ] && . \"$__wfs_d/vars\"\n"
	"[ -n \"$__wfs_m\" ] && umask \"$__wfs_m\"\n"
	"__wfs_o=${OLDPWD-__wfs_unset}\n"
	"[ -n \"$__wfs_c\" ] && command cd -- \"$__wfs_c\" 2>/dev/null\n"
	"if [ \"$__wfs_o\" = __wfs_unset ]; then unset OLDPWD; else OLDPWD=$__wfs_o; fi\n"
	"for __wfs_f in \"$__wfs_d\"/fn/*; do\n"
	"\t[ -f \"$__wfs_f\" ] && . \"$__wfs_f\"\n"
	"done\n"
	"unset __wfs_c __wfs_m __wfs_o __wfs_f\n"
	"trap '__wfs_exit \"$?\"' EXIT\n"
	"trap '__wfs_save 124 term; exit 124' TERM\n"
	"__wfs_x=\n"
	"IFS= read -r __wfs_x <\"$__wfs_r/code\" || :\n"
	"case $__wfs_x in\n"
	"'#!python3'|'#!python3'[[:space:]]*|'#!python'|'#!python'[[:space:]]*)\n"
	"\tcommand printf '[worldfs: python3: no persistent Python session with backend=morph; "
	"a one-off script runs: #!/usr/bin/python3]\\n' >&2\n"
	"\t__wfs_save 127\n"
	"\texit 127 ;;\n"
	"'#!'*)\n"
	"\t__wfs_i=$(command printf '%s\\n' \"$__wfs_x\" | command sed -n 's|^#![[:space:]]*\\(/[^[:space:]]*\\).*|\\1|p')\n"
	"\t__wfs_a=$(command printf '%s\\n' \"$__wfs_x\" | command sed -n "
	"'s|^#![[:space:]]*/[^[:space:]]*[[:space:]]*||; s|[[:space:]]*$||p')\n"
	"\tif [ -n \"$__wfs_i\" ] && [ -n \"$__wfs_a\" ]; then\n"
	"\t\t\"$__wfs_i\" \"$__wfs_a\" \"$__wfs_r/code\"\n"
	"\t\t__wfs_save \"$?\"\n"
	"\t\texit \"$__wfs_st\"\n"
	"\telif [ -n \"$__wfs_i\" ]; then\n"
	"\t\t\"$__wfs_i\" \"$__wfs_r/code\"\n"
	"\t\t__wfs_save \"$?\"\n"
	"\t\texit \"$__wfs_st\"\n"
	"\tfi ;;\n"
	"esac\n"
	"unset __wfs_x\n"
	". \"$__wfs_r/code\"\n"
	"__wfs_save \"$?\"\n"
	"exit \"$__wfs_st\"\n";

static const char upload_script[] =
	"D=${HOME:-/root}/.worldfs\n"
	"(umask 077 && mkdir -p \"$D\") && printf '%b' \"$2\" >\"$D/up.$1.$3\"\n";

static const char fresh_script[] =
	"D=${HOME:-/root}/.worldfs\n"
	"rm -rf \"$D\" && (umask 077 && mkdir -p \"$D/fn\") && echo worldfs-ready\n";

#define READY "worldfs-ready"

/* ---- encoding ---- */

/* Length of the valid UTF-8 sequence at p (0: not valid UTF-8). */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	unsigned char c = p[0];

	if (c >= 0x01 && c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
		return n >= 3 && p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 ? 3 : 0;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
		return n >= 4 && p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 && (p[3] & 0xc0) == 0x80 ? 4 : 0;
	}
	return 0;
}

char *session_encode(const char *code, size_t len, size_t *outlen)
{
	const unsigned char *p = (const unsigned char *)code;
	char *out = malloc(len * 5 + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len;) {
		size_t n = p[i] == '\\' ? 0 : utf8_len(p + i, len - i);
		if (p[i] == '\\') {
			*o++ = '\\';
			*o++ = '\\';
			i++;
		} else if (n == 0) {
			o += sprintf(o, "\\0%03o", p[i]);
			i++;
		} else {
			memcpy(o, p + i, n);
			o += n;
			i += n;
		}
	}
	*o = '\0';
	*outlen = (size_t)(o - out);
	return out;
}

size_t session_chunk(const char *enc, size_t len, size_t max)
{
	const unsigned char *p = (const unsigned char *)enc;
	size_t i = 0;

	while (i < len) {
		size_t n;
		if (p[i] == '\\')
			n = i + 1 < len && p[i + 1] == '0' ? 5 : 2;
		else
			n = p[i] < 0x80 ? 1 : p[i] >= 0xf0 ? 4 : p[i] >= 0xe0 ? 3 : 2;
		if (i + n > max || i + n > len)
			break;
		i += n;
	}
	return i;
}

/* ---- commands ---- */

static int push(json_t *a, const char *s, size_t len)
{
	return json_array_append_new(a, json_stringn(s, len));
}

static int push_str(json_t *a, const char *s)
{
	return push(a, s, strlen(s));
}

static json_t *command_new(const char *script)
{
	json_t *a = json_array();

	if (a && (push_str(a, "/bin/sh") || push_str(a, "-c") || push_str(a, script) || push_str(a, "sh"))) {
		json_decref(a);
		return NULL;
	}
	return a;
}

json_t *session_run_command(const char *nonce, unsigned timeout_s, size_t output_max, const char *enc,
			    const struct session_fn *fns, size_t nfns, const char *code)
{
	json_t *a = command_new(outer_script);
	char num[32];
	int err = 0;

	if (!a)
		return NULL;
	err |= push_str(a, inner_script);
	err |= push_str(a, nonce);
	snprintf(num, sizeof(num), "%u", timeout_s);
	err |= push_str(a, num);
	snprintf(num, sizeof(num), "%zu", output_max);
	err |= push_str(a, num);
	err |= push_str(a, enc ? "i" : "u");
	err |= push_str(a, enc ? enc : "");
	for (size_t i = 0; i < nfns && !err; i++) {
		err |= push(a, code + fns[i].name_off, fns[i].name_len);
		snprintf(num, sizeof(num), "%zu", fns[i].off);
		err |= push_str(a, num);
		snprintf(num, sizeof(num), "%zu", fns[i].len);
		err |= push_str(a, num);
	}
	if (err) {
		json_decref(a);
		return NULL;
	}
	return a;
}

json_t *session_upload_command(const char *nonce, unsigned index, const char *piece, size_t len)
{
	json_t *a = command_new(upload_script);
	char num[16];

	snprintf(num, sizeof(num), "%06u", index);
	if (a && (push_str(a, nonce) || push(a, piece, len) || push_str(a, num))) {
		json_decref(a);
		return NULL;
	}
	return a;
}

json_t *session_fresh_command(void)
{
	return command_new(fresh_script);
}

json_t *session_ping_command(void)
{
	return command_new("echo " READY "\n");
}

bool session_ready(const char *out, size_t len)
{
	return len >= strlen(READY) && memcmp(out, READY, strlen(READY)) == 0;
}

void session_nonce(char out[SESSION_NONCE_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char b[SESSION_NONCE_LEN / 2];

	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		for (size_t i = 0; i < sizeof(b); i++)
			b[i] = (unsigned char)((ts.tv_nsec >> (i * 3)) ^ (ts.tv_sec >> i) ^ (uintptr_t)&ts);
	}
	for (size_t i = 0; i < sizeof(b); i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[SESSION_NONCE_LEN] = '\0';
}

/* ---- the answer ---- */

/* A note on a line of its own. */
static int note(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int note(struct strbuf *sb, const char *fmt, ...)
{
	char text[256];
	va_list ap;
	int err = 0;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (sb->len && sb->buf[sb->len - 1] != '\n')
		err = strbuf_add(sb, "\n", 1);
	return err ? err : strbuf_addf(sb, "%s\n", text);
}

int session_result(const char *nonce, int exit_code, char *out, size_t out_len, char *err, size_t err_len,
		   size_t output_max, unsigned timeout_s, struct run_result *res)
{
	struct strbuf o = STRBUF_INIT, e = STRBUF_INIT;
	char want[64];
	unsigned long long out_total = out_len, err_total;
	int status = exit_code, timed_out = 0, reset = 0, rc = 0;
	size_t hl;
	const char *nl;

	memset(res, 0, sizeof(*res));
	snprintf(want, sizeof(want), "worldfs-run %s ", nonce);
	hl = strlen(want);
	nl = err_len > hl ? memchr(err, '\n', err_len) : NULL;
	if (nl && memcmp(err, want, hl) == 0 &&
	    sscanf(err + hl, "%d %d %d %llu %llu", &status, &timed_out, &reset, &out_total, &err_total) == 5) {
		size_t skip = (size_t)(nl - err) + 1;
		memmove(err, err + skip, err_len - skip + 1);
		err_len -= skip;
	} else {
		/* No header: the wrapper did not run to its end. */
		status = exit_code;
		out_total = out_len;
		err_total = err_len;
	}
	err_total = err_total > err_len ? err_total : err_len;
	out_total = out_total > out_len ? out_total : out_len;
	res->status = status < 0 || status > 255 ? 255 : status;
	/* out and err hold out_len and err_len bytes and their NULs. */
	strbuf_attach(&o, out, out_len, out_len + 1);
	strbuf_attach(&e, err, err_len, err_len + 1);
	strbuf_setlen(&o, out_len > output_max ? output_max : out_len);
	strbuf_setlen(&e, err_len > output_max ? output_max : err_len);
	if (out_total > output_max) {
		res->truncated = true;
		rc = strbuf_addf(&o, "\n" PROTO_NOTE_TRUNCATED "\n", output_max);
	}
	if (!rc && err_total > output_max) {
		res->truncated = true;
		rc = strbuf_addf(&e, "\n" PROTO_NOTE_TRUNCATED "\n", output_max);
	}
	if (!rc && timed_out) {
		res->timed_out = true;
		res->status = 124;
		rc = note(&e, PROTO_NOTE_TIMED_OUT, timeout_s * 1000u);
	}
	if (!rc && reset) {
		res->session_reset = true;
		rc = note(&e, PROTO_NOTE_SESSION_EXITED, "the session shell", res->status, "");
	}
	res->out = strbuf_detach(&o, &res->out_len);
	res->err = strbuf_detach(&e, &res->err_len);
	if (rc)
		run_result_release(res);
	return rc;
}
