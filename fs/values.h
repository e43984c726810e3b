/* values.h: parsing and printing the one-value files (trit, prob, balance)
 * and checking names.  Pure functions, unit tested. */
#ifndef WORLDFS_VALUES_H
#define WORLDFS_VALUES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NAME_MAX_LEN 64
#define PROB_ONE 1000000000LL  /* probabilities are integer billionths: exact decimals */

/* The most a value file takes on one descriptor: a value is one short line. */
#define VALUE_MAX 4096

/* 0 if name is a valid world/verse/snapshot/owner name, else -EINVAL:
 * 1-64 of [A-Za-z0-9._-], no leading '.', and not reserved. */
int name_check(const char *name);

/* Is this one of the fixed file names of an entity directory?  Defined in
 * node.c, from the one table of those files (entity_files[]). */
bool name_is_reserved(const char *name);

/* Parse a value written to a file: buf[0..len), one trailing newline allowed.
 * All return 0 or -EINVAL, and leave *out untouched on error. */
int trit_parse(const char *buf, size_t len, int *out);
int prob_parse(const char *buf, size_t len, int64_t *out);
int amount_parse(const char *buf, size_t len, int64_t *out);
/* A name written to resolve: a valid name, one trailing newline allowed. */
int name_parse(const char *buf, size_t len, char out[NAME_MAX_LEN + 1]);

/* The most verses one push_down makes. */
#define PUSH_DOWN_MAX 64

/* One name written to push_down, with its probability if given (NAME:PROB). */
struct push_down_item {
	char name[NAME_MAX_LEN + 1];
	bool has_prob;
	int64_t prob;
};

/* What is written to push_down: names separated by spaces, tabs or
 * newlines, each a valid name, optionally followed by :PROB.  Into
 * items[0..*n); -EINVAL for no name, a bad name or probability, or the
 * same name twice; -E2BIG beyond PUSH_DOWN_MAX names. */
int push_down_parse(const char *buf, size_t len, struct push_down_item items[PUSH_DOWN_MAX], size_t *n);

/* Print prob (billionths) shortest: "0.45", "1", "0". out >= 16 bytes. */
void prob_format(int64_t prob, char *out, size_t outlen);

/* The trit a new child gets: the cycle -1, 0, +1 by the number of children
 * the directory has had. */
int trit_for_child(unsigned nth);

/* Sum of trits mod 3 mapped to -1, 0, 1. */
int gf3_sum(const int *trits, size_t n);

#endif
