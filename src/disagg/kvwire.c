/* kvwire.c - encode and validate KV transfer frames (docs/PROTOCOL.md).
 *
 * Decoders never trust a length: each reads through a bounds-checked cursor
 * and fails with ERR_PROTO naming the frame and field; trailing bytes are an
 * error too, so a frame is exactly what its type says.
 */
#include "disagg/kvwire.h"

#include <string.h>

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static void putf32(uint8_t *p, float f) { uint32_t u; memcpy(&u, &f, 4); put32(p, u); }
static float getf32(const uint8_t *p) { uint32_t u = get32(p); float f; memcpy(&f, &u, 4); return f; }
static void putf64(uint8_t *p, double d) { uint64_t u; memcpy(&u, &d, 8); put64(p, u); }
static double getf64(const uint8_t *p) { uint64_t u = get64(p); double d; memcpy(&d, &u, 8); return d; }

const char *kvw_type_name(int type)
{
	static const char *names[] = { "?", "HELLO", "HELLO_OK", "REJECT", "SHM_ATTACH", "ROOM_DEST", "KV_DATA",
				       "KV_WRITTEN", "AUX", "ROOM_FAIL", "ROOM_FAIL_ACK", "PING", "PONG", "UCX_INFO",
				       "AUTH_CHALLENGE", "AUTH_RESPONSE" };
	return type >= 1 && type <= KVW_TYPE_MAX ? names[type] : "?";
}

void kvw_hdr_encode(uint8_t out[KVW_HDR], uint16_t type, uint64_t room, uint64_t len)
{
	memset(out, 0, KVW_HDR);
	put32(out, KVW_MAGIC);
	put16(out + 4, KVW_VERSION);
	put16(out + 6, type);
	put64(out + 8, room);
	put64(out + 16, len);
}

int kvw_hdr_decode(const uint8_t in[KVW_HDR], kvw_hdr *h, char err[ERR_LEN])
{
	uint32_t magic = get32(in);
	if (magic != KVW_MAGIC)
		return err_set(err, ERR_PROTO, "frame: bad magic 0x%08x", magic);
	if (get16(in + 4) != KVW_VERSION)
		return err_set(err, ERR_PROTO, "frame: protocol version %u, want %d", get16(in + 4), KVW_VERSION);
	h->type = get16(in + 6);
	h->room = get64(in + 8);
	h->len = get64(in + 16);
	if (h->type < 1 || h->type > KVW_TYPE_MAX)
		return err_set(err, ERR_PROTO, "frame: unknown type %u", h->type);
	if (h->len > KVW_MAX_LEN)
		return err_set(err, ERR_PROTO, "frame %s: length %llu over the %llu limit", kvw_type_name(h->type),
			       (unsigned long long)h->len, (unsigned long long)KVW_MAX_LEN);
	return 0;
}

/* ---- hello ---------------------------------------------------------------- */

#define LAYOUT_BYTES 28 /* u64 + 5 x u32 */

size_t kvw_hello_size(const kvw_hello *h)
{
	return 8 + LAYOUT_BYTES + 8 + 2 + strlen(h->shm_path) + 4;
}

size_t kvw_hello_encode(uint8_t *out, const kvw_hello *h, int with_host)
{
	put32(out, h->proto);
	put32(out + 4, h->backend);
	put64(out + 8, h->layout.fingerprint);
	put32(out + 16, h->layout.n_layer);
	put32(out + 20, h->layout.n_kv_heads);
	put32(out + 24, h->layout.head_dim);
	put32(out + 28, h->layout.page_size);
	put32(out + 32, h->layout.dtype);
	if (!with_host)
		return 36;
	put64(out + 36, h->host_id);
	size_t n = strlen(h->shm_path);
	put16(out + 44, (uint16_t)n);
	memcpy(out + 46, h->shm_path, n);
	put32(out + 46 + n, h->pid);
	return 50 + n;
}

int kvw_hello_decode(const uint8_t *p, size_t len, int with_host, kvw_hello *h, char err[ERR_LEN])
{
	const char *what = with_host ? "HELLO_OK" : "HELLO";
	memset(h, 0, sizeof(*h));
	if (len < 36 || (!with_host && len != 36))
		return err_set(err, ERR_PROTO, "%s: payload of %zu bytes", what, len);
	h->proto = get32(p);
	h->backend = get32(p + 4);
	h->layout.fingerprint = get64(p + 8);
	h->layout.n_layer = get32(p + 16);
	h->layout.n_kv_heads = get32(p + 20);
	h->layout.head_dim = get32(p + 24);
	h->layout.page_size = get32(p + 28);
	h->layout.dtype = get32(p + 32);
	if (!with_host)
		return 0;
	if (len < 50)
		return err_set(err, ERR_PROTO, "%s: payload of %zu bytes", what, len);
	h->host_id = get64(p + 36);
	size_t n = get16(p + 44);
	if (n >= KVW_MAX_PATH || 50 + n != len)
		return err_set(err, ERR_PROTO, "%s: socket path of %zu bytes in a payload of %zu", what, n, len);
	memcpy(h->shm_path, p + 46, n);
	h->shm_path[n] = '\0';
	h->pid = get32(p + 46 + n);
	if (memchr(h->shm_path, '\0', n))
		return err_set(err, ERR_PROTO, "%s: socket path holds a NUL byte", what);
	return 0;
}

int kvw_layout_diff(const kvw_layout *a, const kvw_layout *b, char err[ERR_LEN])
{
	if (a->fingerprint != b->fingerprint)
		return err_set(err, ERR_PROTO, "model: prefill %016llx, decode %016llx (different GGUF files)",
			       (unsigned long long)a->fingerprint, (unsigned long long)b->fingerprint);
	const struct { const char *name; uint32_t x, y; } f[] = {
		{ "layers", a->n_layer, b->n_layer },       { "kv heads", a->n_kv_heads, b->n_kv_heads },
		{ "head dim", a->head_dim, b->head_dim },   { "page size", a->page_size, b->page_size },
		{ "kv cache dtype", a->dtype, b->dtype },
	};
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
		if (f[i].x != f[i].y)
			return err_set(err, ERR_PROTO, "%s: prefill %u, decode %u", f[i].name, f[i].x, f[i].y);
	return 0;
}

/* ---- shm attach ------------------------------------------------------------ */

size_t kvw_shm_attach_encode(uint8_t out[28], const kvw_shm_attach *a)
{
	put64(out, a->pool_bytes);
	put64(out + 8, a->layer_bytes);
	put64(out + 16, a->page_bytes);
	put32(out + 24, a->n_pages);
	return 28;
}

int kvw_shm_attach_decode(const uint8_t *p, size_t len, kvw_shm_attach *a, char err[ERR_LEN])
{
	if (len != 28)
		return err_set(err, ERR_PROTO, "SHM_ATTACH: payload of %zu bytes, want 28", len);
	a->pool_bytes = get64(p);
	a->layer_bytes = get64(p + 8);
	a->page_bytes = get64(p + 16);
	a->n_pages = get32(p + 24);
	uint64_t layer;
	if (!a->page_bytes || !a->n_pages || __builtin_mul_overflow(a->page_bytes, (uint64_t)a->n_pages, &layer) ||
	    layer != a->layer_bytes || !a->layer_bytes || a->layer_bytes > a->pool_bytes ||
	    a->pool_bytes % a->layer_bytes)
		return err_set(err, ERR_PROTO, "SHM_ATTACH: inconsistent pool geometry");
	return 0;
}

/* ---- ucx info --------------------------------------------------------------- */

#define UCX_FIXED 44 /* u64 base + 28 geometry + u32 addr_len + u32 rkey_len */

size_t kvw_ucx_info_size(const kvw_ucx_info *u)
{
	return UCX_FIXED + (size_t)u->addr_len + (size_t)u->rkey_len;
}

size_t kvw_ucx_info_encode(uint8_t *out, const kvw_ucx_info *u)
{
	put64(out, u->base);
	kvw_shm_attach_encode(out + 8, &u->geo);
	put32(out + 36, u->addr_len);
	put32(out + 40, u->rkey_len);
	memcpy(out + UCX_FIXED, u->addr, u->addr_len);
	memcpy(out + UCX_FIXED + u->addr_len, u->rkey, u->rkey_len);
	return kvw_ucx_info_size(u);
}

int kvw_ucx_info_decode(const uint8_t *p, size_t len, kvw_ucx_info *u, char err[ERR_LEN])
{
	if (len < UCX_FIXED)
		return err_set(err, ERR_PROTO, "UCX_INFO: payload of %zu bytes", len);
	u->base = get64(p);
	if (kvw_shm_attach_decode(p + 8, 28, &u->geo, err) < 0)
		return ERR_PROTO;
	u->addr_len = get32(p + 36);
	u->rkey_len = get32(p + 40);
	if (!u->addr_len || !u->rkey_len || (uint64_t)UCX_FIXED + u->addr_len + u->rkey_len != len)
		return err_set(err, ERR_PROTO, "UCX_INFO: blobs of %u + %u bytes in %zu", u->addr_len, u->rkey_len, len);
	u->addr = p + UCX_FIXED;
	u->rkey = p + UCX_FIXED + u->addr_len;
	return 0;
}

/* ---- rooms ----------------------------------------------------------------- */

size_t kvw_room_dest_size(uint32_t n_pages)
{
	return 8 + 4 * (size_t)n_pages;
}

size_t kvw_room_dest_encode(uint8_t *out, uint32_t n_prompt, const int32_t *pages, uint32_t n_pages)
{
	put32(out, n_prompt);
	put32(out + 4, n_pages);
	for (uint32_t i = 0; i < n_pages; i++)
		put32(out + 8 + 4 * (size_t)i, (uint32_t)pages[i]);
	return kvw_room_dest_size(n_pages);
}

int kvw_room_dest_decode(const uint8_t *p, size_t len, uint32_t *n_prompt, int32_t *pages, uint32_t max_pages,
			 uint32_t *n_pages, char err[ERR_LEN])
{
	if (len < 8)
		return err_set(err, ERR_PROTO, "ROOM_DEST: payload of %zu bytes", len);
	*n_prompt = get32(p);
	uint32_t n = get32(p + 4);
	if (n > max_pages || len != kvw_room_dest_size(n))
		return err_set(err, ERR_PROTO, "ROOM_DEST: %u pages in %zu bytes (max %u)", n, len, max_pages);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t v = get32(p + 8 + 4 * (size_t)i);
		if (v > INT32_MAX)
			return err_set(err, ERR_PROTO, "ROOM_DEST: page id %u out of range", v);
		pages[i] = (int32_t)v;
	}
	*n_pages = n;
	return 0;
}

size_t kvw_range_encode(uint8_t out[8], uint32_t first, uint32_t n)
{
	put32(out, first);
	put32(out + 4, n);
	return 8;
}

int kvw_range_decode(const uint8_t *p, size_t len, uint32_t *first, uint32_t *n, char err[ERR_LEN])
{
	if (len < 8)
		return err_set(err, ERR_PROTO, "page range: payload of %zu bytes", len);
	*first = get32(p);
	*n = get32(p + 4);
	if (*n == 0 || *n > KVW_MAX_PAGES || *first > KVW_MAX_PAGES)
		return err_set(err, ERR_PROTO, "page range: first %u, n %u out of range", *first, *n);
	return 0;
}

/* ---- aux ------------------------------------------------------------------- */

size_t kvw_aux_size(const kvw_aux *a)
{
	return 48 + 8 * (size_t)a->n_top;
}

size_t kvw_aux_encode(uint8_t *out, const kvw_aux *a)
{
	put32(out, a->first_token);
	putf32(out + 4, a->logprob);
	put32(out + 8, a->cached_tokens);
	put32(out + 12, a->n_prompt);
	putf64(out + 16, a->queue_s);
	putf64(out + 24, a->compute_s);
	put64(out + 32, a->bytes);
	put32(out + 40, a->n_top);
	put32(out + 44, 0);
	for (uint32_t i = 0; i < a->n_top; i++) {
		put32(out + 48 + 8 * (size_t)i, (uint32_t)a->top[i].id);
		putf32(out + 52 + 8 * (size_t)i, a->top[i].logprob);
	}
	return kvw_aux_size(a);
}

int kvw_aux_decode(const uint8_t *p, size_t len, kvw_aux *a, char err[ERR_LEN])
{
	memset(a, 0, sizeof(*a));
	if (len < 48)
		return err_set(err, ERR_PROTO, "AUX: payload of %zu bytes", len);
	a->first_token = get32(p);
	a->logprob = getf32(p + 4);
	a->cached_tokens = get32(p + 8);
	a->n_prompt = get32(p + 12);
	a->queue_s = getf64(p + 16);
	a->compute_s = getf64(p + 24);
	a->bytes = get64(p + 32);
	a->n_top = get32(p + 40);
	if (a->n_top > SAMPLER_MAX_TOP_LOGPROBS || len != kvw_aux_size(a))
		return err_set(err, ERR_PROTO, "AUX: %u top logprobs in %zu bytes", a->n_top, len);
	if (a->first_token > INT32_MAX || a->cached_tokens > a->n_prompt)
		return err_set(err, ERR_PROTO, "AUX: token %u or cached %u of %u out of range", a->first_token,
			       a->cached_tokens, a->n_prompt);
	for (uint32_t i = 0; i < a->n_top; i++) {
		uint32_t id = get32(p + 48 + 8 * (size_t)i);
		if (id > INT32_MAX)
			return err_set(err, ERR_PROTO, "AUX: top id %u out of range", id);
		a->top[i].id = (int32_t)id;
		a->top[i].logprob = getf32(p + 52 + 8 * (size_t)i);
	}
	return 0;
}
