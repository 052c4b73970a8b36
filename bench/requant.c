/* bench/requant.c - re-quantize a GGUF's 2-D weights, for benchmark models.
 *
 *   b/bench/requant IN.gguf OUT.gguf Q4_K_M|Q4_K|Q6_K|Q8_0|Q4_0
 *
 * Every metadata key is copied; every 2-D tensor whose row length fits the
 * target block is dequantized (the kernels' to_float) and quantized again
 * with the project's reference quantizers (kern_ref()->from_float; see
 * kernels/ref/quants.c for their rules); 1-D tensors (norms, biases) and
 * rope_freqs stay as they are. Q4_K_M follows llama-quantize's recipe for
 * Llama models: Q4_K everywhere, Q6_K for output.weight and for attn_v and
 * ffn_down in the first and last eighth of the layers and every third layer
 * in between. general.file_type is set accordingly. It exists because the
 * shared synthetic-model generator writes F32/F16/Q8_0/Q4_0 only and the
 * kernel issue benchmarks Q4_K_M too (make the input with
 * ../shared/tools/make_synthetic_gguf.py --type F16, then this).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "kernels/kernels.h"
#include "model/gguf.h"
#include "model/gguf_write.h"

static int layer_of(const char *name)
{
	int l;
	return sscanf(name, "blk.%d.", &l) == 1 ? l : -1;
}

/* Q4_K_M: which tensors get Q6_K (llama.cpp's use_more_bits rule). */
static int q4km_type(const char *name, int n_layer)
{
	if (!strcmp(name, "output.weight"))
		return QTYPE_Q6_K;
	int l = layer_of(name);
	if (l >= 0 && (strstr(name, "attn_v.weight") || strstr(name, "ffn_down.weight"))) {
		int more = l < n_layer / 8 || l >= 7 * n_layer / 8 || (l - n_layer / 8) % 3 == 2;
		if (more)
			return QTYPE_Q6_K;
	}
	return QTYPE_Q4_K;
}

static int copy_kv(const gguf *g, int64_t i, gguf_writer *w)
{
	const char *key = gguf_key(g, i);
	gguf_vtype t = gguf_kv_type(g, i);
	double v = gguf_kv_number(g, i);
	switch (t) {
	case GGUF_TYPE_UINT8: return gguf_writer_set_u8(w, key, (uint8_t)v);
	case GGUF_TYPE_INT8: return gguf_writer_set_i8(w, key, (int8_t)v);
	case GGUF_TYPE_UINT16: return gguf_writer_set_u16(w, key, (uint16_t)v);
	case GGUF_TYPE_INT16: return gguf_writer_set_i16(w, key, (int16_t)v);
	case GGUF_TYPE_UINT32: return gguf_writer_set_u32(w, key, (uint32_t)v);
	case GGUF_TYPE_INT32: return gguf_writer_set_i32(w, key, (int32_t)v);
	case GGUF_TYPE_UINT64: return gguf_writer_set_u64(w, key, (uint64_t)v);
	case GGUF_TYPE_INT64: return gguf_writer_set_i64(w, key, (int64_t)v);
	case GGUF_TYPE_FLOAT32: return gguf_writer_set_f32(w, key, (float)v);
	case GGUF_TYPE_FLOAT64: return gguf_writer_set_f64(w, key, v);
	case GGUF_TYPE_BOOL: return gguf_writer_set_bool(w, key, v != 0);
	case GGUF_TYPE_STRING: {
		gguf_str s = gguf_kv_str(g, i);
		return gguf_writer_set_strn(w, key, s.p, s.n);
	}
	case GGUF_TYPE_ARRAY: {
		gguf_arr a;
		char err[ERR_LEN];
		if (gguf_get_arr(g, key, -1, &a, err) < 0)
			return -1;
		if (a.type != GGUF_TYPE_STRING)
			return gguf_writer_set_arr(w, key, a.type, a.data, a.n);
		char **strs = calloc(a.n ? a.n : 1, sizeof(char *));
		for (uint64_t k = 0; k < a.n; k++) {
			gguf_str s = gguf_arr_str(g, &a, k);
			strs[k] = malloc(s.n + 1);
			memcpy(strs[k], s.p, s.n);
			strs[k][s.n] = 0;
		}
		int rc = gguf_writer_set_arr_str(w, key, (const char *const *)strs, a.n);
		for (uint64_t k = 0; k < a.n; k++)
			free(strs[k]);
		free(strs);
		return rc;
	}
	default:
		return -1;
	}
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s IN.gguf OUT.gguf Q4_K_M|Q4_K|Q6_K|Q8_0|Q4_0\n", argv[0]);
		return 2;
	}
	const char *want = argv[3];
	int fixed = !strcmp(want, "Q4_K") ? QTYPE_Q4_K : !strcmp(want, "Q6_K") ? QTYPE_Q6_K
		  : !strcmp(want, "Q8_0") ? QTYPE_Q8_0 : !strcmp(want, "Q4_0") ? QTYPE_Q4_0 : -1;
	int q4km = !strcmp(want, "Q4_K_M");
	if (fixed < 0 && !q4km) {
		fprintf(stderr, "requant: unknown type %s\n", want);
		return 2;
	}
	static const struct { int type, ftype; } ftypes[] = {
		{ QTYPE_Q4_0, 2 }, { QTYPE_Q8_0, 7 }, { QTYPE_Q4_K, 14 }, { QTYPE_Q6_K, 18 },
	};
	char err[ERR_LEN];
	kern_init();
	gguf *g = gguf_open(argv[1], err);
	if (!g) {
		fprintf(stderr, "requant: %s\n", err);
		return 1;
	}
	uint32_t n_layer = 0;
	gguf_get_u32(g, "llama.block_count", &n_layer, NULL);
	gguf_writer *w = gguf_writer_create();
	for (int64_t i = 0; i < gguf_n_kv(g); i++)
		if (copy_kv(g, i, w) < 0) {
			fprintf(stderr, "requant: cannot copy key %s\n", gguf_key(g, i));
			return 1;
		}
	int ftype = 15; /* MOSTLY_Q4_K_M */
	for (size_t k = 0; k < sizeof(ftypes) / sizeof(ftypes[0]); k++)
		if (ftypes[k].type == fixed)
			ftype = ftypes[k].ftype;
	gguf_writer_set_u32(w, "general.file_type", (uint32_t)ftype);
	const kern_table *ref = kern_ref();
	for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor *t = gguf_tensor_at(g, i);
		int type = t->type;
		if (t->n_dims == 2 && strcmp(t->name, "rope_freqs.weight")) {
			int nt = q4km ? q4km_type(t->name, (int)n_layer) : fixed;
			if (qtype_row_size(nt, t->ne[0]))
				type = nt;
		}
		if (type == t->type) {
			gguf_writer_add_tensor(w, t->name, type, t->n_dims, t->ne, t->data, NULL);
			continue;
		}
		int64_t rows = gguf_tensor_nelements(t) / t->ne[0];
		size_t in_rs = qtype_row_size(t->type, t->ne[0]);
		void *out;
		if (gguf_writer_add_tensor(w, t->name, type, t->n_dims, t->ne, NULL, &out) < 0)
			break;
		float *row = malloc(sizeof(float) * (size_t)t->ne[0]);
		for (int64_t r = 0; r < rows; r++) {
			ref->to_float[t->type]((const uint8_t *)t->data + (size_t)r * in_rs, row, t->ne[0]);
			ref->from_float[type](row, (uint8_t *)out + (size_t)r * qtype_row_size(type, t->ne[0]), t->ne[0]);
		}
		free(row);
		fprintf(stderr, "%-28s %-5s -> %s\n", t->name, qtype_name(t->type), qtype_name(type));
	}
	int rc = gguf_writer_write_file(w, argv[2], err);
	if (rc < 0)
		fprintf(stderr, "requant: %s\n", err);
	gguf_writer_destroy(w);
	gguf_close(g);
	return rc < 0;
}
