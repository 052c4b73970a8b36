/* llama.h - Llama-family models from GGUF: hyperparameters, weights, forward pass.
 *
 * Architectures: `llama` (Llama 2/3.x with rope_freqs / llama3 RoPE scaling,
 * TinyLlama, SmolLM, Mistral without sliding window) and `qwen2` (q/k/v
 * biases, NeoX RoPE). GQA, tied embeddings, RMSNorm eps and RoPE base come
 * from metadata.
 *
 * The forward pass takes a batch of tokens from one or more sequences, each
 * with its position, so the same call serves prefill chunks and decode steps
 * (and both at once). K/V live in a paged pool the caller owns (llama_kv):
 * page p of layer l holds page_size consecutive positions of one sequence;
 * a sequence's page table maps position -> page (pos / page_size). The
 * forward writes the batch's K/V into those pages, then attends over
 * positions 0..pos of the token's own sequence. The caller guarantees that
 * earlier positions of each sequence are already in its pages and that the
 * pages for every position in the batch exist.
 *
 * Numerics follow llama.cpp's CPU backend (see kernels.h): activations are
 * converted to each weight's vec_dot type before the matmul, the KV cache
 * stores K/V in its dtype, and with an f16/bf16 cache the query and the
 * attention weights are rounded to that dtype as ggml does.
 *
 * Ownership: the model owns its gguf (mmapped weights, borrowed by every
 * ctx). A ctx owns scratch for at most max_tokens tokens per forward; one
 * forward at a time per ctx. The forward never allocates.
 */
#ifndef PDSERVE_MODEL_LLAMA_H
#define PDSERVE_MODEL_LLAMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "base/threadpool.h"
#include "kernels/kernels.h"
#include "model/gguf.h"

typedef enum { LLAMA_ARCH_LLAMA, LLAMA_ARCH_QWEN2 } llama_arch;
typedef enum { LLAMA_ROPE_NORM, LLAMA_ROPE_NEOX } llama_rope_type;

typedef struct {
	llama_arch arch;
	char arch_name[32];
	int n_vocab;
	int n_ctx_train;   /* {arch}.context_length */
	int n_embd;
	int n_layer;
	int n_head;
	int n_head_kv;
	int head_dim;      /* attention.key_length (= value_length), default n_embd / n_head */
	int n_ff;
	int n_rot;         /* rope.dimension_count, default head_dim */
	float rms_eps;
	float rope_base;
	float rope_freq_scale; /* 1 / rope.scaling.factor for linear scaling, else 1 */
	llama_rope_type rope_type;
	bool has_rope_freqs;   /* rope_freqs.weight present (llama3 scaling) */
	bool tied_output;      /* no output.weight: classifier = token_embd */
	bool has_qkv_bias;
} llama_hparams;

/* Read and check hyperparameters from GGUF metadata (no tensors needed
   except token_embd for n_vocab when the tokenizer array is absent). */
int llama_hparams_load(const gguf *g, llama_hparams *hp, char err[ERR_LEN]);

typedef struct llama_model llama_model;

/* Open path, check architecture, hyperparameters and every tensor's shape
   and type. NULL on failure with one sentence in err naming the problem. */
llama_model *llama_model_load(const char *path, char err[ERR_LEN]);
void llama_model_destroy(llama_model *m); /* NULL is fine */
const llama_hparams *llama_model_hparams(const llama_model *m);
const gguf *llama_model_gguf(const llama_model *m);
/* Bytes of weights (sum of tensor sizes). */
size_t llama_model_weight_bytes(const llama_model *m);

/* ---- KV pool view -------------------------------------------------------- */

typedef struct {
	int dtype;      /* QTYPE_F32, QTYPE_F16 or QTYPE_BF16 */
	int page_size;  /* positions per page */
	int n_pages;
	void **k;       /* [n_layer] -> [n_pages][page_size][n_head_kv * head_dim] of dtype */
	void **v;       /* same shape as k */
} llama_kv;

/* Bytes of one layer's K (or V) for one page. */
size_t llama_kv_page_bytes(const llama_hparams *hp, int dtype, int page_size);

/* ---- forward ------------------------------------------------------------- */

typedef struct {
	int n_tokens;
	const int32_t *token;         /* [n_tokens] */
	const int32_t *pos;           /* [n_tokens] position within its sequence */
	const int32_t *seq;           /* [n_tokens] index into pages / n_pages */
	const uint8_t *want_logits;   /* [n_tokens] nonzero: output a logits row */
	const int32_t *const *pages;  /* [n_seqs] page table of each sequence */
	const int32_t *n_pages;       /* [n_seqs] length of each page table */
	int n_seqs;
} llama_batch;

typedef struct {
	int max_tokens;     /* most tokens in one forward */
	int n_ctx;          /* longest sequence (positions 0..n_ctx-1) */
	threadpool *tp;     /* borrowed; NULL = single thread */
} llama_ctx_config;

typedef struct llama_ctx llama_ctx;

llama_ctx *llama_ctx_create(const llama_model *m, const llama_ctx_config *cfg, char err[ERR_LEN]);
void llama_ctx_destroy(llama_ctx *c); /* NULL is fine */

/* Run the batch. logits: [number of want_logits tokens][n_vocab], rows in
   batch order. Returns 0, or ERR_INVAL (with err) when the batch breaks the
   contract: too many tokens, a token id or position out of range, a page
   missing, or a bad kv dtype. Nothing is written on ERR_INVAL. */
int llama_forward(llama_ctx *c, const llama_kv *kv, const llama_batch *b, float *logits,
		  char err[ERR_LEN]);

#endif
