/* gguf.h - read-only GGUF (v2, v3) files: metadata and the tensor table.
 *
 * gguf_open() mmaps the file read-only and validates everything up front:
 * every count against the bytes left, every size product for overflow, every
 * value type and tensor type for range, tensor offsets for alignment and
 * bounds. After a successful open every accessor below is safe and O(1)
 * (key lookup is a hash). A bad file gives one error naming the field or the
 * tensor; it never crashes the caller.
 *
 * Strings in GGUF are length-prefixed and not NUL-terminated, so they come
 * back as gguf_str views into the mapping (valid until gguf_close). Keys and
 * tensor names are also available NUL-terminated (copied at open).
 *
 * Ownership: the gguf owns the mapping; tensor data pointers, gguf_str views
 * and array pointers are borrowed from it.
 */
#ifndef PDSERVE_MODEL_GGUF_H
#define PDSERVE_MODEL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef enum {
	GGUF_TYPE_UINT8 = 0,
	GGUF_TYPE_INT8 = 1,
	GGUF_TYPE_UINT16 = 2,
	GGUF_TYPE_INT16 = 3,
	GGUF_TYPE_UINT32 = 4,
	GGUF_TYPE_INT32 = 5,
	GGUF_TYPE_FLOAT32 = 6,
	GGUF_TYPE_BOOL = 7,
	GGUF_TYPE_STRING = 8,
	GGUF_TYPE_ARRAY = 9,
	GGUF_TYPE_UINT64 = 10,
	GGUF_TYPE_INT64 = 11,
	GGUF_TYPE_FLOAT64 = 12,
	GGUF_TYPE_COUNT = 13,
} gguf_vtype;

#define GGUF_MAGIC 0x46554747u /* "GGUF" little endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

typedef struct {
	const char *p; /* not NUL-terminated */
	uint64_t n;
} gguf_str;

typedef struct {
	const char *name;   /* NUL-terminated, owned by the gguf */
	int type;           /* QTYPE_* id (kernels/qtypes.h); always a known type */
	int n_dims;         /* 1..4 */
	int64_t ne[GGUF_MAX_DIMS]; /* ne[0] = row length (contiguous); unused dims are 1 */
	uint64_t offset;    /* from the start of the data section */
	size_t nbytes;
	const void *data;   /* into the mapping */
} gguf_tensor;

typedef struct gguf gguf;

/* Open and validate path. NULL on failure with one sentence in err. */
gguf *gguf_open(const char *path, char err[ERR_LEN]);
/* The same for a model about to run: the bytes go into huge pages where the
   OS allows (see huge_copy in gguf.c; PDSERVE_WEIGHTS=mmap|huge). */
gguf *gguf_open_weights(const char *path, char err[ERR_LEN]);
/* Same over a caller's buffer (borrowed; must outlive the gguf). For tests and fuzzing. */
gguf *gguf_open_mem(const void *data, size_t size, char err[ERR_LEN]);
void gguf_close(gguf *g); /* NULL is fine */

uint32_t gguf_version(const gguf *g);
size_t gguf_alignment(const gguf *g);
size_t gguf_file_size(const gguf *g);

/* Metadata. Index i is in [0, gguf_n_kv). */
int64_t gguf_n_kv(const gguf *g);
int64_t gguf_find_key(const gguf *g, const char *key); /* -1 if absent */
const char *gguf_key(const gguf *g, int64_t i);        /* NUL-terminated */
gguf_vtype gguf_kv_type(const gguf *g, int64_t i);

/* Typed getters by key. 0, ERR_NOTFOUND (key absent; *out untouched) or
   ERR_FORMAT (present with an incompatible type; message in err, may be NULL).
   Integer getters accept any integer type whose value fits the target;
   gguf_get_f32 accepts F32, F64 and integers; gguf_get_bool accepts BOOL and
   integers. */
int gguf_get_u32(const gguf *g, const char *key, uint32_t *out, char *err);
int gguf_get_i64(const gguf *g, const char *key, int64_t *out, char *err);
int gguf_get_f32(const gguf *g, const char *key, float *out, char *err);
int gguf_get_bool(const gguf *g, const char *key, bool *out, char *err);
int gguf_get_str(const gguf *g, const char *key, gguf_str *out, char *err);

/* Scalar value of kv i as a double / string (for printing). */
double gguf_kv_number(const gguf *g, int64_t i);
gguf_str gguf_kv_str(const gguf *g, int64_t i); /* STRING kvs only; {NULL,0} otherwise */

/* Arrays. gguf_get_arr: 0, ERR_NOTFOUND, or ERR_FORMAT when key is not an array
   (or, with want >= 0, its elements are not of type want). */
typedef struct {
	gguf_vtype type; /* element type; never ARRAY (nested arrays are rejected) */
	uint64_t n;
	const void *data; /* raw little-endian elements for numeric types (may be unaligned) */
	int64_t kv;       /* index of the kv, for gguf_arr_str */
} gguf_arr;
int gguf_get_arr(const gguf *g, const char *key, int want, gguf_arr *out, char *err);
/* Element i of a STRING array (i < arr->n). */
gguf_str gguf_arr_str(const gguf *g, const gguf_arr *arr, uint64_t i);
/* Element i of a numeric array as double / int64 (caller checks the type). */
double gguf_arr_f64(const gguf_arr *arr, uint64_t i);
int64_t gguf_arr_i64(const gguf_arr *arr, uint64_t i);

/* Tensors. */
int64_t gguf_n_tensors(const gguf *g);
const gguf_tensor *gguf_tensor_at(const gguf *g, int64_t i);
const gguf_tensor *gguf_find_tensor(const gguf *g, const char *name); /* NULL if absent */
int64_t gguf_tensor_nelements(const gguf_tensor *t);

const char *gguf_vtype_name(int vtype);

/* FNV-1a 64 of the header (metadata and tensor table) and the file size:
   equal for the same file, different for another model or quantization. */
uint64_t gguf_fingerprint(const gguf *g);

#endif
