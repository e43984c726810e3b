/* record.h: what the morph backend must find again after a crash, in
 * files DIR/KIND/ENTITY (KIND: "instances" or "snapshots") of one or two
 * lines: a Morph id, and for an instance the snapshot its branch made (or
 * an empty line).  Written whole and durably (temp file, fsync, rename,
 * fsync of the directory) before the Morph object is relied on. */
#ifndef WORLDFS_MORPH_RECORD_H
#define WORLDFS_MORPH_RECORD_H

#include "backend/morph/api.h"

int morph_record_write(const char *dir, const char *kind, const char *id, const char *first,
		       const char *second);
/* -ENOENT: no record; -EIO: a record that does not hold ids.  second may be NULL. */
int morph_record_read(const char *dir, const char *kind, const char *id, char first[MORPH_ID_MAX],
		      char second[MORPH_ID_MAX]);
void morph_record_remove(const char *dir, const char *kind, const char *id);

#endif
