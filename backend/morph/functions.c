/* functions.c: finding the function definitions in a run's code, so that
 * the session can carry them (POSIX sh has no way to list its functions).
 * A light scan of sh syntax: enough to skip quotes, expansions, comments
 * and here-documents, and to match the braces of a definition's body. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "backend/morph/session.h"

#define NONE SIZE_MAX
#define HEREDOC_MAX 8
#define SCAN_DEPTH_MAX 64

struct scanner {
	const char *s;
	size_t len;
	unsigned depth;
	struct {
		char delim[128];
		bool strip_tabs;
	} here[HEREDOC_MAX];
	size_t nhere;
	struct session_fn *fns;
	size_t max, n;
};

static bool is_meta(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == ';' || c == '&' || c == '|' ||
	       c == '(' || c == ')' || c == '<' || c == '>';
}

static bool is_name(const char *s, size_t n)
{
	if (n == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

static bool word_is(const char *s, size_t n, const char *w)
{
	return strlen(w) == n && memcmp(s, w, n) == 0;
}

static size_t scan(struct scanner *sc, size_t i, char want, bool record);
static size_t skip_part(struct scanner *sc, size_t i);

static size_t skip_backquote(struct scanner *sc, size_t i)
{
	for (i++; i < sc->len; i++) {
		if (sc->s[i] == '\\')
			i++;
		else if (sc->s[i] == '`')
			return i + 1;
	}
	return NONE;
}

/* From an opening '"', '${' or '$((' to after its end; inside, quotes and
 * expansions nest. */
static size_t skip_nested_in(struct scanner *sc, size_t i, char close, int parens)
{
	while (i < sc->len) {
		char c = sc->s[i];
		if (close == '"' && c == '"')
			return i + 1;
		if (close == '}' && c == '}')
			return i + 1;
		if (close == ')' && c == ')' && --parens == 0)
			return i + 1;
		if (close == ')' && c == '(') {
			parens++;
			i++;
		} else if (c == '\\' || c == '`' || c == '$' || (close != '"' && (c == '"' || c == '\''))) {
			i = skip_part(sc, i);
			if (i == NONE)
				return NONE;
		} else {
			i++;
		}
	}
	return NONE;
}

/* skip_nested_in, counted in sc->depth as scan is: "${"${"${... nests
 * only SCAN_DEPTH_MAX deep (NONE beyond), so that no code, up to 16 MiB
 * of it, can make the recursion overflow the thread's stack. */
static size_t skip_nested(struct scanner *sc, size_t i, char close, int parens)
{
	size_t ret = NONE;

	if (++sc->depth <= SCAN_DEPTH_MAX)
		ret = skip_nested_in(sc, i, close, parens);
	sc->depth--;
	return ret;
}

/* One unit of a word at s[i]: an escape, a quoted string, an expansion,
 * or a plain character. */
static size_t skip_part(struct scanner *sc, size_t i)
{
	const char *s = sc->s;
	const char *q;

	switch (s[i]) {
	case '\\':
		return i + 2 <= sc->len ? i + 2 : sc->len;
	case '\'':
		q = memchr(s + i + 1, '\'', sc->len - i - 1);
		return q ? (size_t)(q - s) + 1 : NONE;
	case '"':
		return skip_nested(sc, i + 1, '"', 0);
	case '`':
		return skip_backquote(sc, i);
	case '$':
		if (i + 2 < sc->len && s[i + 1] == '(' && s[i + 2] == '(')
			return skip_nested(sc, i + 3, ')', 2);
		if (i + 1 < sc->len && s[i + 1] == '(')
			return scan(sc, i + 2, ')', false);
		if (i + 1 < sc->len && s[i + 1] == '{')
			return skip_nested(sc, i + 2, '}', 0);
		return i + 1;
	default:
		return i + 1;
	}
}

/* At '<' or '>': a redirection operator; a here-document's delimiter is
 * queued, its body skipped at the next newline. */
static size_t redirection(struct scanner *sc, size_t i)
{
	const char *s = sc->s;

	if (i + 1 < sc->len && s[i] == '<' && s[i + 1] == '<' && (i + 2 >= sc->len || s[i + 2] != '<')) {
		bool strip = i + 2 < sc->len && s[i + 2] == '-';
		size_t j = i + 2 + strip, d = 0;
		char delim[128];
		while (j < sc->len && (s[j] == ' ' || s[j] == '\t'))
			j++;
		while (j < sc->len && !is_meta(s[j])) {
			char c = s[j];
			if (c == '\'' || c == '"') {
				const char *q = memchr(s + j + 1, c, sc->len - j - 1);
				size_t end = q ? (size_t)(q - s) : sc->len;
				for (j++; j < end; j++)
					if (d + 1 < sizeof(delim))
						delim[d++] = s[j];
				j = end + 1;
			} else {
				if (c == '\\' && j + 1 < sc->len)
					j++;
				if (d + 1 < sizeof(delim))
					delim[d++] = s[j];
				j++;
			}
		}
		delim[d] = '\0';
		if (sc->nhere < HEREDOC_MAX) {
			snprintf(sc->here[sc->nhere].delim, sizeof(sc->here[0].delim), "%s", delim);
			sc->here[sc->nhere++].strip_tabs = strip;
		}
		return j < sc->len ? j : sc->len;
	}
	while (i < sc->len && (s[i] == '<' || s[i] == '>'))
		i++;
	if (i < sc->len && (s[i] == '&' || s[i] == '|' || s[i] == '-'))
		i++;
	return i;
}

/* After a newline: skip the bodies of the queued here-documents. */
static size_t heredoc_bodies(struct scanner *sc, size_t i)
{
	for (size_t h = 0; h < sc->nhere; h++) {
		const char *delim = sc->here[h].delim;
		size_t dl = strlen(delim);
		for (;;) {
			const char *nl = i < sc->len ? memchr(sc->s + i, '\n', sc->len - i) : NULL;
			size_t eol = nl ? (size_t)(nl - sc->s) : sc->len, b = i;
			if (i >= sc->len)
				break;
			if (sc->here[h].strip_tabs)
				while (b < eol && sc->s[b] == '\t')
					b++;
			i = nl ? eol + 1 : sc->len;
			if (eol - b == dl && memcmp(sc->s + b, delim, dl) == 0)
				break;
		}
	}
	sc->nhere = 0;
	return i;
}

/* Scan shell text from i.  want: 0 at the top (returns len at its end),
 * '}' for a brace group's closing word, ')' for a closing parenthesis
 * (returns the index after it; NONE when the text ends first). */
static size_t scan(struct scanner *sc, size_t i, char want, bool record)
{
	const char *s = sc->s;
	bool cmd = true;  /* at the start of a command: reserved words count here */
	size_t ret = NONE;

	if (++sc->depth > SCAN_DEPTH_MAX)
		goto out;
	while (i < sc->len) {
		char c = s[i];
		size_t ws, we;
		bool plain = true;

		if (c == ' ' || c == '\t') {
			i++;
		} else if (c == '\n') {
			i = heredoc_bodies(sc, i + 1);
			cmd = true;
		} else if (c == '#') {
			while (i < sc->len && s[i] != '\n')
				i++;
		} else if (c == ';' || c == '&' || c == '|') {
			i++;
			cmd = true;
		} else if (c == ')') {
			if (want == ')') {
				ret = i + 1;
				goto out;
			}
			i++;  /* a case pattern's */
			cmd = true;
		} else if (c == '(') {
			if ((i = scan(sc, i + 1, ')', false)) == NONE)
				goto out;
			cmd = false;
		} else if (c == '<' || c == '>') {
			i = redirection(sc, i);
			cmd = false;
		} else {
			ws = i;
			while (i < sc->len && !is_meta(s[i])) {
				char ch = s[i];
				if (ch == '\\' || ch == '\'' || ch == '"' || ch == '`' || ch == '$') {
					plain = plain && ch == '$' && i + 1 < sc->len && s[i + 1] != '(' && s[i + 1] != '{';
					if ((i = skip_part(sc, i)) == NONE)
						goto out;
				} else {
					i++;
				}
			}
			we = i;
			if (!cmd || !plain) {
				cmd = false;
				continue;
			}
			if (want == '}' && word_is(s + ws, we - ws, "}")) {
				ret = we;
				goto out;
			}
			if (word_is(s + ws, we - ws, "{")) {
				if ((i = scan(sc, we, '}', record)) == NONE)
					goto out;
				cmd = false;
				continue;
			}
			if (is_name(s + ws, we - ws)) {
				size_t j = we, end;
				while (j < sc->len && (s[j] == ' ' || s[j] == '\t'))
					j++;
				if (j < sc->len && s[j] == '(') {
					j++;
					while (j < sc->len && (s[j] == ' ' || s[j] == '\t'))
						j++;
					if (j < sc->len && s[j] == ')') {
						/* NAME ( ) BODY */
						j++;
						while (j < sc->len && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n'))
							j++;
						if (j + 1 < sc->len && s[j] == '{' && (s[j + 1] == ' ' || s[j + 1] == '\t' || s[j + 1] == '\n'))
							end = scan(sc, j + 1, '}', false);
						else if (j < sc->len && s[j] == '(')
							end = scan(sc, j + 1, ')', false);
						else {
							i = j;  /* another kind of body: not carried */
							continue;
						}
						if (end == NONE)
							goto out;
						if (record && sc->n < sc->max)
							sc->fns[sc->n++] = (struct session_fn){ .name_off = ws, .name_len = we - ws,
												.off = ws, .len = end - ws };
						i = end;
						cmd = false;
						continue;
					}
				}
			}
			cmd = word_is(s + ws, we - ws, "if") || word_is(s + ws, we - ws, "then") ||
			      word_is(s + ws, we - ws, "else") || word_is(s + ws, we - ws, "elif") ||
			      word_is(s + ws, we - ws, "do") || word_is(s + ws, we - ws, "while") ||
			      word_is(s + ws, we - ws, "until") || word_is(s + ws, we - ws, "!");
		}
	}
	if (want == 0)
		ret = sc->len;
out:
	sc->depth--;
	return ret;
}

size_t session_find_functions(const char *code, size_t len, struct session_fn *fns, size_t max)
{
	struct scanner sc = { .s = code, .len = len, .fns = fns, .max = max };

	scan(&sc, 0, 0, true);
	return sc.n;
}
