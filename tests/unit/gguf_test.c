/* gguf_test.c - the GGUF reader against hand-built good and hostile files,
 * the GGUF writer by round trip, and every real GGUF under ../shared/models.
 *
 * Files are built byte by byte with the small builder below (tb_*), not with
 * the writer, so a bug shared by reader and writer cannot hide; one test
 * checks that the writer produces exactly the builder's bytes. Bad files are
 * copied into a heap buffer of exactly their size before opening, so an
 * over-read is an ASan error in the check build, not a silent pass.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "kernels/qtypes.h"
#include "model/gguf.h"
#include "model/gguf_write.h"
#include "testutil.h"

/* ---------------------------------------------------------------- builder */

typedef struct {
	uint8_t *p;
	size_t n, cap;
} tb;

static void tb_raw(tb *b, const void *src, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		cr_assert(b->p);
	}
	memcpy(b->p + b->n, src, n);
	b->n += n;
}

static void tb_le(tb *b, uint64_t v, int size)
{
	uint8_t t[8];
	for (int i = 0; i < size; i++)
		t[i] = (uint8_t)(v >> (8 * i));
	tb_raw(b, t, (size_t)size);
}

static void tb_u8(tb *b, uint8_t v) { tb_le(b, v, 1); }
static void tb_u32(tb *b, uint32_t v) { tb_le(b, v, 4); }
static void tb_u64(tb *b, uint64_t v) { tb_le(b, v, 8); }

static void tb_strn(tb *b, const char *s, size_t n)
{
	tb_u64(b, n);
	tb_raw(b, s, n);
}

static void tb_str(tb *b, const char *s) { tb_strn(b, s, strlen(s)); }

static void tb_hdr(tb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
	tb_u32(b, GGUF_MAGIC);
	tb_u32(b, version);
	tb_u64(b, n_tensors);
	tb_u64(b, n_kv);
}

/* key + type; the caller appends the value */
static void tb_key(tb *b, const char *key, uint32_t type)
{
	tb_str(b, key);
	tb_u32(b, type);
}

static void tb_kv_u32(tb *b, const char *key, uint32_t v)
{
	tb_key(b, key, GGUF_TYPE_UINT32);
	tb_u32(b, v);
}

static void tb_kv_str(tb *b, const char *key, const char *v)
{
	tb_key(b, key, GGUF_TYPE_STRING);
	tb_str(b, v);
}

static void tb_tensor(tb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
		      uint64_t offset)
{
	tb_str(b, name);
	tb_u32(b, n_dims);
	for (uint32_t d = 0; d < n_dims; d++)
		tb_u64(b, ne[d]);
	tb_u32(b, type);
	tb_u64(b, offset);
}

static void tb_pad(tb *b, size_t align)
{
	while (b->n % align)
		tb_u8(b, 0);
}

static void tb_zeros(tb *b, size_t n)
{
	while (n--)
		tb_u8(b, 0);
}

static void tb_free(tb *b)
{
	free(b->p);
	*b = (tb){ 0 };
}

/* Open a copy of exactly n bytes. Success: returns the gguf and *copy (free
   after gguf_close). Failure: NULL, *copy already freed. */
static gguf *open_exact(const void *p, size_t n, char err[ERR_LEN], void **copy)
{
	void *c = malloc(n ? n : 1);
	cr_assert(c);
	if (n)
		memcpy(c, p, n);
	err[0] = '\0';
	gguf *g = gguf_open_mem(c, n, err);
	if (!g) {
		free(c);
		c = NULL;
	}
	*copy = c;
	return g;
}

/* The file in b must be rejected with an error containing each of the
   NULL-terminated substrings. */
#define expect_reject(b, ...) expect_reject_(b, (const char *[]){ __VA_ARGS__, NULL })
static void expect_reject_(const tb *b, const char **want)
{
	char err[ERR_LEN];
	void *copy;
	gguf *g = open_exact(b->p, b->n, err, &copy);
	if (g) {
		gguf_close(g);
		free(copy);
	}
	cr_assert_null(g, "expected the file to be rejected (wanted error containing '%s')", want[0]);
	for (; *want; want++)
		cr_expect(strstr(err, *want), "error '%s' should contain '%s'", err, *want);
}

static gguf *open_ok(const tb *b, void **copy)
{
	char err[ERR_LEN];
	gguf *g = open_exact(b->p, b->n, err, copy);
	cr_assert(g, "open failed: %s", err);
	return g;
}

/* ---------------------------------------------------------------- fixtures */

/* One kv of every type, arrays of every element type, empty arrays. */
#define N_TYPES_KV 30
static void build_all_types(tb *b, uint32_t version)
{
	tb_hdr(b, version, 0, N_TYPES_KV);
	tb_key(b, "t.u8", GGUF_TYPE_UINT8), tb_le(b, 200, 1);
	tb_key(b, "t.i8", GGUF_TYPE_INT8), tb_le(b, (uint8_t)-100, 1);
	tb_key(b, "t.u16", GGUF_TYPE_UINT16), tb_le(b, 60000, 2);
	tb_key(b, "t.i16", GGUF_TYPE_INT16), tb_le(b, (uint16_t)-30000, 2);
	tb_key(b, "t.u32", GGUF_TYPE_UINT32), tb_le(b, 4000000000u, 4);
	tb_key(b, "t.i32", GGUF_TYPE_INT32), tb_le(b, (uint32_t)-2000000000, 4);
	tb_key(b, "t.u64", GGUF_TYPE_UINT64), tb_le(b, (1ull << 63) + 5, 8);
	tb_key(b, "t.u64small", GGUF_TYPE_UINT64), tb_le(b, 7, 8);
	tb_key(b, "t.i64", GGUF_TYPE_INT64), tb_le(b, (uint64_t)-(1ll << 40), 8);
	tb_key(b, "t.i64big", GGUF_TYPE_INT64), tb_le(b, 1ull << 40, 8);
	float f = 1.5f;
	uint32_t fb;
	memcpy(&fb, &f, 4);
	tb_key(b, "t.f32", GGUF_TYPE_FLOAT32), tb_le(b, fb, 4);
	double d = -2.25;
	uint64_t db;
	memcpy(&db, &d, 8);
	tb_key(b, "t.f64", GGUF_TYPE_FLOAT64), tb_le(b, db, 8);
	tb_key(b, "t.true", GGUF_TYPE_BOOL), tb_u8(b, 1);
	tb_key(b, "t.false", GGUF_TYPE_BOOL), tb_u8(b, 0);
	tb_kv_str(b, "t.str", "hello");
	tb_kv_str(b, "t.empty", "");
	/* arrays: 3 elements each, values i*k - 1 */
	static const struct { const char *key; uint32_t t; int size; } arrs[] = {
		{ "a.u8", GGUF_TYPE_UINT8, 1 }, { "a.i8", GGUF_TYPE_INT8, 1 },
		{ "a.u16", GGUF_TYPE_UINT16, 2 }, { "a.i16", GGUF_TYPE_INT16, 2 },
		{ "a.u32", GGUF_TYPE_UINT32, 4 }, { "a.i32", GGUF_TYPE_INT32, 4 },
		{ "a.u64", GGUF_TYPE_UINT64, 8 }, { "a.i64", GGUF_TYPE_INT64, 8 },
		{ "a.bool", GGUF_TYPE_BOOL, 1 },
	};
	for (size_t i = 0; i < sizeof(arrs) / sizeof(arrs[0]); i++) {
		tb_key(b, arrs[i].key, GGUF_TYPE_ARRAY);
		tb_u32(b, arrs[i].t);
		tb_u64(b, 3);
		for (int k = 0; k < 3; k++) {
			int64_t v = arrs[i].t == GGUF_TYPE_BOOL ? k & 1
				  : (arrs[i].t % 2 == 1 || arrs[i].t == GGUF_TYPE_INT64) ? -(k + 1) * 3
				  : (k + 1) * 3;
			tb_le(b, (uint64_t)v, arrs[i].size);
		}
	}
	tb_key(b, "a.f32", GGUF_TYPE_ARRAY), tb_u32(b, GGUF_TYPE_FLOAT32), tb_u64(b, 2);
	f = 0.25f, memcpy(&fb, &f, 4), tb_u32(b, fb);
	f = -8.0f, memcpy(&fb, &f, 4), tb_u32(b, fb);
	tb_key(b, "a.f64", GGUF_TYPE_ARRAY), tb_u32(b, GGUF_TYPE_FLOAT64), tb_u64(b, 1);
	tb_u64(b, db);
	tb_key(b, "a.str", GGUF_TYPE_ARRAY), tb_u32(b, GGUF_TYPE_STRING), tb_u64(b, 3);
	tb_str(b, "a"), tb_str(b, ""), tb_str(b, "ccc");
	tb_key(b, "a.empty_u8", GGUF_TYPE_ARRAY), tb_u32(b, GGUF_TYPE_UINT8), tb_u64(b, 0);
	tb_key(b, "a.empty_str", GGUF_TYPE_ARRAY), tb_u32(b, GGUF_TYPE_STRING), tb_u64(b, 0);
}

/* A small model-like file: a few kvs, two tensors. The last tensor ends
   exactly on the alignment, so the file has no trailing padding and every
   proper prefix of it is invalid. */
static void build_small(tb *b)
{
	tb_hdr(b, 3, 2, 4);
	tb_kv_str(b, "general.architecture", "llama");
	tb_kv_u32(b, "llama.block_count", 1);
	tb_key(b, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY), tb_u32(b, GGUF_TYPE_STRING), tb_u64(b, 3);
	tb_str(b, "<unk>"), tb_str(b, "<s>"), tb_str(b, "</s>");
	tb_key(b, "tokenizer.ggml.scores", GGUF_TYPE_ARRAY), tb_u32(b, GGUF_TYPE_FLOAT32), tb_u64(b, 3);
	tb_u32(b, 0), tb_u32(b, 0), tb_u32(b, 0);
	uint64_t ne_a[2] = { 4, 3 }, ne_b[1] = { 512 };
	tb_tensor(b, "blk.0.attn_q.weight", 2, ne_a, QTYPE_F32, 0);   /* 48 bytes -> padded to 64 */
	tb_tensor(b, "blk.0.ffn_up.weight", 1, ne_b, QTYPE_Q8_0, 64); /* 16 blocks: 544 = 17 * 32 bytes */
	tb_pad(b, 32);
	for (int i = 0; i < 12; i++) {
		float v = (float)i;
		tb_raw(b, &v, 4);
	}
	tb_zeros(b, 16);
	for (int i = 0; i < 544; i++)
		tb_u8(b, (uint8_t)(i * 7));
}

/* Header of a file with one tensor, ready for the caller's tensor record
   (n_kv 0) */
static void begin_one_tensor(tb *b)
{
	tb_hdr(b, 3, 1, 0);
}

/* Finish a one-tensor file: padding plus `data` zero bytes. */
static void end_one_tensor(tb *b, size_t data)
{
	tb_pad(b, 32);
	tb_zeros(b, data);
}

/* ---------------------------------------------------------------- metadata */

Test(gguf, every_value_type_through_every_getter)
{
	tb b = { 0 };
	build_all_types(&b, 3);
	void *copy;
	gguf *g = open_ok(&b, &copy);
	char err[ERR_LEN];
	uint32_t u;
	int64_t i;
	float f;
	bool bo;
	gguf_str s;

	cr_assert_eq(gguf_version(g), 3);
	cr_assert_eq(gguf_n_kv(g), N_TYPES_KV);
	cr_assert_eq(gguf_n_tensors(g), 0);
	cr_assert_eq(gguf_alignment(g), 32);
	cr_assert_eq(gguf_file_size(g), b.n);
	cr_assert_eq(gguf_find_key(g, "nope"), -1);
	for (int64_t k = 0; k < gguf_n_kv(g); k++)
		cr_assert_eq(gguf_find_key(g, gguf_key(g, k)), k, "key %s", gguf_key(g, k));
	cr_assert_eq(gguf_kv_type(g, gguf_find_key(g, "t.i16")), GGUF_TYPE_INT16);
	cr_assert_eq(gguf_kv_type(g, gguf_find_key(g, "a.str")), GGUF_TYPE_ARRAY);

	/* u32: any integer that fits */
	struct { const char *key; int rc; uint32_t v; } u32s[] = {
		{ "t.u8", 0, 200 }, { "t.u16", 0, 60000 }, { "t.u32", 0, 4000000000u },
		{ "t.u64small", 0, 7 }, { "t.i8", ERR_FORMAT, 0 }, { "t.i16", ERR_FORMAT, 0 },
		{ "t.i32", ERR_FORMAT, 0 }, { "t.u64", ERR_FORMAT, 0 }, { "t.i64", ERR_FORMAT, 0 },
		{ "t.i64big", ERR_FORMAT, 0 }, { "t.f32", ERR_FORMAT, 0 }, { "t.f64", ERR_FORMAT, 0 },
		{ "t.true", ERR_FORMAT, 0 }, { "t.str", ERR_FORMAT, 0 }, { "a.u32", ERR_FORMAT, 0 },
	};
	for (size_t k = 0; k < sizeof(u32s) / sizeof(u32s[0]); k++) {
		u = 12345;
		err[0] = '\0';
		int rc = gguf_get_u32(g, u32s[k].key, &u, err);
		cr_expect_eq(rc, u32s[k].rc, "u32 %s: rc %d, want %d", u32s[k].key, rc, u32s[k].rc);
		if (rc == 0)
			cr_expect_eq(u, u32s[k].v, "u32 %s: %u, want %u", u32s[k].key, u, u32s[k].v);
		else
			cr_expect(strstr(err, u32s[k].key) && u == 12345, "u32 %s: err '%s', out %u",
				  u32s[k].key, err, u);
	}
	cr_expect(strstr((gguf_get_u32(g, "t.i8", &u, err), err), "out of range"));
	cr_expect(strstr((gguf_get_u32(g, "t.f32", &u, err), err), "want an integer"));
	u = 1;
	cr_assert_eq(gguf_get_u32(g, "missing", &u, err), ERR_NOTFOUND);
	cr_assert_eq(u, 1);
	cr_assert_eq(gguf_get_u32(g, "t.i8", &u, NULL), ERR_FORMAT); /* err may be NULL */

	/* i64: every integer type exactly, except u64 above INT64_MAX */
	struct { const char *key; int rc; int64_t v; } i64s[] = {
		{ "t.u8", 0, 200 }, { "t.i8", 0, -100 }, { "t.u16", 0, 60000 }, { "t.i16", 0, -30000 },
		{ "t.u32", 0, 4000000000ll }, { "t.i32", 0, -2000000000 }, { "t.u64small", 0, 7 },
		{ "t.i64", 0, -(1ll << 40) }, { "t.i64big", 0, 1ll << 40 }, { "t.u64", ERR_FORMAT, 0 },
		{ "t.f32", ERR_FORMAT, 0 }, { "t.false", ERR_FORMAT, 0 }, { "t.empty", ERR_FORMAT, 0 },
		{ "a.i64", ERR_FORMAT, 0 },
	};
	for (size_t k = 0; k < sizeof(i64s) / sizeof(i64s[0]); k++) {
		i = 12345;
		err[0] = '\0';
		int rc = gguf_get_i64(g, i64s[k].key, &i, err);
		cr_expect_eq(rc, i64s[k].rc, "i64 %s: rc %d, want %d", i64s[k].key, rc, i64s[k].rc);
		if (rc == 0)
			cr_expect_eq(i, i64s[k].v, "i64 %s: %lld, want %lld", i64s[k].key, (long long)i,
				     (long long)i64s[k].v);
		else
			cr_expect(strstr(err, i64s[k].key) && i == 12345, "i64 %s: err '%s'", i64s[k].key, err);
	}
	cr_assert_eq(gguf_get_i64(g, "missing", &i, err), ERR_NOTFOUND);

	/* f32: F32, F64 and integers; not bool, string or array */
	struct { const char *key; int rc; float v; } f32s[] = {
		{ "t.f32", 0, 1.5f }, { "t.f64", 0, -2.25f }, { "t.u8", 0, 200 }, { "t.i8", 0, -100 },
		{ "t.u32", 0, 4e9f }, { "t.i64", 0, -1099511627776.0f }, { "t.u64", 0, 9223372036854775808.0f },
		{ "t.true", ERR_FORMAT, 0 }, { "t.str", ERR_FORMAT, 0 }, { "a.f32", ERR_FORMAT, 0 },
	};
	for (size_t k = 0; k < sizeof(f32s) / sizeof(f32s[0]); k++) {
		f = 42;
		err[0] = '\0';
		int rc = gguf_get_f32(g, f32s[k].key, &f, err);
		cr_expect_eq(rc, f32s[k].rc, "f32 %s: rc %d", f32s[k].key, rc);
		if (rc == 0)
			cr_expect_eq(f, f32s[k].v, "f32 %s: %g, want %g", f32s[k].key, f, f32s[k].v);
		else
			cr_expect(strstr(err, f32s[k].key) && f == 42, "f32 %s: err '%s'", f32s[k].key, err);
	}
	cr_assert_eq(gguf_get_f32(g, "missing", &f, err), ERR_NOTFOUND);

	/* bool: BOOL and integers */
	struct { const char *key; int rc; bool v; } bools[] = {
		{ "t.true", 0, true }, { "t.false", 0, false }, { "t.u8", 0, true }, { "t.i8", 0, true },
		{ "t.u64", 0, true }, { "t.f32", ERR_FORMAT, 0 }, { "t.str", ERR_FORMAT, 0 },
		{ "a.bool", ERR_FORMAT, 0 },
	};
	for (size_t k = 0; k < sizeof(bools) / sizeof(bools[0]); k++) {
		err[0] = '\0';
		int rc = gguf_get_bool(g, bools[k].key, &bo, err);
		cr_expect_eq(rc, bools[k].rc, "bool %s: rc %d", bools[k].key, rc);
		if (rc == 0)
			cr_expect_eq(bo, bools[k].v, "bool %s", bools[k].key);
		else
			cr_expect(strstr(err, bools[k].key), "bool %s: err '%s'", bools[k].key, err);
	}
	cr_assert_eq(gguf_get_bool(g, "missing", &bo, err), ERR_NOTFOUND);

	/* strings */
	cr_assert_eq(gguf_get_str(g, "t.str", &s, err), 0);
	cr_assert(s.n == 5 && !memcmp(s.p, "hello", 5));
	cr_assert_eq(gguf_get_str(g, "t.empty", &s, err), 0);
	cr_assert_eq(s.n, 0);
	cr_assert_eq(gguf_get_str(g, "t.u32", &s, err), ERR_FORMAT);
	cr_assert(strstr(err, "t.u32") && strstr(err, "want str"), "%s", err);
	cr_assert_eq(gguf_get_str(g, "a.str", &s, err), ERR_FORMAT);
	cr_assert_eq(gguf_get_str(g, "missing", &s, err), ERR_NOTFOUND);

	/* printing helpers */
	cr_assert_eq(gguf_kv_number(g, gguf_find_key(g, "t.i16")), -30000);
	cr_assert_eq(gguf_kv_number(g, gguf_find_key(g, "t.f64")), -2.25);
	cr_assert_eq(gguf_kv_number(g, gguf_find_key(g, "t.true")), 1);
	cr_assert_eq(gguf_kv_number(g, gguf_find_key(g, "t.u64")), 9223372036854775813.0);
	cr_assert_eq(gguf_kv_number(g, gguf_find_key(g, "t.str")), 0);
	s = gguf_kv_str(g, gguf_find_key(g, "t.str"));
	cr_assert(s.n == 5 && !memcmp(s.p, "hello", 5));
	s = gguf_kv_str(g, gguf_find_key(g, "t.u8"));
	cr_assert(s.p == NULL && s.n == 0);

	gguf_close(g);
	free(copy);
	tb_free(&b);
}

Test(gguf, arrays_of_every_type)
{
	tb b = { 0 };
	build_all_types(&b, 3);
	void *copy;
	gguf *g = open_ok(&b, &copy);
	char err[ERR_LEN];
	gguf_arr a;
	static const struct { const char *key; gguf_vtype t; int neg; } arrs[] = {
		{ "a.u8", GGUF_TYPE_UINT8, 0 }, { "a.i8", GGUF_TYPE_INT8, 1 },
		{ "a.u16", GGUF_TYPE_UINT16, 0 }, { "a.i16", GGUF_TYPE_INT16, 1 },
		{ "a.u32", GGUF_TYPE_UINT32, 0 }, { "a.i32", GGUF_TYPE_INT32, 1 },
		{ "a.u64", GGUF_TYPE_UINT64, 0 }, { "a.i64", GGUF_TYPE_INT64, 1 },
	};
	for (size_t k = 0; k < sizeof(arrs) / sizeof(arrs[0]); k++) {
		cr_assert_eq(gguf_get_arr(g, arrs[k].key, -1, &a, err), 0, "%s: %s", arrs[k].key, err);
		cr_assert_eq(a.type, arrs[k].t);
		cr_assert_eq(a.n, 3);
		cr_assert_eq(gguf_get_arr(g, arrs[k].key, (int)arrs[k].t, &a, err), 0);
		for (uint64_t j = 0; j < 3; j++) {
			int64_t want = (int64_t)(j + 1) * 3 * (arrs[k].neg ? -1 : 1);
			cr_expect_eq(gguf_arr_i64(&a, j), want, "%s[%llu]", arrs[k].key, (unsigned long long)j);
			cr_expect_eq(gguf_arr_f64(&a, j), (double)want);
		}
		/* element type mismatch names the key and both types */
		int other = arrs[k].t == GGUF_TYPE_FLOAT32 ? GGUF_TYPE_INT32 : GGUF_TYPE_FLOAT32;
		cr_assert_eq(gguf_get_arr(g, arrs[k].key, other, &a, err), ERR_FORMAT);
		cr_assert(strstr(err, arrs[k].key) && strstr(err, "want f32"), "%s", err);
	}
	cr_assert_eq(gguf_get_arr(g, "a.bool", GGUF_TYPE_BOOL, &a, err), 0);
	cr_assert(gguf_arr_i64(&a, 0) == 0 && gguf_arr_i64(&a, 1) == 1 && gguf_arr_i64(&a, 2) == 0);
	cr_assert_eq(gguf_get_arr(g, "a.f32", GGUF_TYPE_FLOAT32, &a, err), 0);
	cr_assert(a.n == 2 && gguf_arr_f64(&a, 0) == 0.25 && gguf_arr_f64(&a, 1) == -8.0);
	cr_assert_eq(gguf_get_arr(g, "a.f64", GGUF_TYPE_FLOAT64, &a, err), 0);
	cr_assert(a.n == 1 && gguf_arr_f64(&a, 0) == -2.25);

	cr_assert_eq(gguf_get_arr(g, "a.str", GGUF_TYPE_STRING, &a, err), 0);
	cr_assert_eq(a.n, 3);
	static const char *want_s[] = { "a", "", "ccc" };
	for (uint64_t j = 0; j < 3; j++) {
		gguf_str s = gguf_arr_str(g, &a, j);
		cr_assert(s.n == strlen(want_s[j]) && !memcmp(s.p, want_s[j], s.n), "a.str[%llu]",
			  (unsigned long long)j);
	}
	cr_assert_eq(gguf_get_arr(g, "a.empty_u8", GGUF_TYPE_UINT8, &a, err), 0);
	cr_assert_eq(a.n, 0);
	cr_assert_eq(gguf_get_arr(g, "a.empty_str", GGUF_TYPE_STRING, &a, err), 0);
	cr_assert_eq(a.n, 0);

	cr_assert_eq(gguf_get_arr(g, "t.u32", -1, &a, err), ERR_FORMAT);
	cr_assert(strstr(err, "t.u32") && strstr(err, "want an array"), "%s", err);
	cr_assert_eq(gguf_get_arr(g, "missing", -1, &a, err), ERR_NOTFOUND);
	gguf_close(g);
	free(copy);
	tb_free(&b);
}

Test(gguf, versions)
{
	tb b = { 0 };
	void *copy;
	build_all_types(&b, 2);
	gguf *g = open_ok(&b, &copy);
	cr_assert_eq(gguf_version(g), 2);
	cr_assert_eq(gguf_n_kv(g), N_TYPES_KV);
	gguf_close(g);
	free(copy);

	b.p[4] = 1; /* v1 had u32 counts: refused by name */
	expect_reject(&b, "version 1");
	b.p[4] = 4;
	expect_reject(&b, "version 4");
	memcpy(b.p + 4, "\0\0\0\3", 4); /* a big-endian v3 file */
	expect_reject(&b, "big-endian");
	memcpy(b.p + 4, "\3\0\0\0", 4);
	memcpy(b.p, "GGML", 4);
	expect_reject(&b, "magic");
	memcpy(b.p, "FUGG", 4); /* the magic byte-swapped */
	expect_reject(&b, "magic");
	tb_free(&b);
}

/* ---------------------------------------------------------------- alignment */

static void build_aligned(tb *b, int key_type, uint64_t align, uint64_t offset)
{
	tb_hdr(b, 3, 2, 1);
	tb_key(b, "general.alignment", (uint32_t)key_type);
	tb_le(b, align, key_type == GGUF_TYPE_UINT64 ? 8 : 4);
	uint64_t ne[1] = { 8 };
	tb_tensor(b, "first.weight", 1, ne, QTYPE_F32, 0);
	tb_tensor(b, "second.weight", 1, ne, QTYPE_F32, offset);
	tb_pad(b, align && !(align & (align - 1)) && align <= 4096 ? align : 32);
	tb_zeros(b, offset + 32);
}

Test(gguf, alignment)
{
	tb b = { 0 };
	void *copy;
	build_aligned(&b, GGUF_TYPE_UINT32, 64, 64);
	gguf *g = open_ok(&b, &copy);
	cr_assert_eq(gguf_alignment(g), 64);
	const gguf_tensor *t = gguf_find_tensor(g, "second.weight");
	cr_assert(t);
	cr_assert_eq(t->offset, 64);
	cr_assert_eq(((const uint8_t *)t->data - (const uint8_t *)copy) % 64, 0);
	cr_assert_eq((const uint8_t *)t->data - (const uint8_t *)gguf_find_tensor(g, "first.weight")->data, 64);
	gguf_close(g);
	free(copy);
	tb_free(&b);

	build_aligned(&b, GGUF_TYPE_UINT32, 64, 32); /* fine for 32, not for 64 */
	expect_reject(&b, "second.weight", "alignment 64");
	tb_free(&b);
	build_aligned(&b, GGUF_TYPE_UINT32, 0, 32);
	expect_reject(&b, "general.alignment", "power of two");
	tb_free(&b);
	build_aligned(&b, GGUF_TYPE_UINT32, 48, 48);
	expect_reject(&b, "general.alignment", "48");
	tb_free(&b);
	build_aligned(&b, GGUF_TYPE_UINT64, 64, 64);
	expect_reject(&b, "general.alignment", "u64");
	tb_free(&b);
	build_aligned(&b, GGUF_TYPE_INT32, 64, 64);
	expect_reject(&b, "general.alignment", "i32");
	tb_free(&b);

	/* a tensor offset that is not a multiple of the default 32 */
	begin_one_tensor(&b);
	uint64_t ne[1] = { 4 };
	tb_tensor(&b, "blk.0.attn_q.weight", 1, ne, QTYPE_F32, 4);
	end_one_tensor(&b, 64);
	expect_reject(&b, "blk.0.attn_q.weight", "not a multiple");
	tb_free(&b);
}

/* ---------------------------------------------------------------- bad files */

Test(gguf, truncated_at_every_length)
{
	tb b = { 0 };
	build_small(&b);
	void *copy;
	gguf *g = open_ok(&b, &copy);
	cr_assert_eq(gguf_n_tensors(g), 2);
	cr_assert_eq(gguf_n_kv(g), 4);
	const gguf_tensor *t = gguf_find_tensor(g, "blk.0.attn_q.weight");
	cr_assert(t && t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 3 && t->nbytes == 48);
	cr_assert_eq(((const float *)t->data)[11], 11.0f);
	t = gguf_find_tensor(g, "blk.0.ffn_up.weight");
	cr_assert(t && t->type == QTYPE_Q8_0 && t->nbytes == 544 && t->offset == 64);
	gguf_close(g);
	free(copy);

	char err[ERR_LEN];
	for (size_t len = 0; len < b.n; len++) {
		g = open_exact(b.p, len, err, &copy);
		cr_assert_null(g, "a %zu-byte prefix of a %zu-byte file opened", len, b.n);
		cr_assert(err[0], "no error text for a %zu-byte prefix", len);
	}

	/* the same through files (gguf_open mmaps) */
	char dir[] = "/tmp/gguf_test.XXXXXX";
	cr_assert(mkdtemp(dir));
	char path[64];
	snprintf(path, sizeof(path), "%s/t.gguf", dir);
	for (size_t len = 0; len <= b.n; len++) {
		FILE *f = fopen(path, "wb");
		cr_assert(f);
		cr_assert_eq(fwrite(b.p, 1, len, f), len);
		fclose(f);
		g = gguf_open(path, err);
		if (len == b.n) {
			cr_assert(g, "%s", err);
			gguf_close(g);
		} else {
			cr_assert_null(g, "a %zu-byte prefix opened", len);
			cr_assert(strstr(err, path), "error '%s' should name the file", err);
		}
	}
	unlink(path);
	g = gguf_open(path, err);
	cr_assert_null(g);
	cr_assert(strstr(err, path) && strstr(err, "No such file"), "%s", err);
	g = gguf_open(dir, err);
	cr_assert_null(g);
	cr_assert(strstr(err, "not a regular file"), "%s", err);
	rmdir(dir);
	tb_free(&b);
}

Test(gguf, truncated_error_names_the_field)
{
	tb b = { 0 };
	build_small(&b);
	char err[ERR_LEN];
	void *copy;
	/* cut inside the string array's third element */
	uint8_t *at = memmem(b.p, b.n, "</s>", 4);
	cr_assert(at);
	cr_assert_null(open_exact(b.p, (size_t)(at - b.p) + 2, err, &copy));
	cr_assert(strstr(err, "tokenizer.ggml.tokens") && strstr(err, "string 2 of 3"), "%s", err);
	/* cut inside the second tensor record */
	at = memmem(b.p, b.n, "blk.0.ffn_up.weight", 19);
	cr_assert(at);
	cr_assert_null(open_exact(b.p, (size_t)(at - b.p) + 19 + 2, err, &copy));
	cr_assert(strstr(err, "blk.0.ffn_up.weight"), "%s", err);
	/* cut in the data of the second tensor */
	cr_assert_null(open_exact(b.p, b.n - 40, err, &copy));
	cr_assert(strstr(err, "blk.0.ffn_up.weight") && strstr(err, "past end of file"), "%s", err);
	tb_free(&b);
}

Test(gguf, tensor_data_past_eof)
{
	tb b = { 0 };
	uint64_t ne[2] = { 64, 2 };
	begin_one_tensor(&b);
	tb_tensor(&b, "blk.0.attn_q.weight", 2, ne, QTYPE_F32, 0);
	end_one_tensor(&b, 511); /* one byte short */
	expect_reject(&b, "blk.0.attn_q.weight", "past end of file");
	tb_free(&b);

	/* offset itself past the end, and an offset that wraps */
	uint64_t offs[] = { 1ull << 20, UINT64_MAX - 31 };
	for (int i = 0; i < 2; i++) {
		begin_one_tensor(&b);
		tb_tensor(&b, "blk.0.attn_q.weight", 2, ne, QTYPE_F32, offs[i]);
		end_one_tensor(&b, 512);
		expect_reject(&b, "blk.0.attn_q.weight", "past end of file");
		tb_free(&b);
	}
	/* a tensor table that ends right at EOF: the data section is missing */
	begin_one_tensor(&b);
	tb_tensor(&b, "blk.0.attn_q.weight", 2, ne, QTYPE_F32, 0);
	expect_reject(&b, "past end of file");
	tb_free(&b);
}

Test(gguf, absurd_dims)
{
	static const struct {
		uint32_t n_dims;
		uint64_t ne[5];
		const char *want;
	} cases[] = {
		{ 2, { 1ull << 32, 1ull << 32 }, "overflow" },
		{ 4, { 1ull << 16, 1ull << 16, 1ull << 16, 1ull << 16 }, "overflow" },
		{ 1, { 1ull << 63 }, "overflow" },
		{ 2, { 32, UINT64_MAX }, "overflow" },
		/* a zero dim makes the element count 0, but the other dims must
		   still multiply without overflow (rows = ne[1]*ne[2]*ne[3]) */
		{ 4, { 0, 1ull << 32, 1ull << 32, 2 }, "overflow" },
		{ 3, { 32, 0, 1ull << 63 }, "overflow" },
		{ 0, { 0 }, "n_dims 0" },
		{ 5, { 1, 1, 1, 1, 1 }, "n_dims 5" },
		{ 0xffffffffu, { 1 }, "n_dims" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		tb b = { 0 };
		begin_one_tensor(&b);
		tb_str(&b, "blk.0.attn_q.weight");
		tb_u32(&b, cases[i].n_dims);
		for (uint32_t d = 0; d < cases[i].n_dims && d < 5; d++)
			tb_u64(&b, cases[i].ne[d]);
		tb_u32(&b, QTYPE_F32);
		tb_u64(&b, 0);
		end_one_tensor(&b, 64);
		expect_reject(&b, "blk.0.attn_q.weight", cases[i].want);
		tb_free(&b);
	}

	/* byte size overflow with element count in range: 2^62 Q8_0 blocks */
	tb b = { 0 };
	begin_one_tensor(&b);
	uint64_t ne[2] = { 32ull << 31, 1ull << 31 };
	tb_tensor(&b, "blk.0.attn_q.weight", 2, ne, QTYPE_Q8_0, 0);
	end_one_tensor(&b, 64);
	expect_reject(&b, "blk.0.attn_q.weight");
	tb_free(&b);

	/* zero-element tensors are legal */
	begin_one_tensor(&b);
	uint64_t ne0[2] = { 0, 7 };
	tb_tensor(&b, "empty", 2, ne0, QTYPE_F32, 0);
	end_one_tensor(&b, 0);
	void *copy;
	gguf *g = open_ok(&b, &copy);
	cr_assert_eq(gguf_tensor_nelements(gguf_find_tensor(g, "empty")), 0);
	cr_assert_eq(gguf_find_tensor(g, "empty")->nbytes, 0);
	gguf_close(g);
	free(copy);
	tb_free(&b);
}

Test(gguf, huge_counts)
{
	tb b = { 0 };
	/* 2^62 strings: must be refused before allocating an offset table */
	tb_hdr(&b, 3, 0, 1);
	tb_key(&b, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY), tb_u32(&b, GGUF_TYPE_STRING);
	tb_u64(&b, 1ull << 62);
	tb_str(&b, "a");
	expect_reject(&b, "tokenizer.ggml.tokens", "cannot fit");
	tb_free(&b);

	uint32_t types[] = { GGUF_TYPE_UINT8, GGUF_TYPE_INT32, GGUF_TYPE_UINT64, GGUF_TYPE_FLOAT32 };
	for (int i = 0; i < 4; i++) {
		tb_hdr(&b, 3, 0, 1);
		tb_key(&b, "tokenizer.ggml.scores", GGUF_TYPE_ARRAY), tb_u32(&b, types[i]);
		tb_u64(&b, 1ull << 62);
		tb_zeros(&b, 64);
		expect_reject(&b, "tokenizer.ggml.scores", "past end of file");
		tb_free(&b);
	}
	/* counts in the header */
	tb_hdr(&b, 3, 0, 1ull << 62);
	tb_kv_u32(&b, "a", 1);
	expect_reject(&b, "n_kv");
	tb_free(&b);
	tb_hdr(&b, 3, UINT64_MAX, 0);
	tb_zeros(&b, 64);
	expect_reject(&b, "n_tensors");
	tb_free(&b);
	/* a string longer than the file */
	tb_hdr(&b, 3, 0, 1);
	tb_key(&b, "general.name", GGUF_TYPE_STRING);
	tb_u64(&b, UINT64_MAX);
	tb_zeros(&b, 16);
	expect_reject(&b, "general.name", "past end of file");
	tb_free(&b);
	/* a key longer than the file */
	tb_hdr(&b, 3, 0, 1);
	tb_u64(&b, 1ull << 40);
	tb_zeros(&b, 16);
	expect_reject(&b, "key", "past end of file");
	tb_free(&b);
}

Test(gguf, unknown_types)
{
	tb b = { 0 };
	uint32_t bad[] = { GGUF_TYPE_COUNT, 0x7fffffff, 0xffffffffu };
	for (int i = 0; i < 3; i++) {
		tb_hdr(&b, 3, 0, 1);
		tb_key(&b, "general.weird", bad[i]);
		tb_zeros(&b, 16);
		expect_reject(&b, "general.weird", "unknown value type");
		tb_free(&b);
		tb_hdr(&b, 3, 0, 1);
		tb_key(&b, "general.weird_arr", GGUF_TYPE_ARRAY), tb_u32(&b, bad[i]), tb_u64(&b, 1);
		tb_zeros(&b, 16);
		expect_reject(&b, "general.weird_arr", "unknown array element type");
		tb_free(&b);
	}
	/* unknown tensor types: a hole in ggml's ids, past the table, huge */
	uint32_t tbad[] = { 4, 31, QTYPE_COUNT, 1000, 0xffffffffu };
	for (int i = 0; i < 5; i++) {
		begin_one_tensor(&b);
		uint64_t ne[1] = { 256 };
		tb_tensor(&b, "blk.0.attn_q.weight", 1, ne, tbad[i], 0);
		end_one_tensor(&b, 1024);
		expect_reject(&b, "blk.0.attn_q.weight", "unknown tensor type");
		tb_free(&b);
	}
}

Test(gguf, row_not_a_multiple_of_the_block)
{
	static const struct { int type; uint64_t ne0; const char *qname; } cases[] = {
		{ QTYPE_Q8_0, 48, "Q8_0" }, { QTYPE_Q4_0, 31, "Q4_0" }, { QTYPE_Q4_K, 128, "Q4_K" },
		{ QTYPE_Q6_K, 300, "Q6_K" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		tb b = { 0 };
		begin_one_tensor(&b);
		uint64_t ne[2] = { cases[i].ne0, 2 };
		tb_tensor(&b, "blk.0.ffn_down.weight", 2, ne, (uint32_t)cases[i].type, 0);
		end_one_tensor(&b, 4096);
		expect_reject(&b, "blk.0.ffn_down.weight", cases[i].qname, "block");
		tb_free(&b);
	}
}

Test(gguf, duplicates_nul_nested_bool)
{
	tb b = { 0 };
	tb_hdr(&b, 3, 0, 3);
	tb_kv_u32(&b, "llama.block_count", 1);
	tb_kv_str(&b, "general.name", "x");
	tb_kv_u32(&b, "llama.block_count", 2);
	expect_reject(&b, "llama.block_count", "twice");
	tb_free(&b);

	uint64_t ne[1] = { 8 };
	tb_hdr(&b, 3, 2, 0);
	tb_tensor(&b, "blk.0.attn_q.weight", 1, ne, QTYPE_F32, 0);
	tb_tensor(&b, "blk.0.attn_q.weight", 1, ne, QTYPE_F32, 32);
	end_one_tensor(&b, 64);
	expect_reject(&b, "blk.0.attn_q.weight", "twice");
	tb_free(&b);

	tb_hdr(&b, 3, 0, 1);
	tb_strn(&b, "general.na\0me", 13);
	tb_u32(&b, GGUF_TYPE_UINT8), tb_u8(&b, 1);
	expect_reject(&b, "general.na?me", "NUL");
	tb_free(&b);

	tb_hdr(&b, 3, 0, 1);
	tb_strn(&b, "", 0);
	tb_u32(&b, GGUF_TYPE_UINT8), tb_u8(&b, 1);
	tb_zeros(&b, 16);
	expect_reject(&b, "empty key");
	tb_free(&b);

	tb_hdr(&b, 3, 1, 0);
	tb_strn(&b, "blk.0\0x", 7);
	tb_u32(&b, 1), tb_u64(&b, 8), tb_u32(&b, QTYPE_F32), tb_u64(&b, 0);
	end_one_tensor(&b, 32);
	expect_reject(&b, "tensor 0", "NUL");
	tb_free(&b);

	tb_hdr(&b, 3, 0, 1);
	tb_key(&b, "tokenizer.ggml.merges", GGUF_TYPE_ARRAY), tb_u32(&b, GGUF_TYPE_ARRAY), tb_u64(&b, 1);
	tb_u32(&b, GGUF_TYPE_UINT8), tb_u64(&b, 1), tb_u8(&b, 0);
	expect_reject(&b, "tokenizer.ggml.merges", "nested");
	tb_free(&b);

	tb_hdr(&b, 3, 0, 1);
	tb_key(&b, "tokenizer.ggml.add_bos_token", GGUF_TYPE_BOOL), tb_u8(&b, 2);
	expect_reject(&b, "tokenizer.ggml.add_bos_token", "bool");
	tb_free(&b);

	/* a non-printable key is shown with '?' rather than raw bytes */
	tb_hdr(&b, 3, 0, 1);
	tb_key(&b, "bad\x01\xff", 99);
	tb_zeros(&b, 8);
	expect_reject(&b, "bad??", "unknown value type 99");
	tb_free(&b);
}

/* Random byte edits of a valid file: every result opens or fails cleanly
   (ASan/UBSan turn any over-read or overflow into a failure). */
Test(gguf, mutations)
{
	tb b = { 0 };
	build_small(&b);
	uint64_t s = 0x9e3779b97f4a7c15ull;
	char err[ERR_LEN];
	uint8_t *m = malloc(b.n);
	cr_assert(m);
	int opened = 0;
	for (int iter = 0; iter < 20000; iter++) {
		memcpy(m, b.p, b.n);
		int edits = 1 + iter % 3;
		for (int e = 0; e < edits; e++) {
			s ^= s << 13, s ^= s >> 7, s ^= s << 17;
			size_t at = (size_t)(s % b.n);
			uint8_t v = (uint8_t)(s >> 32);
			/* mostly interesting values: 0, 0xff, small counts, near-by bits */
			switch ((s >> 40) % 4) {
			case 0: m[at] = v; break;
			case 1: m[at] = 0xff; break;
			case 2: m[at] ^= (uint8_t)(1u << ((s >> 48) % 8)); break;
			case 3: m[at] = (uint8_t)((s >> 48) % 16); break;
			}
		}
		gguf *g = gguf_open_mem(m, b.n, err);
		if (g) {
			opened++;
			/* touch everything an opened file promises */
			for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
				const gguf_tensor *t = gguf_tensor_at(g, i);
				volatile uint8_t sink = 0;
				for (size_t k = 0; k < t->nbytes; k++)
					sink ^= ((const uint8_t *)t->data)[k];
				(void)sink;
				cr_assert(gguf_tensor_nelements(t) >= 0);
			}
			gguf_arr a;
			if (gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &a, NULL) == 0)
				for (uint64_t i = 0; i < a.n; i++)
					(void)gguf_arr_str(g, &a, i);
			gguf_close(g);
		} else {
			cr_assert(err[0]);
		}
	}
	cr_assert_gt(opened, 0);
	free(m);
	tb_free(&b);
}

/* ---------------------------------------------------------------- allocation */

/* Fail each allocation of an open in turn: NULL with "out of memory", and no
   leak (LeakSanitizer checks that in the check build). */
static void fail_each_allocation(const tb *b)
{
	char err[ERR_LEN];
	alloc_fail_after(-1);
	gguf *g = gguf_open_mem(b->p, b->n, err);
	long n = alloc_fail_after(-1);
	cr_assert(g, "%s", err);
	gguf_close(g);
	cr_assert_gt(n, 3);
	for (long i = 0; i < n; i++) {
		alloc_fail_after(i);
		g = gguf_open_mem(b->p, b->n, err);
		alloc_fail_after(-1);
		cr_assert_null(g, "open succeeded with allocation %ld of %ld failing", i, n);
		cr_assert(strstr(err, "out of memory"), "allocation %ld: '%s'", i, err);
	}
}

Test(gguf, failed_allocations)
{
	tb b = { 0 };
	build_small(&b);
	fail_each_allocation(&b);
	tb_free(&b);
	build_all_types(&b, 3);
	fail_each_allocation(&b);
	tb_free(&b);

	/* the same through a file: the mapping is released on every path */
	build_small(&b);
	char path[] = "/tmp/gguf_test_XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	cr_assert_eq(write(fd, b.p, b.n), (ssize_t)b.n);
	close(fd);
	char err[ERR_LEN];
	alloc_fail_after(-1);
	gguf *g = gguf_open(path, err);
	long n = alloc_fail_after(-1);
	cr_assert(g, "%s", err);
	gguf_close(g);
	for (long i = 0; i < n; i++) {
		alloc_fail_after(i);
		g = gguf_open(path, err);
		alloc_fail_after(-1);
		cr_assert_null(g);
		cr_assert(strstr(err, "out of memory") && strstr(err, path), "%s", err);
	}
	unlink(path);
	tb_free(&b);
}

/* ---------------------------------------------------------------- writer */

/* The writer must produce exactly the builder's bytes for the same content. */
Test(gguf_write, same_bytes_as_the_builder)
{
	tb b = { 0 };
	build_small(&b);

	gguf_writer *w = gguf_writer_create();
	cr_assert(w);
	gguf_writer_set_str(w, "general.architecture", "llama");
	gguf_writer_set_u32(w, "llama.block_count", 1);
	const char *toks[] = { "<unk>", "<s>", "</s>" };
	gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 3);
	float scores[3] = { 0 };
	gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 3);
	float q[12];
	for (int i = 0; i < 12; i++)
		q[i] = (float)i;
	gguf_writer_add_tensor(w, "blk.0.attn_q.weight", QTYPE_F32, 2, (int64_t[]){ 4, 3 }, q, NULL);
	void *buf = NULL;
	cr_assert_eq(gguf_writer_add_tensor(w, "blk.0.ffn_up.weight", QTYPE_Q8_0, 1, (int64_t[]){ 512 }, NULL,
					    &buf), 0);
	cr_assert(buf);
	for (int i = 0; i < 544; i++) /* filled in place after adding */
		((uint8_t *)buf)[i] = (uint8_t)(i * 7);
	void *out;
	size_t len;
	char err[ERR_LEN];
	cr_assert_eq(gguf_writer_write_mem(w, &out, &len, err), 0, "%s", err);
	cr_assert_eq(len, b.n);
	cr_assert(!memcmp(out, b.p, len));
	alloc_free(out);
	gguf_writer_destroy(w);
	tb_free(&b);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
	return *s;
}

/* Everything the writer can express, read back by the reader. */
/* strict: assert that every call succeeds (off for failed-allocation runs,
   where NULL comes back when the writer itself cannot be allocated) */
static gguf_writer *build_everything(uint32_t align, uint8_t **blobs, size_t *blob_n, int strict)
{
	gguf_writer *w = gguf_writer_create();
	cr_assert(w || !strict);
	if (!w)
		return NULL;
	if (align)
		gguf_writer_set_u32(w, "general.alignment", align);
	gguf_writer_set_u8(w, "t.u8", 200);
	gguf_writer_set_i8(w, "t.i8", -100);
	gguf_writer_set_u16(w, "t.u16", 60000);
	gguf_writer_set_i16(w, "t.i16", -30000);
	gguf_writer_set_u32(w, "t.u32", 4000000000u);
	gguf_writer_set_i32(w, "t.i32", -2000000000);
	gguf_writer_set_u64(w, "t.u64", UINT64_MAX);
	gguf_writer_set_i64(w, "t.i64", INT64_MIN);
	gguf_writer_set_f32(w, "t.f32", 1e-5f);
	gguf_writer_set_f64(w, "t.f64", 1e300);
	gguf_writer_set_bool(w, "t.bool", true);
	gguf_writer_set_str(w, "t.str", "replaced below");
	gguf_writer_set_strn(w, "t.bin", "a\0b", 3);
	gguf_writer_set_str(w, "t.str", "h\xc3\xa9llo"); /* replaces in place */
	uint8_t u8s[] = { 0, 1, 255 };
	int8_t i8s[] = { -128, 0, 127 };
	uint16_t u16s[] = { 0, 65535 };
	int16_t i16s[] = { -32768, 32767 };
	uint32_t u32s[] = { 0, 4294967295u, 7 };
	int32_t i32s[] = { INT32_MIN, INT32_MAX };
	uint64_t u64s[] = { UINT64_MAX, 1 };
	int64_t i64s[] = { INT64_MIN, INT64_MAX, 0 };
	float f32s[] = { -0.5f, 3.0f };
	double f64s[] = { 1.0 / 3 };
	uint8_t bools[] = { 1, 0, 7 }; /* nonzero is written as 1 */
	gguf_writer_set_arr(w, "a.u8", GGUF_TYPE_UINT8, u8s, 3);
	gguf_writer_set_arr(w, "a.i8", GGUF_TYPE_INT8, i8s, 3);
	gguf_writer_set_arr(w, "a.u16", GGUF_TYPE_UINT16, u16s, 2);
	gguf_writer_set_arr(w, "a.i16", GGUF_TYPE_INT16, i16s, 2);
	gguf_writer_set_arr(w, "a.u32", GGUF_TYPE_UINT32, u32s, 3);
	gguf_writer_set_arr(w, "a.i32", GGUF_TYPE_INT32, i32s, 2);
	gguf_writer_set_arr(w, "a.u64", GGUF_TYPE_UINT64, u64s, 2);
	gguf_writer_set_arr(w, "a.i64", GGUF_TYPE_INT64, i64s, 3);
	gguf_writer_set_arr(w, "a.f32", GGUF_TYPE_FLOAT32, f32s, 2);
	gguf_writer_set_arr(w, "a.f64", GGUF_TYPE_FLOAT64, f64s, 1);
	gguf_writer_set_arr(w, "a.bool", GGUF_TYPE_BOOL, bools, 3);
	gguf_writer_set_arr(w, "a.empty", GGUF_TYPE_INT32, NULL, 0);
	const char *strs[] = { "\xe2\x96\x81the", "", "<0x0A>" };
	gguf_writer_set_arr_str(w, "a.str", strs, 3);
	gguf_writer_set_arr_str(w, "a.empty_str", NULL, 0);

	/* tensors of several types, shapes and sizes that need padding */
	static const struct { const char *name; int type; int n_dims; int64_t ne[4]; } ts[] = {
		{ "token_embd.weight", QTYPE_F32, 2, { 8, 5 } },
		{ "blk.0.attn_norm.weight", QTYPE_F32, 1, { 3 } },
		{ "blk.0.attn_q.weight", QTYPE_Q8_0, 2, { 64, 3 } },
		{ "blk.0.ffn_down.weight", QTYPE_Q4_K, 2, { 256, 2 } },
		{ "blk.0.h", QTYPE_F16, 3, { 5, 1, 3 } },
		{ "x4", QTYPE_BF16, 4, { 2, 3, 1, 2 } },
		{ "zero", QTYPE_F32, 2, { 0, 4 } },
	};
	uint64_t s = 12345;
	for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
		size_t nb = qtype_row_size(ts[i].type, ts[i].ne[0]);
		for (int d = 1; d < ts[i].n_dims; d++)
			nb *= (size_t)ts[i].ne[d];
		blobs[i] = malloc(nb ? nb : 1);
		blob_n[i] = nb;
		for (size_t k = 0; k < nb; k++)
			blobs[i][k] = (uint8_t)rng_next(&s);
		int rc = gguf_writer_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].ne, blobs[i], NULL);
		cr_assert(rc == 0 || !strict);
	}
	return w;
}

static void check_everything(const gguf *g, uint32_t align, uint8_t **blobs, const size_t *blob_n,
			     const void *base)
{
	char err[ERR_LEN];
	int64_t i;
	uint32_t u;
	float f;
	bool bo;
	gguf_str s;
	gguf_arr a;
	cr_assert_eq(gguf_version(g), 3);
	cr_assert_eq(gguf_alignment(g), align ? align : 32);
	cr_assert_eq(gguf_n_kv(g), (align ? 1 : 0) + 13 + 14);
	cr_assert(!gguf_get_u32(g, "t.u8", &u, err) && u == 200);
	cr_assert(!gguf_get_i64(g, "t.i8", &i, err) && i == -100);
	cr_assert(!gguf_get_u32(g, "t.u16", &u, err) && u == 60000);
	cr_assert(!gguf_get_i64(g, "t.i16", &i, err) && i == -30000);
	cr_assert(!gguf_get_u32(g, "t.u32", &u, err) && u == 4000000000u);
	cr_assert(!gguf_get_i64(g, "t.i32", &i, err) && i == -2000000000);
	cr_assert_eq(gguf_kv_number(g, gguf_find_key(g, "t.u64")), 18446744073709551615.0);
	cr_assert(!gguf_get_i64(g, "t.i64", &i, err) && i == INT64_MIN);
	cr_assert(!gguf_get_f32(g, "t.f32", &f, err) && f == 1e-5f);
	cr_assert_eq(gguf_kv_number(g, gguf_find_key(g, "t.f64")), 1e300);
	cr_assert(!gguf_get_bool(g, "t.bool", &bo, err) && bo);
	cr_assert(!gguf_get_str(g, "t.str", &s, err) && s.n == 6 && !memcmp(s.p, "h\xc3\xa9llo", 6));
	cr_assert(!gguf_get_str(g, "t.bin", &s, err) && s.n == 3 && !memcmp(s.p, "a\0b", 3));
	/* replacing kept the key's position */
	cr_assert_lt(gguf_find_key(g, "t.str"), gguf_find_key(g, "t.bin"));

	cr_assert(!gguf_get_arr(g, "a.u8", GGUF_TYPE_UINT8, &a, err) && a.n == 3 && gguf_arr_i64(&a, 2) == 255);
	cr_assert(!gguf_get_arr(g, "a.i8", GGUF_TYPE_INT8, &a, err) && gguf_arr_i64(&a, 0) == -128);
	cr_assert(!gguf_get_arr(g, "a.u16", GGUF_TYPE_UINT16, &a, err) && gguf_arr_i64(&a, 1) == 65535);
	cr_assert(!gguf_get_arr(g, "a.i16", GGUF_TYPE_INT16, &a, err) && gguf_arr_i64(&a, 0) == -32768);
	cr_assert(!gguf_get_arr(g, "a.u32", GGUF_TYPE_UINT32, &a, err) && gguf_arr_i64(&a, 1) == 4294967295ll);
	cr_assert(!gguf_get_arr(g, "a.i32", GGUF_TYPE_INT32, &a, err) && gguf_arr_i64(&a, 0) == INT32_MIN);
	cr_assert(!gguf_get_arr(g, "a.u64", GGUF_TYPE_UINT64, &a, err) && gguf_arr_f64(&a, 0) == 18446744073709551615.0);
	cr_assert(!gguf_get_arr(g, "a.i64", GGUF_TYPE_INT64, &a, err) && gguf_arr_i64(&a, 1) == INT64_MAX);
	cr_assert(!gguf_get_arr(g, "a.f32", GGUF_TYPE_FLOAT32, &a, err) && gguf_arr_f64(&a, 0) == -0.5);
	cr_assert(!gguf_get_arr(g, "a.f64", GGUF_TYPE_FLOAT64, &a, err) && gguf_arr_f64(&a, 0) == 1.0 / 3);
	cr_assert(!gguf_get_arr(g, "a.bool", GGUF_TYPE_BOOL, &a, err) && gguf_arr_i64(&a, 2) == 1);
	cr_assert(!gguf_get_arr(g, "a.empty", GGUF_TYPE_INT32, &a, err) && a.n == 0);
	cr_assert(!gguf_get_arr(g, "a.empty_str", GGUF_TYPE_STRING, &a, err) && a.n == 0);
	cr_assert(!gguf_get_arr(g, "a.str", GGUF_TYPE_STRING, &a, err) && a.n == 3);
	s = gguf_arr_str(g, &a, 0);
	cr_assert(s.n == 6 && !memcmp(s.p, "\xe2\x96\x81the", 6));
	s = gguf_arr_str(g, &a, 2);
	cr_assert(s.n == 6 && !memcmp(s.p, "<0x0A>", 6));

	cr_assert_eq(gguf_n_tensors(g), 7);
	size_t al = align ? align : 32;
	for (int64_t k = 0; k < gguf_n_tensors(g); k++) {
		const gguf_tensor *t = gguf_tensor_at(g, k);
		cr_assert_eq(t->nbytes, blob_n[k], "%s", t->name);
		cr_assert_eq(t->offset % al, 0);
		cr_assert_eq(((const uint8_t *)t->data - (const uint8_t *)base) % al, 0, "%s", t->name);
		cr_assert(!memcmp(t->data, blobs[k], t->nbytes), "%s data", t->name);
	}
	const gguf_tensor *t = gguf_find_tensor(g, "x4");
	cr_assert(t && t->n_dims == 4 && t->ne[0] == 2 && t->ne[1] == 3 && t->ne[2] == 1 && t->ne[3] == 2);
	t = gguf_find_tensor(g, "blk.0.h");
	cr_assert(t && t->n_dims == 3 && t->ne[3] == 1 && t->type == QTYPE_F16);
}

static void round_trip(uint32_t align)
{
	uint8_t *blobs[8];
	size_t blob_n[8];
	gguf_writer *w = build_everything(align, blobs, blob_n, 1);
	char err[ERR_LEN];
	void *out;
	size_t len;
	cr_assert_eq(gguf_writer_write_mem(w, &out, &len, err), 0, "%s", err);
	gguf *g = gguf_open_mem(out, len, err);
	cr_assert(g, "%s", err);
	check_everything(g, align, blobs, blob_n, out);
	gguf_close(g);

	/* to a file: same bytes, no temporary left behind, replaces atomically */
	char dir[] = "/tmp/gguf_write_test.XXXXXX";
	cr_assert(mkdtemp(dir));
	char path[96];
	snprintf(path, sizeof(path), "%s/m.gguf", dir);
	FILE *f = fopen(path, "wb");
	fputs("old contents", f);
	fclose(f);
	cr_assert_eq(gguf_writer_write_file(w, path, err), 0, "%s", err);
	size_t flen;
	char *fb = test_read_file(path, &flen);
	cr_assert(fb && flen == len && !memcmp(fb, out, len));
	free(fb);
	g = gguf_open(path, err);
	cr_assert(g, "%s", err);
	check_everything(g, align, blobs, blob_n, gguf_tensor_at(g, 0)->data);
	gguf_close(g);
	DIR *dd = opendir(dir);
	int entries = 0;
	for (struct dirent *de; (de = readdir(dd));)
		entries += de->d_name[0] != '.';
	closedir(dd);
	cr_assert_eq(entries, 1, "a temporary file was left in %s", dir);
	struct stat st;
	cr_assert(stat(path, &st) == 0 && (st.st_mode & 0444) == 0444);
	unlink(path);
	rmdir(dir);

	alloc_free(out);
	gguf_writer_destroy(w);
	for (int i = 0; i < 7; i++)
		free(blobs[i]);
}

Test(gguf_write, round_trip_default_alignment) { round_trip(0); }
Test(gguf_write, round_trip_alignment_64) { round_trip(64); }
Test(gguf_write, round_trip_alignment_1) { round_trip(1); }
Test(gguf_write, round_trip_alignment_4096) { round_trip(4096); }

Test(gguf_write, errors_are_sticky_and_named)
{
	char err[ERR_LEN];
	void *out;
	size_t len;
	gguf_writer *w = gguf_writer_create();
	cr_assert_eq(gguf_writer_add_tensor(w, "a", QTYPE_F32, 1, (int64_t[]){ 4 }, NULL, NULL), 0);
	cr_assert_eq(gguf_writer_add_tensor(w, "a", QTYPE_F32, 1, (int64_t[]){ 4 }, NULL, NULL), ERR_INVAL);
	cr_assert_eq(gguf_writer_set_u32(w, "later", 1), ERR_INVAL); /* sticky */
	cr_assert_eq(gguf_writer_error(w, err), ERR_INVAL);
	cr_assert(strstr(err, "tensor a added twice"), "%s", err);
	cr_assert_eq(gguf_writer_write_mem(w, &out, &len, err), ERR_INVAL);
	cr_assert(strstr(err, "tensor a"), "%s", err);
	gguf_writer_destroy(w);

	static const struct { int type; int n_dims; int64_t ne0; const char *want; } bad[] = {
		{ QTYPE_Q8_0, 1, 48, "blk.0.x: row length 48 is not a multiple of Q8_0's block of 32" },
		{ 4, 1, 32, "blk.0.x: unknown type 4" },
		{ QTYPE_F32, 0, 32, "blk.0.x: n_dims 0" },
		{ QTYPE_F32, 5, 32, "blk.0.x: n_dims 5" },
		{ QTYPE_F32, 1, -1, "blk.0.x: bad dimension" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		w = gguf_writer_create();
		int64_t ne[5] = { bad[i].ne0, 1, 1, 1, 1 };
		cr_assert_eq(gguf_writer_add_tensor(w, "blk.0.x", bad[i].type, bad[i].n_dims, ne, NULL, NULL),
			     ERR_INVAL);
		cr_assert_eq(gguf_writer_write_file(w, "/nonexistent/never", err), ERR_INVAL);
		cr_assert(strstr(err, bad[i].want), "'%s' should contain '%s'", err, bad[i].want);
		gguf_writer_destroy(w);
	}

	w = gguf_writer_create();
	cr_assert_eq(gguf_writer_set_u32(w, "", 1), ERR_INVAL);
	gguf_writer_destroy(w);
	w = gguf_writer_create();
	cr_assert_eq(gguf_writer_set_arr(w, "k", GGUF_TYPE_STRING, NULL, 0), ERR_INVAL);
	cr_assert(gguf_writer_error(w, err) && strstr(err, "k"), "%s", err);
	gguf_writer_destroy(w);

	/* alignment the reader would refuse is refused at write time */
	w = gguf_writer_create();
	gguf_writer_set_u32(w, "general.alignment", 48);
	cr_assert_eq(gguf_writer_write_mem(w, &out, &len, err), ERR_INVAL);
	cr_assert(strstr(err, "general.alignment"), "%s", err);
	gguf_writer_set_u64(w, "general.alignment", 64);
	cr_assert_eq(gguf_writer_write_mem(w, &out, &len, err), ERR_INVAL);
	cr_assert(strstr(err, "general.alignment: type u64"), "%s", err);
	gguf_writer_set_u32(w, "general.alignment", 64);
	cr_assert_eq(gguf_writer_write_mem(w, &out, &len, err), 0);
	alloc_free(out);

	/* unwritable path: ERR_IO naming it, nothing left behind */
	cr_assert_eq(gguf_writer_write_file(w, "/nonexistent-dir/m.gguf", err), ERR_IO);
	cr_assert(strstr(err, "/nonexistent-dir/m.gguf"), "%s", err);
	gguf_writer_destroy(w);
}

Test(gguf_write, failed_allocations)
{
	uint8_t *blobs[8];
	size_t blob_n[8];
	char err[ERR_LEN];
	void *out;
	size_t len;
	/* count the allocations of a whole build + write */
	alloc_fail_after(-1);
	gguf_writer *w = build_everything(64, blobs, blob_n, 1);
	cr_assert_eq(gguf_writer_write_mem(w, &out, &len, err), 0);
	long n = alloc_fail_after(-1);
	alloc_free(out);
	gguf_writer_destroy(w);
	for (int i = 0; i < 7; i++)
		free(blobs[i]);
	cr_assert_gt(n, 10);

	for (long k = 0; k < n; k++) {
		alloc_fail_after(k);
		w = build_everything(64, blobs, blob_n, 0);
		int rc = w ? gguf_writer_write_mem(w, &out, &len, err) : ERR_NOMEM;
		alloc_fail_after(-1);
		cr_assert_eq(rc, ERR_NOMEM, "allocation %ld of %ld failing: rc %d", k, n, rc);
		if (w)
			cr_assert(strstr(err, "out of memory"), "allocation %ld: '%s'", k, err);
		gguf_writer_destroy(w);
		for (int i = 0; w && i < 7; i++)
			free(blobs[i]);
	}
}

/* ---------------------------------------------------------------- real files */

/* Checks that hold for any GGUF a converter wrote; returns the tensor count. */
static int64_t check_real(const char *path)
{
	char err[ERR_LEN];
	gguf *g = gguf_open(path, err);
	cr_assert(g, "%s", err);
	int64_t nt = gguf_n_tensors(g);
	gguf_str arch = { NULL, 0 };
	cr_assert_eq(gguf_get_str(g, "general.architecture", &arch, err), 0, "%s: %s", path, err);
	char key[128];
	snprintf(key, sizeof(key), "%.*s.block_count", (int)arch.n, arch.p);
	uint32_t n_layer = 0;
	cr_assert_eq(gguf_get_u32(g, key, &n_layer, err), 0, "%s: %s", path, key);
	gguf_arr toks;
	cr_assert_eq(gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, err), 0, "%s", path);
	cr_assert_gt(toks.n, 0);
	for (uint64_t i = 0; i < toks.n; i++)
		(void)gguf_arr_str(g, &toks, i);

	size_t data_end = 0;
	int layers_seen = 0;
	for (int64_t i = 0; i < nt; i++) {
		const gguf_tensor *t = gguf_tensor_at(g, i);
		size_t rows = (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
		cr_assert_eq(t->nbytes, qtype_row_size(t->type, t->ne[0]) * rows, "%s %s", path, t->name);
		size_t end = (size_t)((const uint8_t *)t->data - (const uint8_t *)gguf_tensor_at(g, 0)->data) + t->nbytes;
		data_end = end > data_end ? end : data_end;
		cr_assert_eq(gguf_find_tensor(g, t->name), t);
		int l;
		char rest[64];
		if (sscanf(t->name, "blk.%d.%63s", &l, rest) == 2 && !strcmp(rest, "attn_norm.weight")) {
			cr_assert(l >= 0 && (uint32_t)l < n_layer, "%s: %s", path, t->name);
			layers_seen++;
		}
	}
	if (nt > 0) {
		cr_assert_eq((uint32_t)layers_seen, n_layer, "%s", path);
		const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
		cr_assert(emb, "%s: no token_embd.weight", path);
		cr_assert_eq((uint64_t)emb->ne[1], toks.n, "%s: embedding rows vs vocab", path);
		/* llama-style tensor set: embd, output_norm, (output), per layer >= 9 */
		cr_assert_geq(nt, 2 + 9 * (int64_t)n_layer, "%s", path);
		cr_assert_leq(nt, 3 + 16 * (int64_t)n_layer, "%s", path);
	}
	gguf_close(g);
	return nt;
}

Test(gguf, real_files)
{
	const char *models = test_shared("models");
	if (!models)
		cr_skip_test("../shared/models is not here");
	char dirs[3][4096];
	snprintf(dirs[0], sizeof(dirs[0]), "%s", models);
	snprintf(dirs[1], sizeof(dirs[1]), "%s/synth", models);
	snprintf(dirs[2], sizeof(dirs[2]), "%s/vocab", models);
	int n_files = 0;
	for (int d = 0; d < 3; d++) {
		DIR *dd = opendir(dirs[d]);
		if (!dd)
			continue;
		for (struct dirent *de; (de = readdir(dd));) {
			size_t n = strlen(de->d_name);
			if (n < 5 || strcmp(de->d_name + n - 5, ".gguf"))
				continue;
			char path[8192];
			snprintf(path, sizeof(path), "%s/%s", dirs[d], de->d_name);
			int64_t nt = check_real(path);
			if (d == 2)
				cr_assert_eq(nt, 0, "%s: vocab-only files have no tensors", path);
			else
				cr_assert_gt(nt, 0, "%s", path);
			if (!strncmp(de->d_name, "stories260K", 11))
				cr_assert_eq(nt, 47, "%s", path); /* 2 + 5 layers * 9, output tied */
			n_files++;
		}
		closedir(dd);
	}
	cr_assert_geq(n_files, 3);
}

/* stories260K cut at every length through its header and a little data. */
Test(gguf, real_file_truncated)
{
	const char *path = test_shared("models/stories260K.gguf");
	if (!path)
		cr_skip_test("stories260K.gguf is not here");
	size_t n;
	char *bytes = test_read_file(path, &n);
	cr_assert(bytes);
	char err[ERR_LEN];
	gguf *g = gguf_open_mem(bytes, n, err);
	cr_assert(g, "%s", err);
	size_t data_start = (size_t)((const char *)gguf_tensor_at(g, 0)->data - bytes);
	gguf_close(g);
	cr_assert_eq(data_start, 14240);
	void *copy;
	for (size_t len = 0; len < data_start + 64; len++) {
		g = open_exact(bytes, len, err, &copy);
		cr_assert_null(g, "%zu-byte prefix opened", len);
	}
	for (size_t len = data_start + 64; len < n; len += 4093) {
		g = open_exact(bytes, len, err, &copy);
		cr_assert_null(g, "%zu-byte prefix opened", len);
		cr_assert(strstr(err, ".weight") && strstr(err, "past end of file"), "%s", err);
	}
	free(bytes);
}

/* gguf_open_weights: the same bytes in every mode; with huge pages the copy
   is 2 MiB aligned; a bad file fails with the same error (and, under ASan,
   nothing leaks through the copy's error paths). */
Test(gguf, open_weights_modes)
{
	const char *path = test_shared("models/stories260K.gguf");
	if (!path)
		cr_skip_test("stories260K.gguf is not here");
	char err[ERR_LEN];
	gguf *ref = gguf_open(path, err);
	cr_assert(ref, "%s", err);
	const char *modes[] = { "mmap", "huge", NULL };
	for (int m = 0; m < 3; m++) {
		if (modes[m])
			setenv("PDSERVE_WEIGHTS", modes[m], 1);
		else
			unsetenv("PDSERVE_WEIGHTS");
		gguf *g = gguf_open_weights(path, err);
		cr_assert(g, "%s: %s", modes[m] ? modes[m] : "default", err);
		cr_assert_eq(gguf_n_tensors(g), gguf_n_tensors(ref));
		for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
			const gguf_tensor *a = gguf_tensor_at(ref, i), *b = gguf_tensor_at(g, i);
			cr_assert_eq(a->nbytes, b->nbytes);
			cr_assert_eq(memcmp(a->data, b->data, a->nbytes), 0, "tensor %s differs", a->name);
		}
		if (modes[m] && !strcmp(modes[m], "huge")) {
			const uint8_t *first = gguf_tensor_at(g, 0)->data;
			cr_assert_eq(((uintptr_t)first - 14240) % ((uintptr_t)2 << 20), 0,
				     "the copy starts on a 2 MiB boundary");
		}
		cr_assert_eq(gguf_fingerprint(g), gguf_fingerprint(ref));
		gguf_close(g);
	}
	setenv("PDSERVE_WEIGHTS", "huge", 1);
	cr_assert_null(gguf_open_weights("/nonexistent/x.gguf", err));
	cr_assert(strstr(err, "/nonexistent/x.gguf"), "%s", err);
	char tpath[] = "/tmp/gguf_weights_XXXXXX";
	int fd = mkstemp(tpath);
	cr_assert_geq(fd, 0);
	size_t n;
	char *bytes = test_read_file(path, &n);
	cr_assert_eq(write(fd, bytes, 20000), 20000); /* header and a little data */
	close(fd);
	char err2[ERR_LEN];
	gguf_close(gguf_open_weights(tpath, err));
	unsetenv("PDSERVE_WEIGHTS");
	cr_assert_null(gguf_open(tpath, err2));
	cr_assert_str_eq(strstr(err, ":"), strstr(err2, ":"));
	unlink(tpath);
	free(bytes);
	gguf_close(ref);
}
