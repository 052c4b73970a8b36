/* tokenizer_fuzz.c - libFuzzer target: arbitrary bytes through the tokenizers.
 * Loads the vocabularies of ../shared/models/vocab (or $PDSERVE_FUZZ_VOCAB,
 * a colon-separated list of GGUF files) once; each input is encoded by every
 * one with and without special-token parsing, and ids built from the input
 * are decoded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

static gguf *g[8];
static tokenizer *tok[8];
static int n_tok;

static void load(const char *path)
{
	char err[ERR_LEN];
	if (n_tok == 8 || !(g[n_tok] = gguf_open(path, err)))
		return;
	if ((tok[n_tok] = tokenizer_create(g[n_tok], err)))
		n_tok++;
	else
		gguf_close(g[n_tok]);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	const char *list = getenv("PDSERVE_FUZZ_VOCAB");
	static const char *names[] = { "llama-spm", "gpt-2", "llama-bpe", "qwen2", "deepseek-coder" };
	if (list) {
		char *copy = strdup(list);
		for (char *p = strtok(copy, ":"); p; p = strtok(NULL, ":"))
			load(p);
		free(copy);
	} else {
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
			char path[4096];
			snprintf(path, sizeof(path), "%s/../shared/models/vocab/ggml-vocab-%s.gguf", PDSERVE_SRCDIR, names[i]);
			load(path);
		}
	}
	if (!n_tok)
		fprintf(stderr, "tokenizer_fuzz: no vocabulary found (set PDSERVE_FUZZ_VOCAB)\n");
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (int i = 0; i < n_tok; i++) {
		int32_t *ids = NULL;
		size_t n = 0;
		for (int special = 0; special < 2; special++) {
			if (tokenizer_encode(tok[i], (const char *)data, size, special, special, &ids, &n) == 0)
				alloc_free(ids);
		}
		/* decode ids taken from the input bytes */
		int32_t want[64];
		size_t k = 0;
		for (size_t j = 0; j + 3 < size && k < 64; j += 4)
			want[k++] = (int32_t)((uint32_t)data[j] | (uint32_t)data[j + 1] << 8 | (uint32_t)data[j + 2] << 16) %
				    (tokenizer_n_vocab(tok[i]) + 8);
		char *text = NULL;
		size_t len;
		if (tokenizer_decode(tok[i], want, k, TOKENIZER_DECODE_SPECIAL, &text, &len, NULL) == 0)
			alloc_free(text);
		tokenizer_detok d;
		tokenizer_detok_init(&d, tok[i], TOKENIZER_DETOK_REPLACE);
		char *out = malloc(tokenizer_detok_cap(tok[i]));
		for (size_t j = 0; j < k && out; j++)
			tokenizer_detok_push(&d, want[j], out);
		if (out)
			tokenizer_detok_flush(&d, out);
		free(out);
	}
	return 0;
}
