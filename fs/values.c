/* values.c: the one-value files' grammar (sysfs style: one ASCII value and
 * an optional trailing newline; anything else is EINVAL). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "fs/values.h"

int name_check(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > NAME_MAX_LEN || name[0] == '.')
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return -EINVAL;
	}
	return name_is_reserved(name) ? -EINVAL : 0;
}

/* Drop one trailing newline; reject empty values and embedded NULs. */
static int value_span(const char *buf, size_t len, size_t *out)
{
	if (len > 0 && buf[len - 1] == '\n')
		len--;
	if (len == 0 || memchr(buf, '\0', len))
		return -EINVAL;
	*out = len;
	return 0;
}

int trit_parse(const char *buf, size_t len, int *out)
{
	size_t n;

	if (value_span(buf, len, &n) < 0)
		return -EINVAL;
	if (n == 1 && buf[0] == '0')
		*out = 0;
	else if ((n == 1 && buf[0] == '1') || (n == 2 && memcmp(buf, "+1", 2) == 0))
		*out = 1;
	else if (n == 2 && memcmp(buf, "-1", 2) == 0)
		*out = -1;
	else
		return -EINVAL;
	return 0;
}

int prob_parse(const char *buf, size_t len, int64_t *out)
{
	size_t n, i = 0;
	int64_t whole = 0, frac = 0, scale = PROB_ONE;
	bool digits = false;

	if (value_span(buf, len, &n) < 0)
		return -EINVAL;
	for (; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) {
		whole = whole * 10 + (buf[i] - '0');
		digits = true;
		if (whole > 1)
			return -EINVAL;
	}
	if (i < n && buf[i] == '.') {
		i++;
		for (; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) {
			digits = true;
			if (scale == 1) {
				/* beyond nine places only zeros are exact */
				if (buf[i] != '0')
					return -EINVAL;
				continue;
			}
			scale /= 10;
			frac += (buf[i] - '0') * scale;
		}
	}
	if (i != n || !digits)
		return -EINVAL;
	if (whole * PROB_ONE + frac > PROB_ONE)
		return -EINVAL;
	*out = whole * PROB_ONE + frac;
	return 0;
}

int amount_parse(const char *buf, size_t len, int64_t *out)
{
	size_t n;
	int64_t v = 0;

	if (value_span(buf, len, &n) < 0)
		return -EINVAL;
	if (n > 1 && buf[0] == '+')
		buf++, n--;
	for (size_t i = 0; i < n; i++) {
		if (buf[i] < '0' || buf[i] > '9')
			return -EINVAL;
		if (v > (INT64_MAX - (buf[i] - '0')) / 10)
			return -EINVAL;
		v = v * 10 + (buf[i] - '0');
	}
	*out = v;
	return 0;
}

int name_parse(const char *buf, size_t len, char out[NAME_MAX_LEN + 1])
{
	size_t n;
	char tmp[NAME_MAX_LEN + 1];

	if (value_span(buf, len, &n) < 0 || n > NAME_MAX_LEN)
		return -EINVAL;
	memcpy(tmp, buf, n);
	tmp[n] = '\0';
	if (name_check(tmp) < 0)
		return -EINVAL;
	memcpy(out, tmp, n + 1);
	return 0;
}

int push_down_parse(const char *buf, size_t len, struct push_down_item items[PUSH_DOWN_MAX], size_t *n)
{
	size_t k = 0, i = 0;

	while (i < len) {
		size_t start, end, colon;

		while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n'))
			i++;
		if (i == len)
			break;
		start = i;
		while (i < len && buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\n')
			i++;
		end = i;
		if (k == PUSH_DOWN_MAX)
			return -E2BIG;
		for (colon = start; colon < end && buf[colon] != ':'; colon++)
			;
		if (colon - start > NAME_MAX_LEN)
			return -EINVAL;
		memcpy(items[k].name, buf + start, colon - start);
		items[k].name[colon - start] = '\0';
		if (name_check(items[k].name) < 0)
			return -EINVAL;
		items[k].has_prob = colon < end;
		if (items[k].has_prob && prob_parse(buf + colon + 1, end - colon - 1, &items[k].prob) < 0)
			return -EINVAL;
		for (size_t j = 0; j < k; j++)
			if (strcmp(items[j].name, items[k].name) == 0)
				return -EINVAL;
		k++;
	}
	if (k == 0)
		return -EINVAL;
	*n = k;
	return 0;
}

void prob_format(int64_t prob, char *out, size_t outlen)
{
	int64_t whole = prob / PROB_ONE, frac = prob % PROB_ONE;
	int width = 9;

	if (frac == 0) {
		snprintf(out, outlen, "%lld", (long long)whole);
		return;
	}
	while (frac % 10 == 0) {
		frac /= 10;
		width--;
	}
	snprintf(out, outlen, "%lld.%0*lld", (long long)whole, width, (long long)frac);
}

int trit_for_child(unsigned nth)
{
	return (int)(nth % 3) - 1;
}

int gf3_sum(const int *trits, size_t n)
{
	int s = 0;

	for (size_t i = 0; i < n; i++)
		s = (s + trits[i] + 3) % 3;
	return s == 2 ? -1 : s;
}
