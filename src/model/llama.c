/* llama.c - Llama-family forward pass over a paged KV cache.
 *
 * One forward runs a batch of tokens (from any mix of sequences and
 * positions) through every layer:
 *
 *   x = embed(token)
 *   for each layer:
 *     h = rmsnorm(x) * attn_norm
 *     q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv);  rope(q, k, pos)
 *     store k, v into the sequence's page for pos      (all batch tokens first)
 *     a = softmax(q k^T / sqrt(d)) v over positions 0..pos of the same sequence
 *     x += a Wo
 *     h = rmsnorm(x) * ffn_norm
 *     x += (silu(h Wgate) * h Wup) Wdown
 *   logits = rmsnorm(x) * output_norm Wout             (only rows asked for)
 *
 * Because every token's K/V of a layer is stored before any token of that
 * layer attends, tokens of one sequence in the same batch see each other
 * causally, which is what makes one code path serve chunked prefill, decode
 * and mixed batches. Matmuls go through kern_matmul, where each output
 * element is a single fixed-order dot product; attention for one (token,
 * head) is computed by one thread in position order. So a token's logits do
 * not depend on the batch it rides in or on the thread count (batch
 * invariance, which PD disaggregation relies on).
 *
 * GQA: query head h reads kv head h / (n_head / n_head_kv).
 * RoPE: NORM rotates adjacent pairs (x[2i], x[2i+1]) - llama; NEOX rotates
 * (x[i], x[i + n_rot/2]) - qwen2. The angle of pair i at position p is
 * p * base^(-2i/n_rot) * freq_scale / rope_freqs[i], computed like ggml (a
 * running product in float) so logits agree with llama.cpp to ~1e-6.
 *
 * Attention, RoPE and the K/V conversion are kernel ops (kern_attention,
 * kern.rope, kern.from_float of the kv dtype), so they run the dispatched
 * SIMD versions; their numerics contracts are in kernels.h.
 *
 * Left out here (later issues): fused kernels, sliding-window attention,
 * YaRN / LongRoPE scaling (rejected at load with a clear error), MoE and
 * other architectures.
 */
#include "model/llama.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/log.h"

typedef struct {
	kern_weight wq, wk, wv, wo, gate, up, down;
	const float *attn_norm, *ffn_norm; /* [n_embd] */
	const float *bq, *bk, *bv;         /* qwen2 biases or NULL */
	const float *bo;                   /* optional output bias */
} layer_w;

struct llama_model {
	gguf *g;
	llama_hparams hp;
	kern_weight tok_embd; /* rows = n_vocab */
	kern_weight output;   /* = tok_embd when tied */
	const float *output_norm;
	const float *rope_freqs; /* [n_rot/2] or NULL */
	layer_w *layers;
	size_t weight_bytes;
};

/* ---------------------------------------------------------------- hparams */

static int get_u32_req(const gguf *g, const char *arch, const char *suffix, int *out, char *err)
{
	char key[128];
	uint32_t v;
	snprintf(key, sizeof(key), "%s.%s", arch, suffix);
	int rc = gguf_get_u32(g, key, &v, err);
	if (rc == ERR_NOTFOUND)
		return err_set(err, ERR_FORMAT, "metadata %s is missing", key);
	if (rc < 0)
		return rc;
	if (v == 0 || v > (1u << 30))
		return err_set(err, ERR_FORMAT, "metadata %s = %u is out of range", key, v);
	*out = (int)v;
	return 0;
}

static int get_u32_opt(const gguf *g, const char *arch, const char *suffix, int *out, char *err)
{
	int rc = get_u32_req(g, arch, suffix, out, err);
	if (rc < 0) {
		char key[128];
		snprintf(key, sizeof(key), "%s.%s", arch, suffix);
		if (gguf_find_key(g, key) < 0)
			return 0; /* absent: keep default */
	}
	return rc;
}

static int get_f32_opt(const gguf *g, const char *arch, const char *suffix, float *out, char *err)
{
	char key[128];
	snprintf(key, sizeof(key), "%s.%s", arch, suffix);
	int rc = gguf_get_f32(g, key, out, err);
	if (rc == ERR_NOTFOUND)
		return 0;
	if (rc == 0 && !isfinite(*out))
		return err_set(err, ERR_FORMAT, "metadata %s is not finite", key);
	return rc;
}

int llama_hparams_load(const gguf *g, llama_hparams *hp, char err[ERR_LEN])
{
	gguf_str s;
	int rc;
	memset(hp, 0, sizeof(*hp));
	rc = gguf_get_str(g, "general.architecture", &s, err);
	if (rc == ERR_NOTFOUND)
		return err_set(err, ERR_FORMAT, "metadata general.architecture is missing");
	if (rc < 0)
		return rc;
	if (s.n >= sizeof(hp->arch_name))
		return err_set(err, ERR_UNSUPPORTED, "unsupported architecture (name too long)");
	memcpy(hp->arch_name, s.p, s.n);
	hp->arch_name[s.n] = '\0';
	if (!strcmp(hp->arch_name, "llama")) {
		hp->arch = LLAMA_ARCH_LLAMA;
		hp->rope_type = LLAMA_ROPE_NORM;
	} else if (!strcmp(hp->arch_name, "qwen2")) {
		hp->arch = LLAMA_ARCH_QWEN2;
		hp->rope_type = LLAMA_ROPE_NEOX;
	} else {
		return err_set(err, ERR_UNSUPPORTED,
			       "unsupported architecture '%s' (pdserve runs llama and qwen2)", hp->arch_name);
	}
	const char *a = hp->arch_name;
	if ((rc = get_u32_req(g, a, "context_length", &hp->n_ctx_train, err)) < 0 ||
	    (rc = get_u32_req(g, a, "embedding_length", &hp->n_embd, err)) < 0 ||
	    (rc = get_u32_req(g, a, "block_count", &hp->n_layer, err)) < 0 ||
	    (rc = get_u32_req(g, a, "feed_forward_length", &hp->n_ff, err)) < 0 ||
	    (rc = get_u32_req(g, a, "attention.head_count", &hp->n_head, err)) < 0)
		return rc;
	hp->n_head_kv = hp->n_head;
	if ((rc = get_u32_opt(g, a, "attention.head_count_kv", &hp->n_head_kv, err)) < 0)
		return rc;
	if (hp->n_embd % hp->n_head)
		return err_set(err, ERR_FORMAT, "%s.embedding_length %d is not a multiple of head_count %d", a,
			       hp->n_embd, hp->n_head);
	hp->head_dim = hp->n_embd / hp->n_head;
	if ((rc = get_u32_opt(g, a, "attention.key_length", &hp->head_dim, err)) < 0)
		return rc;
	int vdim = hp->head_dim;
	if ((rc = get_u32_opt(g, a, "attention.value_length", &vdim, err)) < 0)
		return rc;
	if (vdim != hp->head_dim)
		return err_set(err, ERR_UNSUPPORTED, "%s.attention.value_length %d != key_length %d", a, vdim,
			       hp->head_dim);
	if (hp->n_head % hp->n_head_kv)
		return err_set(err, ERR_FORMAT, "%s.attention.head_count %d is not a multiple of head_count_kv %d",
			       a, hp->n_head, hp->n_head_kv);
	hp->n_rot = hp->head_dim;
	if ((rc = get_u32_opt(g, a, "rope.dimension_count", &hp->n_rot, err)) < 0)
		return rc;
	if (hp->n_rot > hp->head_dim || hp->n_rot % 2)
		return err_set(err, ERR_FORMAT, "%s.rope.dimension_count %d must be even and <= head dim %d", a,
			       hp->n_rot, hp->head_dim);
	hp->rms_eps = 1e-5f;
	hp->rope_base = 10000.0f;
	hp->rope_freq_scale = 1.0f;
	if ((rc = get_f32_opt(g, a, "attention.layer_norm_rms_epsilon", &hp->rms_eps, err)) < 0 ||
	    (rc = get_f32_opt(g, a, "rope.freq_base", &hp->rope_base, err)) < 0)
		return rc;
	if (!(hp->rms_eps > 0) || !(hp->rope_base > 1))
		return err_set(err, ERR_FORMAT, "rms epsilon %g or rope base %g out of range", hp->rms_eps,
			       hp->rope_base);

	char key[128];
	snprintf(key, sizeof(key), "%s.rope.scaling.type", a);
	if (gguf_get_str(g, key, &s, NULL) == 0 && !(s.n == 4 && !memcmp(s.p, "none", 4))) {
		float factor = 1.0f;
		if (get_f32_opt(g, a, "rope.scaling.factor", &factor, err) < 0)
			return ERR_FORMAT;
		if (s.n == 6 && !memcmp(s.p, "linear", 6)) {
			if (!(factor >= 1.0f))
				return err_set(err, ERR_FORMAT, "%s.rope.scaling.factor %g out of range", a, factor);
			hp->rope_freq_scale = 1.0f / factor;
		} else if (factor != 1.0f) {
			return err_set(err, ERR_UNSUPPORTED, "rope scaling type '%.*s' is not supported", (int)s.n,
				       s.p);
		}
	}
	/* llama.cpp also reads the older scale_linear key */
	float scale_linear = 0;
	if (get_f32_opt(g, a, "rope.scale_linear", &scale_linear, err) < 0)
		return ERR_FORMAT;
	if (scale_linear > 0 && scale_linear != 1.0f)
		hp->rope_freq_scale = 1.0f / scale_linear;

	gguf_arr toks;
	const gguf_tensor *te = gguf_find_tensor(g, "token_embd.weight");
	if (gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, NULL) == 0)
		hp->n_vocab = (int)(toks.n > INT32_MAX ? 0 : toks.n);
	if (te && te->n_dims == 2 && te->ne[1] > 0 && te->ne[1] <= INT32_MAX)
		hp->n_vocab = (int)te->ne[1]; /* the embedding rows are what the model can emit */
	if (hp->n_vocab <= 0)
		return err_set(err, ERR_FORMAT, "vocabulary size unknown (no tokenizer.ggml.tokens, no token_embd)");
	hp->has_rope_freqs = gguf_find_tensor(g, "rope_freqs.weight") != NULL;
	hp->tied_output = gguf_find_tensor(g, "output.weight") == NULL;
	hp->has_qkv_bias = gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
	return 0;
}

/* ---------------------------------------------------------------- loading */

static int bind(const gguf *g, const char *name, int64_t ne0, int64_t ne1, int optional,
		const gguf_tensor **out, char *err)
{
	const gguf_tensor *t = gguf_find_tensor(g, name);
	*out = NULL;
	if (!t) {
		if (optional)
			return 0;
		return err_set(err, ERR_FORMAT, "tensor %s is missing", name);
	}
	if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
		return err_set(err, ERR_FORMAT, "tensor %s: shape [%lld, %lld, %lld, %lld], want [%lld, %lld]", name,
			       (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
			       (long long)ne0, (long long)ne1);
	const qtype_info *qi = qtype_get(t->type);
	if (!qi->supported)
		return err_set(err, ERR_UNSUPPORTED, "tensor %s: type %s is not supported", name, qi->name);
	*out = t;
	return 0;
}

static int bind_weight(const gguf *g, const char *name, int64_t n_in, int64_t n_out, kern_weight *w,
		       char *err)
{
	const gguf_tensor *t;
	int rc = bind(g, name, n_in, n_out, 0, &t, err);
	if (rc < 0)
		return rc;
	w->type = t->type;
	w->n_in = n_in;
	w->n_out = n_out;
	w->data = t->data;
	return 0;
}

/* 1-D F32 vector (norm weights, biases). */
static int bind_vec(const gguf *g, const char *name, int64_t n, int optional, const float **out, char *err)
{
	const gguf_tensor *t;
	int rc = bind(g, name, n, 1, optional, &t, err);
	if (rc < 0 || !t)
		return rc;
	if (t->type != QTYPE_F32)
		return err_set(err, ERR_UNSUPPORTED, "tensor %s: type %s, want F32", name, qtype_name(t->type));
	if ((uintptr_t)t->data % sizeof(float))
		return err_set(err, ERR_FORMAT, "tensor %s: data is not 4-byte aligned", name);
	*out = t->data;
	return 0;
}

static int bind_layer(const gguf *g, const llama_hparams *hp, int il, layer_w *L, char *err)
{
	char n[96];
	int64_t e = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
	int rc;
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d.%s", il, s), n)
	if ((rc = bind_vec(g, NAME("attn_norm.weight"), e, 0, &L->attn_norm, err)) < 0 ||
	    (rc = bind_weight(g, NAME("attn_q.weight"), e, qd, &L->wq, err)) < 0 ||
	    (rc = bind_weight(g, NAME("attn_k.weight"), e, kvd, &L->wk, err)) < 0 ||
	    (rc = bind_weight(g, NAME("attn_v.weight"), e, kvd, &L->wv, err)) < 0 ||
	    (rc = bind_weight(g, NAME("attn_output.weight"), qd, e, &L->wo, err)) < 0 ||
	    (rc = bind_vec(g, NAME("ffn_norm.weight"), e, 0, &L->ffn_norm, err)) < 0 ||
	    (rc = bind_weight(g, NAME("ffn_gate.weight"), e, hp->n_ff, &L->gate, err)) < 0 ||
	    (rc = bind_weight(g, NAME("ffn_up.weight"), e, hp->n_ff, &L->up, err)) < 0 ||
	    (rc = bind_weight(g, NAME("ffn_down.weight"), hp->n_ff, e, &L->down, err)) < 0 ||
	    (rc = bind_vec(g, NAME("attn_q.bias"), qd, 1, &L->bq, err)) < 0 ||
	    (rc = bind_vec(g, NAME("attn_k.bias"), kvd, 1, &L->bk, err)) < 0 ||
	    (rc = bind_vec(g, NAME("attn_v.bias"), kvd, 1, &L->bv, err)) < 0 ||
	    (rc = bind_vec(g, NAME("attn_output.bias"), e, 1, &L->bo, err)) < 0)
		return rc;
#undef NAME
	if (hp->arch == LLAMA_ARCH_QWEN2 && !(L->bq && L->bk && L->bv))
		return err_set(err, ERR_FORMAT, "blk.%d: qwen2 needs attn_q/k/v biases", il);
	return 0;
}

llama_model *llama_model_load(const char *path, char err[ERR_LEN])
{
	llama_model *m = alloc_zeroed(1, sizeof(*m));
	if (!m) {
		err_set(err, ERR_NOMEM, "out of memory loading %s", path);
		return NULL;
	}
	m->g = gguf_open_weights(path, err);
	if (!m->g)
		goto fail;
	const gguf *g = m->g;
	llama_hparams *hp = &m->hp;
	char inner[ERR_LEN];
	if (llama_hparams_load(g, hp, inner) < 0)
		goto fail_inner;
	if (bind_weight(g, "token_embd.weight", hp->n_embd, hp->n_vocab, &m->tok_embd, inner) < 0 ||
	    bind_vec(g, "output_norm.weight", hp->n_embd, 0, &m->output_norm, inner) < 0)
		goto fail_inner;
	if (hp->tied_output)
		m->output = m->tok_embd;
	else if (bind_weight(g, "output.weight", hp->n_embd, hp->n_vocab, &m->output, inner) < 0)
		goto fail_inner;
	if (bind_vec(g, "rope_freqs.weight", hp->n_rot / 2, 1, &m->rope_freqs, inner) < 0)
		goto fail_inner;
	for (int i = 0; m->rope_freqs && i < hp->n_rot / 2; i++)
		if (!(m->rope_freqs[i] > 0) || !isfinite(m->rope_freqs[i])) {
			err_set(inner, ERR_FORMAT, "tensor rope_freqs.weight: element %d is not a positive number", i);
			goto fail_inner;
		}
	m->layers = alloc_zeroed((size_t)hp->n_layer, sizeof(layer_w));
	if (!m->layers) {
		err_set(inner, ERR_NOMEM, "out of memory");
		goto fail_inner;
	}
	for (int il = 0; il < hp->n_layer; il++)
		if (bind_layer(g, hp, il, &m->layers[il], inner) < 0)
			goto fail_inner;
	for (int64_t i = 0; i < gguf_n_tensors(g); i++)
		m->weight_bytes += gguf_tensor_at(g, i)->nbytes;
	return m;

fail_inner:
	err_set(err, ERR_FORMAT, "%s: %s", path, inner);
fail:
	llama_model_destroy(m);
	return NULL;
}

void llama_model_destroy(llama_model *m)
{
	if (!m)
		return;
	alloc_free(m->layers);
	gguf_close(m->g);
	alloc_free(m);
}

const llama_hparams *llama_model_hparams(const llama_model *m) { return &m->hp; }
const gguf *llama_model_gguf(const llama_model *m) { return m->g; }
size_t llama_model_weight_bytes(const llama_model *m) { return m->weight_bytes; }

static size_t kv_elem_size(int dtype)
{
	return dtype == QTYPE_F32 ? 4 : (dtype == QTYPE_F16 || dtype == QTYPE_BF16) ? 2 : 0;
}

size_t llama_kv_page_bytes(const llama_hparams *hp, int dtype, int page_size)
{
	return (size_t)page_size * (size_t)hp->n_head_kv * (size_t)hp->head_dim * kv_elem_size(dtype);
}

/* ---------------------------------------------------------------- context */

struct llama_ctx {
	const llama_model *m;
	llama_ctx_config cfg;
	int n_threads;
	/* scratch, [max_tokens][...] each */
	float *x, *h, *q, *k, *v, *att, *ff_gate, *ff_up;
	float *out_rows;   /* [max_tokens][n_embd]: normed rows that want logits */
	float *att_work;   /* [n_threads][att_work_floats]: kern_attention's work */
	size_t att_work_floats;
	void *mm_scratch;
	float *rope_cos, *rope_sin; /* [max_tokens][n_rot/2] */
};

llama_ctx *llama_ctx_create(const llama_model *m, const llama_ctx_config *cfg, char err[ERR_LEN])
{
	const llama_hparams *hp = &m->hp;
	if (cfg->max_tokens < 1 || cfg->n_ctx < 1) {
		err_set(err, ERR_INVAL, "llama ctx: max_tokens and n_ctx must be >= 1");
		return NULL;
	}
	llama_ctx *c = alloc_zeroed(1, sizeof(*c));
	if (!c) {
		err_set(err, ERR_NOMEM, "out of memory creating a llama context");
		return NULL;
	}
	c->m = m;
	c->cfg = *cfg;
	c->n_threads = cfg->tp ? threadpool_size(cfg->tp) : 1;
	size_t T = (size_t)cfg->max_tokens;
	size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
	size_t mm = kern_matmul_scratch(&m->output, (int64_t)T);
	/* layers may differ in type (Q4_K_M mixes Q4_K and Q6_K): take the max */
	for (int il = 0; il < hp->n_layer; il++) {
		const layer_w *L = &m->layers[il];
		const kern_weight *lw[] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down };
		for (size_t i = 0; i < sizeof(lw) / sizeof(lw[0]); i++) {
			size_t s = kern_matmul_scratch(lw[i], (int64_t)T);
			mm = s > mm ? s : mm;
		}
	}
	c->x = alloc_array(T * hp->n_embd, sizeof(float));
	c->h = alloc_array(T * hp->n_embd, sizeof(float));
	c->q = alloc_array(T * qd, sizeof(float));
	c->k = alloc_array(T * kvd, sizeof(float));
	c->v = alloc_array(T * kvd, sizeof(float));
	c->att = alloc_array(T * qd, sizeof(float));
	c->ff_gate = alloc_array(T * hp->n_ff, sizeof(float));
	c->ff_up = alloc_array(T * hp->n_ff, sizeof(float));
	c->out_rows = alloc_array(T * hp->n_embd, sizeof(float));
	c->att_work_floats = kern_attn_work_floats(hp->n_head, hp->n_head_kv, hp->head_dim, cfg->n_ctx);
	c->att_work = alloc_aligned(64, (size_t)c->n_threads * c->att_work_floats * sizeof(float));
	c->rope_cos = alloc_array(T * (hp->n_rot / 2 + 1), sizeof(float));
	c->rope_sin = alloc_array(T * (hp->n_rot / 2 + 1), sizeof(float));
	c->mm_scratch = alloc_aligned(64, mm ? mm : 64);
	if (!c->x || !c->h || !c->q || !c->k || !c->v || !c->att || !c->ff_gate || !c->ff_up ||
	    !c->out_rows || !c->att_work || !c->rope_cos || !c->rope_sin || !c->mm_scratch) {
		llama_ctx_destroy(c);
		err_set(err, ERR_NOMEM, "out of memory creating a llama context (%zu tokens)", T);
		return NULL;
	}
	return c;
}

void llama_ctx_destroy(llama_ctx *c)
{
	if (!c)
		return;
	alloc_free(c->x);
	alloc_free(c->h);
	alloc_free(c->q);
	alloc_free(c->k);
	alloc_free(c->v);
	alloc_free(c->att);
	alloc_free(c->ff_gate);
	alloc_free(c->ff_up);
	alloc_free(c->out_rows);
	alloc_free(c->att_work);
	alloc_free(c->rope_cos);
	alloc_free(c->rope_sin);
	alloc_free(c->mm_scratch);
	alloc_free(c);
}

/* ---------------------------------------------------------------- forward */

/* cos/sin of every (token, pair) for this batch, as ggml computes them. */
static void rope_tables(llama_ctx *c, const llama_batch *b)
{
	const llama_hparams *hp = &c->m->hp;
	const int half = hp->n_rot / 2;
	const float theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
	for (int t = 0; t < b->n_tokens; t++) {
		float theta = (float)b->pos[t];
		float *cs = c->rope_cos + (size_t)t * half, *sn = c->rope_sin + (size_t)t * half;
		for (int i = 0; i < half; i++) {
			float ff = c->m->rope_freqs ? c->m->rope_freqs[i] : 1.0f;
			float ang = hp->rope_freq_scale * (theta / ff);
			cs[i] = cosf(ang);
			sn[i] = sinf(ang);
			theta *= theta_scale;
		}
	}
}

static void *kv_slot(const llama_kv *kv, void *base, size_t row_bytes, const int32_t *pages, int pos)
{
	int page = pages[pos / kv->page_size];
	size_t slot = (size_t)page * kv->page_size + (size_t)(pos % kv->page_size);
	return (char *)base + slot * row_bytes;
}

/* K/V rows go through the kv dtype's from_float (f16/bf16 rounding to nearest even). */
static void kv_store(int dtype, void *dst, const float *src, int n)
{
	kern.from_float[dtype](src, dst, n);
}

static void add_bias(float *y, const float *bias, int n_tok, int n)
{
	if (!bias)
		return;
	for (int t = 0; t < n_tok; t++)
		for (int i = 0; i < n; i++)
			y[(size_t)t * n + i] += bias[i];
}

static int check_batch(const llama_ctx *c, const llama_kv *kv, const llama_batch *b, char *err)
{
	const llama_hparams *hp = &c->m->hp;
	if (b->n_tokens < 1 || b->n_tokens > c->cfg.max_tokens)
		return err_set(err, ERR_INVAL, "batch of %d tokens (max %d)", b->n_tokens, c->cfg.max_tokens);
	if (!kv_elem_size(kv->dtype) || kv->page_size < 1)
		return err_set(err, ERR_INVAL, "kv cache: bad dtype or page size");
	for (int t = 0; t < b->n_tokens; t++) {
		int s = b->seq[t], p = b->pos[t];
		if (b->token[t] < 0 || b->token[t] >= hp->n_vocab)
			return err_set(err, ERR_INVAL, "token id %d out of range [0, %d)", b->token[t], hp->n_vocab);
		if (s < 0 || s >= b->n_seqs)
			return err_set(err, ERR_INVAL, "token %d: sequence %d out of range", t, s);
		if (p < 0 || p >= c->cfg.n_ctx)
			return err_set(err, ERR_INVAL, "position %d out of range [0, %d)", p, c->cfg.n_ctx);
		if (p / kv->page_size >= b->n_pages[s])
			return err_set(err, ERR_INVAL, "position %d: sequence %d has only %d pages", p, s,
				       b->n_pages[s]);
		for (int i = 0; i <= p / kv->page_size; i++)
			if (b->pages[s][i] < 0 || b->pages[s][i] >= kv->n_pages)
				return err_set(err, ERR_INVAL, "sequence %d: page %d out of range", s, b->pages[s][i]);
	}
	return 0;
}

int llama_forward(llama_ctx *c, const llama_kv *kv, const llama_batch *b, float *logits, char err[ERR_LEN])
{
	const llama_model *m = c->m;
	const llama_hparams *hp = &m->hp;
	const int T = b->n_tokens, E = hp->n_embd, hd = hp->head_dim;
	const int qd = hp->n_head * hd, kvd = hp->n_head_kv * hd;
	const size_t row_bytes = (size_t)kvd * kv_elem_size(kv->dtype);
	threadpool *tp = c->cfg.tp;
	int rc = check_batch(c, kv, b, err);
	if (rc < 0)
		return rc;

	for (int t = 0; t < T; t++)
		kern_get_row(&m->tok_embd, b->token[t], c->x + (size_t)t * E);
	rope_tables(c, b);

	for (int il = 0; il < hp->n_layer; il++) {
		const layer_w *L = &m->layers[il];
		for (int t = 0; t < T; t++)
			kern.rmsnorm(c->h + (size_t)t * E, c->x + (size_t)t * E, L->attn_norm, E, hp->rms_eps);
		const kern_weight *qkv[3] = { &L->wq, &L->wk, &L->wv };
		float *qkv_out[3] = { c->q, c->k, c->v };
		kern_matmul_n(tp, 3, qkv, c->h, T, qkv_out, c->mm_scratch);
		add_bias(c->q, L->bq, T, qd);
		add_bias(c->k, L->bk, T, kvd);
		add_bias(c->v, L->bv, T, kvd);
		for (int t = 0; t < T; t++) {
			const float *cs = c->rope_cos + (size_t)t * (hp->n_rot / 2);
			const float *sn = c->rope_sin + (size_t)t * (hp->n_rot / 2);
			const int neox = hp->rope_type == LLAMA_ROPE_NEOX;
			kern.rope(c->q + (size_t)t * qd, hp->n_head, hd, hp->n_rot, neox, cs, sn);
			kern.rope(c->k + (size_t)t * kvd, hp->n_head_kv, hd, hp->n_rot, neox, cs, sn);
			const int32_t *pages = b->pages[b->seq[t]];
			kv_store(kv->dtype, kv_slot(kv, kv->k[il], row_bytes, pages, b->pos[t]), c->k + (size_t)t * kvd, kvd);
			kv_store(kv->dtype, kv_slot(kv, kv->v[il], row_bytes, pages, b->pos[t]), c->v + (size_t)t * kvd, kvd);
		}
		kern_attn att = {
			.n_tokens = T, .n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = hd,
			.kv_dtype = kv->dtype, .page_size = kv->page_size, .scale = 1.0f / sqrtf((float)hd),
			.q = c->q, .out = c->att, .k = kv->k[il], .v = kv->v[il],
			.pos = b->pos, .seq = b->seq, .pages = b->pages,
		};
		kern_attention(tp, &att, c->att_work, c->att_work_floats);
		/* x += att Wo: the projection goes to h, then the residual add */
		kern_matmul(tp, &L->wo, c->att, T, c->h, c->mm_scratch);
		add_bias(c->h, L->bo, T, E);
		for (size_t i = 0; i < (size_t)T * E; i++)
			c->x[i] += c->h[i];

		for (int t = 0; t < T; t++)
			kern.rmsnorm(c->h + (size_t)t * E, c->x + (size_t)t * E, L->ffn_norm, E, hp->rms_eps);
		const kern_weight *gu[2] = { &L->gate, &L->up };
		float *gu_out[2] = { c->ff_gate, c->ff_up };
		kern_matmul_n(tp, 2, gu, c->h, T, gu_out, c->mm_scratch);
		kern.swiglu(c->ff_up, c->ff_gate, (int64_t)T * hp->n_ff);
		kern_matmul(tp, &L->down, c->ff_up, T, c->h, c->mm_scratch);
		for (size_t i = 0; i < (size_t)T * E; i++)
			c->x[i] += c->h[i];
	}

	int n_out = 0;
	for (int t = 0; t < T; t++)
		if (b->want_logits[t])
			kern.rmsnorm(c->out_rows + (size_t)n_out++ * E, c->x + (size_t)t * E, m->output_norm, E,
				     hp->rms_eps);
	if (n_out)
		kern_matmul(tp, &m->output, c->out_rows, n_out, logits, c->mm_scratch);
	return 0;
}
