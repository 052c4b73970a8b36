/* gguf_write.h - build a GGUF v3 file in memory, then write it out atomically.
 *
 * A gguf_writer collects metadata (every GGUF value type, arrays of each,
 * string arrays) and tensors (name, type, dims, data), then writes the file:
 * header, tensor table, padding to the alignment, and each tensor's data
 * padded to the alignment, in the order they were added. The alignment is
 * general.alignment when that key is set (a u32 power of two), else 32 -- the
 * same rule gguf.c reads with. The output depends only on the calls made, so
 * the same calls give the same bytes.
 *
 * Errors are sticky: the first failing call records its message and code, and
 * later calls do nothing and return the same code. gguf_writer_write_file()
 * and gguf_writer_write_mem() report it, so a builder may check only the
 * final write. Setting a key that exists replaces its value in place.
 *
 * Ownership: keys, names, strings and tensor data are copied; nothing passed
 * in is kept.
 */
#ifndef PDSERVE_MODEL_GGUF_WRITE_H
#define PDSERVE_MODEL_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "model/gguf.h"

typedef struct gguf_writer gguf_writer;

/* NULL only when out of memory. */
gguf_writer *gguf_writer_create(void);
void gguf_writer_destroy(gguf_writer *w); /* NULL is fine */

/* Scalars. 0 or the sticky error (ERR_INVAL: empty key; ERR_NOMEM). */
int gguf_writer_set_u8(gguf_writer *w, const char *key, uint8_t v);
int gguf_writer_set_i8(gguf_writer *w, const char *key, int8_t v);
int gguf_writer_set_u16(gguf_writer *w, const char *key, uint16_t v);
int gguf_writer_set_i16(gguf_writer *w, const char *key, int16_t v);
int gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_set_i64(gguf_writer *w, const char *key, int64_t v);
int gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
int gguf_writer_set_f64(gguf_writer *w, const char *key, double v);
int gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(gguf_writer *w, const char *key, const char *s); /* NUL-terminated */
int gguf_writer_set_strn(gguf_writer *w, const char *key, const char *s, size_t n);

/* Array of n numeric elements of type elem (not STRING or ARRAY), given as a
   host array of the matching C type (uint8_t for u8 and bool, float for f32...). */
int gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_vtype elem, const void *data, size_t n);
/* Array of n NUL-terminated strings. */
int gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, size_t n);

/* Add tensor name (unique) of ggml type `type` (kernels/qtypes.h) with
   n_dims (1..4) dims ne[] (ne[0] = row length, a multiple of the type's
   block). data (qtype_row_size(type, ne[0]) * rows bytes) is copied; NULL
   leaves it zero. When buf is not NULL, *buf receives the writer's copy
   (owned by the writer, valid until destroy) so a caller can fill it in
   place. ERR_INVAL (bad name, type, dims, duplicate) or ERR_NOMEM. */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
			   const void *data, void **buf);

/* The sticky error: 0 or its code, message copied to err (may be NULL). */
int gguf_writer_error(const gguf_writer *w, char *err);

/* Serialize into a buffer the caller frees with alloc_free(). */
int gguf_writer_write_mem(const gguf_writer *w, void **out, size_t *len, char err[ERR_LEN]);
/* Write to path atomically: a temporary file in the same directory, fsync,
   then rename over path. ERR_IO (message names the path) or the sticky error. */
int gguf_writer_write_file(const gguf_writer *w, const char *path, char err[ERR_LEN]);

#endif
