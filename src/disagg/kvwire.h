/* kvwire.h - frames of the KV transfer protocol (docs/PROTOCOL.md section 3).
 *
 * Pure encoding and decoding, no I/O: encoders write into a caller buffer,
 * decoders read a received payload and validate every field and length
 * (payloads are untrusted). Everything is little endian.
 */
#ifndef PDSERVE_DISAGG_KVWIRE_H
#define PDSERVE_DISAGG_KVWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/sampler.h"

#define KVW_MAGIC 0x564B4450u /* "PDKV" */
#define KVW_VERSION 1
#define KVW_HDR 32
#define KVW_MAX_LEN (1ull << 30)
#define KVW_MAX_PAGES (1u << 24)
#define KVW_MAX_PATH 108 /* sun_path */

typedef enum {
	KVW_HELLO = 1,
	KVW_HELLO_OK = 2,
	KVW_REJECT = 3,
	KVW_SHM_ATTACH = 4,
	KVW_ROOM_DEST = 5,
	KVW_KV_DATA = 6,
	KVW_KV_WRITTEN = 7,
	KVW_AUX = 8,
	KVW_ROOM_FAIL = 9,
	KVW_ROOM_FAIL_ACK = 10,
	KVW_PING = 11,
	KVW_PONG = 12,
	KVW_UCX_INFO = 13,
	KVW_AUTH_CHALLENGE = 14, /* both ways, first frame when a secret is set: 32-byte nonce */
	KVW_AUTH_RESPONSE = 15,  /* HMAC-SHA256(secret, peer's nonce || own role), 32 bytes */
	KVW_TYPE_MAX = 15,
} kvw_type;

typedef enum { KVW_BACKEND_TCP = 1, KVW_BACKEND_SHM = 2, KVW_BACKEND_UCX = 3 } kvw_backend;

typedef struct {
	uint16_t type;
	uint64_t room;
	uint64_t len;
} kvw_hdr;

typedef struct {
	uint64_t fingerprint;
	uint32_t n_layer, n_kv_heads, head_dim, page_size, dtype;
} kvw_layout;

typedef struct {
	uint32_t proto;
	uint32_t backend;
	kvw_layout layout;
	uint64_t host_id;         /* HELLO_OK only */
	char shm_path[KVW_MAX_PATH]; /* HELLO_OK only, "" if none */
	uint32_t pid;             /* HELLO_OK only: the prefill's process id (same-host safety checks) */
} kvw_hello;

typedef struct {
	uint64_t pool_bytes, layer_bytes, page_bytes;
	uint32_t n_pages;
} kvw_shm_attach;

/* UCX_INFO (decode -> prefill, ucx backend): where and how to put. */
typedef struct {
	uint64_t base;            /* remote address of the pool */
	kvw_shm_attach geo;       /* pool geometry, as for shm */
	const uint8_t *addr;      /* worker address blob (points into the payload) */
	uint32_t addr_len;
	const uint8_t *rkey;      /* packed rkey blob (points into the payload) */
	uint32_t rkey_len;
} kvw_ucx_info;


typedef struct {
	uint32_t first_token;
	float logprob;
	uint32_t cached_tokens, n_prompt;
	double queue_s, compute_s;
	uint64_t bytes;
	uint32_t n_top;
	sampler_logprob top[SAMPLER_MAX_TOP_LOGPROBS];
} kvw_aux;

/* Header <-> 32 bytes. kvw_hdr_decode: 0, or ERR_PROTO with err (bad magic,
   version, unknown type, len over KVW_MAX_LEN). */
void kvw_hdr_encode(uint8_t out[KVW_HDR], uint16_t type, uint64_t room, uint64_t len);
int kvw_hdr_decode(const uint8_t in[KVW_HDR], kvw_hdr *h, char err[ERR_LEN]);

/* Payload encoders: return the payload length written to out (which must
   hold kvw_*_size() bytes). */
size_t kvw_hello_size(const kvw_hello *h);
size_t kvw_hello_encode(uint8_t *out, const kvw_hello *h, int with_host);
size_t kvw_shm_attach_encode(uint8_t out[28], const kvw_shm_attach *a);
size_t kvw_room_dest_size(uint32_t n_pages);
size_t kvw_room_dest_encode(uint8_t *out, uint32_t n_prompt, const int32_t *pages, uint32_t n_pages);
size_t kvw_range_encode(uint8_t out[8], uint32_t first, uint32_t n); /* KV_DATA prefix, KV_WRITTEN */
size_t kvw_ucx_info_size(const kvw_ucx_info *u);
size_t kvw_ucx_info_encode(uint8_t *out, const kvw_ucx_info *u);
int kvw_ucx_info_decode(const uint8_t *p, size_t len, kvw_ucx_info *u, char err[ERR_LEN]);
size_t kvw_aux_size(const kvw_aux *a);
size_t kvw_aux_encode(uint8_t *out, const kvw_aux *a);

/* Payload decoders: 0 or ERR_PROTO with err. */
int kvw_hello_decode(const uint8_t *p, size_t len, int with_host, kvw_hello *h, char err[ERR_LEN]);
int kvw_shm_attach_decode(const uint8_t *p, size_t len, kvw_shm_attach *a, char err[ERR_LEN]);
/* pages: caller array of at least max_pages; *n_pages set. */
int kvw_room_dest_decode(const uint8_t *p, size_t len, uint32_t *n_prompt, int32_t *pages, uint32_t max_pages,
			 uint32_t *n_pages, char err[ERR_LEN]);
int kvw_range_decode(const uint8_t *p, size_t len, uint32_t *first, uint32_t *n, char err[ERR_LEN]);
int kvw_aux_decode(const uint8_t *p, size_t len, kvw_aux *a, char err[ERR_LEN]);

/* "page size: prefill 16, decode 32" for the first field that differs, or
   0 when the layouts agree. */
int kvw_layout_diff(const kvw_layout *prefill, const kvw_layout *decode, char err[ERR_LEN]);

const char *kvw_type_name(int type);

#endif
