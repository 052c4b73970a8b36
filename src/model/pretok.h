/* pretok.h - BPE pre-tokenizers: cut text into the words that BPE merges
 * within, exactly where llama.cpp cuts them.
 *
 * Each kind is a fixed sequence of regexes (llama-vocab.cpp lists them per
 * tokenizer.ggml.pre); each regex splits every piece the previous one left
 * into matches and the gaps between them. We implement the few regexes our
 * vocabularies use as hand-written matchers over code points, with the
 * classes from model/unicode.h. pretok.c says, per regex, where llama.cpp's
 * implementation (which our test vectors come from) differs from a textbook
 * regex engine and which of the two we follow (always llama.cpp).
 */
#ifndef PDSERVE_MODEL_PRETOK_H
#define PDSERVE_MODEL_PRETOK_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
	PRETOK_DEFAULT,        /* llama.cpp's fallback: punctuation runs, GPT-2, digit runs, digit triples */
	PRETOK_GPT2,           /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
	PRETOK_LLAMA3,         /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
	PRETOK_QWEN2,          /* the same with \p{N} (one digit per word) */
	PRETOK_DEEPSEEK_CODER, /* [\r\n] / \s?\p{L}+ / \s?\p{P}+ / [CJK]+ / \p{N}, in turn */
	PRETOK_COUNT,
} pretok_kind;

/* Split cpts[0..n) into words. Writes each word's length in code points to
   lens[] and returns how many there are (0 when n == 0); the lengths add up
   to n. lens and tmp are caller scratch of at least n entries each (no split
   makes more words than code points). Never fails, never allocates. */
size_t pretok_split(pretok_kind kind, const uint32_t *cpts, size_t n, uint32_t *lens, uint32_t *tmp);

#endif
