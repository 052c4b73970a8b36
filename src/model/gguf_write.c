/* gguf_write.c - GGUF v3 writer: collect in memory, serialize once.
 *
 * Each kv is kept already serialized (u32 type + value, little endian), so
 * writing is concatenation and replacing a value is swapping one buffer.
 * Tensors keep their own copy of the data. Offsets are assigned at write
 * time: tensor i starts at the running data size rounded up to the
 * alignment, which is also how llama.cpp lays files out (it pads after the
 * last tensor too, and so do we).
 *
 * Values are encoded byte by byte, so the bytes do not depend on the host's
 * endianness or on struct padding.
 *
 * Left out: streaming tensor data from a callback (every tensor sits in
 * memory until the write), writing v1/v2 or big-endian files, and removing
 * keys or tensors once added.
 */
#include "model/gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "kernels/qtypes.h"

typedef struct {
	char *key;    /* owned */
	uint8_t *val; /* owned: u32 type + value bytes */
	size_t val_n;
} wkv;

typedef struct {
	char *name; /* owned */
	int type;
	int n_dims;
	int64_t ne[GGUF_MAX_DIMS];
	size_t nbytes;
	uint8_t *data; /* owned, nbytes */
} wtensor;

struct gguf_writer {
	wkv *kvs;
	size_t n_kv, cap_kv;
	wtensor *ts;
	size_t n_t, cap_t;
	int err_code; /* sticky: first failure */
	char err[ERR_LEN];
};

static int fail(gguf_writer *w, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(gguf_writer *w, int code, const char *fmt, ...)
{
	if (!w->err_code) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(w->err, sizeof(w->err), fmt, ap);
		va_end(ap);
		w->err_code = code;
	}
	return w->err_code;
}

/* ---------------------------------------------------------------- bytes */

typedef struct {
	uint8_t *p;
	size_t n, cap;
	int oom;
} bytes;

static void put(bytes *b, const void *src, size_t n)
{
	if (b->oom)
		return;
	if (n > b->cap - b->n) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap - b->n < n) {
			if (cap > SIZE_MAX / 2) {
				b->oom = 1;
				return;
			}
			cap *= 2;
		}
		uint8_t *p = alloc_resize(b->p, cap);
		if (!p) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, src, n);
	b->n += n;
}

static void put_le(bytes *b, uint64_t v, int size)
{
	uint8_t t[8];
	for (int i = 0; i < size; i++)
		t[i] = (uint8_t)(v >> (8 * i));
	put(b, t, (size_t)size);
}

static void put_str(bytes *b, const char *s, size_t n)
{
	put_le(b, n, 8);
	put(b, s, n);
}

static void put_zeros(bytes *b, size_t n)
{
	static const uint8_t z[64];
	while (n) {
		size_t k = n < sizeof(z) ? n : sizeof(z);
		put(b, z, k);
		n -= k;
	}
}

/* ---------------------------------------------------------------- metadata */

gguf_writer *gguf_writer_create(void)
{
	return alloc_zeroed(1, sizeof(gguf_writer));
}

void gguf_writer_destroy(gguf_writer *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n_kv; i++) {
		alloc_free(w->kvs[i].key);
		alloc_free(w->kvs[i].val);
	}
	for (size_t i = 0; i < w->n_t; i++) {
		alloc_free(w->ts[i].name);
		alloc_free(w->ts[i].data);
	}
	alloc_free(w->kvs);
	alloc_free(w->ts);
	alloc_free(w);
}

int gguf_writer_error(const gguf_writer *w, char *err)
{
	if (w->err_code && err)
		snprintf(err, ERR_LEN, "%s", w->err);
	return w->err_code;
}

/* Store the serialized value b (taken over, even on failure) under key. */
static int set_raw(gguf_writer *w, const char *key, bytes *b)
{
	if (w->err_code) {
		alloc_free(b->p);
		return w->err_code;
	}
	if (b->oom) {
		alloc_free(b->p);
		return fail(w, ERR_NOMEM, "out of memory setting metadata key '%s'", key);
	}
	for (size_t i = 0; i < w->n_kv; i++) {
		if (!strcmp(w->kvs[i].key, key)) {
			alloc_free(w->kvs[i].val);
			w->kvs[i].val = b->p;
			w->kvs[i].val_n = b->n;
			return 0;
		}
	}
	if (w->n_kv == w->cap_kv) {
		size_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
		wkv *k = alloc_resize_array(w->kvs, cap, sizeof(*k));
		if (!k) {
			alloc_free(b->p);
			return fail(w, ERR_NOMEM, "out of memory setting metadata key '%s'", key);
		}
		w->kvs = k;
		w->cap_kv = cap;
	}
	char *kc = alloc_strdup(key);
	if (!kc) {
		alloc_free(b->p);
		return fail(w, ERR_NOMEM, "out of memory setting metadata key '%s'", key);
	}
	w->kvs[w->n_kv++] = (wkv){ kc, b->p, b->n };
	return 0;
}

/* Start a value of type t for key: checks the key, writes the type. */
static int begin(gguf_writer *w, const char *key, gguf_vtype t, bytes *b)
{
	*b = (bytes){ 0 };
	if (w->err_code)
		return w->err_code;
	if (!key || !*key)
		return fail(w, ERR_INVAL, "metadata key is empty");
	put_le(b, (uint32_t)t, 4);
	return 0;
}

static int set_scalar(gguf_writer *w, const char *key, gguf_vtype t, uint64_t bits, int size)
{
	bytes b;
	int rc = begin(w, key, t, &b);
	if (rc)
		return rc;
	put_le(&b, bits, size);
	return set_raw(w, key, &b);
}

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static uint64_t f64_bits(double d)
{
	uint64_t u;
	memcpy(&u, &d, 8);
	return u;
}

int gguf_writer_set_u8(gguf_writer *w, const char *k, uint8_t v) { return set_scalar(w, k, GGUF_TYPE_UINT8, v, 1); }
int gguf_writer_set_i8(gguf_writer *w, const char *k, int8_t v) { return set_scalar(w, k, GGUF_TYPE_INT8, (uint8_t)v, 1); }
int gguf_writer_set_u16(gguf_writer *w, const char *k, uint16_t v) { return set_scalar(w, k, GGUF_TYPE_UINT16, v, 2); }
int gguf_writer_set_i16(gguf_writer *w, const char *k, int16_t v) { return set_scalar(w, k, GGUF_TYPE_INT16, (uint16_t)v, 2); }
int gguf_writer_set_u32(gguf_writer *w, const char *k, uint32_t v) { return set_scalar(w, k, GGUF_TYPE_UINT32, v, 4); }
int gguf_writer_set_i32(gguf_writer *w, const char *k, int32_t v) { return set_scalar(w, k, GGUF_TYPE_INT32, (uint32_t)v, 4); }
int gguf_writer_set_u64(gguf_writer *w, const char *k, uint64_t v) { return set_scalar(w, k, GGUF_TYPE_UINT64, v, 8); }
int gguf_writer_set_i64(gguf_writer *w, const char *k, int64_t v) { return set_scalar(w, k, GGUF_TYPE_INT64, (uint64_t)v, 8); }
int gguf_writer_set_f32(gguf_writer *w, const char *k, float v) { return set_scalar(w, k, GGUF_TYPE_FLOAT32, f32_bits(v), 4); }
int gguf_writer_set_f64(gguf_writer *w, const char *k, double v) { return set_scalar(w, k, GGUF_TYPE_FLOAT64, f64_bits(v), 8); }
int gguf_writer_set_bool(gguf_writer *w, const char *k, bool v) { return set_scalar(w, k, GGUF_TYPE_BOOL, v ? 1 : 0, 1); }

int gguf_writer_set_strn(gguf_writer *w, const char *key, const char *s, size_t n)
{
	bytes b;
	int rc = begin(w, key, GGUF_TYPE_STRING, &b);
	if (rc)
		return rc;
	put_str(&b, s, n);
	return set_raw(w, key, &b);
}

int gguf_writer_set_str(gguf_writer *w, const char *key, const char *s)
{
	return gguf_writer_set_strn(w, key, s, strlen(s));
}

/* Element size of a numeric vtype; 0 for STRING, ARRAY and unknown types. */
static int elem_size(gguf_vtype t)
{
	switch (t) {
	case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
	case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
	case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
	case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
	default: return 0;
	}
}

int gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_vtype elem, const void *data, size_t n)
{
	int size = elem_size(elem);
	bytes b;
	int rc = begin(w, key, GGUF_TYPE_ARRAY, &b);
	if (rc)
		return rc;
	if (!size) {
		alloc_free(b.p);
		return fail(w, ERR_INVAL, "metadata key '%s': arrays of %s need their own call", key,
			    gguf_vtype_name((int)elem));
	}
	put_le(&b, (uint32_t)elem, 4);
	put_le(&b, n, 8);
	const uint8_t *p = data;
	for (size_t i = 0; i < n; i++, p += size) {
		uint64_t v = 0;
		/* host value -> little endian of the same width */
		switch (size) {
		case 1: v = elem == GGUF_TYPE_BOOL ? (p[0] != 0) : p[0]; break;
		case 2: { uint16_t x; memcpy(&x, p, 2); v = x; break; }
		case 4: { uint32_t x; memcpy(&x, p, 4); v = x; break; }
		case 8: memcpy(&v, p, 8); break;
		}
		put_le(&b, v, size);
	}
	return set_raw(w, key, &b);
}

int gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, size_t n)
{
	bytes b;
	int rc = begin(w, key, GGUF_TYPE_ARRAY, &b);
	if (rc)
		return rc;
	put_le(&b, GGUF_TYPE_STRING, 4);
	put_le(&b, n, 8);
	for (size_t i = 0; i < n; i++)
		put_str(&b, strs[i], strlen(strs[i]));
	return set_raw(w, key, &b);
}

/* ---------------------------------------------------------------- tensors */

int gguf_writer_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
			   const void *data, void **buf)
{
	if (w->err_code)
		return w->err_code;
	if (!name || !*name)
		return fail(w, ERR_INVAL, "tensor name is empty");
	const qtype_info *qi = qtype_get(type);
	if (!qi)
		return fail(w, ERR_INVAL, "tensor %s: unknown type %d", name, type);
	if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
		return fail(w, ERR_INVAL, "tensor %s: n_dims %d is not in 1..%d", name, n_dims, GGUF_MAX_DIMS);
	for (size_t i = 0; i < w->n_t; i++)
		if (!strcmp(w->ts[i].name, name))
			return fail(w, ERR_INVAL, "tensor %s added twice", name);

	wtensor t = { .type = type, .n_dims = n_dims, .ne = { 1, 1, 1, 1 } };
	int64_t nel = 1;
	for (int d = 0; d < n_dims; d++) {
		if (ne[d] < 0 || __builtin_mul_overflow(nel, ne[d], &nel))
			return fail(w, ERR_INVAL, "tensor %s: bad dimension ne[%d] = %lld", name, d,
				    (long long)ne[d]);
		t.ne[d] = ne[d];
	}
	if (t.ne[0] % qi->blck)
		return fail(w, ERR_INVAL, "tensor %s: row length %lld is not a multiple of %s's block of %d",
			    name, (long long)t.ne[0], qi->name, qi->blck);
	if (alloc_mul_overflow((size_t)(nel / qi->blck), (size_t)qi->type_size, &t.nbytes))
		return fail(w, ERR_INVAL, "tensor %s: byte size overflows", name);

	if (w->n_t == w->cap_t) {
		size_t cap = w->cap_t ? w->cap_t * 2 : 64;
		wtensor *ts = alloc_resize_array(w->ts, cap, sizeof(*ts));
		if (!ts)
			return fail(w, ERR_NOMEM, "out of memory adding tensor %s", name);
		w->ts = ts;
		w->cap_t = cap;
	}
	t.name = alloc_strdup(name);
	t.data = data ? alloc_bytes(t.nbytes) : alloc_zeroed(t.nbytes ? t.nbytes : 1, 1);
	if (!t.name || !t.data) {
		alloc_free(t.name);
		alloc_free(t.data);
		return fail(w, ERR_NOMEM, "out of memory adding tensor %s (%zu bytes)", name, t.nbytes);
	}
	if (data && t.nbytes)
		memcpy(t.data, data, t.nbytes);
	w->ts[w->n_t++] = t;
	if (buf)
		*buf = t.data;
	return 0;
}

/* ---------------------------------------------------------------- output */

static size_t pad_to(size_t n, size_t align)
{
	return (align - n % align) % align;
}

/* general.alignment as the reader will see it. */
static int alignment_of(const gguf_writer *w, size_t *align, char *err)
{
	*align = GGUF_DEFAULT_ALIGNMENT;
	for (size_t i = 0; i < w->n_kv; i++) {
		if (strcmp(w->kvs[i].key, "general.alignment"))
			continue;
		const uint8_t *v = w->kvs[i].val;
		uint32_t t = (uint32_t)v[0] | (uint32_t)v[1] << 8 | (uint32_t)v[2] << 16 | (uint32_t)v[3] << 24;
		if (t != GGUF_TYPE_UINT32)
			return err_set(err, ERR_INVAL, "general.alignment: type %s, want u32",
				       gguf_vtype_name((int)t));
		uint32_t a = (uint32_t)v[4] | (uint32_t)v[5] << 8 | (uint32_t)v[6] << 16 | (uint32_t)v[7] << 24;
		if (a == 0 || (a & (a - 1)))
			return err_set(err, ERR_INVAL, "general.alignment: %u is not a power of two", a);
		*align = a;
	}
	return 0;
}

/* Header, tensor table and padding up to the data section; *data_bytes is
   the size of the data section (each tensor padded). */
static int build_header(const gguf_writer *w, bytes *h, size_t *align, size_t *data_bytes, char *err)
{
	int rc;
	*h = (bytes){ 0 };
	if ((rc = gguf_writer_error(w, err)) != 0)
		return rc;
	if ((rc = alignment_of(w, align, err)) != 0)
		return rc;
	put_le(h, GGUF_MAGIC, 4);
	put_le(h, 3, 4);
	put_le(h, w->n_t, 8);
	put_le(h, w->n_kv, 8);
	for (size_t i = 0; i < w->n_kv; i++) {
		put_str(h, w->kvs[i].key, strlen(w->kvs[i].key));
		put(h, w->kvs[i].val, w->kvs[i].val_n);
	}
	size_t off = 0;
	for (size_t i = 0; i < w->n_t; i++) {
		const wtensor *t = &w->ts[i];
		put_str(h, t->name, strlen(t->name));
		put_le(h, (uint32_t)t->n_dims, 4);
		for (int d = 0; d < t->n_dims; d++)
			put_le(h, (uint64_t)t->ne[d], 8);
		put_le(h, (uint32_t)t->type, 4);
		put_le(h, off, 8);
		size_t padded = t->nbytes + pad_to(t->nbytes, *align);
		if (padded < t->nbytes || off + padded < off) {
			alloc_free(h->p);
			return err_set(err, ERR_INVAL, "tensor data does not fit in memory");
		}
		off += padded;
	}
	put_zeros(h, pad_to(h->n, *align));
	if (h->oom) {
		alloc_free(h->p);
		*h = (bytes){ 0 };
		return err_set(err, ERR_NOMEM, "out of memory writing the GGUF header");
	}
	*data_bytes = off;
	return 0;
}

int gguf_writer_write_mem(const gguf_writer *w, void **out, size_t *len, char err[ERR_LEN])
{
	bytes h;
	size_t align, data_bytes;
	int rc = build_header(w, &h, &align, &data_bytes, err);
	if (rc)
		return rc;
	size_t total = h.n + data_bytes;
	if (total < h.n) {
		alloc_free(h.p);
		return err_set(err, ERR_INVAL, "GGUF does not fit in memory");
	}
	uint8_t *p = alloc_bytes(total);
	if (!p) {
		alloc_free(h.p);
		return err_set(err, ERR_NOMEM, "out of memory writing GGUF (%zu bytes)", total);
	}
	memcpy(p, h.p, h.n);
	size_t at = h.n;
	for (size_t i = 0; i < w->n_t; i++) {
		const wtensor *t = &w->ts[i];
		size_t pad = pad_to(t->nbytes, align);
		memcpy(p + at, t->data, t->nbytes);
		memset(p + at + t->nbytes, 0, pad);
		at += t->nbytes + pad;
	}
	alloc_free(h.p);
	*out = p;
	*len = total;
	return 0;
}

static int write_all(int fd, const void *p, size_t n);

static int write_zeros(int fd, size_t n)
{
	static const uint8_t zeros[256];
	while (n) {
		size_t k = n < sizeof(zeros) ? n : sizeof(zeros);
		if (write_all(fd, zeros, k) < 0)
			return -1;
		n -= k;
	}
	return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
	const uint8_t *c = p;
	while (n) {
		ssize_t k = write(fd, c, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

int gguf_writer_write_file(const gguf_writer *w, const char *path, char err[ERR_LEN])
{
	bytes h;
	size_t align, data_bytes;
	char *tmp = NULL;
	int fd = -1;
	int rc = build_header(w, &h, &align, &data_bytes, err);
	if (rc)
		return rc;

	size_t n = strlen(path);
	tmp = alloc_bytes(n + sizeof(".tmp.XXXXXX"));
	if (!tmp) {
		rc = err_set(err, ERR_NOMEM, "out of memory writing %s", path);
		goto fail;
	}
	memcpy(tmp, path, n);
	memcpy(tmp + n, ".tmp.XXXXXX", sizeof(".tmp.XXXXXX"));
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		rc = err_set(err, ERR_IO, "%s: cannot create a temporary file: %s", path, strerror(errno));
		goto fail_name;
	}
	if (write_all(fd, h.p, h.n) < 0)
		goto fail_io;
	for (size_t i = 0; i < w->n_t; i++) {
		const wtensor *t = &w->ts[i];
		if (write_all(fd, t->data, t->nbytes) < 0 || write_zeros(fd, pad_to(t->nbytes, align)) < 0)
			goto fail_io;
	}
	/* mkstemp makes the file 0600; a model file is as readable as any other */
	if (fchmod(fd, 0644) < 0 || fsync(fd) < 0)
		goto fail_io;
	if (close(fd) < 0) {
		fd = -1;
		goto fail_io;
	}
	fd = -1;
	if (rename(tmp, path) < 0)
		goto fail_io;
	alloc_free(tmp);
	alloc_free(h.p);
	return 0;

fail_io:
	rc = err_set(err, ERR_IO, "%s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
	unlink(tmp);
fail_name:
	alloc_free(tmp);
fail:
	alloc_free(h.p);
	return rc;
}
