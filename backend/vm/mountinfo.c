/* mountinfo.c: find a mount point in /proc/self/mountinfo text; know an
 * XFS superblock.  Pure functions, no I/O. */
#include <string.h>

#include "backend/vm/mountinfo.h"

/* Copy the next space-separated field of *p into out (n bytes), undoing
 * mountinfo's octal escapes; advance *p.  False if there is none. */
static bool field(const char **p, const char *end, char *out, size_t n)
{
	const char *c = *p;
	size_t o = 0;

	while (c < end && *c == ' ')
		c++;
	if (c >= end)
		return false;
	while (c < end && *c != ' ') {
		char ch = *c++;

		if (ch == '\\' && end - c >= 3 && c[0] >= '0' && c[0] <= '3' && c[1] >= '0' && c[1] <= '7' &&
		    c[2] >= '0' && c[2] <= '7') {
			ch = (char)((c[0] - '0') * 64 + (c[1] - '0') * 8 + (c[2] - '0'));
			c += 3;
		}
		if (o + 1 < n)
			out[o++] = ch;
	}
	if (n)
		out[o] = '\0';
	*p = c;
	return true;
}

/* The topmost (last) line of text for mount_point: its device
 * (major:minor), filesystem type and source, unescaped. */
static bool find(const char *text, const char *mount_point, char dev[64], char type[256], char src[4096])
{
	bool found = false;

	for (const char *line = text; line && *line;) {
		const char *end = strchr(line, '\n');
		const char *p = line;
		char mp[4096], tok[4096], d[64] = "", t[256] = "", s[4096] = "";

		if (!end)
			end = line + strlen(line);
		/* id, parent id, major:minor, root, mount point */
		for (int i = 0; i < 5 && field(&p, end, i == 2 ? d : mp, i == 2 ? sizeof(d) : sizeof(mp)); i++)
			if (i == 4 && strcmp(mp, mount_point) == 0) {
				/* optional fields up to "-", then type and source */
				while (field(&p, end, tok, sizeof(tok)) && strcmp(tok, "-") != 0)
					;
				if (field(&p, end, t, sizeof(t)))
					field(&p, end, s, sizeof(s));
				strcpy(dev, d);
				strcpy(type, t);
				strcpy(src, s);
				found = true;
			}
		line = *end ? end + 1 : end;
	}
	return found;
}

/* src into out (n bytes, cut), when out is wanted. */
static void give(char *out, size_t n, const char *src)
{
	if (out && n) {
		strncpy(out, src, n - 1);
		out[n - 1] = '\0';
	}
}

bool mountinfo_find(const char *text, const char *mount_point, char *source, char *fstype, size_t n)
{
	char dev[64], type[256], src[4096];

	if (!find(text, mount_point, dev, type, src))
		return false;
	give(source, n, src);
	give(fstype, n, type);
	return true;
}

bool mountinfo_devno(const char *text, const char *mount_point, char *out, size_t n)
{
	char dev[64], type[256], src[4096];

	if (!find(text, mount_point, dev, type, src))
		return false;
	give(out, n, dev);
	return true;
}

bool xfs_magic(const void *first_bytes, size_t len)
{
	return len >= 4 && memcmp(first_bytes, "XFSB", 4) == 0;
}
