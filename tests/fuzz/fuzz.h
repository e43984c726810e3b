/* fuzz.h: what the libFuzzer targets in tests/fuzz share: the entry
 * point's prototype, CHECK for their invariants (a broken one aborts, which
 * libFuzzer reports as a crash and saves the input), and a reader that
 * takes small integers off the front of an input. */
#ifndef WORLDFS_FUZZ_H
#define WORLDFS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                   \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__,    \
				__LINE__, #cond);                                     \
			abort();                                                      \
		}                                                                     \
	} while (0)

/* The input, consumed from the front. */
struct fuzz_in {
	const uint8_t *p;
	size_t left;
};

/* The next n bytes (n <= 8) as a big-endian integer; zeros past the end. */
static inline uint64_t fuzz_take(struct fuzz_in *in, size_t n)
{
	uint64_t v = 0;

	for (size_t i = 0; i < n; i++) {
		v <<= 8;
		if (in->left) {
			v |= *in->p++;
			in->left--;
		}
	}
	return v;
}

#endif
