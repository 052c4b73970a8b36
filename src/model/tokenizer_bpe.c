/* tokenizer_bpe.c - byte-level BPE ("gpt2" vocabularies), as llama.cpp runs it.
 *
 * Design, per fragment:
 *   1. decode UTF-8 leniently (unicode_decode: each bad byte -> U+FFFD, as
 *      llama.cpp does; so invalid input tokenizes as the replacement char);
 *   2. pre-tokenize the code points into words (model/pretok.c);
 *   3. per word: re-encode to UTF-8 and make one symbol per byte, whose token
 *      is that byte's GPT-2 alphabet character (t->byte_tok);
 *   4. merge: a heap of adjacent pairs keyed by merge rank (lowest first,
 *      ties to the leftmost pair); popping a pair whose sides are unchanged
 *      replaces them with the merge's result token and queues the new
 *      neighbours. Symbols carry token ids, not strings: load guarantees that
 *      both sides and the result of every merge are tokens, so comparing ids
 *      is the same test as llama.cpp's string comparison;
 *   5. each remaining symbol is its token. A symbol without one (a byte whose
 *      alphabet char is missing from the vocabulary) falls back, like
 *      llama.cpp, to looking up each byte of its alphabet text as a one-byte
 *      token, which in practice drops it.
 * With ignore_merges (Llama 3), a word that is itself a token is emitted
 * whole before any merging.
 *
 * Scratch is sized once per fragment (code points, word lengths, the longest
 * word's bytes and symbols) and reused for every word.
 */
#include <string.h>

#include "base/alloc.h"
#include "base/err.h"
#include "model/tokenizer_int.h"
#include "model/unicode.h"

typedef struct {
	int32_t id;   /* token, or TOKENIZER_NULL */
	uint32_t off; /* first byte in the word */
	uint32_t n;   /* bytes; 0 = merged into its left neighbour */
	int32_t prev, next;
} sym;

static int add_pair(const tokenizer *t, const sym *s, int32_t l, int32_t r, tokenizer_heap *h)
{
	if (l < 0 || r < 0 || s[l].id < 0 || s[r].id < 0)
		return 0;
	int32_t rank = tokenizer_merge_rank(t, s[l].id, s[r].id);
	if (rank < 0)
		return 0;
	tokenizer_bigram b = { .key = rank, .left = l, .right = r, .lid = s[l].id, .rid = s[r].id };
	return tokenizer_heap_push(h, b);
}

static size_t utf8_len(uint32_t c)
{
	return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

/* GPT-2 alphabet text of raw bytes b[0..n) into enc; returns its length. */
static size_t alphabet_text(const uint8_t *b, size_t n, char *enc)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		k += unicode_encode(unicode_byte_to_cpt(b[i]), enc + k);
	return k;
}

/* llama.cpp's fallback for a symbol that is not a token. */
static int push_fallback(const tokenizer *t, const uint8_t *b, size_t n, char *enc, tokenizer_ids *out)
{
	size_t k = alphabet_text(b, n, enc);
	for (size_t i = 0; i < k; i++) {
		int32_t id = tokenizer_lookup(t, enc + i, 1);
		if (id >= 0 && tokenizer_ids_push(out, id))
			return ERR_NOMEM;
	}
	return 0;
}

static int encode_word(const tokenizer *t, const uint8_t *b, size_t nb, sym *s, char *enc,
		       tokenizer_heap *h, tokenizer_ids *out)
{
	if (t->ignore_merges) {
		int32_t id = tokenizer_lookup(t, enc, alphabet_text(b, nb, enc));
		if (id >= 0)
			return tokenizer_ids_push(out, id);
	}
	int32_t n = (int32_t)nb;
	for (int32_t i = 0; i < n; i++)
		s[i] = (sym){ .id = t->byte_tok[b[i]], .off = (uint32_t)i, .n = 1, .prev = i - 1, .next = i + 1 };
	s[n - 1].next = -1;

	h->n = 0;
	for (int32_t i = 1; i < n; i++)
		if (add_pair(t, s, i - 1, i, h))
			return ERR_NOMEM;
	while (h->n) {
		tokenizer_bigram bg = tokenizer_heap_pop(h);
		sym *l = &s[bg.left], *r = &s[bg.right];
		if (l->n == 0 || r->n == 0 || l->id != bg.lid || r->id != bg.rid)
			continue; /* stale */
		l->id = t->m_result[(int32_t)bg.key];
		l->n += r->n;
		r->n = 0;
		l->next = r->next;
		if (r->next >= 0)
			s[r->next].prev = bg.left;
		if (add_pair(t, s, l->prev, bg.left, h) || add_pair(t, s, bg.left, l->next, h))
			return ERR_NOMEM;
	}
	for (int32_t i = 0; i != -1; i = s[i].next) {
		int rc = s[i].id >= 0 ? tokenizer_ids_push(out, s[i].id)
				      : push_fallback(t, b + s[i].off, s[i].n, enc, out);
		if (rc)
			return ERR_NOMEM;
	}
	return 0;
}

int tokenizer_bpe_encode(const tokenizer *t, const char *text, size_t len, tokenizer_ids *out)
{
	if (len == 0)
		return 0;
	int rc = ERR_NOMEM;
	uint8_t *bytes = NULL;
	sym *s = NULL;
	char *enc = NULL;
	tokenizer_heap h = { 0 };
	uint32_t *cpts = alloc_array(len, sizeof(*cpts));
	uint32_t *lens = alloc_array(len, sizeof(*lens));
	uint32_t *tmp = alloc_array(len, sizeof(*tmp));
	if (!cpts || !lens || !tmp)
		goto fail;

	size_t n = 0;
	for (size_t off = 0; off < len; n++) {
		size_t used;
		cpts[n] = unicode_decode(text + off, len - off, &used);
		off += used;
	}
	size_t nw = pretok_split(t->pre, cpts, n, lens, tmp);

	/* scratch for the longest word, in UTF-8 bytes (one symbol per byte; a
	   byte's alphabet char is <= 2 bytes) */
	size_t longest = 0;
	for (size_t w = 0, c = 0; w < nw; w++) {
		size_t nb = 0;
		for (size_t end = c + lens[w]; c < end; c++)
			nb += utf8_len(cpts[c]);
		if (nb > longest)
			longest = nb;
	}
	bytes = alloc_bytes(longest);
	s = alloc_array(longest, sizeof(*s));
	enc = alloc_array(longest, 2);
	if (!bytes || !s || !enc)
		goto fail;

	size_t c0 = 0;
	for (size_t w = 0; w < nw; w++) {
		size_t nb = 0;
		for (size_t i = c0; i < c0 + lens[w]; i++)
			nb += unicode_encode(cpts[i], (char *)bytes + nb);
		c0 += lens[w];
		if (encode_word(t, bytes, nb, s, enc, &h, out))
			goto fail;
	}
	rc = 0;
fail:
	alloc_free(h.v);
	alloc_free(enc);
	alloc_free(s);
	alloc_free(bytes);
	alloc_free(tmp);
	alloc_free(lens);
	alloc_free(cpts);
	return rc;
}
