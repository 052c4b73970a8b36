/* synth.c - seeded random Llama GGUF with a SentencePiece-style vocabulary.
 *
 * Vocabulary. Ids 0..2 are <unk> <s> </s>, 3..258 the byte-fallback tokens
 * <0x00>..<0xFF> (token_type 6), 259 is U+2581 (SentencePiece's space) and
 * 260..353 the printable ASCII characters '!'..'~'. The rest are merged
 * pieces learned here by byte-pair encoding over a short English text
 * (`corpus` below): each word becomes U+2581 + its characters, and the most
 * frequent adjacent pair is merged until the vocabulary is full. Because
 * each piece is the concatenation of two earlier ones and scores fall with
 * merge order (score = -(id - 259)), llama.cpp's SPM tokenizer, which
 * repeatedly joins the adjacent pair whose concatenation is the best-scoring
 * token, reaches "▁the", "▁once", "ing"... from single characters, and any
 * character outside ASCII falls back to its bytes.
 *
 * Weights. Every value is drawn from a per-tensor stream: splitmix64 seeded
 * with the seed mixed with a hash of the tensor name, so adding layers does
 * not change earlier tensors. A normal draw is the sum of four uniforms,
 * scaled to unit variance (Irwin-Hall): only +, * and sqrt, which IEEE 754
 * rounds exactly, so the bytes are the same on every machine and libm.
 * Matrices are N(0, 1/n_in) so activations keep unit scale through the
 * layers; norm weights are 1 + N(0, 0.1^2); token_embd is N(0, 1) (0.25^2
 * when tied) and the classifier N(0, 16/n_embd), which spreads logits over
 * a few units: next-token distributions are neither flat nor one-hot, and
 * greedy choices mostly have clear margins, so two engines' ids can be
 * compared. The classifier rows of <unk> <s> </s> are zero, so greedy
 * decoding runs to its token limit instead of stopping at a random </s>.
 * A random model still falls into loops after a few dozen tokens (the tied
 * variant sooner). Quantized types use the reference
 * quantizers (kern_ref(), not the dispatched table) for the same reason
 * the draws avoid libm: identical bytes everywhere.
 *
 * Left out: other architectures, chat templates, and a trained model --
 * the output is gibberish by design.
 */
#include "model/synth.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/alloc.h"
#include "kernels/kernels.h"
#include "kernels/qtypes.h"

enum {
	N_SPECIAL = 3,
	FIRST_BYTE = 3,
	FIRST_CHAR = 259, /* U+2581, then '!'..'~' */
	FIRST_MERGE = FIRST_CHAR + 1 + ('~' - '!' + 1),
	MAX_VOCAB = 1024,
	MAX_PIECE = 32,
};

enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_BYTE = 6 };

static const char SPACE[] = "\xe2\x96\x81"; /* U+2581 */

/* ---------------------------------------------------------------- presets */

static const struct {
	const char *name;
	int n_vocab, n_ctx, n_embd, n_layer, n_head, n_head_kv, n_ff;
} presets[] = {
	{ "tiny", 512, 512, 64, 5, 8, 4, 172 },
	{ "small", 768, 1024, 256, 4, 8, 4, 768 },
};

const char *synth_preset_names(void)
{
	return "tiny|small";
}

int synth_preset(const char *name, synth_config *cfg)
{
	for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
		if (strcmp(name, presets[i].name))
			continue;
		*cfg = (synth_config){
			.seed = 1,
			.type = QTYPE_F32,
			.n_vocab = presets[i].n_vocab,
			.n_ctx = presets[i].n_ctx,
			.n_embd = presets[i].n_embd,
			.n_layer = presets[i].n_layer,
			.n_head = presets[i].n_head,
			.n_head_kv = presets[i].n_head_kv,
			.n_ff = presets[i].n_ff,
			.rope_base = 10000.0f,
			.rms_eps = 1e-5f,
		};
		snprintf(cfg->preset, sizeof(cfg->preset), "%s", name);
		return 0;
	}
	return ERR_NOTFOUND;
}

/* ---------------------------------------------------------------- vocabulary */

/* The text the merges are learned from (written for this file). */
static const char corpus[] =
	"Once upon a time, there was a little girl named Lily. She lived in a small house "
	"with her mom and dad and a big brown dog. Every day she went to the park to play. "
	"One day, Lily saw a red ball under a tree. She wanted to play with the ball, but "
	"it was too high. She asked her friend Tom to help her. Tom was a kind boy. He "
	"said, \"I can help you!\" They worked together and got the ball down. Lily was "
	"very happy and said, \"Thank you, Tom!\" They played with the ball all day long. "
	"When the sun went down, they went home. Lily told her mom about the ball and "
	"her new friend. Her mom smiled and gave her a hug.\n"
	"There was once a happy cat who liked to jump and run. The cat had a friend, a "
	"little bird. The bird could fly very high in the sky. One morning the cat said "
	"to the bird, \"I want to fly like you.\" The bird looked at the cat and said, "
	"\"You can not fly, but you can run fast and climb trees.\" The cat thought about "
	"it and felt better. They were good friends and they played in the garden every "
	"day. The cat was proud of what it could do, and the bird was happy too.\n"
	"Ben had a toy car that he loved very much. He took it everywhere he went. One "
	"day he lost the car in the big green grass. He looked and looked, but he could "
	"not find it. He was sad and started to cry. His sister Sue came to help him. "
	"She said, \"Don't be sad, Ben. We will find it together.\" They looked under "
	"the bench and behind the tree. At last Sue found the car next to a flower. Ben "
	"was so happy that he gave his sister a big hug. From that day on, he was more "
	"careful with his things, and he always shared his toys with Sue.\n"
	"In a quiet town by the sea, an old man made boats out of wood. Children came "
	"to watch him work. He showed them how to cut, sand and paint. Each boat was "
	"different, and each one had a name. The children asked him questions and he "
	"answered every one with a smile. When the boats were ready, everyone went down "
	"to the water to see them float. It was the best day of the summer, and the "
	"children remembered it for a long time.\n";

typedef struct {
	char *piece[MAX_VOCAB]; /* owned, NUL-terminated */
	float score[MAX_VOCAB];
	int32_t type[MAX_VOCAB];
	int n;
} vocab;

static void vocab_free(vocab *v)
{
	for (int i = 0; i < v->n; i++)
		alloc_free(v->piece[i]);
	v->n = 0;
}

static int vocab_add(vocab *v, const char *s, float score, int type)
{
	char *p = alloc_strdup(s);
	if (!p)
		return ERR_NOMEM;
	v->piece[v->n] = p;
	v->score[v->n] = score;
	v->type[v->n] = type;
	v->n++;
	return 0;
}

static int vocab_find(const vocab *v, const char *s, int from)
{
	for (int i = from; i < v->n; i++)
		if (!strcmp(v->piece[i], s))
			return i;
	return -1;
}

/* Id of an ASCII character of the corpus ('\n' and ' ' start words). */
static int char_id(char c)
{
	return FIRST_CHAR + 1 + (c - '!');
}

/* Learn merges until v has n_vocab tokens. */
static int learn_merges(vocab *v, int n_vocab, char *err)
{
	size_t n_corpus = sizeof(corpus) - 1;
	/* symbol sequence of the corpus: -1 separates words */
	int *sym = alloc_array(n_corpus * 2 + 2, sizeof(int));
	int *count = alloc_zeroed((size_t)n_vocab * (size_t)n_vocab, sizeof(int));
	int rc = 0, n = 0;
	if (!sym || !count) {
		rc = err_set(err, ERR_NOMEM, "out of memory building the vocabulary");
		goto out;
	}
	for (size_t i = 0; i < n_corpus; i++) {
		char c = corpus[i];
		if (c == ' ' || c == '\n') {
			sym[n++] = -1;
			continue;
		}
		if (n == 0 || sym[n - 1] == -1)
			sym[n++] = FIRST_CHAR;
		sym[n++] = char_id(c);
	}

	while (v->n < n_vocab) {
		int best_a = -1, best_b = -1, best = 0;
		for (int i = 0; i + 1 < n; i++) {
			int a = sym[i], b = sym[i + 1];
			if (a < 0 || b < 0)
				continue;
			int c = ++count[a * n_vocab + b];
			/* most frequent; ties go to the smaller (a, b) so the result is fixed */
			if (c > best || (c == best && (a < best_a || (a == best_a && b < best_b)))) {
				best = c;
				best_a = a;
				best_b = b;
			}
		}
		for (int i = 0; i + 1 < n; i++)
			if (sym[i] >= 0 && sym[i + 1] >= 0)
				count[sym[i] * n_vocab + sym[i + 1]] = 0;
		if (best_a < 0) {
			rc = err_set(err, ERR_INVAL, "n_vocab %d: the built-in text only yields %d tokens",
				     n_vocab, v->n);
			goto out;
		}
		/* pieces are at most a corpus word (+ U+2581), far below MAX_PIECE */
		char piece[2 * MAX_PIECE];
		snprintf(piece, sizeof(piece), "%s%s", v->piece[best_a], v->piece[best_b]);
		int id = vocab_find(v, piece, FIRST_MERGE);
		if (id < 0) {
			id = v->n;
			if (vocab_add(v, piece, (float)-(id - FIRST_CHAR), TOK_NORMAL)) {
				rc = err_set(err, ERR_NOMEM, "out of memory building the vocabulary");
				goto out;
			}
		}
		/* apply the merge left to right */
		int o = 0;
		for (int i = 0; i < n; i++) {
			if (i + 1 < n && sym[i] == best_a && sym[i + 1] == best_b) {
				sym[o++] = id;
				i++;
			} else {
				sym[o++] = sym[i];
			}
		}
		n = o;
	}
out:
	alloc_free(sym);
	alloc_free(count);
	return rc;
}

static int build_vocab(vocab *v, int n_vocab, char *err)
{
	char s[16];
	v->n = 0;
	if (vocab_add(v, "<unk>", 0, TOK_UNKNOWN) || vocab_add(v, "<s>", 0, TOK_CONTROL) ||
	    vocab_add(v, "</s>", 0, TOK_CONTROL))
		goto oom;
	for (int b = 0; b < 256; b++) {
		snprintf(s, sizeof(s), "<0x%02X>", b);
		if (vocab_add(v, s, 0, TOK_BYTE))
			goto oom;
	}
	if (vocab_add(v, SPACE, 0, TOK_NORMAL))
		goto oom;
	for (char c = '!'; c <= '~'; c++) {
		s[0] = c, s[1] = '\0';
		if (vocab_add(v, s, (float)-(v->n - FIRST_CHAR), TOK_NORMAL))
			goto oom;
	}
	return learn_merges(v, n_vocab, err);
oom:
	return err_set(err, ERR_NOMEM, "out of memory building the vocabulary");
}

/* ---------------------------------------------------------------- weights */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Unit-variance draw: four uniforms on [0,1), centred and scaled. */
static double draw_normal(uint64_t *s)
{
	double sum = 0;
	for (int i = 0; i < 4; i++)
		sum += (double)(splitmix64(s) >> 11) * 0x1p-53;
	return (sum - 2.0) * 1.7320508075688772; /* sqrt(3): var(sum) = 4/12 */
}

static uint64_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ull;
	return h;
}

/* Add tensor `name` of shape [ne0, ne1] filled with mean + std * N(0,1),
   stored as `type` (F32 when ne0 is not a multiple of its block). With
   per_token (a classifier or embedding, one row per token) the rows of
   <unk> <s> </s> are zero, so that greedy decoding never stops or emits
   them by chance, and the byte tokens' rows are halved, so that output
   is mostly whole pieces rather than stray bytes. */
static int add_weight(gguf_writer *w, const synth_config *cfg, const char *name, int type, int64_t ne0,
		      int64_t ne1, double mean, double std, int per_token, float *scratch)
{
	uint64_t s = cfg->seed ^ name_hash(name);
	int64_t n = ne0 * ne1;
	for (int64_t i = 0; i < n; i++)
		scratch[i] = (float)(mean + std * draw_normal(&s));
	if (per_token) {
		for (int64_t i = 0; i < N_SPECIAL * ne0; i++)
			scratch[i] = 0;
		for (int64_t i = FIRST_BYTE * ne0; i < FIRST_CHAR * ne0; i++)
			scratch[i] *= 0.5f;
	}
	if (ne0 % qtype_get(type)->blck)
		type = QTYPE_F32;
	int64_t ne[2] = { ne0, ne1 };
	void *buf;
	int rc = gguf_writer_add_tensor(w, name, type, ne1 > 1 ? 2 : 1, ne, NULL, &buf);
	if (rc)
		return rc;
	kern_ref()->from_float[type](scratch, buf, n);
	return 0;
}

static int file_type_of(int type)
{
	switch (type) {
	case QTYPE_F32: return 0;  /* LLAMA_FTYPE_ALL_F32 */
	case QTYPE_F16: return 1;  /* MOSTLY_F16 */
	case QTYPE_Q4_0: return 2; /* MOSTLY_Q4_0 */
	case QTYPE_Q8_0: return 7; /* MOSTLY_Q8_0 */
	case QTYPE_BF16: return 32;
	}
	return -1;
}

static int check_config(const synth_config *c, char *err)
{
	if (file_type_of(c->type) < 0 || !kern_ref()->from_float[c->type])
		return err_set(err, ERR_INVAL, "type %s: synth makes F32, F16, BF16, Q8_0 or Q4_0",
			       qtype_name(c->type));
	if (c->n_vocab < FIRST_MERGE || c->n_vocab > MAX_VOCAB)
		return err_set(err, ERR_INVAL, "n_vocab %d: not in %d..%d", c->n_vocab, FIRST_MERGE, MAX_VOCAB);
	if (c->n_layer < 1 || c->n_layer > 256)
		return err_set(err, ERR_INVAL, "n_layer %d: not in 1..256", c->n_layer);
	if (c->n_head < 1 || c->n_head_kv < 1 || c->n_head % c->n_head_kv)
		return err_set(err, ERR_INVAL, "n_head %d, n_head_kv %d: kv heads must divide heads",
			       c->n_head, c->n_head_kv);
	if (c->n_embd < 2 || c->n_embd > 8192 || c->n_embd % c->n_head || (c->n_embd / c->n_head) % 2)
		return err_set(err, ERR_INVAL, "n_embd %d: must split into %d heads of an even size",
			       c->n_embd, c->n_head);
	if (c->n_ff < 1 || c->n_ff > 65536)
		return err_set(err, ERR_INVAL, "n_ff %d: not in 1..65536", c->n_ff);
	if (c->n_ctx < 1)
		return err_set(err, ERR_INVAL, "n_ctx %d: must be positive", c->n_ctx);
	return 0;
}

static int build(const synth_config *cfg, gguf_writer **out, char *err)
{
	vocab *v = NULL;
	float *scratch = NULL;
	gguf_writer *w = NULL;
	char name[64];
	int rc;

	if ((rc = check_config(cfg, err)) != 0)
		return rc;
	v = alloc_zeroed(1, sizeof(*v));
	w = gguf_writer_create();
	if (!v || !w) {
		rc = err_set(err, ERR_NOMEM, "out of memory building the model");
		goto fail;
	}
	if ((rc = build_vocab(v, cfg->n_vocab, err)) != 0)
		goto fail;

	const int head_dim = cfg->n_embd / cfg->n_head;
	const int64_t E = cfg->n_embd, V = cfg->n_vocab, F = cfg->n_ff;
	const int64_t Q = (int64_t)cfg->n_head * head_dim, KV = (int64_t)cfg->n_head_kv * head_dim;
	char desc[160];
	snprintf(desc, sizeof(desc), "random weights: pdserve model synth --preset %s --seed %llu --type %s%s",
		 cfg->preset[0] ? cfg->preset : "custom", (unsigned long long)cfg->seed,
		 qtype_name(cfg->type), cfg->tied ? " --tied" : "");
	snprintf(name, sizeof(name), "pdserve-synth-%s", cfg->preset[0] ? cfg->preset : "custom");

	gguf_writer_set_str(w, "general.architecture", "llama");
	gguf_writer_set_str(w, "general.name", name);
	gguf_writer_set_str(w, "general.description", desc);
	gguf_writer_set_u32(w, "general.file_type", (uint32_t)file_type_of(cfg->type));
	if (cfg->type != QTYPE_F32 && cfg->type != QTYPE_F16 && cfg->type != QTYPE_BF16)
		gguf_writer_set_u32(w, "general.quantization_version", 2);
	gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)V);
	gguf_writer_set_u32(w, "llama.context_length", (uint32_t)cfg->n_ctx);
	gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)E);
	gguf_writer_set_u32(w, "llama.block_count", (uint32_t)cfg->n_layer);
	gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)F);
	gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)cfg->n_head);
	gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)cfg->n_head_kv);
	gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", cfg->rms_eps);
	gguf_writer_set_f32(w, "llama.rope.freq_base", cfg->rope_base);
	gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)head_dim);
	gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
	gguf_writer_set_str(w, "tokenizer.ggml.pre", "default");
	gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->piece, (size_t)v->n);
	gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v->score, (size_t)v->n);
	gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v->type, (size_t)v->n);
	gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
	gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
	gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
	gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
	gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false);
	if ((rc = gguf_writer_error(w, err)) != 0)
		goto fail;

	int64_t biggest = V * E > E * F ? V * E : E * F;
	scratch = alloc_array((size_t)(biggest > Q * E ? biggest : Q * E), sizeof(float));
	if (!scratch) {
		rc = err_set(err, ERR_NOMEM, "out of memory building the model");
		goto fail;
	}
	const int t = cfg->type;
	/* n_in 0 marks a norm */
	const struct { const char *suffix; int64_t n_in, n_out; } mats[] = {
		{ "attn_norm", 0, 0 }, { "attn_q", E, Q },      { "attn_k", E, KV },
		{ "attn_v", E, KV },   { "attn_output", Q, E }, { "ffn_norm", 0, 0 },
		{ "ffn_gate", E, F },  { "ffn_down", F, E },    { "ffn_up", E, F },
	};
	/* tied: the embedding is also the classifier, where a large row makes the
	   last token's own logit dominate; smaller rows keep the output moving */
	rc = add_weight(w, cfg, "token_embd.weight", t, E, V, 0, cfg->tied ? 0.25 : 1.0, 1, scratch);
	for (int l = 0; l < cfg->n_layer && !rc; l++) {
		for (size_t m = 0; m < sizeof(mats) / sizeof(mats[0]) && !rc; m++) {
			snprintf(name, sizeof(name), "blk.%d.%s.weight", l, mats[m].suffix);
			if (!mats[m].n_in)
				rc = add_weight(w, cfg, name, QTYPE_F32, E, 1, 1.0, 0.1, 0, scratch);
			else
				rc = add_weight(w, cfg, name, t, mats[m].n_in, mats[m].n_out, 0,
						1.0 / sqrt((double)mats[m].n_in), 0, scratch);
		}
	}
	if (!rc)
		rc = add_weight(w, cfg, "output_norm.weight", QTYPE_F32, E, 1, 1.0, 0.1, 0, scratch);
	if (!rc && !cfg->tied)
		rc = add_weight(w, cfg, "output.weight", t, E, V, 0, 4.0 / sqrt((double)E), 1, scratch);
	if (rc) {
		gguf_writer_error(w, err);
		goto fail;
	}
	alloc_free(scratch);
	vocab_free(v);
	alloc_free(v);
	*out = w;
	return 0;

fail:
	alloc_free(scratch);
	gguf_writer_destroy(w);
	if (v)
		vocab_free(v);
	alloc_free(v);
	return rc;
}

gguf_writer *synth_build(const synth_config *cfg, char err[ERR_LEN])
{
	gguf_writer *w = NULL;
	return build(cfg, &w, err) ? NULL : w;
}

/* mkdir -p of path's parent directory. */
static int make_parents(const char *path, char *err)
{
	char dir[4096];
	if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
		return err_set(err, ERR_INVAL, "%s: path too long", path);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	for (char *p = dir + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;
			*p = '\0';
			if (mkdir(dir, 0755) < 0 && errno != EEXIST)
				return err_set(err, ERR_IO, "%s: %s", dir, strerror(errno));
			*p = c;
			if (!c)
				break;
		}
	}
	return 0;
}

int synth_write(const synth_config *cfg, const char *path, char err[ERR_LEN])
{
	gguf_writer *w;
	int rc = build(cfg, &w, err);
	if (rc)
		return rc;
	rc = make_parents(path, err);
	if (!rc)
		rc = gguf_writer_write_file(w, path, err);
	gguf_writer_destroy(w);
	return rc;
}

int synth_default_path(char *buf, size_t n)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	int k;
	if (xdg && xdg[0] == '/')
		k = snprintf(buf, n, "%s/pdserve/synth-llama.gguf", xdg);
	else if (home && home[0] == '/')
		k = snprintf(buf, n, "%s/.cache/pdserve/synth-llama.gguf", home);
	else
		return ERR_NOTFOUND;
	return k < 0 || (size_t)k >= n ? ERR_FULL : 0;
}
