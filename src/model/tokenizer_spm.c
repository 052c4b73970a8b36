/* tokenizer_spm.c - SentencePiece BPE ("llama" vocabularies), as llama.cpp
 * runs it.
 *
 * Design: the fragment is cut into symbols of one UTF-8 character each,
 * where "character" means what the lead byte announces, clipped at the end
 * (unicode_len_utf8: so invalid UTF-8 makes odd symbols, e.g. a lone 0xE2
 * swallows the two bytes after it; llama.cpp does the same). Every adjacent
 * pair whose concatenation is a token goes into a heap ordered by that
 * token's score (best first, ties to the leftmost pair). Popping a pair merges
 * the right symbol into the left one, unless either side changed since the
 * pair was queued (a symbol only ever grows, so "the byte lengths still add
 * up" is an exact staleness test), then queues the new pairs on both sides.
 * At the end each symbol is its token, or, if its text is not a token, one
 * byte token per byte (<0xXX>).
 *
 * O(n log n) in the fragment length: no pre-splitting into words, so a 100 KB
 * fragment is one heap of ~100k entries.
 *
 * Deviation: when a byte has no byte token, llama.cpp throws (the vocabulary
 * is broken); we emit the unknown token instead, or nothing without one.
 * llama.cpp's "rev_merge" re-segmentation is not needed: every merged symbol
 * is a token by construction, so that path is never taken there either.
 */
#include <string.h>

#include "base/alloc.h"
#include "base/err.h"
#include "model/tokenizer_int.h"
#include "model/unicode.h"

typedef struct {
	uint32_t off; /* into the fragment */
	uint32_t n;   /* bytes; 0 = merged into its left neighbour */
	int32_t prev, next;
} sym;

static int add_pair(const tokenizer *t, const char *text, const sym *s, int32_t l, int32_t r, tokenizer_heap *h)
{
	if (l < 0 || r < 0)
		return 0;
	uint32_t size = s[l].n + s[r].n;
	int32_t id = tokenizer_lookup(t, text + s[l].off, size);
	if (id < 0)
		return 0;
	tokenizer_bigram b = { .key = -(double)t->tok[id].score, .left = l, .right = r, .size = size };
	return tokenizer_heap_push(h, b);
}

static int push_bytes(const tokenizer *t, const char *p, size_t n, tokenizer_ids *out)
{
	for (size_t i = 0; i < n; i++) {
		int32_t id = t->byte_tok[(uint8_t)p[i]];
		if (id == TOKENIZER_NULL)
			id = t->unk;
		if (id != TOKENIZER_NULL && tokenizer_ids_push(out, id))
			return ERR_NOMEM;
	}
	return 0;
}

int tokenizer_spm_encode(const tokenizer *t, const char *text, size_t len, tokenizer_ids *out)
{
	if (len == 0)
		return 0;
	int rc = ERR_NOMEM;
	tokenizer_heap h = { 0 };
	sym *s = alloc_array(len, sizeof(*s));
	if (!s)
		goto fail;

	int32_t n = 0;
	for (size_t off = 0; off < len; n++) {
		size_t cl = unicode_len_utf8((uint8_t)text[off]);
		if (cl > len - off)
			cl = len - off;
		s[n] = (sym){ .off = (uint32_t)off, .n = (uint32_t)cl, .prev = n - 1, .next = n + 1 };
		off += cl;
	}
	s[n - 1].next = -1;

	for (int32_t i = 1; i < n; i++)
		if (add_pair(t, text, s, i - 1, i, &h))
			goto fail;

	while (h.n) {
		tokenizer_bigram b = tokenizer_heap_pop(&h);
		sym *l = &s[b.left], *r = &s[b.right];
		if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
			continue; /* stale */
		l->n += r->n;
		r->n = 0;
		l->next = r->next;
		if (r->next >= 0)
			s[r->next].prev = b.left;
		if (add_pair(t, text, s, l->prev, b.left, &h) || add_pair(t, text, s, b.left, l->next, &h))
			goto fail;
	}

	for (int32_t i = 0; i != -1; i = s[i].next) {
		int32_t id = tokenizer_lookup(t, text + s[i].off, s[i].n);
		if (id >= 0) {
			if (tokenizer_ids_push(out, id))
				goto fail;
		} else if (push_bytes(t, text + s[i].off, s[i].n, out))
			goto fail;
	}
	rc = 0;
fail:
	alloc_free(h.v);
	alloc_free(s);
	return rc;
}
