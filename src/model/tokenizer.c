/* tokenizer.c - load a GGUF vocabulary; special tokens; encode and decode.
 *
 * This file is the frame: loading, llama.cpp's special-token rules, the
 * special-token partition of the input, and everything about decoding. The
 * two merge algorithms live in tokenizer_spm.c and tokenizer_bpe.c, the
 * pre-tokenizers in pretok.c. The reference for every behaviour is llama.cpp
 * at commit 80fb11a (src/llama-vocab.cpp), whose test vectors we pass.
 *
 * Loading (tokenizer_create), in llama.cpp's order, because later steps see
 * the attributes earlier ones changed:
 *   1. tokens, scores, token types -> one entry per id; an empty token text
 *      becomes "[EMPTY_<id>]" (llama.cpp does this too); text -> id hash.
 *   2. model/pre -> algorithm and flags (add_space_prefix, clean_spaces,
 *      ignore_merges, add_bos defaults); merges -> (left, right) -> rank hash.
 *   3. special ids: the type's defaults (SPM bos 1 / eos 2 / unk 0, BPE
 *      bos = eos = 11, dropped if outside the vocabulary), then metadata.
 *   4. eot, eom and the six FIM ids not given by metadata are found by text;
 *      the chosen token becomes CONTROL. Where several texts qualify,
 *      llama.cpp takes whichever its hash map yields first; we take the
 *      first in its list (for Qwen2 both give <|im_end|>).
 *   5. CONTROL tokens whose text contains "unused" get UNUSED.
 *   6. EOG set = fim_pad, fim_rep, fim_sep, every token whose text is in
 *      eog_texts[] (each becomes CONTROL, e.g. Qwen2's normal-type "</s>"),
 *      eos, eot, eom; minus "<|end|>" when "<|return|>"/"<|call|>" (gpt-oss)
 *      or "<|calls|>"/"<|flush|>" are there (it becomes USER_DEFINED); minus
 *      "</s>" when "<|tool_response>" is there (it becomes NORMAL). The four
 *      gpt-oss channel tokens become USER_DEFINED.
 *   7. special list = CONTROL | USER_DEFINED | UNKNOWN ids, longest text
 *      first; pieces of every token; LSTRIP/RSTRIP by model name (Phi-3,
 *      ModernBERT, jina-v2/nomic).
 *
 * Encoding (tokenizer_encode): the input is cut into raw-text fragments and
 * special tokens by matching each special text in turn, longest first, over
 * every raw fragment left so far (tokenizer_st_partition in llama.cpp;
 * control and unknown texts only with parse_special, user-defined always).
 * Then SPM gets each raw fragment with a dummy-prefix space when it starts
 * the text or follows a special token, spaces as U+2581; BPE gets it as is.
 *
 * Decoding: every token's piece (special form) is computed once at load
 * into one buffer, so tokenizer_piece is a lookup; tokenizer_decode adds
 * llama_detokenize's first-space rule and space cleaning; the streaming
 * detokenizer only holds back incomplete UTF-8.
 *
 * Invariants after create (tokenizer_check tests them): token texts are
 * unique and tokenizer_lookup(text(i)) == i; both sides and the result of
 * every merge are tokens, and the merge hash holds each pair's first rank;
 * special is sorted by (text length desc, id asc); eog is sorted, unique and
 * in range; every special id field is TOKENIZER_NULL or in range; add_bos
 * implies bos != NULL, add_eos implies eos != NULL.
 *
 * Deviations from llama.cpp (none affects a well-formed vocabulary and
 * valid UTF-8 outside the Unicode 15.x additions):
 *   - refused at load, where llama.cpp warns and goes on: a special id outside
 *     the vocabulary (it falls back to the default), scores/token_type arrays
 *     of another length than tokens (it accepts longer ones), merges that
 *     name or make a non-token (it keeps them); and duplicate token texts
 *     (it aborts);
 *   - ties llama.cpp leaves to hash-map or unstable-sort order are broken by
 *     list order (step 4) and by id (equal-length special texts);
 *   - code point classes come from Unicode 14.0, llama.cpp's from 15.1
 *     (tools/gen_unicode_tables.py); byte-level corner cases are in
 *     tokenizer_spm.c and unicode.h.
 *
 * Left out: WPM/UGM/RWKV/PLaMo-2 vocabularies, SPM-style BPE (gemma4,
 * escape_whitespaces), the other pre-tokenizers, add_sep, suppress_tokens.
 */
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/log.h"
#include "model/tokenizer_int.h"
#include "model/unicode.h"

#define TAG "tokenizer"
#define MAX_TEXT (1u << 28)      /* encode input limit: 256 MiB */
#define MAX_PIECE (1u << 16)     /* a token whose piece is longer is refused */

#define FW_BAR "\xef\xbd\x9c"    /* U+FF5C, DeepSeek's special-token bar */
#define SP_MARK "\xe2\x96\x81"   /* U+2581, SentencePiece's space */

/* ---------------------------------------------------------------- small containers */

int tokenizer_ids_push(tokenizer_ids *o, int32_t id)
{
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 64;
		int32_t *v = alloc_resize_array(o->v, cap, sizeof(*v));
		if (!v)
			return ERR_NOMEM;
		o->v = v;
		o->cap = cap;
	}
	o->v[o->n++] = id;
	return 0;
}

static int bigram_before(const tokenizer_bigram *a, const tokenizer_bigram *b)
{
	return a->key < b->key || (a->key == b->key && a->left < b->left);
}

int tokenizer_heap_push(tokenizer_heap *h, tokenizer_bigram b)
{
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		tokenizer_bigram *v = alloc_resize_array(h->v, cap, sizeof(*v));
		if (!v)
			return ERR_NOMEM;
		h->v = v;
		h->cap = cap;
	}
	size_t i = h->n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!bigram_before(&b, &h->v[p]))
			break;
		h->v[i] = h->v[p];
		i = p;
	}
	h->v[i] = b;
	return 0;
}

tokenizer_bigram tokenizer_heap_pop(tokenizer_heap *h)
{
	tokenizer_bigram top = h->v[0];
	tokenizer_bigram last = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && bigram_before(&h->v[c + 1], &h->v[c]))
			c++;
		if (!bigram_before(&h->v[c], &last))
			break;
		h->v[i] = h->v[c];
		i = c;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)s[i];
		h *= 0x100000001b3ull;
	}
	return h ^ (h >> 29);
}

static uint64_t hash_pair(int32_t a, int32_t b)
{
	uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	k *= 0x9E3779B97F4A7C15ull;
	return k ^ (k >> 31);
}

static size_t table_size(size_t n)
{
	size_t s = 16;
	while (s < 2 * n)
		s *= 2;
	return s;
}

int32_t tokenizer_lookup(const tokenizer *t, const char *s, size_t n)
{
	for (size_t i = hash_bytes(s, n) & t->map_mask;; i = (i + 1) & t->map_mask) {
		int32_t id = t->map[i];
		if (id < 0)
			return TOKENIZER_NULL;
		if (t->tok[id].len == n && memcmp(t->tok[id].text, s, n) == 0)
			return id;
	}
}

int32_t tokenizer_merge_rank(const tokenizer *t, int32_t left, int32_t right)
{
	if (!t->merge_map)
		return -1;
	for (size_t i = hash_pair(left, right) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
		int32_t r = t->merge_map[i];
		if (r < 0 || (t->m_left[r] == left && t->m_right[r] == right))
			return r;
	}
}

static int32_t find_cstr(const tokenizer *t, const char *s)
{
	return tokenizer_lookup(t, s, strlen(s));
}

/* ---------------------------------------------------------------- llama.cpp's text lists */

/* Each list in llama.cpp's order; the first text present wins (step 4). */
static const char *const eot_texts[] = {
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
	"<EOT>", "_<EOT>", "[EOT]", "<" FW_BAR "end" SP_MARK "of" SP_MARK "sentence" FW_BAR ">",
	"<end_of_utterance>", NULL,
};
static const char *const eom_texts[] = { "<|eom_id|>", NULL };
static const char *const fim_pre_texts[] = {
	"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<" FW_BAR "fim" SP_MARK "begin" FW_BAR ">",
	"<PRE>", SP_MARK "<PRE>", "<|code_prefix|>", "<|prefix|>", NULL,
};
static const char *const fim_suf_texts[] = {
	"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<" FW_BAR "fim" SP_MARK "hole" FW_BAR ">",
	"<SUF>", SP_MARK "<SUF>", "<|code_suffix|>", "<|suffix|>", NULL,
};
static const char *const fim_mid_texts[] = {
	"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<" FW_BAR "fim" SP_MARK "end" FW_BAR ">",
	"<MID>", SP_MARK "<MID>", "<|code_middle|>", "<|middle|>", NULL,
};
static const char *const fim_pad_texts[] = { "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL };
static const char *const fim_rep_texts[] = {
	"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL,
};
static const char *const fim_sep_texts[] = { "<|file_sep|>", NULL };

/* Texts that end generation (step 6). */
static const char *const eog_texts[] = {
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
	"<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
	"<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
	"<" FW_BAR "end" SP_MARK "of" SP_MARK "sentence" FW_BAR ">", "[e~[", NULL,
};

/* The pre-tokenizer names whose regexes we implement, with the flags
   llama.cpp sets for each (llama_vocab::impl::load). */
static const struct {
	const char *name;
	pretok_kind kind;
	bool keep_spaces;   /* clean_spaces = false */
	bool ignore_merges;
	bool add_bos;       /* default add_bos = true */
	bool no_bos;        /* default bos = none */
} pre_table[] = {
	{ "default", PRETOK_DEFAULT, 0, 0, 0, 0 },
	{ "gpt-2", PRETOK_GPT2, 0, 0, 0, 0 },       { "phi-2", PRETOK_GPT2, 0, 0, 0, 0 },
	{ "jina-es", PRETOK_GPT2, 0, 0, 0, 0 },     { "jina-de", PRETOK_GPT2, 0, 0, 0, 0 },
	{ "gigachat", PRETOK_GPT2, 0, 0, 0, 0 },    { "jina-v2-es", PRETOK_GPT2, 0, 0, 0, 0 },
	{ "jina-v2-de", PRETOK_GPT2, 0, 0, 0, 0 },  { "a.x-4.0", PRETOK_GPT2, 0, 0, 0, 0 },
	{ "mellum", PRETOK_GPT2, 0, 0, 0, 0 },      { "modern-bert", PRETOK_GPT2, 0, 0, 0, 0 },
	{ "jina-v1-en", PRETOK_GPT2, 0, 0, 0, 0 },  { "jina-v2-code", PRETOK_GPT2, 0, 0, 0, 0 },
	{ "roberta-bpe", PRETOK_GPT2, 0, 0, 0, 0 }, { "mpt", PRETOK_GPT2, 0, 0, 0, 0 },
	{ "olmo", PRETOK_GPT2, 0, 0, 0, 0 },        { "jais", PRETOK_GPT2, 0, 0, 0, 0 },
	{ "exaone4", PRETOK_GPT2, 0, 0, 0, 0 },     { "trillion", PRETOK_GPT2, 1, 0, 0, 0 },
	{ "granite-docling", PRETOK_GPT2, 1, 0, 0, 0 },
	{ "llama3", PRETOK_LLAMA3, 0, 1, 1, 0 },    { "llama-v3", PRETOK_LLAMA3, 0, 1, 1, 0 },
	{ "llama-bpe", PRETOK_LLAMA3, 0, 1, 1, 0 }, { "falcon3", PRETOK_LLAMA3, 0, 1, 1, 0 },
	{ "falcon-h1", PRETOK_LLAMA3, 0, 1, 1, 0 }, { "pixtral", PRETOK_LLAMA3, 0, 1, 1, 0 },
	{ "midm-2.0", PRETOK_LLAMA3, 0, 1, 1, 0 },  { "lfm2", PRETOK_LLAMA3, 0, 1, 1, 0 },
	{ "jina-v5-nano", PRETOK_LLAMA3, 0, 1, 1, 0 },
	{ "dbrx", PRETOK_LLAMA3, 0, 0, 0, 0 },      { "smaug-bpe", PRETOK_LLAMA3, 0, 0, 0, 0 },
	{ "glm4", PRETOK_LLAMA3, 0, 0, 0, 1 },      { "chatglm-bpe", PRETOK_LLAMA3, 0, 0, 0, 1 },
	{ "qwen2", PRETOK_QWEN2, 1, 0, 0, 0 },      { "deepseek-r1-qwen", PRETOK_QWEN2, 1, 0, 0, 0 },
	{ "kormo", PRETOK_QWEN2, 1, 0, 0, 0 },      { "f2llmv2", PRETOK_QWEN2, 1, 0, 0, 0 },
	{ "hunyuan", PRETOK_QWEN2, 1, 0, 0, 0 },    { "solar-open", PRETOK_QWEN2, 1, 0, 0, 0 },
	{ "stablelm2", PRETOK_QWEN2, 0, 0, 0, 0 },  { "megrez", PRETOK_QWEN2, 0, 0, 0, 0 },
	{ "deepseek-coder", PRETOK_DEEPSEEK_CODER, 1, 0, 0, 0 },
};

/* ---------------------------------------------------------------- loading helpers */

static int str_eq(gguf_str s, const char *c)
{
	return s.n == strlen(c) && memcmp(s.p, c, s.n) == 0;
}

/* Optional id key: absent leaves *id alone; present must be a token. */
static int read_id(const gguf *g, const char *key, int32_t n_vocab, int32_t *id, char *err)
{
	int64_t v;
	int rc = gguf_get_i64(g, key, &v, err);
	if (rc == ERR_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	if (v < 0 || v >= n_vocab)
		return err_set(err, ERR_FORMAT, "%s = %lld is not a token id (vocabulary has %d)", key,
			       (long long)v, n_vocab);
	*id = (int32_t)v;
	return 0;
}

static int read_bool(const gguf *g, const char *key, bool *out, char *err)
{
	int rc = gguf_get_bool(g, key, out, err);
	return rc == ERR_NOTFOUND ? 0 : rc;
}

static int promote_control(tokenizer *t, int32_t id)
{
	if (!(t->tok[id].attr & TOKENIZER_ATTR_CONTROL)) {
		LOGD(TAG, "control-looking token %d '%.*s' was not control-type; making it control (as llama.cpp)",
		     id, (int)t->tok[id].len, t->tok[id].text);
		t->tok[id].attr |= TOKENIZER_ATTR_CONTROL;
	}
	return id;
}

/* Step 4: the first text of list present in the vocabulary, made CONTROL. */
static void detect(tokenizer *t, int32_t *id, const char *const *list)
{
	if (*id != TOKENIZER_NULL)
		return;
	for (; *list; list++) {
		int32_t i = find_cstr(t, *list);
		if (i >= 0) {
			*id = promote_control(t, i);
			return;
		}
	}
}

static int eog_add(int32_t *eog, size_t *n, int32_t id)
{
	if (id == TOKENIZER_NULL)
		return 0;
	for (size_t i = 0; i < *n; i++)
		if (eog[i] == id)
			return 0;
	eog[(*n)++] = id;
	return 1;
}

static void eog_remove(int32_t *eog, size_t *n, int32_t id)
{
	for (size_t i = 0; i < *n; i++)
		if (eog[i] == id) {
			eog[i] = eog[--*n];
			return;
		}
}

static int cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

/* Step 6. eog must have room for every id plus the 6 special ones. */
static void build_eog(tokenizer *t)
{
	int32_t *eog = t->eog;
	size_t n = 0;
	eog_add(eog, &n, t->fim_pad);
	eog_add(eog, &n, t->fim_rep);
	eog_add(eog, &n, t->fim_sep);
	for (const char *const *s = eog_texts; *s; s++) {
		int32_t id = find_cstr(t, *s);
		if (id >= 0) {
			eog_add(eog, &n, id);
			promote_control(t, id);
		}
	}
	static const char *const channel[] = { "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL };
	for (const char *const *s = channel; *s; s++) {
		int32_t id = find_cstr(t, *s);
		if (id >= 0)
			t->tok[id].attr = TOKENIZER_ATTR_USER_DEFINED;
	}
	if (eog_add(eog, &n, t->eos))
		LOGW(TAG, "eos %d is not an end-of-generation text; adding it", t->eos);
	if (eog_add(eog, &n, t->eot))
		LOGW(TAG, "eot %d is not an end-of-generation text; adding it", t->eot);
	if (eog_add(eog, &n, t->eom))
		LOGW(TAG, "eom %d is not an end-of-generation text; adding it", t->eom);

	/* gpt-oss / solar-open: "<|end|>" only ends a message there */
	bool has_return = false, has_call = false, has_flush = false, has_tool = false;
	int32_t end_id = TOKENIZER_NULL, s_id = TOKENIZER_NULL;
	for (size_t i = 0; i < n; i++) {
		const tokenizer_entry *e = &t->tok[eog[i]];
		gguf_str s = { e->text, e->len };
		if (str_eq(s, "<|return|>"))
			has_return = true;
		else if (str_eq(s, "<|call|>") || str_eq(s, "<|calls|>"))
			has_call = true;
		else if (str_eq(s, "<|flush|>"))
			has_flush = true;
		else if (str_eq(s, "<|end|>"))
			end_id = eog[i];
		else if (str_eq(s, "<|tool_response>"))
			has_tool = true;
		else if (str_eq(s, "</s>"))
			s_id = eog[i];
	}
	if (end_id >= 0 && has_call && (has_return || has_flush)) {
		eog_remove(eog, &n, end_id);
		t->tok[end_id].attr = TOKENIZER_ATTR_USER_DEFINED;
	}
	/* gemma4 / paddleocr: "</s>" is not an end there */
	if (has_tool && s_id >= 0) {
		eog_remove(eog, &n, s_id);
		t->tok[s_id].attr = TOKENIZER_ATTR_NORMAL;
	}
	qsort(eog, n, sizeof(*eog), cmp_i32);
	t->n_eog = n;
}

/* (text length desc, id asc) as one ascending 64-bit key: (~len << 32) | id. */
static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* Step 7a: ids of CONTROL | USER_DEFINED | UNKNOWN tokens, longest text first,
   equal lengths by id. */
static int build_special(tokenizer *t)
{
	const uint32_t want = TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_USER_DEFINED | TOKENIZER_ATTR_UNKNOWN;
	size_t n = 0;
	for (int32_t i = 0; i < t->n_vocab; i++)
		n += (t->tok[i].attr & want) != 0;
	uint64_t *keys = alloc_array(n ? n : 1, sizeof(*keys));
	t->special = alloc_array(n ? n : 1, sizeof(*t->special));
	if (!keys || !t->special) {
		alloc_free(keys);
		return ERR_NOMEM;
	}
	n = 0;
	for (int32_t i = 0; i < t->n_vocab; i++)
		if (t->tok[i].attr & want)
			keys[n++] = (uint64_t)(UINT32_MAX - t->tok[i].len) << 32 | (uint32_t)i;
	qsort(keys, n, sizeof(*keys), cmp_u64);
	for (size_t i = 0; i < n; i++)
		t->special[i] = (int32_t)(keys[i] & 0xFFFFFFFFu);
	t->n_special = n;
	alloc_free(keys);
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Byte of a "<0xXX>" token: strtol of the two characters after "<0x", as
   llama.cpp reads it (stops at the first non-hex; 0 if none). */
static uint8_t byte_of(const tokenizer_entry *e)
{
	unsigned v = 0;
	for (uint32_t i = 3; i < 5 && i < e->len && hexval(e->text[i]) >= 0; i++)
		v = v * 16 + (unsigned)hexval(e->text[i]);
	return (uint8_t)v;
}

static size_t put(char *out, size_t k, const void *p, size_t n)
{
	if (out)
		memcpy(out + k, p, n);
	return k + n;
}

/* Piece of id with special = true (llama_token_to_piece); out NULL = measure. */
static size_t make_piece(const tokenizer *t, int32_t id, char *out)
{
	const tokenizer_entry *e = &t->tok[id];
	const uint32_t raw = TOKENIZER_ATTR_UNKNOWN | TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_USER_DEFINED;
	size_t k = 0;
	if (e->attr & raw)
		return put(out, 0, e->text, e->len);
	if (e->attr & TOKENIZER_ATTR_NORMAL) {
		if (t->kind == TOKENIZER_SPM) {
			for (uint32_t i = 0; i < e->len;) {
				if (e->len - i >= 3 && memcmp(e->text + i, SP_MARK, 3) == 0) {
					k = put(out, k, " ", 1);
					i += 3;
				} else
					k = put(out, k, e->text + i++, 1);
			}
			return k;
		}
		for (size_t i = 0; i < e->len;) {
			size_t used;
			uint32_t c = unicode_decode(e->text + i, e->len - i, &used);
			i += used;
			int b = unicode_cpt_to_byte(c);
			if (b >= 0) {
				uint8_t byte = (uint8_t)b;
				k = put(out, k, &byte, 1);
				continue;
			}
			/* llama.cpp's marker for a character outside the byte alphabet */
			char u8[4], hex[9];
			size_t nu = unicode_encode(c, u8);
			for (size_t j = 0; j < nu; j++)
				snprintf(hex + 2 * j, 3, "%02x", (uint8_t)u8[j]);
			k = put(out, k, "[UNK_BYTE_0x", 12);
			k = put(out, k, hex, 2 * nu);
			k = put(out, k, e->text, e->len);
			k = put(out, k, "]", 1);
			if (k > MAX_PIECE)
				return k;
		}
		return k;
	}
	if (e->attr & TOKENIZER_ATTR_BYTE) {
		uint8_t b = byte_of(e);
		return put(out, 0, &b, 1);
	}
	return 0;
}

static int build_pieces(tokenizer *t, char *err)
{
	size_t total = 0, text_total = 0;
	for (int32_t i = 0; i < t->n_vocab; i++) {
		size_t k = make_piece(t, i, NULL);
		if (k > MAX_PIECE)
			return err_set(err, ERR_FORMAT, "tokenizer.ggml.tokens[%d]: its text decodes to more than %u bytes",
				       i, MAX_PIECE);
		t->tok[i].piece_off = (uint32_t)total;
		t->tok[i].piece_len = (uint32_t)k;
		total += k;
		text_total += t->tok[i].len;
		if (total > UINT32_MAX / 2 || total > 64 * text_total + (64u << 20))
			return err_set(err, ERR_FORMAT, "tokenizer.ggml.tokens: decoded pieces too large");
		if (k > t->max_piece)
			t->max_piece = k;
	}
	t->pieces = alloc_bytes(total ? total : 1);
	if (!t->pieces)
		return ERR_NOMEM;
	for (int32_t i = 0; i < t->n_vocab; i++)
		make_piece(t, i, t->pieces + t->tok[i].piece_off);
	return 0;
}

/* ASCII lower-case copy of a gguf string, NUL-terminated, truncated. */
static void lower_copy(gguf_str s, char *out, size_t cap)
{
	size_t n = s.n < cap - 1 ? (size_t)s.n : cap - 1;
	for (size_t i = 0; i < n; i++) {
		char c = s.p[i];
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
	}
	out[n] = 0;
}

static void set_attr(tokenizer *t, const char *text, uint32_t attr, bool on)
{
	int32_t id = find_cstr(t, text);
	if (id < 0)
		return;
	if (on)
		t->tok[id].attr |= attr;
	else
		t->tok[id].attr &= ~attr;
}

/* Step 7c: llama.cpp's per-model strip attributes. */
static void name_attrs(tokenizer *t)
{
	char name[256] = "", arch[256] = "";
	gguf_str s;
	if (gguf_get_str(t->g, "general.name", &s, NULL) == 0)
		lower_copy(s, name, sizeof(name));
	if (gguf_get_str(t->g, "general.architecture", &s, NULL) == 0)
		lower_copy(s, arch, sizeof(arch));
	const char *pre = t->pre_name;
	if (strstr(pre, "jina-v2-de") || strstr(pre, "jina-v2-es") || strstr(pre, "jina-v2-code") ||
	    strstr(arch, "nomic-bert-moe") || strstr(arch, "jina-bert-v3")) {
		set_attr(t, "<mask>", TOKENIZER_ATTR_LSTRIP, true);
	} else if (strstr(name, "phi-3") || strstr(name, "phi3")) {
		for (size_t i = 0; i < t->n_special; i++)
			t->tok[t->special[i]].attr |= TOKENIZER_ATTR_RSTRIP;
		set_attr(t, "</s>", TOKENIZER_ATTR_RSTRIP, true);
		set_attr(t, "<unk>", TOKENIZER_ATTR_RSTRIP, false);
		set_attr(t, "<s>", TOKENIZER_ATTR_RSTRIP, false);
		set_attr(t, "<|endoftext|>", TOKENIZER_ATTR_RSTRIP, false);
	} else if (strstr(name, "modern-bert")) {
		set_attr(t, "[MASK]", TOKENIZER_ATTR_LSTRIP, true);
	}
}

static uint32_t attr_of_type(int64_t type)
{
	switch (type) {
	case 1: return TOKENIZER_ATTR_NORMAL;
	case 2: return TOKENIZER_ATTR_UNKNOWN;
	case 3: return TOKENIZER_ATTR_CONTROL;
	case 4: return TOKENIZER_ATTR_USER_DEFINED;
	case 5: return TOKENIZER_ATTR_UNUSED;
	case 6: return TOKENIZER_ATTR_BYTE;
	default: return TOKENIZER_ATTR_UNDEFINED;
	}
}

/* Step 1. */
static int load_tokens(tokenizer *t, char *err)
{
	gguf_arr toks, scores = { 0 }, types = { 0 };
	int rc = gguf_get_arr(t->g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, err);
	if (rc == ERR_NOTFOUND)
		return err_set(err, ERR_FORMAT, "tokenizer.ggml.tokens: missing");
	if (rc)
		return rc;
	if (toks.n == 0 || toks.n > INT32_MAX / 2)
		return err_set(err, ERR_FORMAT, "tokenizer.ggml.tokens: %llu tokens", (unsigned long long)toks.n);
	t->n_vocab = (int32_t)toks.n;

	bool have_scores = false, have_types = false;
	rc = gguf_get_arr(t->g, "tokenizer.ggml.scores", -1, &scores, err);
	if (rc == 0) {
		if (scores.type != GGUF_TYPE_FLOAT32 && scores.type != GGUF_TYPE_INT32)
			return err_set(err, ERR_FORMAT, "tokenizer.ggml.scores: elements are %s, want f32 or i32",
				       gguf_vtype_name(scores.type));
		if (scores.n != toks.n)
			return err_set(err, ERR_FORMAT, "tokenizer.ggml.scores: %llu entries for %d tokens",
				       (unsigned long long)scores.n, t->n_vocab);
		have_scores = true;
	} else if (rc != ERR_NOTFOUND)
		return rc;
	rc = gguf_get_arr(t->g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &types, err);
	if (rc == 0) {
		if (types.n != toks.n)
			return err_set(err, ERR_FORMAT, "tokenizer.ggml.token_type: %llu entries for %d tokens",
				       (unsigned long long)types.n, t->n_vocab);
		have_types = true;
	} else if (rc != ERR_NOTFOUND)
		return rc;

	t->tok = alloc_zeroed((size_t)t->n_vocab, sizeof(*t->tok));
	if (!t->tok)
		return ERR_NOMEM;
	size_t n_empty = 0;
	for (int32_t i = 0; i < t->n_vocab; i++) {
		gguf_str s = gguf_arr_str(t->g, &toks, (uint64_t)i);
		if (s.n > UINT32_MAX / 4)
			return err_set(err, ERR_FORMAT, "tokenizer.ggml.tokens[%d]: %llu bytes long", i,
				       (unsigned long long)s.n);
		n_empty += s.n == 0;
		t->tok[i].text = s.p;
		t->tok[i].len = (uint32_t)s.n;
		t->tok[i].score = have_scores ? (float)gguf_arr_f64(&scores, (uint64_t)i) : 0.0f;
		t->tok[i].attr = have_types ? attr_of_type(gguf_arr_i64(&types, (uint64_t)i)) : TOKENIZER_ATTR_NORMAL;
	}
	if (n_empty) {
		/* llama.cpp renames empty tokens "[EMPTY_<id>]" */
		t->owned = alloc_bytes(n_empty * 24);
		if (!t->owned)
			return ERR_NOMEM;
		char *p = t->owned;
		for (int32_t i = 0; i < t->n_vocab; i++) {
			if (t->tok[i].len)
				continue;
			LOGW(TAG, "empty token at index %d; naming it [EMPTY_%d] (as llama.cpp)", i, i);
			int k = snprintf(p, 24, "[EMPTY_%d]", i);
			t->tok[i].text = p;
			t->tok[i].len = (uint32_t)k;
			p += k;
		}
	}

	size_t cap = table_size((size_t)t->n_vocab);
	t->map = alloc_array(cap, sizeof(*t->map));
	if (!t->map)
		return ERR_NOMEM;
	memset(t->map, 0xFF, cap * sizeof(*t->map));
	t->map_mask = cap - 1;
	for (int32_t i = 0; i < t->n_vocab; i++) {
		const tokenizer_entry *e = &t->tok[i];
		size_t j = hash_bytes(e->text, e->len) & t->map_mask;
		for (; t->map[j] >= 0; j = (j + 1) & t->map_mask) {
			const tokenizer_entry *o = &t->tok[t->map[j]];
			if (o->len == e->len && memcmp(o->text, e->text, e->len) == 0)
				return err_set(err, ERR_FORMAT, "tokenizer.ggml.tokens[%d]: same text as token %d ('%.*s')",
					       i, t->map[j], (int)(e->len > 40 ? 40 : e->len), e->text);
		}
		t->map[j] = i;
	}
	return 0;
}

/* Step 2b: merges "left right" -> rank; both sides and the result must be tokens. */
static int load_merges(tokenizer *t, char *err)
{
	gguf_arr m;
	int rc = gguf_get_arr(t->g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &m, err);
	if (rc == ERR_NOTFOUND)
		return err_set(err, ERR_FORMAT, "tokenizer.ggml.merges: missing (a gpt2 vocabulary needs it)");
	if (rc)
		return rc;
	if (m.n > INT32_MAX / 4)
		return err_set(err, ERR_FORMAT, "tokenizer.ggml.merges: %llu merges", (unsigned long long)m.n);
	size_t n = (size_t)m.n;
	t->m_left = alloc_array(n ? n : 1, sizeof(int32_t));
	t->m_right = alloc_array(n ? n : 1, sizeof(int32_t));
	t->m_result = alloc_array(n ? n : 1, sizeof(int32_t));
	size_t cap = table_size(n);
	t->merge_map = alloc_array(cap, sizeof(int32_t));
	char *buf = NULL;
	size_t buf_cap = 0;
	if (!t->m_left || !t->m_right || !t->m_result || !t->merge_map)
		return ERR_NOMEM;
	memset(t->merge_map, 0xFF, cap * sizeof(int32_t));
	t->merge_mask = cap - 1;

	rc = 0;
	for (size_t i = 0; i < n; i++) {
		gguf_str s = gguf_arr_str(t->g, &m, (uint64_t)i);
		const char *sp = s.n > 1 ? memchr(s.p + 1, ' ', s.n - 1) : NULL;
		if (!sp) {
			rc = err_set(err, ERR_FORMAT, "tokenizer.ggml.merges[%zu]: no space in '%.*s'", i,
				     (int)(s.n > 40 ? 40 : s.n), s.p);
			break;
		}
		size_t nl = (size_t)(sp - s.p), nr = s.n - nl - 1;
		int32_t l = tokenizer_lookup(t, s.p, nl), r = tokenizer_lookup(t, sp + 1, nr);
		if (l < 0 || r < 0) {
			rc = err_set(err, ERR_FORMAT, "tokenizer.ggml.merges[%zu]: '%.*s' is not a token", i,
				     (int)((l < 0 ? nl : nr) > 40 ? 40 : (l < 0 ? nl : nr)), l < 0 ? s.p : sp + 1);
			break;
		}
		if (nl + nr > buf_cap) {
			char *b = alloc_resize(buf, nl + nr);
			if (!b) {
				rc = ERR_NOMEM;
				break;
			}
			buf = b;
			buf_cap = nl + nr;
		}
		memcpy(buf, s.p, nl);
		memcpy(buf + nl, sp + 1, nr);
		int32_t res = tokenizer_lookup(t, buf, nl + nr);
		if (res < 0) {
			rc = err_set(err, ERR_FORMAT, "tokenizer.ggml.merges[%zu]: '%.*s' makes a text that is not a token",
				     i, (int)(s.n > 40 ? 40 : s.n), s.p);
			break;
		}
		t->m_left[i] = l;
		t->m_right[i] = r;
		t->m_result[i] = res;
		size_t j = hash_pair(l, r) & t->merge_mask;
		while (t->merge_map[j] >= 0 && !(t->m_left[t->merge_map[j]] == l && t->m_right[t->merge_map[j]] == r))
			j = (j + 1) & t->merge_mask;
		if (t->merge_map[j] < 0) /* a repeated pair keeps its first rank */
			t->merge_map[j] = (int32_t)i;
	}
	alloc_free(buf);
	t->n_merges = rc ? 0 : n;
	return rc;
}

/* Step 2a. */
static int load_type(tokenizer *t, char *err)
{
	gguf_str model, pre = { "", 0 };
	int rc = gguf_get_str(t->g, "tokenizer.ggml.model", &model, err);
	if (rc == ERR_NOTFOUND)
		return err_set(err, ERR_FORMAT, "tokenizer.ggml.model: missing (no vocabulary in this file)");
	if (rc)
		return rc;
	rc = gguf_get_str(t->g, "tokenizer.ggml.pre", &pre, err);
	if (rc && rc != ERR_NOTFOUND)
		return rc;

	if (str_eq(model, "llama")) {
		t->kind = TOKENIZER_SPM;
		t->add_space_prefix = true;
		t->add_bos = true;
		t->bos = 1;
		t->eos = 2;
		t->unk = 0;
		t->pre_name[0] = 0;
	} else if (str_eq(model, "gpt2")) {
		t->kind = TOKENIZER_BPE;
		t->clean_spaces = true;
		t->bos = 11;
		t->eos = 11;
		if (pre.n == 0) {
			LOGW(TAG, "tokenizer.ggml.pre missing; using 'default' (as llama.cpp; quality may suffer)");
			pre = (gguf_str){ "default", 7 };
		}
		size_t i = 0, n_pre = sizeof(pre_table) / sizeof(pre_table[0]);
		while (i < n_pre && !str_eq(pre, pre_table[i].name))
			i++;
		if (i == n_pre)
			return err_set(err, ERR_UNSUPPORTED,
				       "tokenizer.ggml.pre '%.*s' is not supported (we implement gpt-2, llama-bpe, qwen2, "
				       "deepseek-coder, default and their aliases)",
				       (int)(pre.n > 60 ? 60 : pre.n), pre.p);
		t->pre = pre_table[i].kind;
		snprintf(t->pre_name, sizeof(t->pre_name), "%s", pre_table[i].name);
		t->clean_spaces = !pre_table[i].keep_spaces;
		t->ignore_merges = pre_table[i].ignore_merges;
		t->add_bos = pre_table[i].add_bos;
		if (pre_table[i].no_bos)
			t->bos = TOKENIZER_NULL;
	} else {
		return err_set(err, ERR_UNSUPPORTED, "tokenizer.ggml.model '%.*s' is not supported (only 'llama' and 'gpt2')",
			       (int)(model.n > 60 ? 60 : model.n), model.p);
	}
	return read_bool(t->g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err);
}

/* Step 3. */
static int load_special_ids(tokenizer *t, char *err)
{
	int32_t *defaults[] = { &t->bos, &t->eos, &t->unk };
	for (size_t i = 0; i < 3; i++)
		if (*defaults[i] >= t->n_vocab)
			*defaults[i] = TOKENIZER_NULL;
	const struct {
		const char *key;
		int32_t *id;
	} keys[] = {
		{ "tokenizer.ggml.bos_token_id", &t->bos },
		{ "tokenizer.ggml.eos_token_id", &t->eos },
		{ "tokenizer.ggml.eot_token_id", &t->eot },
		{ "tokenizer.ggml.eom_token_id", &t->eom },
		{ "tokenizer.ggml.unknown_token_id", &t->unk },
		{ "tokenizer.ggml.seperator_token_id", &t->sep },
		{ "tokenizer.ggml.padding_token_id", &t->pad },
		{ "tokenizer.ggml.mask_token_id", &t->mask },
		{ "tokenizer.ggml.fim_pre_token_id", &t->fim_pre },
		{ "tokenizer.ggml.fim_suf_token_id", &t->fim_suf },
		{ "tokenizer.ggml.fim_mid_token_id", &t->fim_mid },
		{ "tokenizer.ggml.fim_pad_token_id", &t->fim_pad },
		{ "tokenizer.ggml.fim_rep_token_id", &t->fim_rep },
		{ "tokenizer.ggml.fim_sep_token_id", &t->fim_sep },
		{ "tokenizer.ggml.prefix_token_id", &t->fim_pre }, /* deprecated names */
		{ "tokenizer.ggml.suffix_token_id", &t->fim_suf },
		{ "tokenizer.ggml.middle_token_id", &t->fim_mid },
	};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		int rc = read_id(t->g, keys[i].key, t->n_vocab, keys[i].id, err);
		if (rc)
			return rc;
	}
	int rc = read_bool(t->g, "tokenizer.ggml.add_bos_token", &t->add_bos, err);
	if (!rc)
		rc = read_bool(t->g, "tokenizer.ggml.add_eos_token", &t->add_eos, err);
	if (rc)
		return rc;
	if (t->add_bos && t->bos == TOKENIZER_NULL)
		return err_set(err, ERR_FORMAT, "tokenizer.ggml.add_bos_token is set but there is no BOS token");
	if (t->add_eos && t->eos == TOKENIZER_NULL)
		return err_set(err, ERR_FORMAT, "tokenizer.ggml.add_eos_token is set but there is no EOS token");
	return 0;
}

static void load_byte_tokens(tokenizer *t)
{
	for (unsigned b = 0; b < 256; b++) {
		char buf[8];
		int32_t id;
		if (t->kind == TOKENIZER_SPM) {
			snprintf(buf, sizeof(buf), "<0x%02X>", b);
			id = find_cstr(t, buf);
			if (id < 0) {
				buf[0] = (char)b;
				id = tokenizer_lookup(t, buf, 1);
			}
		} else {
			id = tokenizer_lookup(t, buf, unicode_encode(unicode_byte_to_cpt((uint8_t)b), buf));
		}
		t->byte_tok[b] = id;
	}
}

tokenizer *tokenizer_create(const gguf *g, char err[ERR_LEN])
{
	tokenizer *t = alloc_zeroed(1, sizeof(*t));
	if (!t) {
		err_set(err, ERR_NOMEM, "tokenizer: out of memory");
		return NULL;
	}
	t->g = g;
	int32_t *ids[] = { &t->bos, &t->eos, &t->eot, &t->eom, &t->unk, &t->sep, &t->pad, &t->mask, &t->nl,
			   &t->fim_pre, &t->fim_suf, &t->fim_mid, &t->fim_pad, &t->fim_rep, &t->fim_sep };
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
		*ids[i] = TOKENIZER_NULL;

	int rc = load_tokens(t, err);
	if (!rc)
		rc = load_type(t, err);
	if (!rc && t->kind == TOKENIZER_BPE)
		rc = load_merges(t, err);
	if (!rc)
		rc = load_special_ids(t, err);
	if (rc)
		goto fail;
	load_byte_tokens(t);

	detect(t, &t->eot, eot_texts);
	detect(t, &t->eom, eom_texts);
	detect(t, &t->fim_pre, fim_pre_texts);
	detect(t, &t->fim_suf, fim_suf_texts);
	detect(t, &t->fim_mid, fim_mid_texts);
	detect(t, &t->fim_pad, fim_pad_texts);
	detect(t, &t->fim_rep, fim_rep_texts);
	detect(t, &t->fim_sep, fim_sep_texts);

	for (int32_t i = 0; i < t->n_vocab; i++) {
		tokenizer_entry *e = &t->tok[i];
		/* strstr on the text up to its first NUL, like llama.cpp's c_str() */
		if ((e->attr & TOKENIZER_ATTR_CONTROL) && e->len >= 6 &&
		    memmem(e->text, strnlen(e->text, e->len), "unused", 6))
			e->attr |= TOKENIZER_ATTR_UNUSED;
	}

	rc = ERR_NOMEM;
	t->eog = alloc_array((size_t)t->n_vocab + 8, sizeof(*t->eog));
	if (!t->eog)
		goto fail;
	build_eog(t);
	if (build_special(t))
		goto fail;
	rc = build_pieces(t, err);
	if (rc)
		goto fail;
	name_attrs(t);

	if (t->kind == TOKENIZER_SPM) {
		t->nl = t->byte_tok['\n'] >= 0 ? t->byte_tok['\n'] : t->pad;
	} else {
		tokenizer_ids nl = { 0 };
		rc = tokenizer_bpe_encode(t, "\n", 1, &nl);
		t->nl = nl.n ? nl.v[0] : t->pad;
		alloc_free(nl.v);
		if (rc)
			goto fail;
	}
	return t;
fail:
	if (rc == ERR_NOMEM)
		err_set(err, ERR_NOMEM, "tokenizer: out of memory");
	tokenizer_destroy(t);
	return NULL;
}

void tokenizer_destroy(tokenizer *t)
{
	if (!t)
		return;
	alloc_free(t->special);
	alloc_free(t->eog);
	alloc_free(t->pieces);
	alloc_free(t->merge_map);
	alloc_free(t->m_result);
	alloc_free(t->m_right);
	alloc_free(t->m_left);
	alloc_free(t->map);
	alloc_free(t->owned);
	alloc_free(t->tok);
	alloc_free(t);
}

int tokenizer_check(const tokenizer *t, char err[ERR_LEN])
{
	for (int32_t i = 0; i < t->n_vocab; i++) {
		int32_t j = tokenizer_lookup(t, t->tok[i].text, t->tok[i].len);
		if (j != i)
			return err_set(err, ERR_INVAL, "token %d: its text maps to %d", i, j);
	}
	for (size_t r = 0; r < t->n_merges; r++) {
		int32_t l = t->m_left[r], rr = t->m_right[r], res = t->m_result[r];
		if (l < 0 || l >= t->n_vocab || rr < 0 || rr >= t->n_vocab || res < 0 || res >= t->n_vocab ||
		    t->tok[res].len != t->tok[l].len + t->tok[rr].len)
			return err_set(err, ERR_INVAL, "merge %zu: bad ids %d %d -> %d", r, l, rr, res);
		int32_t got = tokenizer_merge_rank(t, l, rr);
		if (got < 0 || (size_t)got > r || t->m_left[got] != l || t->m_right[got] != rr)
			return err_set(err, ERR_INVAL, "merge %zu: pair maps to rank %d", r, got);
	}
	for (size_t i = 0; i < t->n_special; i++) {
		int32_t a = t->special[i];
		if (a < 0 || a >= t->n_vocab)
			return err_set(err, ERR_INVAL, "special[%zu] = %d out of range", i, a);
		if (i && (t->tok[t->special[i - 1]].len < t->tok[a].len ||
			  (t->tok[t->special[i - 1]].len == t->tok[a].len && t->special[i - 1] >= a)))
			return err_set(err, ERR_INVAL, "special[%zu] out of order", i);
	}
	for (size_t i = 0; i < t->n_eog; i++)
		if (t->eog[i] < 0 || t->eog[i] >= t->n_vocab || (i && t->eog[i - 1] >= t->eog[i]))
			return err_set(err, ERR_INVAL, "eog[%zu] = %d out of range or order", i, t->eog[i]);
	if ((t->add_bos && t->bos < 0) || (t->add_eos && t->eos < 0))
		return err_set(err, ERR_INVAL, "add_bos/add_eos without the token");
	return 0;
}

/* ---------------------------------------------------------------- encode */

typedef struct {
	uint32_t off, len;
	int32_t id; /* special token, or TOKENIZER_NULL for raw text */
} frag;

typedef struct {
	frag *v;
	size_t n, cap;
} frags;

static int frag_push(frags *f, uint32_t off, uint32_t len, int32_t id)
{
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 16;
		frag *v = alloc_resize_array(f->v, cap, sizeof(*v));
		if (!v)
			return ERR_NOMEM;
		f->v = v;
		f->cap = cap;
	}
	f->v[f->n++] = (frag){ off, len, id };
	return 0;
}

static int is_space(char c)
{
	return c == ' ' || (c >= '\t' && c <= '\r');
}

/* Cut raw fragment [off, off+len) of text at every occurrence of special id. */
static int split_fragment(const tokenizer *t, const char *text, uint32_t off, uint32_t len, int32_t id, frags *out)
{
	const tokenizer_entry *e = &t->tok[id];
	while (len > 0) {
		const char *p = memmem(text + off, len, e->text, e->len);
		if (!p)
			return frag_push(out, off, len, TOKENIZER_NULL);
		uint32_t m = (uint32_t)(p - text);
		if (m > off) {
			uint32_t left = m - off;
			if (e->attr & TOKENIZER_ATTR_LSTRIP)
				while (left > 0 && is_space(text[off + left - 1]))
					left--;
			if (left && frag_push(out, off, left, TOKENIZER_NULL))
				return ERR_NOMEM;
		}
		if (frag_push(out, m, e->len, id))
			return ERR_NOMEM;
		uint32_t r_off = m + e->len, r_len = off + len - r_off;
		if (e->attr & TOKENIZER_ATTR_RSTRIP)
			while (r_len > 0 && is_space(text[r_off])) {
				r_off++;
				r_len--;
			}
		off = r_off;
		len = r_len;
	}
	return 0;
}

/* llama.cpp's tokenizer_st_partition. On success *res holds the fragments. */
static int partition(const tokenizer *t, const char *text, uint32_t len, bool parse_special, frags *res)
{
	frags a = { 0 }, b = { 0 };
	if (frag_push(&a, 0, len, TOKENIZER_NULL))
		goto fail;
	for (size_t s = 0; s < t->n_special; s++) {
		int32_t id = t->special[s];
		if (!parse_special && (t->tok[id].attr & (TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_UNKNOWN)))
			continue;
		b.n = 0;
		for (size_t i = 0; i < a.n; i++) {
			frag f = a.v[i];
			int rc = f.id != TOKENIZER_NULL ? frag_push(&b, f.off, f.len, f.id)
							: split_fragment(t, text, f.off, f.len, id, &b);
			if (rc)
				goto fail;
		}
		frags x = a;
		a = b;
		b = x;
	}
	alloc_free(b.v);
	*res = a;
	return 0;
fail:
	alloc_free(b.v);
	alloc_free(a.v);
	return ERR_NOMEM;
}

/* SPM text of one raw fragment: optional dummy prefix, spaces -> U+2581. */
static size_t spm_escape(const char *s, size_t n, bool prefix, char *out)
{
	size_t k = 0;
	if (prefix) {
		memcpy(out, SP_MARK, 3);
		k = 3;
	}
	for (size_t i = 0; i < n; i++) {
		if (s[i] == ' ') {
			memcpy(out + k, SP_MARK, 3);
			k += 3;
		} else
			out[k++] = s[i];
	}
	return k;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
		     int32_t **ids, size_t *n)
{
	*ids = NULL;
	*n = 0;
	if (len > MAX_TEXT)
		return ERR_INVAL;
	tokenizer_ids out = { 0 };
	frags f = { 0 };
	char *buf = NULL;
	int rc = ERR_NOMEM;
	if (len && partition(t, text, (uint32_t)len, parse_special, &f))
		goto fail;

	if (add_special && t->add_bos && tokenizer_ids_push(&out, t->bos))
		goto fail;
	if (t->kind == TOKENIZER_SPM) {
		size_t longest = 0;
		for (size_t i = 0; i < f.n; i++)
			if (f.v[i].id == TOKENIZER_NULL && f.v[i].len > longest)
				longest = f.v[i].len;
		buf = alloc_array(longest + 1, 3);
		if (!buf)
			goto fail;
	}
	bool prev_special = true; /* the text start counts as "after a special token" */
	for (size_t i = 0; i < f.n; i++) {
		const frag *fr = &f.v[i];
		if (fr->id != TOKENIZER_NULL) {
			if (tokenizer_ids_push(&out, fr->id))
				goto fail;
			prev_special = true;
			continue;
		}
		if (t->kind == TOKENIZER_SPM) {
			size_t k = spm_escape(text + fr->off, fr->len, t->add_space_prefix && prev_special, buf);
			rc = tokenizer_spm_encode(t, buf, k, &out);
		} else {
			rc = tokenizer_bpe_encode(t, text + fr->off, fr->len, &out);
		}
		if (rc)
			goto fail;
		rc = ERR_NOMEM;
		prev_special = false;
	}
	if (add_special && t->add_eos && tokenizer_ids_push(&out, t->eos))
		goto fail;
	if (add_special && t->add_bos && out.n >= 2 && out.v[1] == t->bos)
		LOGD(TAG, "the prompt starts with two BOS tokens");

	alloc_free(buf);
	alloc_free(f.v);
	*ids = out.v;
	*n = out.n;
	return 0;
fail:
	alloc_free(buf);
	alloc_free(f.v);
	alloc_free(out.v);
	return rc;
}

/* ---------------------------------------------------------------- decode */

const char *tokenizer_piece(const tokenizer *t, int32_t id, bool special, size_t *len)
{
	*len = 0;
	if (id < 0 || id >= t->n_vocab)
		return "";
	const tokenizer_entry *e = &t->tok[id];
	if (!special && (e->attr & (TOKENIZER_ATTR_UNKNOWN | TOKENIZER_ATTR_CONTROL)))
		return "";
	*len = e->piece_len;
	return t->pieces + e->piece_off;
}

size_t tokenizer_max_piece(const tokenizer *t)
{
	return t->max_piece;
}

/* llama_detokenize's clean_up_tokenization_spaces, three in-place passes
   (ported pass by pass; the second one's NUL write is part of its effect). */
static size_t clean_spaces(char *s, size_t total)
{
	/* " ?", " !", " .", " ," */
	size_t n1 = total;
	total = total ? 1 : 0;
	for (size_t i = 1; i < n1; i++) {
		char x = s[i];
		if (s[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ','))
			total--;
		s[total++] = x;
	}
	/* " ' " -> "'" */
	size_t n2 = total;
	total = total ? 1 : 0;
	for (size_t i = 1; i < n2; i++) {
		char x = s[i];
		if (x == '\'' && i + 1 < n2 && s[i - 1] == ' ' && s[i + 1] == ' ') {
			total--;
			s[++i] = '\0';
		}
		s[total++] = x;
	}
	/* " 's", " 'm", " 're", " 've" (not " 't", " 'd", " 'll") */
	size_t n3 = total;
	total = total ? 1 : 0;
	for (size_t i = 1; i < n3; i++) {
		char x = s[i];
		if (s[i - 1] == ' ' && x == '\'' && i + 1 < n3) {
			char x1 = s[i + 1];
			if (x1 == 's' || x1 == 'm')
				total--;
			else if (i + 2 < n3 && ((x1 == 'r' && s[i + 2] == 'e') || (x1 == 'v' && s[i + 2] == 'e')))
				total--;
		}
		s[total++] = x;
	}
	return total;
}

int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, unsigned flags, char **text,
		     size_t *len, char *err)
{
	*text = NULL;
	*len = 0;
	bool special = flags & TOKENIZER_DECODE_SPECIAL;
	bool remove_space = t->add_space_prefix;
	if ((flags & TOKENIZER_DECODE_REMOVE_SPECIAL) && t->add_bos && n > 0 && ids[0] == t->bos) {
		remove_space = false;
		ids++;
		n--;
	}
	if ((flags & TOKENIZER_DECODE_REMOVE_SPECIAL) && t->add_eos && n > 0 && ids[n - 1] == t->eos)
		n--;

	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= t->n_vocab)
			return err_set(err, ERR_INVAL, "token id %d is outside the vocabulary (%d tokens)", ids[i],
				       t->n_vocab);
		size_t pl;
		tokenizer_piece(t, ids[i], special, &pl);
		total += pl;
	}
	char *s = alloc_bytes(total + 1);
	if (!s)
		return err_set(err, ERR_NOMEM, "detokenize: out of memory");
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		size_t pl;
		const char *p = tokenizer_piece(t, ids[i], special, &pl);
		if (remove_space && pl && p[0] == ' ') {
			p++;
			pl--;
		}
		remove_space = false;
		memcpy(s + k, p, pl);
		k += pl;
	}
	if (t->clean_spaces)
		k = clean_spaces(s, k);
	s[k] = 0;
	*text = s;
	*len = k;
	return 0;
}

/* ---------------------------------------------------------------- streaming */

void tokenizer_detok_init(tokenizer_detok *d, const tokenizer *t, unsigned flags)
{
	memset(d, 0, sizeof(*d));
	d->t = t;
	d->flags = flags;
}

/* Output <= 3 bytes per input byte (U+FFFD for one bad byte), input <=
   held + piece; the last quarter is scratch for the joined input. */
size_t tokenizer_detok_cap(const tokenizer *t)
{
	return 4 * (t->max_piece + 4);
}

/* Length of the maximal invalid subpart at s (>= 1): the longest prefix that
   could still have begun a valid character. */
static size_t invalid_run(const char *s, size_t n)
{
	size_t k = 1;
	for (size_t j = 2; j <= n && j <= 3; j++)
		if (unicode_valid_len(s, j) < 0)
			k = j;
	return k;
}

/* Copy whole characters of src[0..n) to out; hold an incomplete tail unless
   final. Returns bytes written. */
static size_t emit_utf8(tokenizer_detok *d, const char *src, size_t n, char *out, bool final)
{
	size_t i = 0, k = 0;
	while (i < n) {
		int v = unicode_valid_len(src + i, n - i);
		if (v > 0) {
			memcpy(out + k, src + i, (size_t)v);
			k += (size_t)v;
			i += (size_t)v;
			continue;
		}
		if (v < 0 && !final) {
			d->n_held = n - i;
			memcpy(d->held, src + i, d->n_held);
			return k;
		}
		size_t bad = v < 0 ? n - i : invalid_run(src + i, n - i);
		if (d->flags & TOKENIZER_DETOK_REPLACE) {
			memcpy(out + k, "\xef\xbf\xbd", 3);
			k += 3;
		} else {
			memcpy(out + k, src + i, bad);
			k += bad;
		}
		i += bad;
	}
	d->n_held = 0;
	return k;
}

size_t tokenizer_detok_push(tokenizer_detok *d, int32_t id, char *out)
{
	size_t pl;
	const char *p = tokenizer_piece(d->t, id, d->flags & TOKENIZER_DETOK_SPECIAL, &pl);
	if (pl == 0)
		return 0;
	char *src = out + 3 * (d->t->max_piece + 4);
	memcpy(src, d->held, d->n_held);
	memcpy(src + d->n_held, p, pl);
	return emit_utf8(d, src, d->n_held + pl, out, false);
}

size_t tokenizer_detok_flush(tokenizer_detok *d, char *out)
{
	uint8_t held[4];
	size_t n = d->n_held;
	memcpy(held, d->held, n);
	return emit_utf8(d, (const char *)held, n, out, true);
}

/* ---------------------------------------------------------------- getters */

tokenizer_kind tokenizer_get_kind(const tokenizer *t) { return t->kind; }
const char *tokenizer_pre_name(const tokenizer *t) { return t->pre_name; }
int32_t tokenizer_n_vocab(const tokenizer *t) { return t->n_vocab; }
int32_t tokenizer_bos(const tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const tokenizer *t) { return t->eos; }
int32_t tokenizer_eot(const tokenizer *t) { return t->eot; }
int32_t tokenizer_eom(const tokenizer *t) { return t->eom; }
int32_t tokenizer_unk(const tokenizer *t) { return t->unk; }
int32_t tokenizer_pad(const tokenizer *t) { return t->pad; }
int32_t tokenizer_nl(const tokenizer *t) { return t->nl; }
bool tokenizer_add_bos(const tokenizer *t) { return t->add_bos; }
bool tokenizer_add_eos(const tokenizer *t) { return t->add_eos; }

bool tokenizer_is_eog(const tokenizer *t, int32_t id)
{
	size_t lo = 0, hi = t->n_eog;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (t->eog[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < t->n_eog && t->eog[lo] == id;
}

const int32_t *tokenizer_eog_ids(const tokenizer *t, size_t *n)
{
	*n = t->n_eog;
	return t->eog;
}

const char *tokenizer_token_text(const tokenizer *t, int32_t id, size_t *len)
{
	if (id < 0 || id >= t->n_vocab) {
		*len = 0;
		return NULL;
	}
	*len = t->tok[id].len;
	return t->tok[id].text;
}

unsigned tokenizer_token_attr(const tokenizer *t, int32_t id)
{
	return id < 0 || id >= t->n_vocab ? 0 : t->tok[id].attr;
}

float tokenizer_token_score(const tokenizer *t, int32_t id)
{
	return id < 0 || id >= t->n_vocab ? 0.0f : t->tok[id].score;
}

int32_t tokenizer_find(const tokenizer *t, const char *text, size_t len)
{
	return tokenizer_lookup(t, text, len);
}
