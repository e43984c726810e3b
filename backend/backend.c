/* backend.c: the table of backends and what they share. */
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"

static const struct backend_ops *const backends[] = {
	&vm_backend_ops,
	&morph_backend_ops,
};

const struct backend_ops *backend_find(const char *name)
{
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (strcmp(backends[i]->name, name) == 0)
			return backends[i];
	return NULL;
}

void run_result_release(struct run_result *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
	r->out_len = r->err_len = 0;
}
