/* kernels.h - numeric kernels behind a dispatch table.
 *
 * Every op has a scalar reference in kernels/ref/ (plain loops: the spec) and
 * may have faster versions per ISA in kernels/x86/ (one ISA per file, built
 * with that file's flags). kern_init() fills the table `kern` once from the
 * CPU's features; KERNELS=ref in the environment forces the reference.
 * Callers always go through `kern.<op>` or the drivers below (kern_matmul,
 * kern_attention), which use `kern`.
 *
 * Weight x activation products follow ggml's numerics so that logits agree
 * with llama.cpp: before a matmul the f32 activations are converted to the
 * weight type's vec_dot_type (qtypes.h): Q8_0 blocks for Q4_0/Q5_0/Q8_0,
 * Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants, f16 for F16, bf16 for BF16,
 * unchanged for F32. vec_dot then multiplies one weight row by one converted
 * activation row. Each output element is one vec_dot over the full row in a
 * fixed order, so results do not depend on thread count or on which other
 * rows share the batch (batch invariance).
 *
 * The optional tiled matmul entries (mm_*) compute many output elements at
 * once from an implementation-private activation layout. Their contract is
 * strict: every y[t][o] they produce is bit-identical to the same table's
 * vec_dot(n_in, W[o], from_float(x[t])), whatever n_tok, the split over
 * threads or the position of t in the batch. (The x86 quantized paths are
 * bit-identical to the reference as well: integer block sums are exact and
 * the f32 steps are the reference's, in its order.)
 *
 * Kernels never allocate. Pointers may be unaligned unless stated.
 */
#ifndef PDSERVE_KERNELS_KERNELS_H
#define PDSERVE_KERNELS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "base/threadpool.h"
#include "kernels/qtypes.h"

/* Convert n elements (n a multiple of the type's block) to f32. */
typedef void (*kern_to_float_fn)(const void *src, float *dst, int64_t n);
/* Convert n f32 to the type (quantize). Defined for the activation types
   F32, F16, BF16, Q8_0, Q8_1, Q8_K, and for Q4_0, Q8_0 (model synth), Q4_K,
   Q6_K (benchmark models) as weight types. */
typedef void (*kern_from_float_fn)(const float *src, void *dst, int64_t n);
/* Dot product of n elements: x is a row of the weight type, y a row of its
   vec_dot_type (qtype_get(type)->vec_dot_type). */
typedef float (*kern_vec_dot_fn)(int64_t n, const void *x, const void *y);

typedef struct kern_weight kern_weight;
typedef struct kern_attn kern_attn;

/* Most (token, head) rows one kern.attn call handles. */
#define KERN_ATTN_MAX_ROWS 16

/* Rows of a weight matrix handled per tile by the tiled matmul entries. */
#define KERN_MM_TILE 8

/* Tiled matmul, private activation layout (see the contract above).
   act_bytes: scratch for n_tok rows of n_in (64-byte aligned start).
   act_convert: part ith of nth of converting x [n_tok][n_in] into act.
   rows: y [n_tok][n_out] (ld n_out) for the rows of tiles [tile0, tile1)
   (KERN_MM_TILE rows each, the last one possibly short) from w and act;
   for F32 weights act is x itself. All three are called with the same
   (n_in, n_tok), so the layout may depend on them. */
typedef size_t (*kern_mm_act_bytes_fn)(int64_t n_in, int64_t n_tok);
typedef void (*kern_mm_act_convert_fn)(const float *x, int64_t n_in, int64_t n_tok, void *act, int ith,
				       int nth);
typedef void (*kern_mm_rows_fn)(const kern_weight *w, const void *act, int64_t n_tok, float *y, int64_t tile0,
				int64_t tile1);

typedef struct {
	const char *name; /* "ref", "avx2", "avx512" */
	kern_to_float_fn to_float[QTYPE_COUNT];
	kern_from_float_fn from_float[QTYPE_COUNT];
	kern_vec_dot_fn vec_dot[QTYPE_COUNT]; /* indexed by weight type */

	/* optional: NULL means kern_matmul uses from_float + vec_dot */
	kern_mm_act_bytes_fn mm_act_bytes[QTYPE_COUNT];     /* by vec_dot_type */
	kern_mm_act_convert_fn mm_act_convert[QTYPE_COUNT]; /* by vec_dot_type */
	kern_mm_rows_fn mm_rows[QTYPE_COUNT];               /* by weight type */

	/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may alias x */
	void (*rmsnorm)(float *out, const float *x, const float *w, int64_t n, float eps);
	/* x[i] = silu(gate[i]) * x[i] (SwiGLU: x is up, gate is gate) */
	void (*swiglu)(float *x, const float *gate, int64_t n);
	/* x = softmax(x) in place over n (max-subtracted, f32 accumulate) */
	void (*softmax)(float *x, int64_t n);
	/* Rotary embedding of n_heads vectors of head_dim floats (x[h * head_dim ..]):
	   pair i < n_rot/2 is (2i, 2i+1) (NORM) or (i, i + n_rot/2) (neox), rotated
	   by the angle with cosine cs[i] and sine sn[i]:
	   (a, b) -> (a cs - b sn, a sn + b cs). Elements past n_rot are untouched. */
	void (*rope)(float *x, int n_heads, int head_dim, int n_rot, int neox, const float *cs,
		     const float *sn);
	/* Paged attention of batch tokens [t0, t1), all of one sequence, for
	   query heads [h0, h1), of one or more kv heads (head h reads kv head
	   h / (n_head / n_head_kv); see kern_attn); (t1 - t0) * (h1 - h0) <=
	   KERN_ATTN_MAX_ROWS, so an implementation can convert each K/V row once
	   for all the rows of a kv head. work: at least kern_attn_work_floats()
	   floats, 64-byte aligned. */
	void (*attn)(const kern_attn *a, int t0, int t1, int h0, int h1, float *work);
} kern_table;

extern kern_table kern;

/* Fill `kern` (idempotent, thread-safe after first call returns). Honours
   KERNELS=ref|avx2|avx512 (a choice the CPU lacks falls back, with a log line). */
void kern_init(void);
/* The reference table (for tests comparing implementations). */
const kern_table *kern_ref(void);
/* The full table of implementation `name` ("ref", "avx2", "avx512"): the
   reference with that implementation's entries on top, or NULL when this
   CPU cannot run it. For tests and benchmarks. */
const kern_table *kern_impl(const char *name);

/* ---- matmul: y[t][o] = sum_i W[o][i] * x[t][i] ------------------------- */

struct kern_weight {
	int type;          /* QTYPE_*; must be supported */
	int64_t n_in;      /* ne[0]: row length */
	int64_t n_out;     /* ne[1]: rows */
	const void *data;  /* n_out rows of qtype_row_size(type, n_in) bytes */
};

/* Bytes of scratch kern_matmul needs for n_tok activation rows of w. */
size_t kern_matmul_scratch(const kern_weight *w, int64_t n_tok);
/* x: [n_tok][n_in] f32, y: [n_tok][n_out] f32 (ld = n_out). scratch: at
   least kern_matmul_scratch() bytes, 64-byte aligned. Splits the work over
   tp's threads; tp may be NULL (single thread). */
void kern_matmul(threadpool *tp, const kern_weight *w, const float *x, int64_t n_tok, float *y,
		 void *scratch);
/* The same with an explicit table t (tests and benchmarks compare
   implementations); scratch sized by kern_matmul_scratch_t(t, ...). */
size_t kern_matmul_scratch_t(const kern_table *t, const kern_weight *w, int64_t n_tok);
void kern_matmul_t(const kern_table *t, threadpool *tp, const kern_weight *w, const float *x,
		   int64_t n_tok, float *y, void *scratch);
/* Several weights with the same input: y[i] = x w[i]^T, one conversion of x
   and one pass over the pool for all of them (Q, K, V; gate, up). The
   weights must share n_in and vec_dot_type; scratch as for the largest. Each
   y[i] equals what kern_matmul gives for w[i] alone, bit for bit. */
void kern_matmul_n(threadpool *tp, int n_w, const kern_weight *const *w, const float *x, int64_t n_tok,
		   float *const *y, void *scratch);
void kern_matmul_n_t(const kern_table *t, threadpool *tp, int n_w, const kern_weight *const *w,
		     const float *x, int64_t n_tok, float *const *y, void *scratch);

/* One row of a weight matrix as f32 (embedding lookup). */
void kern_get_row(const kern_weight *w, int64_t row, float *out);

/* ---- paged attention ------------------------------------------------------
 *
 * For each batch token t and query head h: out = softmax(q k^T * scale) v
 * over positions 0..pos[t] of the token's sequence, read from the paged K/V
 * pools of one layer (position p of sequence s lives in page
 * pages[s][p / page_size], slot p % page_size). Query head h reads kv head
 * h / (n_head / n_head_kv). With an f16/bf16 pool the query is rounded to
 * that type before the dot products, as ggml does.
 *
 * Numerics: one (token, head) is computed by one thread, in position order,
 * so results do not depend on the batch or the thread count. The reference
 * is ggml's: all scores, then max, exp, sum in double, weights rounded to the
 * kv type, f32 accumulation of weights * v. SIMD versions use an online
 * softmax over chunks of positions (one pass over K and V; weights unrounded,
 * divided by the sum at the end) and are compared with the reference within
 * the tolerance of tests/unit/kernels_test.c.
 */
struct kern_attn {
	int n_tokens;
	int n_head, n_head_kv, head_dim;
	int kv_dtype;                 /* QTYPE_F32, QTYPE_F16 or QTYPE_BF16 */
	int page_size;                /* positions per page */
	float scale;                  /* usually 1/sqrt(head_dim) */
	const float *q;               /* [n_tokens][n_head * head_dim] */
	float *out;                   /* [n_tokens][n_head * head_dim] */
	const void *k, *v;            /* [n_pages][page_size][n_head_kv * head_dim] of kv_dtype */
	const int32_t *pos;           /* [n_tokens]: attends to positions 0..pos[t] */
	const int32_t *seq;           /* [n_tokens]: index into pages */
	const int32_t *const *pages;  /* [n_seqs]: page table of each sequence */
};

/* Floats of per-thread work memory kern_attention needs (max_pos: the
   largest pos + 1 any call will see). */
size_t kern_attn_work_floats(int n_head, int n_head_kv, int head_dim, int max_pos);
/* Run attention for every (token, head) of a over tp (NULL: one thread).
   work: threadpool_size(tp) (or 1) times kern_attn_work_floats() floats,
   64-byte aligned. */
void kern_attention(threadpool *tp, const kern_attn *a, float *work, size_t work_floats);
/* The same with an explicit table (tests, benchmarks). */
void kern_attention_t(const kern_table *t, threadpool *tp, const kern_attn *a, float *work,
		      size_t work_floats);

#endif
