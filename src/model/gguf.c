/* gguf.c - GGUF v2/v3 reader: mmap, validate everything once, then O(1) access.
 *
 * File layout (little endian):
 *
 *   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv      x { str key | u32 vtype | value }      str = u64 len + bytes
 *                 ARRAY value = u32 elem_vtype + u64 count + count elements
 *   n_tensors x { str name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
 *   padding to general.alignment (default 32), then the data section;
 *   each tensor's data starts at data_start + offset (offset % alignment == 0).
 *
 * Design: one pass over the header with a bounds-checked cursor. Every read
 * goes through cur_take(), which refuses to move past the end, so a truncated
 * file fails at the first field that does not fit, and the error names it.
 * Counts are checked against the bytes left *before* anything is allocated
 * for them (an array of N strings needs at least 8*N bytes), so a hostile
 * count cannot make us allocate more than a small multiple of the file size.
 * The parse records, per kv, where its value lives; string arrays get an
 * offset table so element i is O(1). Keys and tensor names go into a hash
 * table (open addressing) so lookups are O(1) and duplicates are rejected.
 *
 * Invariants after gguf_open succeeds: every kv value and every tensor's data
 * range lie inside the mapping; tensor types are known ggml types with ne[0]
 * a multiple of the block; element counts and byte sizes fit in int64/size_t.
 *
 * Left out: writing (model/gguf_write.c), GGUF v1 (u32 counts;
 * obsolete since 2023) and big-endian files, which are rejected by name.
 */
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "kernels/qtypes.h"

typedef struct {
	char *key;            /* owned, NUL-terminated */
	gguf_vtype type;
	gguf_vtype elem_type; /* arrays */
	uint64_t n;           /* arrays: element count */
	const uint8_t *val;   /* scalar value, string (len prefix), or first array element */
	uint64_t *str_off;    /* string arrays: offset of element i's length prefix from val; owned */
} kv_entry;

struct gguf {
	const uint8_t *base;
	size_t size;
	int mapped;
	size_t map_len; /* of the mapping, when mapped */
	uint32_t version;
	size_t alignment;
	size_t header_bytes; /* magic .. end of the tensor table */
	int64_t n_kv;
	kv_entry *kvs;
	int64_t n_tensors;
	gguf_tensor *tensors;
	/* hash tables of indices + 1 (0 = empty), power-of-two sizes */
	int64_t *kv_hash;
	size_t kv_hash_n;
	int64_t *t_hash;
	size_t t_hash_n;
};

static const size_t vtype_size[GGUF_TYPE_COUNT] = {
	[GGUF_TYPE_UINT8] = 1, [GGUF_TYPE_INT8] = 1, [GGUF_TYPE_UINT16] = 2,
	[GGUF_TYPE_INT16] = 2, [GGUF_TYPE_UINT32] = 4, [GGUF_TYPE_INT32] = 4,
	[GGUF_TYPE_FLOAT32] = 4, [GGUF_TYPE_BOOL] = 1, [GGUF_TYPE_STRING] = 0,
	[GGUF_TYPE_ARRAY] = 0, [GGUF_TYPE_UINT64] = 8, [GGUF_TYPE_INT64] = 8,
	[GGUF_TYPE_FLOAT64] = 8,
};

const char *gguf_vtype_name(int t)
{
	static const char *names[GGUF_TYPE_COUNT] = {
		"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64",
	};
	return t >= 0 && t < GGUF_TYPE_COUNT ? names[t] : "?";
}

/* ---------------------------------------------------------------- cursor */

typedef struct {
	const uint8_t *p;
	size_t left;
} cursor;

static const uint8_t *cur_take(cursor *c, size_t n)
{
	if (n > c->left)
		return NULL;
	const uint8_t *p = c->p;
	c->p += n;
	c->left -= n;
	return p;
}

static uint32_t rd_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd_u64(const uint8_t *p)
{
	return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static int cur_u32(cursor *c, uint32_t *v)
{
	const uint8_t *p = cur_take(c, 4);
	if (!p)
		return -1;
	*v = rd_u32(p);
	return 0;
}

static int cur_u64(cursor *c, uint64_t *v)
{
	const uint8_t *p = cur_take(c, 8);
	if (!p)
		return -1;
	*v = rd_u64(p);
	return 0;
}

/* String: u64 length then bytes. */
static int cur_str(cursor *c, gguf_str *s)
{
	uint64_t n;
	if (cur_u64(c, &n) < 0 || n > c->left)
		return -1;
	s->n = n;
	s->p = (const char *)cur_take(c, (size_t)n);
	return 0;
}

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_bytes(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
	return h;
}

static size_t hash_size_for(int64_t n)
{
	size_t s = 16;
	while (s < (size_t)n * 2)
		s <<= 1;
	return s;
}

/* Insert index idx (0-based) under name; returns the existing index if the
   name is taken, else -1. */
static int64_t hash_insert(int64_t *tab, size_t tab_n, const char *name, int64_t idx,
			   const char *(*name_of)(const gguf *, int64_t), const gguf *g)
{
	size_t mask = tab_n - 1;
	size_t i = (size_t)hash_bytes(name, strlen(name)) & mask;
	while (tab[i]) {
		if (strcmp(name_of(g, tab[i] - 1), name) == 0)
			return tab[i] - 1;
		i = (i + 1) & mask;
	}
	tab[i] = idx + 1;
	return -1;
}

static int64_t hash_find(const int64_t *tab, size_t tab_n, const char *name,
			 const char *(*name_of)(const gguf *, int64_t), const gguf *g)
{
	if (!tab)
		return -1;
	size_t mask = tab_n - 1;
	size_t i = (size_t)hash_bytes(name, strlen(name)) & mask;
	while (tab[i]) {
		if (strcmp(name_of(g, tab[i] - 1), name) == 0)
			return tab[i] - 1;
		i = (i + 1) & mask;
	}
	return -1;
}

static const char *kv_name_of(const gguf *g, int64_t i)
{
	return g->kvs[i].key;
}

static const char *tensor_name_of(const gguf *g, int64_t i)
{
	return g->tensors[i].name;
}

/* ---------------------------------------------------------------- parsing */

/* Printable copy of a (possibly hostile) name for error messages. */
static void safe_name(char *dst, size_t cap, const char *s, uint64_t n)
{
	size_t j = 0;
	for (uint64_t i = 0; i < n && j + 1 < cap; i++)
		dst[j++] = (s[i] >= 32 && s[i] < 127) ? s[i] : '?';
	dst[j] = '\0';
}

static int parse_kv(gguf *g, cursor *c, int64_t idx, char *err)
{
	kv_entry *kv = &g->kvs[idx];
	gguf_str key;
	uint32_t type;
	char kname[96];

	if (cur_str(c, &key) < 0)
		return err_set(err, ERR_FORMAT, "metadata kv %lld: key runs past end of file", (long long)idx);
	safe_name(kname, sizeof(kname), key.p, key.n);
	if (key.n == 0)
		return err_set(err, ERR_FORMAT, "metadata kv %lld: empty key", (long long)idx);
	if (memchr(key.p, '\0', (size_t)key.n))
		return err_set(err, ERR_FORMAT, "metadata key '%s': contains a NUL byte", kname);
	kv->key = alloc_strndup(key.p, (size_t)key.n);
	if (!kv->key)
		return err_set(err, ERR_NOMEM, "out of memory reading metadata");
	if (cur_u32(c, &type) < 0)
		return err_set(err, ERR_FORMAT, "metadata key '%s': type runs past end of file", kname);
	if (type >= GGUF_TYPE_COUNT)
		return err_set(err, ERR_FORMAT, "metadata key '%s': unknown value type %u", kname, type);
	kv->type = (gguf_vtype)type;
	kv->val = c->p;

	if (type == GGUF_TYPE_STRING) {
		gguf_str s;
		if (cur_str(c, &s) < 0)
			return err_set(err, ERR_FORMAT, "metadata key '%s': string runs past end of file", kname);
		return 0;
	}
	if (type != GGUF_TYPE_ARRAY) {
		if (!cur_take(c, vtype_size[type]))
			return err_set(err, ERR_FORMAT, "metadata key '%s': value runs past end of file", kname);
		if (type == GGUF_TYPE_BOOL && kv->val[0] > 1)
			return err_set(err, ERR_FORMAT, "metadata key '%s': bool value %u is not 0 or 1",
				       kname, kv->val[0]);
		return 0;
	}

	uint32_t et;
	uint64_t n;
	if (cur_u32(c, &et) < 0 || cur_u64(c, &n) < 0)
		return err_set(err, ERR_FORMAT, "metadata key '%s': array header runs past end of file", kname);
	if (et >= GGUF_TYPE_COUNT)
		return err_set(err, ERR_FORMAT, "metadata key '%s': unknown array element type %u", kname, et);
	if (et == GGUF_TYPE_ARRAY)
		return err_set(err, ERR_FORMAT, "metadata key '%s': nested arrays are not supported", kname);
	kv->elem_type = (gguf_vtype)et;
	kv->n = n;
	kv->val = c->p;
	if (et != GGUF_TYPE_STRING) {
		size_t bytes;
		if (n > SIZE_MAX || alloc_mul_overflow((size_t)n, vtype_size[et], &bytes) || !cur_take(c, bytes))
			return err_set(err, ERR_FORMAT,
				       "metadata key '%s': array of %llu %s runs past end of file", kname,
				       (unsigned long long)n, gguf_vtype_name((int)et));
		return 0;
	}
	/* Each string needs at least its 8-byte length: bound n before allocating. */
	if (n > c->left / 8)
		return err_set(err, ERR_FORMAT,
			       "metadata key '%s': array of %llu strings cannot fit in the %zu bytes left",
			       kname, (unsigned long long)n, c->left);
	kv->str_off = alloc_array(n ? (size_t)n : 1, sizeof(uint64_t));
	if (!kv->str_off)
		return err_set(err, ERR_NOMEM, "out of memory reading metadata key '%s'", kname);
	for (uint64_t i = 0; i < n; i++) {
		gguf_str s;
		kv->str_off[i] = (uint64_t)(c->p - kv->val);
		if (cur_str(c, &s) < 0)
			return err_set(err, ERR_FORMAT,
				       "metadata key '%s': string %llu of %llu runs past end of file", kname,
				       (unsigned long long)i, (unsigned long long)n);
	}
	return 0;
}

static int parse_tensor(gguf *g, cursor *c, int64_t idx, char *err)
{
	gguf_tensor *t = &g->tensors[idx];
	gguf_str name;
	uint32_t n_dims, type;
	char tname[96];

	if (cur_str(c, &name) < 0)
		return err_set(err, ERR_FORMAT, "tensor %lld: name runs past end of file", (long long)idx);
	safe_name(tname, sizeof(tname), name.p, name.n);
	if (name.n == 0 || memchr(name.p, '\0', (size_t)name.n))
		return err_set(err, ERR_FORMAT, "tensor %lld: empty name or name with a NUL byte", (long long)idx);
	t->name = alloc_strndup(name.p, (size_t)name.n);
	if (!t->name)
		return err_set(err, ERR_NOMEM, "out of memory reading tensor table");
	if (cur_u32(c, &n_dims) < 0)
		return err_set(err, ERR_FORMAT, "tensor %s: n_dims runs past end of file", tname);
	if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
		return err_set(err, ERR_FORMAT, "tensor %s: n_dims %u is not in 1..%d", tname, n_dims,
			       GGUF_MAX_DIMS);
	t->n_dims = (int)n_dims;
	/* span is the product with zero dims read as 1: bounding it (not just
	   the element count, which a zero dim makes 0) keeps every partial
	   product a caller may form, such as ne[1]*ne[2]*ne[3] rows, in int64. */
	int64_t nel = 1, span = 1;
	for (int d = 0; d < GGUF_MAX_DIMS; d++) {
		uint64_t ne = 1;
		if ((uint32_t)d < n_dims && cur_u64(c, &ne) < 0)
			return err_set(err, ERR_FORMAT, "tensor %s: dims run past end of file", tname);
		if (ne > (uint64_t)INT64_MAX || __builtin_mul_overflow(span, (int64_t)(ne ? ne : 1), &span))
			return err_set(err, ERR_FORMAT, "tensor %s: dimensions overflow (ne[%d] = %llu)",
				       tname, d, (unsigned long long)ne);
		t->ne[d] = (int64_t)ne;
		nel *= (int64_t)ne; /* 0 <= nel <= span */
	}
	if (cur_u32(c, &type) < 0)
		return err_set(err, ERR_FORMAT, "tensor %s: type runs past end of file", tname);
	const qtype_info *qi = qtype_get((int)type);
	if (!qi)
		return err_set(err, ERR_FORMAT, "tensor %s: unknown tensor type %u", tname, type);
	t->type = (int)type;
	if (t->ne[0] % qi->blck)
		return err_set(err, ERR_FORMAT, "tensor %s: row length %lld is not a multiple of %s's block of %d",
			       tname, (long long)t->ne[0], qi->name, qi->blck);
	size_t nbytes;
	if (alloc_mul_overflow((size_t)(nel / qi->blck), (size_t)qi->type_size, &nbytes))
		return err_set(err, ERR_FORMAT, "tensor %s: byte size overflows", tname);
	t->nbytes = nbytes;
	if (cur_u64(c, &t->offset) < 0)
		return err_set(err, ERR_FORMAT, "tensor %s: offset runs past end of file", tname);
	if (t->offset % g->alignment)
		return err_set(err, ERR_FORMAT, "tensor %s: offset %llu is not a multiple of the alignment %zu",
			       tname, (unsigned long long)t->offset, g->alignment);
	return 0;
}

static int parse(gguf *g, char *err)
{
	cursor c = { g->base, g->size };
	uint32_t magic;
	uint64_t n_tensors, n_kv;
	int rc;

	if (cur_u32(&c, &magic) < 0)
		return err_set(err, ERR_FORMAT, "file too short for a GGUF header (%zu bytes)", g->size);
	if (magic != GGUF_MAGIC)
		return err_set(err, ERR_FORMAT, "bad magic 0x%08x: not a GGUF file", magic);
	if (cur_u32(&c, &g->version) < 0)
		return err_set(err, ERR_FORMAT, "file too short for a GGUF header (version)");
	if (g->version == 1)
		return err_set(err, ERR_UNSUPPORTED, "GGUF version 1 is not supported (re-convert the model)");
	if (g->version != 2 && g->version != 3) {
		if ((g->version & 0xffff) == 0)
			return err_set(err, ERR_UNSUPPORTED, "big-endian GGUF files are not supported");
		return err_set(err, ERR_UNSUPPORTED, "unsupported GGUF version %u", g->version);
	}
	if (cur_u64(&c, &n_tensors) < 0 || cur_u64(&c, &n_kv) < 0)
		return err_set(err, ERR_FORMAT, "file too short for a GGUF header (counts)");
	/* smallest kv: 8 (key len) + 1 (key) + 4 (type) + 1 (u8 value) = 14 bytes;
	   smallest tensor info: 8 + 1 + 4 + 8 + 4 + 8 = 33 bytes */
	if (n_kv > c.left / 14)
		return err_set(err, ERR_FORMAT, "n_kv %llu cannot fit in a file of %zu bytes",
			       (unsigned long long)n_kv, g->size);
	if (n_tensors > c.left / 33)
		return err_set(err, ERR_FORMAT, "n_tensors %llu cannot fit in a file of %zu bytes",
			       (unsigned long long)n_tensors, g->size);

	g->n_kv = (int64_t)n_kv;
	g->kvs = alloc_zeroed(n_kv ? (size_t)n_kv : 1, sizeof(kv_entry));
	g->kv_hash_n = hash_size_for(g->n_kv);
	g->kv_hash = alloc_zeroed(g->kv_hash_n, sizeof(int64_t));
	if (!g->kvs || !g->kv_hash)
		return err_set(err, ERR_NOMEM, "out of memory reading metadata");
	for (int64_t i = 0; i < g->n_kv; i++) {
		if ((rc = parse_kv(g, &c, i, err)) < 0) {
			g->n_kv = i + 1; /* free what was allocated so far */
			return rc;
		}
		if (hash_insert(g->kv_hash, g->kv_hash_n, g->kvs[i].key, i, kv_name_of, g) >= 0) {
			g->n_kv = i + 1;
			return err_set(err, ERR_FORMAT, "metadata key '%s' appears twice", g->kvs[i].key);
		}
	}

	g->alignment = GGUF_DEFAULT_ALIGNMENT;
	int64_t ai = gguf_find_key(g, "general.alignment");
	if (ai >= 0) {
		if (g->kvs[ai].type != GGUF_TYPE_UINT32)
			return err_set(err, ERR_FORMAT, "general.alignment: type %s, want u32",
				       gguf_vtype_name(g->kvs[ai].type));
		uint32_t a = rd_u32(g->kvs[ai].val);
		if (a == 0 || (a & (a - 1)))
			return err_set(err, ERR_FORMAT, "general.alignment: %u is not a power of two", a);
		g->alignment = a;
	}

	g->n_tensors = (int64_t)n_tensors;
	g->tensors = alloc_zeroed(n_tensors ? (size_t)n_tensors : 1, sizeof(gguf_tensor));
	g->t_hash_n = hash_size_for(g->n_tensors);
	g->t_hash = alloc_zeroed(g->t_hash_n, sizeof(int64_t));
	if (!g->tensors || !g->t_hash)
		return err_set(err, ERR_NOMEM, "out of memory reading the tensor table");
	for (int64_t i = 0; i < g->n_tensors; i++) {
		if ((rc = parse_tensor(g, &c, i, err)) < 0) {
			g->n_tensors = i + 1;
			return rc;
		}
		if (hash_insert(g->t_hash, g->t_hash_n, g->tensors[i].name, i, tensor_name_of, g) >= 0) {
			g->n_tensors = i + 1;
			return err_set(err, ERR_FORMAT, "tensor %s appears twice", g->tensors[i].name);
		}
	}

	size_t header = g->size - c.left;
	g->header_bytes = header;
	size_t data_start = (header + g->alignment - 1) / g->alignment * g->alignment;
	if (g->n_tensors > 0 && data_start > g->size)
		return err_set(err, ERR_FORMAT, "data section starts past end of file (%zu > %zu)", data_start,
			       g->size);
	size_t data_size = data_start <= g->size ? g->size - data_start : 0;
	for (int64_t i = 0; i < g->n_tensors; i++) {
		gguf_tensor *t = &g->tensors[i];
		if (t->offset > data_size || t->nbytes > data_size - t->offset)
			return err_set(err, ERR_FORMAT,
				       "tensor %s: data [%llu, +%zu) ends past end of file (data section is %zu bytes)",
				       t->name, (unsigned long long)t->offset, t->nbytes, data_size);
		t->data = g->base + data_start + t->offset;
	}
	return 0;
}

static gguf *open_common(const uint8_t *base, size_t size, int mapped, size_t map_len, char *err)
{
	gguf *g = alloc_zeroed(1, sizeof(*g));
	if (!g) {
		if (mapped)
			munmap((void *)base, map_len);
		err_set(err, ERR_NOMEM, "out of memory opening GGUF");
		return NULL;
	}
	g->base = base;
	g->size = size;
	g->mapped = mapped;
	g->map_len = map_len;
	if (parse(g, err) < 0) {
		gguf_close(g);
		return NULL;
	}
	return g;
}

gguf *gguf_open_mem(const void *data, size_t size, char err[ERR_LEN])
{
	return open_common(data, size, 0, size, err);
}

/* Transparent huge pages can back anonymous memory here: THP is "always" or
   "madvise" (not "[never]"). */
static int thp_available(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	return strstr(buf, "[never]") == NULL && n > 0;
}

/* Weights in huge pages (the default where THP is available; PDSERVE_WEIGHTS
   =mmap maps the file instead, PDSERVE_WEIGHTS=huge insists): the file is
   copied into anonymous memory advised MADV_HUGEPAGE. Page-cache pages of a
   file mapping are 4 KiB, and a decode step streams every weight once, so
   it pays a TLB miss per 4 KiB; measured on 110M Q8_0, 1 thread: 13% more
   decode tokens/s. The cost: the copy is private to the process (two
   servers on one host each hold one, where file mappings would share the
   page cache) and the load reads the file once. Returns NULL when not used
   or when anything fails (the caller then maps the file); *len gets the
   mapping's length. */
static void *huge_copy(int fd, size_t size, size_t *len, int want_huge)
{
	if (!want_huge)
		return NULL;
	const char *mode = getenv("PDSERVE_WEIGHTS");
	if (mode && strcmp(mode, "mmap") == 0)
		return NULL;
	if (!(mode && strcmp(mode, "huge") == 0) && !thp_available())
		return NULL;
	const size_t huge = (size_t)2 << 20;
	size_t want = (size + huge - 1) & ~(huge - 1);
	uint8_t *raw = mmap(NULL, want + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return NULL;
	uint8_t *p = (uint8_t *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
	if (p > raw)
		munmap(raw, (size_t)(p - raw));
	if (p + want < raw + want + huge)
		munmap(p + want, (size_t)(raw + want + huge - (p + want)));
	madvise(p, want, MADV_HUGEPAGE);
	for (size_t off = 0; off < size;) {
		ssize_t n = pread(fd, p + off, size - off, (off_t)off);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			munmap(p, want);
			return NULL;
		}
		off += (size_t)n;
	}
	mprotect(p, want, PROT_READ);
	*len = want;
	return p;
}

static gguf *open_path(const char *path, int want_huge, char err[ERR_LEN])
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err_set(err, ERR_IO, "%s: %s", path, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		err_set(err, ERR_IO, "%s: not a regular file", path);
		close(fd);
		return NULL;
	}
	size_t size = (size_t)st.st_size;
	if (size == 0) {
		close(fd);
		err_set(err, ERR_FORMAT, "%s: empty file", path);
		return NULL;
	}
	size_t map_len = size;
	void *p = huge_copy(fd, size, &map_len, want_huge);
	if (!p)
		p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		err_set(err, ERR_IO, "%s: mmap: %s", path, strerror(errno));
		return NULL;
	}
	char inner[ERR_LEN];
	gguf *g = open_common(p, size, 1, map_len, inner);
	if (!g)
		err_set(err, ERR_FORMAT, "%s: %s", path, inner);
	return g;
}

gguf *gguf_open(const char *path, char err[ERR_LEN])
{
	return open_path(path, 0, err);
}

gguf *gguf_open_weights(const char *path, char err[ERR_LEN])
{
	return open_path(path, 1, err);
}

void gguf_close(gguf *g)
{
	if (!g)
		return;
	for (int64_t i = 0; g->kvs && i < g->n_kv; i++) {
		alloc_free(g->kvs[i].key);
		alloc_free(g->kvs[i].str_off);
	}
	for (int64_t i = 0; g->tensors && i < g->n_tensors; i++)
		alloc_free((char *)g->tensors[i].name);
	alloc_free(g->kvs);
	alloc_free(g->tensors);
	alloc_free(g->kv_hash);
	alloc_free(g->t_hash);
	if (g->mapped)
		munmap((void *)g->base, g->map_len);
	alloc_free(g);
}

/* ---------------------------------------------------------------- accessors */

uint32_t gguf_version(const gguf *g) { return g->version; }
size_t gguf_alignment(const gguf *g) { return g->alignment; }
size_t gguf_file_size(const gguf *g) { return g->size; }
int64_t gguf_n_kv(const gguf *g) { return g->n_kv; }
const char *gguf_key(const gguf *g, int64_t i) { return g->kvs[i].key; }
gguf_vtype gguf_kv_type(const gguf *g, int64_t i) { return g->kvs[i].type; }
int64_t gguf_n_tensors(const gguf *g) { return g->n_tensors; }
const gguf_tensor *gguf_tensor_at(const gguf *g, int64_t i) { return &g->tensors[i]; }

int64_t gguf_find_key(const gguf *g, const char *key)
{
	return hash_find(g->kv_hash, g->kv_hash_n, key, kv_name_of, g);
}

const gguf_tensor *gguf_find_tensor(const gguf *g, const char *name)
{
	int64_t i = hash_find(g->t_hash, g->t_hash_n, name, tensor_name_of, g);
	return i < 0 ? NULL : &g->tensors[i];
}

uint64_t gguf_fingerprint(const gguf *g)
{
	uint64_t h = hash_bytes((const char *)g->base, g->header_bytes);
	return (h ^ (uint64_t)g->size) * 1099511628211ull;
}

int64_t gguf_tensor_nelements(const gguf_tensor *t)
{
	return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

/* Scalar of a numeric type at p, as int64 (ok=0) or double. */
static int scalar_i64(gguf_vtype t, const uint8_t *p, int64_t *out, uint64_t *uout, int *is_unsigned_big)
{
	*is_unsigned_big = 0;
	switch (t) {
	case GGUF_TYPE_UINT8: *out = p[0]; break;
	case GGUF_TYPE_INT8: *out = (int8_t)p[0]; break;
	case GGUF_TYPE_BOOL: *out = p[0]; break;
	case GGUF_TYPE_UINT16: *out = (uint16_t)(p[0] | p[1] << 8); break;
	case GGUF_TYPE_INT16: *out = (int16_t)(uint16_t)(p[0] | p[1] << 8); break;
	case GGUF_TYPE_UINT32: *out = rd_u32(p); break;
	case GGUF_TYPE_INT32: *out = (int32_t)rd_u32(p); break;
	case GGUF_TYPE_INT64: *out = (int64_t)rd_u64(p); break;
	case GGUF_TYPE_UINT64:
		*uout = rd_u64(p);
		if (*uout > (uint64_t)INT64_MAX)
			*is_unsigned_big = 1;
		*out = (int64_t)*uout;
		break;
	default: return -1;
	}
	return 0;
}

static double scalar_f64(gguf_vtype t, const uint8_t *p)
{
	int64_t i;
	uint64_t u = 0;
	int big;
	if (t == GGUF_TYPE_FLOAT32) {
		uint32_t b = rd_u32(p);
		float f;
		memcpy(&f, &b, 4);
		return f;
	}
	if (t == GGUF_TYPE_FLOAT64) {
		uint64_t b = rd_u64(p);
		double d;
		memcpy(&d, &b, 8);
		return d;
	}
	if (scalar_i64(t, p, &i, &u, &big) < 0)
		return 0;
	return big ? (double)u : (double)i;
}

static const kv_entry *lookup(const gguf *g, const char *key)
{
	int64_t i = gguf_find_key(g, key);
	return i < 0 ? NULL : &g->kvs[i];
}

static int get_int(const gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out, char *err)
{
	const kv_entry *kv = lookup(g, key);
	int64_t v;
	uint64_t u;
	int big;
	if (!kv)
		return ERR_NOTFOUND;
	if (kv->type == GGUF_TYPE_BOOL || scalar_i64(kv->type, kv->val, &v, &u, &big) < 0)
		return err_set(err, ERR_FORMAT, "metadata %s: type %s, want an integer", key,
			       gguf_vtype_name(kv->type));
	if (big || v < lo || v > hi)
		return err_set(err, ERR_FORMAT, "metadata %s: value out of range", key);
	*out = v;
	return 0;
}

int gguf_get_u32(const gguf *g, const char *key, uint32_t *out, char *err)
{
	int64_t v;
	int rc = get_int(g, key, 0, UINT32_MAX, &v, err);
	if (rc == 0)
		*out = (uint32_t)v;
	return rc;
}

int gguf_get_i64(const gguf *g, const char *key, int64_t *out, char *err)
{
	return get_int(g, key, INT64_MIN, INT64_MAX, out, err);
}

int gguf_get_f32(const gguf *g, const char *key, float *out, char *err)
{
	const kv_entry *kv = lookup(g, key);
	if (!kv)
		return ERR_NOTFOUND;
	if (kv->type == GGUF_TYPE_STRING || kv->type == GGUF_TYPE_ARRAY || kv->type == GGUF_TYPE_BOOL)
		return err_set(err, ERR_FORMAT, "metadata %s: type %s, want a number", key,
			       gguf_vtype_name(kv->type));
	*out = (float)scalar_f64(kv->type, kv->val);
	return 0;
}

int gguf_get_bool(const gguf *g, const char *key, bool *out, char *err)
{
	const kv_entry *kv = lookup(g, key);
	int64_t v;
	uint64_t u;
	int big;
	if (!kv)
		return ERR_NOTFOUND;
	if (scalar_i64(kv->type, kv->val, &v, &u, &big) < 0)
		return err_set(err, ERR_FORMAT, "metadata %s: type %s, want bool", key,
			       gguf_vtype_name(kv->type));
	*out = v != 0 || big;
	return 0;
}

int gguf_get_str(const gguf *g, const char *key, gguf_str *out, char *err)
{
	const kv_entry *kv = lookup(g, key);
	if (!kv)
		return ERR_NOTFOUND;
	if (kv->type != GGUF_TYPE_STRING)
		return err_set(err, ERR_FORMAT, "metadata %s: type %s, want str", key,
			       gguf_vtype_name(kv->type));
	out->n = rd_u64(kv->val);
	out->p = (const char *)kv->val + 8;
	return 0;
}

double gguf_kv_number(const gguf *g, int64_t i)
{
	const kv_entry *kv = &g->kvs[i];
	if (kv->type == GGUF_TYPE_STRING || kv->type == GGUF_TYPE_ARRAY)
		return 0;
	return scalar_f64(kv->type, kv->val);
}

gguf_str gguf_kv_str(const gguf *g, int64_t i)
{
	const kv_entry *kv = &g->kvs[i];
	gguf_str s = { NULL, 0 };
	if (kv->type == GGUF_TYPE_STRING) {
		s.n = rd_u64(kv->val);
		s.p = (const char *)kv->val + 8;
	}
	return s;
}

int gguf_get_arr(const gguf *g, const char *key, int want, gguf_arr *out, char *err)
{
	int64_t i = gguf_find_key(g, key);
	if (i < 0)
		return ERR_NOTFOUND;
	const kv_entry *kv = &g->kvs[i];
	if (kv->type != GGUF_TYPE_ARRAY)
		return err_set(err, ERR_FORMAT, "metadata %s: type %s, want an array", key,
			       gguf_vtype_name(kv->type));
	if (want >= 0 && kv->elem_type != (gguf_vtype)want)
		return err_set(err, ERR_FORMAT, "metadata %s: array of %s, want %s", key,
			       gguf_vtype_name(kv->elem_type), gguf_vtype_name(want));
	out->type = kv->elem_type;
	out->n = kv->n;
	out->data = kv->val;
	out->kv = i;
	return 0;
}

gguf_str gguf_arr_str(const gguf *g, const gguf_arr *arr, uint64_t i)
{
	const kv_entry *kv = &g->kvs[arr->kv];
	const uint8_t *p = kv->val + kv->str_off[i];
	gguf_str s = { (const char *)p + 8, rd_u64(p) };
	return s;
}

double gguf_arr_f64(const gguf_arr *arr, uint64_t i)
{
	return scalar_f64(arr->type, (const uint8_t *)arr->data + i * vtype_size[arr->type]);
}

int64_t gguf_arr_i64(const gguf_arr *arr, uint64_t i)
{
	int64_t v = 0;
	uint64_t u;
	int big;
	scalar_i64(arr->type, (const uint8_t *)arr->data + i * vtype_size[arr->type], &v, &u, &big);
	return v;
}
