/* synth.h - a small random-weight Llama GGUF with a real tokenizer, made on the spot.
 *
 * `pdserve model synth` and the main program (when no model is found) use it
 * so pdserve runs on a machine without ../shared. The file is a complete
 * llama.cpp "llama" architecture GGUF: every hyperparameter key, a
 * SentencePiece-style vocabulary (tokenizer.ggml.model = "llama": <unk>, <s>,
 * </s>, 256 byte-fallback tokens, U+2581 and printable ASCII, then merged
 * English pieces with scores), and seeded random weights. The same config
 * gives the same bytes on every machine.
 *
 * The text it generates is gibberish; what it is for is that tokenization,
 * loading, the forward pass and sampling all run for real and that two
 * engines fed the same file can be compared token for token.
 */
#ifndef PDSERVE_MODEL_SYNTH_H
#define PDSERVE_MODEL_SYNTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "model/gguf_write.h"

typedef struct {
	char preset[16];  /* name written into general.name */
	uint64_t seed;
	int type;         /* QTYPE_* of the 2-D weights: F32, F16, BF16, Q8_0 or Q4_0. A matrix whose
			     rows are not a multiple of the type's block stays F32 (ffn_down at ffn 172). */
	bool tied;        /* leave out output.weight: the classifier is token_embd */
	int n_vocab;      /* 354 .. 1024: 259 special+byte tokens, 95 characters, the rest merges */
	int n_ctx;
	int n_embd;
	int n_layer;
	int n_head;
	int n_head_kv;    /* divides n_head */
	int n_ff;
	float rope_base;
	float rms_eps;
} synth_config;

/* Fill cfg from a named preset ("tiny": the shapes of stories260K -- dim 64,
   5 layers, 8 heads, 4 kv heads, ffn 172, vocab 512, ctx 512 -- or "small":
   dim 256, 4 layers, 8 heads, 4 kv heads, ffn 768, vocab 768, ctx 1024),
   seed 1, type F32, untied. ERR_NOTFOUND for an unknown name. */
int synth_preset(const char *name, synth_config *cfg);
/* "tiny|small", for usage text. */
const char *synth_preset_names(void);

/* Build the model into a new writer (caller destroys it). NULL on failure
   with one sentence in err: ERR_INVAL for a config it cannot make (the
   message names the field), ERR_NOMEM. */
gguf_writer *synth_build(const synth_config *cfg, char err[ERR_LEN]);

/* Build and write to path atomically, creating missing parent directories. */
int synth_write(const synth_config *cfg, const char *path, char err[ERR_LEN]);

/* Where the main program keeps its synthesized model:
   $XDG_CACHE_HOME/pdserve/synth-llama.gguf, else
   $HOME/.cache/pdserve/synth-llama.gguf. 0, or ERR_NOTFOUND when neither
   variable is set (non-empty and absolute), ERR_FULL when buf is too small. */
int synth_default_path(char *buf, size_t n);

#endif
