/* record.c: the small files under STATE/morph/ that say which Morph
 * objects belong to which worldfs entity (see record.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backend/morph/api.h"
#include "backend/morph/record.h"

static int record_path(const char *dir, const char *kind, const char *id, char path[PATH_MAX])
{
	if (!morph_id_ok(id))
		return -EINVAL;
	if (snprintf(path, PATH_MAX, "%s/%s/%s", dir, kind, id) >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

int morph_record_write(const char *dir, const char *kind, const char *id, const char *first,
		       const char *second)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8], parent[PATH_MAX];
	int fd, err = 0;
	FILE *f;

	err = record_path(dir, kind, id, path);
	if (err)
		return err;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		err = -errno;
		if (fd >= 0)
			close(fd);
		morph_log("%s: %s", tmp, strerror(-err));
		return err;
	}
	fprintf(f, "%s\n%s\n", first, second ? second : "");
	if (fflush(f) != 0 || fsync(fd) < 0)
		err = -errno;
	if (fclose(f) != 0 && !err)
		err = -errno;
	if (!err && rename(tmp, path) < 0)
		err = -errno;
	if (err) {
		morph_log("%s: %s", path, strerror(-err));
		unlink(tmp);
		return err;
	}
	snprintf(parent, sizeof(parent), "%s/%s", dir, kind);
	if ((fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		fsync(fd);
		close(fd);
	}
	return 0;
}

int morph_record_read(const char *dir, const char *kind, const char *id, char first[MORPH_ID_MAX],
		      char second[MORPH_ID_MAX])
{
	char path[PATH_MAX], line[2][MORPH_ID_MAX + 2] = { "", "" };
	int err = record_path(dir, kind, id, path);
	FILE *f;

	if (err)
		return err;
	if (!(f = fopen(path, "re")))
		return -errno;
	for (int i = 0; i < 2 && fgets(line[i], sizeof(line[i]), f); i++)
		line[i][strcspn(line[i], "\n")] = '\0';
	fclose(f);
	if (!morph_id_ok(line[0]) || (line[1][0] && !morph_id_ok(line[1]))) {
		morph_log("%s: not an id", path);
		return -EIO;
	}
	memcpy(first, line[0], MORPH_ID_MAX);
	if (second)
		memcpy(second, line[1], MORPH_ID_MAX);
	return 0;
}

void morph_record_remove(const char *dir, const char *kind, const char *id)
{
	char path[PATH_MAX];

	if (record_path(dir, kind, id, path) == 0 && unlink(path) < 0 && errno != ENOENT)
		morph_log("%s: %s", path, strerror(errno));
}
