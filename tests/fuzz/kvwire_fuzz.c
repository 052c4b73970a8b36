/* kvwire_fuzz.c - libFuzzer target: any bytes through every KV-frame decoder. */
#include <stddef.h>
#include <stdint.h>

#include "disagg/kvwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[ERR_LEN];
	kvw_hdr h;
	kvw_hello hello;
	kvw_shm_attach att;
	kvw_ucx_info ui;
	kvw_aux aux;
	uint32_t a, b, n;
	static int32_t pages[4096];
	if (size >= KVW_HDR)
		kvw_hdr_decode(data, &h, err);
	kvw_hello_decode(data, size, 0, &hello, err);
	kvw_hello_decode(data, size, 1, &hello, err);
	kvw_shm_attach_decode(data, size, &att, err);
	if (kvw_ucx_info_decode(data, size, &ui, err) == 0) {
		volatile uint8_t s = ui.addr[ui.addr_len - 1] ^ ui.rkey[ui.rkey_len - 1];
		(void)s;
	}
	kvw_room_dest_decode(data, size, &a, pages, 4096, &n, err);
	kvw_range_decode(data, size, &a, &b, err);
	if (kvw_aux_decode(data, size, &aux, err) == 0) {
		/* a decoded frame re-encodes to the same bytes */
		static uint8_t out[48 + 8 * SAMPLER_MAX_TOP_LOGPROBS];
		size_t len = kvw_aux_encode(out, &aux);
		if (len != size)
			__builtin_trap();
	}
	return 0;
}
