/* ledger.c: the Multiverse Finance balance map (owner -> amount), and the
 * entity enums' names (shared by the tree and the registry) and what each
 * state forbids. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs/world.h"

static const char *const kind_names[] = { "world", "verse", "snapshot" };
static const char *const state_names[] = { "running", "won", "collapsed", "failed" };

const char *entity_kind_name(enum entity_kind k) { return kind_names[k]; }
const char *entity_state_name(enum entity_state s) { return state_names[s]; }

int entity_state_errno(const struct entity *e)
{
	switch (e->state) {
	case STATE_COLLAPSED: return -EROFS;
	case STATE_FAILED: return -EIO;
	case STATE_RUNNING:
	case STATE_WON: return 0;
	}
	return -EIO;
}

int entity_kind_parse(const char *s, enum entity_kind *out)
{
	for (int i = 0; i < 3; i++)
		if (strcmp(s, kind_names[i]) == 0) {
			*out = (enum entity_kind)i;
			return 0;
		}
	return -EINVAL;
}

int entity_state_parse(const char *s, enum entity_state *out)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, state_names[i]) == 0) {
			*out = (enum entity_state)i;
			return 0;
		}
	return -EINVAL;
}

static size_t ledger_find(const struct ledger *l, const char *owner, bool *found)
{
	size_t lo = 0, hi = l->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(l->v[mid].owner, owner);
		if (c == 0) {
			*found = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = false;
	return lo;
}

int ledger_set(struct ledger *l, const char *owner, int64_t amount)
{
	bool found;
	size_t i = ledger_find(l, owner, &found);

	if (found) {
		l->v[i].amount = amount;
		return 0;
	}
	if (strlen(owner) > NAME_MAX_LEN)
		return -EINVAL;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 4;
		struct ledger_entry *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	memmove(&l->v[i + 1], &l->v[i], (l->n - i) * sizeof(*l->v));
	strcpy(l->v[i].owner, owner);
	l->v[i].amount = amount;
	l->n++;
	return 0;
}

int ledger_remove(struct ledger *l, const char *owner)
{
	bool found;
	size_t i = ledger_find(l, owner, &found);

	if (!found)
		return -ENOENT;
	memmove(&l->v[i], &l->v[i + 1], (l->n - i - 1) * sizeof(*l->v));
	l->n--;
	return 0;
}

const struct ledger_entry *ledger_get(const struct ledger *l, const char *owner)
{
	bool found;
	size_t i = ledger_find(l, owner, &found);

	return found ? &l->v[i] : NULL;
}

int ledger_copy(struct ledger *dst, const struct ledger *src)
{
	struct ledger tmp = { 0 };

	if (src->n) {
		tmp.v = malloc(src->n * sizeof(*tmp.v));
		if (!tmp.v)
			return -ENOMEM;
		memcpy(tmp.v, src->v, src->n * sizeof(*tmp.v));
		tmp.n = tmp.cap = src->n;
	}
	ledger_release(dst);
	*dst = tmp;
	return 0;
}

void ledger_release(struct ledger *l)
{
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

int ledger_total(const struct ledger *l, int64_t *out)
{
	int64_t sum = 0;

	for (size_t i = 0; i < l->n; i++)
		if (__builtin_add_overflow(sum, l->v[i].amount, &sum))
			return -EOVERFLOW;
	*out = sum;
	return 0;
}
