/* gguf_fuzz.c - libFuzzer target: any bytes as a GGUF file. */
#include <stddef.h>
#include <stdint.h>

#include "kernels/qtypes.h"
#include "model/gguf.h"
#include "model/llama.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[ERR_LEN];
	gguf *g = gguf_open_mem(data, size, err);
	if (!g)
		return 0;
	volatile uint64_t sink = 0;
	for (int64_t i = 0; i < gguf_n_kv(g); i++) {
		sink += gguf_kv_number(g, i) > 0;
		gguf_str s = gguf_kv_str(g, i);
		if (s.n)
			sink += (uint8_t)s.p[s.n - 1];
		gguf_arr a;
		if (gguf_get_arr(g, gguf_key(g, i), -1, &a, NULL) == 0 && a.n) {
			if (a.type == GGUF_TYPE_STRING) {
				gguf_str e = gguf_arr_str(g, &a, a.n - 1);
				sink += e.n;
			} else {
				sink += (uint64_t)gguf_arr_i64(&a, a.n - 1);
			}
		}
	}
	for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor *t = gguf_tensor_at(g, i);
		if (t->nbytes)
			sink += ((const uint8_t *)t->data)[t->nbytes - 1];
	}
	llama_hparams hp;
	llama_hparams_load(g, &hp, err);
	sink += gguf_fingerprint(g);
	(void)sink;
	gguf_close(g);
	return 0;
}
