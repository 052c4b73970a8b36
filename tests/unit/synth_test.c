/* synth_test.c - the synthesized Llama GGUF: same bytes per config, every
 * key llama.cpp's llama loader reads, a vocabulary SPM merging can use, sane
 * weights, clean failure on bad configs and failed allocations.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "kernels/qtypes.h"
#include "model/gguf.h"
#include "model/gguf_write.h"
#include "model/synth.h"
#include "testutil.h"

static void *build_mem(const synth_config *cfg, size_t *len)
{
	char err[ERR_LEN];
	gguf_writer *w = synth_build(cfg, err);
	cr_assert(w, "%s", err);
	void *out;
	cr_assert_eq(gguf_writer_write_mem(w, &out, len, err), 0, "%s", err);
	gguf_writer_destroy(w);
	return out;
}

static uint64_t fnv1a(const void *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ ((const uint8_t *)p)[i]) * 1099511628211ull;
	return h;
}

static synth_config tiny(void)
{
	synth_config c;
	cr_assert_eq(synth_preset("tiny", &c), 0);
	return c;
}

Test(synth, same_bytes_for_the_same_config)
{
	synth_config c = tiny();
	size_t n1, n2;
	void *a = build_mem(&c, &n1), *b = build_mem(&c, &n2);
	cr_assert(n1 == n2 && !memcmp(a, b, n1));
	/* Pinned: the recorded llama.cpp ids (tests/e2e/model.sh) belong to
	   these bytes. Change the generator, and this value and those ids change
	   together. */
	cr_assert_eq(fnv1a(a, n1), 0xfb88749d3db176c6ull, "fnv1a %#llx, size %zu", (unsigned long long)fnv1a(a, n1), n1);
	alloc_free(b);

	c.seed = 2;
	b = build_mem(&c, &n2);
	cr_assert(n1 == n2 && memcmp(a, b, n1));
	alloc_free(a);
	alloc_free(b);
}

static int64_t key_i64(const gguf *g, const char *key)
{
	int64_t v;
	char err[ERR_LEN];
	cr_assert_eq(gguf_get_i64(g, key, &v, err), 0, "%s: %s", key, err);
	return v;
}

static float key_f32(const gguf *g, const char *key)
{
	float v;
	char err[ERR_LEN];
	cr_assert_eq(gguf_get_f32(g, key, &v, err), 0, "%s: %s", key, err);
	return v;
}

static int str_eq(gguf_str s, const char *want)
{
	return s.n == strlen(want) && !memcmp(s.p, want, s.n);
}

Test(synth, llama_keys_and_tensors)
{
	synth_config c = tiny();
	size_t n;
	void *bytes = build_mem(&c, &n);
	char err[ERR_LEN];
	gguf *g = gguf_open_mem(bytes, n, err);
	cr_assert(g, "%s", err);
	gguf_str s;
	cr_assert(!gguf_get_str(g, "general.architecture", &s, err) && str_eq(s, "llama"));
	cr_assert(!gguf_get_str(g, "general.name", &s, err) && str_eq(s, "pdserve-synth-tiny"));
	cr_assert(!gguf_get_str(g, "tokenizer.ggml.model", &s, err) && str_eq(s, "llama"));
	cr_assert(!gguf_get_str(g, "tokenizer.ggml.pre", &s, err) && str_eq(s, "default"));
	cr_assert_eq(key_i64(g, "general.file_type"), 0);
	cr_assert_eq(key_i64(g, "llama.context_length"), 512);
	cr_assert_eq(key_i64(g, "llama.embedding_length"), 64);
	cr_assert_eq(key_i64(g, "llama.block_count"), 5);
	cr_assert_eq(key_i64(g, "llama.feed_forward_length"), 172);
	cr_assert_eq(key_i64(g, "llama.attention.head_count"), 8);
	cr_assert_eq(key_i64(g, "llama.attention.head_count_kv"), 4);
	cr_assert_eq(key_i64(g, "llama.rope.dimension_count"), 8);
	cr_assert_eq(key_i64(g, "llama.vocab_size"), 512);
	cr_assert_eq(key_f32(g, "llama.attention.layer_norm_rms_epsilon"), 1e-5f);
	cr_assert_eq(key_f32(g, "llama.rope.freq_base"), 10000.0f);
	cr_assert_eq(key_i64(g, "tokenizer.ggml.bos_token_id"), 1);
	cr_assert_eq(key_i64(g, "tokenizer.ggml.eos_token_id"), 2);
	cr_assert_eq(key_i64(g, "tokenizer.ggml.unknown_token_id"), 0);
	bool b;
	cr_assert(!gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, err) && b);
	cr_assert(!gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b, err) && !b);
	cr_assert_eq(gguf_find_key(g, "general.alignment"), -1);

	/* 2 + 9 per layer + output_norm + output */
	cr_assert_eq(gguf_n_tensors(g), 1 + 5 * 9 + 2);
	static const struct { const char *name; int64_t ne0, ne1; } shapes[] = {
		{ "token_embd.weight", 64, 512 },    { "output.weight", 64, 512 },
		{ "output_norm.weight", 64, 1 },     { "blk.0.attn_norm.weight", 64, 1 },
		{ "blk.4.attn_q.weight", 64, 64 },   { "blk.4.attn_k.weight", 64, 32 },
		{ "blk.4.attn_v.weight", 64, 32 },   { "blk.4.attn_output.weight", 64, 64 },
		{ "blk.2.ffn_norm.weight", 64, 1 },  { "blk.2.ffn_gate.weight", 64, 172 },
		{ "blk.2.ffn_up.weight", 64, 172 },  { "blk.2.ffn_down.weight", 172, 64 },
	};
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
		const gguf_tensor *t = gguf_find_tensor(g, shapes[i].name);
		cr_assert(t, "missing %s", shapes[i].name);
		cr_assert(t->ne[0] == shapes[i].ne0 && t->ne[1] == shapes[i].ne1 && t->type == QTYPE_F32,
			  "%s: [%lld, %lld] %s", t->name, (long long)t->ne[0], (long long)t->ne[1],
			  qtype_name(t->type));
		cr_assert_eq(t->n_dims, shapes[i].ne1 > 1 ? 2 : 1, "%s", t->name);
	}
	cr_assert_null(gguf_find_tensor(g, "blk.5.attn_q.weight"));

	/* weights: W ~ N(0, 1/n_in), norms ~ 1, special-token classifier rows 0 */
	const gguf_tensor *t = gguf_find_tensor(g, "blk.1.ffn_gate.weight");
	const float *w = t->data;
	double sum = 0, sq = 0;
	int64_t nel = gguf_tensor_nelements(t);
	for (int64_t i = 0; i < nel; i++)
		sum += w[i], sq += (double)w[i] * w[i];
	cr_assert_lt(fabs(sum / (double)nel), 0.01);
	cr_assert_lt(fabs(sq / (double)nel * 64 - 1), 0.1, "variance * n_in = %g", sq / (double)nel * 64);
	t = gguf_find_tensor(g, "blk.3.attn_norm.weight");
	for (int i = 0; i < 64; i++)
		cr_assert(((const float *)t->data)[i] > 0.5f && ((const float *)t->data)[i] < 1.5f);
	t = gguf_find_tensor(g, "output.weight");
	for (int i = 0; i < 3 * 64; i++)
		cr_assert_eq(((const float *)t->data)[i], 0.0f);
	cr_assert_neq(((const float *)t->data)[3 * 64], 0.0f);
	gguf_close(g);
	alloc_free(bytes);
}

Test(synth, spm_vocabulary)
{
	synth_config c = tiny();
	size_t n;
	void *bytes = build_mem(&c, &n);
	char err[ERR_LEN];
	gguf *g = gguf_open_mem(bytes, n, err);
	cr_assert(g, "%s", err);
	gguf_arr toks, scores, types;
	cr_assert_eq(gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, err), 0);
	cr_assert_eq(gguf_get_arr(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &scores, err), 0);
	cr_assert_eq(gguf_get_arr(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &types, err), 0);
	cr_assert(toks.n == 512 && scores.n == 512 && types.n == 512);

	cr_assert(str_eq(gguf_arr_str(g, &toks, 0), "<unk>") && gguf_arr_i64(&types, 0) == 2);
	cr_assert(str_eq(gguf_arr_str(g, &toks, 1), "<s>") && gguf_arr_i64(&types, 1) == 3);
	cr_assert(str_eq(gguf_arr_str(g, &toks, 2), "</s>") && gguf_arr_i64(&types, 2) == 3);
	for (int b = 0; b < 256; b++) {
		char want[8];
		snprintf(want, sizeof(want), "<0x%02X>", b);
		cr_assert(str_eq(gguf_arr_str(g, &toks, 3 + (uint64_t)b), want), "byte token %d", b);
		cr_assert_eq(gguf_arr_i64(&types, 3 + (uint64_t)b), 6);
	}
	cr_assert(str_eq(gguf_arr_str(g, &toks, 259), "\xe2\x96\x81"));
	for (int ch = '!'; ch <= '~'; ch++) {
		char want[2] = { (char)ch, 0 };
		cr_assert(str_eq(gguf_arr_str(g, &toks, (uint64_t)(260 + ch - '!')), want), "char %c", ch);
	}

	/* Every merged piece splits into two earlier pieces (so SPM's pairwise
	   merging can build it), scores fall strictly with id, pieces are
	   unique, and common words are there. */
	int found_the = 0, found_a = 0;
	for (uint64_t i = 259; i < 512; i++) {
		cr_assert_eq(gguf_arr_i64(&types, i), 1);
		if (i > 259)
			cr_assert_lt(gguf_arr_f64(&scores, i), gguf_arr_f64(&scores, i - 1), "score of %llu",
				     (unsigned long long)i);
		gguf_str p = gguf_arr_str(g, &toks, i);
		for (uint64_t j = 3; j < i; j++) {
			gguf_str q = gguf_arr_str(g, &toks, j);
			cr_assert(!(p.n == q.n && !memcmp(p.p, q.p, p.n)), "tokens %llu and %llu are both '%.*s'",
				  (unsigned long long)i, (unsigned long long)j, (int)p.n, p.p);
		}
		found_the |= str_eq(p, "\xe2\x96\x81the");
		found_a |= str_eq(p, "\xe2\x96\x81" "a");
		if (i < 354)
			continue;
		int ok = 0;
		for (uint64_t j = 259; j < i && !ok; j++) {
			gguf_str l = gguf_arr_str(g, &toks, j);
			if (l.n >= p.n || memcmp(l.p, p.p, l.n))
				continue;
			for (uint64_t k = 259; k < i && !ok; k++) {
				gguf_str r = gguf_arr_str(g, &toks, k);
				ok = l.n + r.n == p.n && !memcmp(r.p, p.p + l.n, r.n);
			}
		}
		cr_assert(ok, "piece %llu '%.*s' is not two earlier pieces", (unsigned long long)i, (int)p.n, p.p);
	}
	cr_assert(found_the && found_a);
	gguf_close(g);
	alloc_free(bytes);
}

Test(synth, quantized_types)
{
	static const struct { int type; int ftype; } cases[] = {
		{ QTYPE_Q8_0, 7 }, { QTYPE_Q4_0, 2 }, { QTYPE_F16, 1 }, { QTYPE_BF16, 32 },
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		synth_config c = tiny();
		c.type = cases[k].type;
		c.tied = k == 0;
		size_t n;
		void *bytes = build_mem(&c, &n);
		char err[ERR_LEN];
		gguf *g = gguf_open_mem(bytes, n, err);
		cr_assert(g, "%s", err);
		cr_assert_eq(key_i64(g, "general.file_type"), cases[k].ftype);
		cr_assert_eq(gguf_n_tensors(g), 47 + !c.tied);
		cr_assert_eq(gguf_find_tensor(g, "output.weight") != NULL, !c.tied);
		for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
			const gguf_tensor *t = gguf_tensor_at(g, i);
			/* norms stay F32; so do matrices whose rows do not fill whole blocks */
			int want = t->n_dims == 1 || t->ne[0] % qtype_get(c.type)->blck ? QTYPE_F32 : c.type;
			cr_assert_eq(t->type, want, "%s: %s, want %s", t->name, qtype_name(t->type),
				     qtype_name(want));
		}
		cr_assert_eq(gguf_find_tensor(g, "blk.0.ffn_down.weight")->type,
			     c.type == QTYPE_Q8_0 || c.type == QTYPE_Q4_0 ? QTYPE_F32 : c.type);
		gguf_close(g);
		alloc_free(bytes);
	}
}

Test(synth, presets_and_bad_configs)
{
	synth_config c;
	cr_assert_eq(synth_preset("small", &c), 0);
	cr_assert(c.n_embd == 256 && c.n_vocab == 768);
	char err[ERR_LEN];
	gguf_writer *w = synth_build(&c, err);
	cr_assert(w, "%s", err);
	gguf_writer_destroy(w);
	cr_assert_eq(synth_preset("huge", &c), ERR_NOTFOUND);

	static const struct { const char *field; int value; const char *want; } bad[] = {
		{ "n_vocab", 100, "n_vocab 100" },   { "n_vocab", 1024, "only yields" },
		{ "n_head_kv", 3, "n_head_kv 3" },   { "n_embd", 60, "n_embd 60" },
		{ "n_layer", 0, "n_layer 0" },       { "type", QTYPE_Q4_K, "type Q4_K" },
		{ "n_ff", 0, "n_ff 0" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		c = tiny();
		int *f = !strcmp(bad[i].field, "n_vocab") ? &c.n_vocab : !strcmp(bad[i].field, "n_head_kv") ? &c.n_head_kv
		       : !strcmp(bad[i].field, "n_embd") ? &c.n_embd : !strcmp(bad[i].field, "n_layer") ? &c.n_layer
		       : !strcmp(bad[i].field, "type") ? &c.type : &c.n_ff;
		*f = bad[i].value;
		err[0] = '\0';
		cr_assert_null(synth_build(&c, err), "%s = %d built", bad[i].field, bad[i].value);
		cr_assert(strstr(err, bad[i].want), "'%s' should contain '%s'", err, bad[i].want);
		cr_assert_neq(synth_write(&c, "/tmp/never-written.gguf", err), 0);
		cr_assert_neq(access("/tmp/never-written.gguf", F_OK), 0);
	}
}

Test(synth, write_creates_directories)
{
	char dir[] = "/tmp/synth_test.XXXXXX";
	cr_assert(mkdtemp(dir));
	char path[128], err[ERR_LEN];
	snprintf(path, sizeof(path), "%s/a/b/synth-llama.gguf", dir);
	synth_config c = tiny();
	cr_assert_eq(synth_write(&c, path, err), 0, "%s", err);
	gguf *g = gguf_open(path, err);
	cr_assert(g, "%s", err);
	cr_assert_eq(gguf_n_tensors(g), 48);
	gguf_close(g);
	/* again over the existing file */
	cr_assert_eq(synth_write(&c, path, err), 0, "%s", err);
	unlink(path);
	snprintf(path, sizeof(path), "%s/a/b", dir);
	rmdir(path);
	snprintf(path, sizeof(path), "%s/a", dir);
	rmdir(path);
	/* a parent that is a file */
	snprintf(path, sizeof(path), "%s/f", dir);
	FILE *f = fopen(path, "w");
	fclose(f);
	snprintf(path, sizeof(path), "%s/f/x.gguf", dir);
	cr_assert_eq(synth_write(&c, path, err), ERR_IO);
	cr_assert(strstr(err, dir), "%s", err);
	snprintf(path, sizeof(path), "%s/f", dir);
	unlink(path);
	rmdir(dir);
}

Test(synth, default_path)
{
	char buf[256];
	setenv("XDG_CACHE_HOME", "/xdg", 1);
	setenv("HOME", "/home/u", 1);
	cr_assert_eq(synth_default_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "/xdg/pdserve/synth-llama.gguf");
	cr_assert_eq(synth_default_path(buf, 10), ERR_FULL);
	setenv("XDG_CACHE_HOME", "relative", 1); /* the XDG spec says ignore it */
	cr_assert_eq(synth_default_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "/home/u/.cache/pdserve/synth-llama.gguf");
	unsetenv("XDG_CACHE_HOME");
	cr_assert_eq(synth_default_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "/home/u/.cache/pdserve/synth-llama.gguf");
	unsetenv("HOME");
	cr_assert_eq(synth_default_path(buf, sizeof(buf)), ERR_NOTFOUND);
}

/* Fail allocations of a build one at a time (a sample: every 7th and the
   first and last few; a full build makes about a thousand). */
Test(synth, failed_allocations)
{
	synth_config c = tiny();
	char err[ERR_LEN];
	alloc_fail_after(-1);
	gguf_writer *w = synth_build(&c, err);
	long n = alloc_fail_after(-1);
	cr_assert(w);
	gguf_writer_destroy(w);
	cr_assert_gt(n, 10);
	for (long k = 0; k < n; k++) {
		if (k > 16 && k < n - 16 && k % 7)
			continue;
		alloc_fail_after(k);
		w = synth_build(&c, err);
		alloc_fail_after(-1);
		cr_assert_null(w, "built with allocation %ld of %ld failing", k, n);
		cr_assert(strstr(err, "out of memory"), "allocation %ld: '%s'", k, err);
	}
}
