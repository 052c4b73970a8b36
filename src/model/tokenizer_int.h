/* tokenizer_int.h - what tokenizer.c, tokenizer_spm.c and tokenizer_bpe.c
 * share. Nothing outside the tokenizer module includes this.
 */
#ifndef PDSERVE_MODEL_TOKENIZER_INT_H
#define PDSERVE_MODEL_TOKENIZER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/pretok.h"
#include "model/tokenizer.h"

typedef struct {
	const char *text;   /* borrowed from the gguf (or t->owned for renamed empty tokens) */
	uint32_t len;
	uint32_t attr;      /* TOKENIZER_ATTR_* */
	float score;
	uint32_t piece_off; /* piece with special = true, at t->pieces + piece_off */
	uint32_t piece_len;
} tokenizer_entry;

/* Growable id list: the output of one encode call. */
typedef struct {
	int32_t *v;
	size_t n, cap;
} tokenizer_ids;

struct tokenizer {
	const gguf *g;            /* borrowed */
	tokenizer_kind kind;
	pretok_kind pre;
	char pre_name[40];
	int32_t n_vocab;
	tokenizer_entry *tok;           /* [n_vocab] */

	/* text -> id: open addressing, power-of-two size, -1 = empty slot */
	int32_t *map;
	size_t map_mask;

	/* BPE merges; rank = index. (left, right) -> rank by open addressing. */
	int32_t *m_left, *m_right, *m_result; /* [n_merges] token ids */
	size_t n_merges;
	int32_t *merge_map;       /* rank or -1 */
	size_t merge_mask;

	char *pieces;             /* all pieces back to back; owned */
	size_t max_piece;
	char *owned;              /* texts of renamed empty tokens; owned */

	int32_t *special;         /* control/user-defined/unknown ids, longest text first; owned */
	size_t n_special;
	int32_t *eog;             /* ascending; owned */
	size_t n_eog;

	/* SPM: "<0xXX>" (or the one-byte token); BPE: the byte's alphabet char.
	   TOKENIZER_NULL when the vocabulary lacks it. */
	int32_t byte_tok[256];

	int32_t bos, eos, eot, eom, unk, sep, pad, mask, nl;
	int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
	bool add_bos, add_eos, add_space_prefix, clean_spaces, ignore_merges;
};

/* Exact text lookup (any bytes). */
int32_t tokenizer_lookup(const tokenizer *t, const char *s, size_t n);
/* Rank of merging (left, right), or -1. */
int32_t tokenizer_merge_rank(const tokenizer *t, int32_t left, int32_t right);

int tokenizer_ids_push(tokenizer_ids *out, int32_t id);

/* Encode one fragment of plain text (no special-token matching) and append
   the ids. SPM: text already has the dummy prefix and U+2581 for spaces.
   0 or ERR_NOMEM. */
int tokenizer_spm_encode(const tokenizer *t, const char *text, size_t len, tokenizer_ids *out);
int tokenizer_bpe_encode(const tokenizer *t, const char *text, size_t len, tokenizer_ids *out);

/* Binary heap of (key, left) pairs shared by both merge loops: smallest key
   first, ties to the smaller left symbol index, which is llama.cpp's order. */
typedef struct {
	double key;    /* BPE: merge rank; SPM: -score (best first) */
	int32_t left;  /* symbol index */
	int32_t right;
	uint32_t size; /* SPM: byte length when queued (stale check) */
	int32_t lid, rid; /* BPE: symbol ids when queued (stale check) */
} tokenizer_bigram;

typedef struct {
	tokenizer_bigram *v;
	size_t n, cap;
} tokenizer_heap;

int tokenizer_heap_push(tokenizer_heap *h, tokenizer_bigram b);
tokenizer_bigram tokenizer_heap_pop(tokenizer_heap *h); /* h->n > 0 */

#endif
