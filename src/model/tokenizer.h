/* tokenizer.h - text <-> token ids, exactly as llama.cpp does it.
 *
 * Two vocabulary types, from a GGUF's tokenizer.ggml.* keys:
 *   - "llama": SentencePiece BPE (dummy-prefix space, spaces as U+2581,
 *     merging by piece score, <0xXX> byte fallback);
 *   - "gpt2": byte-level BPE (GPT-2 byte alphabet, merges by rank) after one
 *     of the pre-tokenizers "gpt-2" (and its aliases), "llama-bpe" (Llama 3),
 *     "qwen2", "deepseek-coder" or "default" (see model/pretok.h).
 * Anything else is refused at load, naming the value. Vocab-only GGUFs (no
 * tensors) work.
 *
 * Ownership: the tokenizer borrows the gguf: token texts are views into its
 * mapping, so the gguf must stay open until tokenizer_destroy. After
 * tokenizer_create the tokenizer is immutable; every function below may be
 * called from any number of threads at once. Results that are arrays or
 * strings are either borrowed from the tokenizer (valid until destroy, said so
 * below) or owned by the caller and freed with alloc_free.
 *
 * Untrusted input: any byte string can be encoded (invalid UTF-8 included,
 * handled as llama.cpp does: SPM keeps the bytes and falls back to byte
 * tokens, byte-level BPE sees each bad byte as U+FFFD). Any int32 can be
 * decoded (ids outside the vocabulary are an error, not a crash). A GGUF
 * with inconsistent tokenizer arrays is refused at load with one sentence
 * naming the key and the index.
 */
#ifndef PDSERVE_MODEL_TOKENIZER_H
#define PDSERVE_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "model/gguf.h"

#define TOKENIZER_NULL (-1) /* "no such token" for the id getters */

typedef enum {
	TOKENIZER_SPM = 1, /* tokenizer.ggml.model = "llama" */
	TOKENIZER_BPE = 2, /* tokenizer.ggml.model = "gpt2" */
} tokenizer_kind;

/* Token attributes (llama.cpp's llama_token_attr bits). A GGUF token_type
   gives one of the first six; load adds CONTROL to end-of-generation and
   FIM-looking tokens, UNUSED to control tokens named "...unused...", and
   LSTRIP/RSTRIP for the few models llama.cpp special-cases by name (Phi-3). */
enum {
	TOKENIZER_ATTR_UNDEFINED = 0,
	TOKENIZER_ATTR_UNKNOWN = 1 << 0,
	TOKENIZER_ATTR_UNUSED = 1 << 1,
	TOKENIZER_ATTR_NORMAL = 1 << 2,
	TOKENIZER_ATTR_CONTROL = 1 << 3,
	TOKENIZER_ATTR_USER_DEFINED = 1 << 4,
	TOKENIZER_ATTR_BYTE = 1 << 5,
	TOKENIZER_ATTR_LSTRIP = 1 << 7,
	TOKENIZER_ATTR_RSTRIP = 1 << 8,
};

typedef struct tokenizer tokenizer;

/* Build the tokenizer of g (borrowed; must outlive the tokenizer). NULL on
   failure with one sentence in err: a missing or mistyped tokenizer.ggml.*
   key, arrays whose lengths differ from tokens, a special-token id outside
   the vocabulary, duplicate token texts, a merge that names a text which is
   not a token (or makes one), an unsupported model or pre-tokenizer. */
tokenizer *tokenizer_create(const gguf *g, char err[ERR_LEN]);
void tokenizer_destroy(tokenizer *t); /* NULL is fine */

/* Check the invariants (every token text maps back to its id, merges and
   special lists consistent). 0 or ERR_INVAL with a sentence in err. For
   tests and debug builds; O(vocabulary). */
int tokenizer_check(const tokenizer *t, char err[ERR_LEN]);

/* ---------------------------------------------------------------- encode */

/* Tokenize text[0..len) (any bytes). *ids is a new array owned by the
   caller (alloc_free; NULL when *n == 0).
   add_special: BOS/EOS as the vocabulary asks (add_bos/add_eos).
   parse_special: control and unknown-type token texts in the input (e.g.
   "<|im_start|>") become their ids; without it they are plain text.
   User-defined tokens are always matched, as in llama.cpp. Special texts
   are matched longest first over the whole input, so a longer one wins over
   an overlapping shorter one even when the shorter starts earlier (llama.cpp's
   order; among equal lengths the lower id, where llama.cpp's is unspecified).
   0, ERR_NOMEM, or ERR_INVAL (len > 256 MiB). */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
		     bool parse_special, int32_t **ids, size_t *n);

/* ---------------------------------------------------------------- decode */

/* The bytes token id stands for (llama_token_to_piece with lstrip 0): SPM
   U+2581 -> space, byte tokens -> that byte, byte-level BPE -> the original
   bytes; control and unknown tokens give "" unless special; user-defined
   tokens always give their text. Borrowed (valid until destroy), not
   NUL-terminated; *len = 0 and "" for an id outside the vocabulary. */
const char *tokenizer_piece(const tokenizer *t, int32_t id, bool special, size_t *len);

/* Longest piece of any token, in bytes (sizes the streaming buffers). */
size_t tokenizer_max_piece(const tokenizer *t);

enum {
	TOKENIZER_DECODE_REMOVE_SPECIAL = 1, /* drop a leading BOS / trailing EOS the vocab adds */
	TOKENIZER_DECODE_SPECIAL = 2,        /* render control tokens as their text */
};

/* Text of ids[0..n), as llama_detokenize(remove_special, unparse_special):
   pieces concatenated; for SPM the first piece loses one leading space
   (the dummy prefix) unless REMOVE_SPECIAL dropped a BOS before it; for
   vocabularies with clean_up_tokenization_spaces (GPT-2, Llama 3) " ?",
   " !", " .", " ,", " ' ", " 's", " 'm", " 're", " 've" lose their space.
   *text is new, owned by the caller (alloc_free), NUL-terminated (*len
   excludes the NUL). 0, ERR_NOMEM or ERR_INVAL (an id outside the vocabulary;
   the sentence in err, which may be NULL, names it). */
int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
		     char **text, size_t *len, char *err);

/* Streaming detokenizer: feed ids one at a time, get back only whole UTF-8
   characters; a character split across tokens (byte tokens, or BPE tokens
   holding part of one) is held back until it completes. Bytes that can
   never become valid UTF-8 are passed through unchanged (so the output is
   byte for byte what the pieces say, like llama.cpp prints), or replaced by
   U+FFFD per maximal invalid sequence with TOKENIZER_DETOK_REPLACE (for
   JSON/SSE, which need valid UTF-8). Does not apply the SPM first-space
   rule or space cleaning (llama.cpp's streaming does not either).

   Caller-owned storage, no allocation: init, then push/flush.
   out must hold tokenizer_detok_cap(t) bytes. */
enum {
	TOKENIZER_DETOK_SPECIAL = 1, /* render control tokens */
	TOKENIZER_DETOK_REPLACE = 2, /* invalid UTF-8 -> U+FFFD */
};
typedef struct { /* fields are private */
	const tokenizer *t; /* borrowed */
	unsigned flags;
	uint8_t held[4];    /* incomplete character carried to the next push */
	size_t n_held;      /* 0..3 */
} tokenizer_detok;

void tokenizer_detok_init(tokenizer_detok *d, const tokenizer *t, unsigned flags);
size_t tokenizer_detok_cap(const tokenizer *t);
/* Append id's piece; returns how many bytes were written to out (0 when the
   piece is empty or only continues a held character). An id outside the
   vocabulary adds nothing. */
size_t tokenizer_detok_push(tokenizer_detok *d, int32_t id, char *out);
/* End of stream: returns the held bytes (raw, or U+FFFD with REPLACE) and
   resets the held state. */
size_t tokenizer_detok_flush(tokenizer_detok *d, char *out);

/* ---------------------------------------------------------------- vocabulary */

tokenizer_kind tokenizer_get_kind(const tokenizer *t);
const char *tokenizer_pre_name(const tokenizer *t); /* "llama-bpe", "qwen2", ...; "" for SPM */
int32_t tokenizer_n_vocab(const tokenizer *t);

/* Special ids, TOKENIZER_NULL when the vocabulary has none. */
int32_t tokenizer_bos(const tokenizer *t);
int32_t tokenizer_eos(const tokenizer *t);
int32_t tokenizer_eot(const tokenizer *t); /* metadata, else by text ("<|eot_id|>", "<|im_end|>", ...) */
int32_t tokenizer_eom(const tokenizer *t);
int32_t tokenizer_unk(const tokenizer *t);
int32_t tokenizer_pad(const tokenizer *t);
int32_t tokenizer_nl(const tokenizer *t);  /* the token of "\n" */
bool tokenizer_add_bos(const tokenizer *t);
bool tokenizer_add_eos(const tokenizer *t);

/* End of generation: eos, eot, eom, the FIM pad/repo/sep tokens, and every
   token whose text llama.cpp lists as ending a turn ("<|eot_id|>",
   "<|im_end|>", "<|endoftext|>", "</s>", "<|end|>", ...), with llama.cpp's
   two exceptions (see tokenizer.c). */
bool tokenizer_is_eog(const tokenizer *t, int32_t id);
/* The EOG set, ascending. Borrowed. */
const int32_t *tokenizer_eog_ids(const tokenizer *t, size_t *n);

/* Raw vocabulary entry (not NUL-terminated; borrowed). NULL/0 for a bad id. */
const char *tokenizer_token_text(const tokenizer *t, int32_t id, size_t *len);
unsigned tokenizer_token_attr(const tokenizer *t, int32_t id); /* TOKENIZER_ATTR_*; 0 for a bad id */
float tokenizer_token_score(const tokenizer *t, int32_t id);
/* Exact lookup of a token by its text; TOKENIZER_NULL if none. */
int32_t tokenizer_find(const tokenizer *t, const char *text, size_t len);

#endif
