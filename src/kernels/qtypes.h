/* qtypes.h - ggml tensor types: ids, block geometry, and the block structs.
 *
 * Ids are GGUF's (= ggml's enum ggml_type) so a tensor's type field indexes
 * qtype_table directly. The table lists every type ggml has ever assigned an
 * id, so a GGUF parser can size any tensor it meets; `supported` marks the
 * ones pdserve can compute with. Block layouts follow the GGUF specification
 * (one block = blck elements stored in type_size bytes).
 */
#ifndef PDSERVE_KERNELS_QTYPES_H
#define PDSERVE_KERNELS_QTYPES_H

#include <stddef.h>
#include <stdint.h>

enum {
	QTYPE_F32 = 0,
	QTYPE_F16 = 1,
	QTYPE_Q4_0 = 2,
	QTYPE_Q4_1 = 3,
	QTYPE_Q5_0 = 6,
	QTYPE_Q5_1 = 7,
	QTYPE_Q8_0 = 8,
	QTYPE_Q8_1 = 9,
	QTYPE_Q2_K = 10,
	QTYPE_Q3_K = 11,
	QTYPE_Q4_K = 12,
	QTYPE_Q5_K = 13,
	QTYPE_Q6_K = 14,
	QTYPE_Q8_K = 15,
	QTYPE_BF16 = 30,
	QTYPE_COUNT = 40, /* one past the largest id in the table */
};

typedef struct {
	const char *name; /* "Q4_K"; NULL for ids ggml never used or retired */
	int blck;         /* elements per block */
	int type_size;    /* bytes per block */
	int supported;    /* pdserve has kernels for it as a weight type */
	int vec_dot_type; /* activation format a weight row of this type is dotted with */
} qtype_info;

/* NULL when id is out of range or not a known type. */
const qtype_info *qtype_get(int type);
/* Name for messages: "Q4_K", or "type 123" (thread-local buffer for unknown ids). */
const char *qtype_name(int type);
/* Bytes of a row of n elements; 0 when n is not a multiple of the block or type unknown. */
size_t qtype_row_size(int type, int64_t n);

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct { uint16_t d; uint8_t qs[QK4_0 / 2]; } block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QK4_1 / 2]; } block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;
typedef struct { uint16_t d; int8_t qs[QK8_0]; } block_q8_0;
typedef struct { uint16_t d, s; int8_t qs[QK8_1]; } block_q8_1; /* s = d * sum(qs) */
typedef struct {
	uint8_t scales[QK_K / 16]; /* 4-bit scale | 4-bit min per 16 */
	uint8_t qs[QK_K / 4];
	uint16_t d, dmin;
} block_q2_k;
typedef struct {
	uint8_t hmask[QK_K / 8];
	uint8_t qs[QK_K / 4];
	uint8_t scales[12];
	uint16_t d;
} block_q3_k;
typedef struct {
	uint16_t d, dmin;
	uint8_t scales[K_SCALE_SIZE]; /* 8 x (6-bit scale, 6-bit min) */
	uint8_t qs[QK_K / 2];
} block_q4_k;
typedef struct {
	uint16_t d, dmin;
	uint8_t scales[K_SCALE_SIZE];
	uint8_t qh[QK_K / 8];
	uint8_t qs[QK_K / 2];
} block_q5_k;
typedef struct {
	uint8_t ql[QK_K / 2];      /* low 4 bits */
	uint8_t qh[QK_K / 4];      /* high 2 bits */
	int8_t scales[QK_K / 16];  /* 8-bit scale per 16 */
	uint16_t d;
} block_q6_k;
typedef struct {
	float d;
	int8_t qs[QK_K];
	int16_t bsums[QK_K / 16]; /* sum of each 16 qs */
} block_q8_k;

_Static_assert(sizeof(block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1 block");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0 block");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1 block");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(block_q8_1) == 36, "q8_1 block");
_Static_assert(sizeof(block_q2_k) == 84, "q2_k block");
_Static_assert(sizeof(block_q3_k) == 110, "q3_k block");
_Static_assert(sizeof(block_q4_k) == 144, "q4_k block");
_Static_assert(sizeof(block_q5_k) == 176, "q5_k block");
_Static_assert(sizeof(block_q6_k) == 210, "q6_k block");
_Static_assert(sizeof(block_q8_k) == 292, "q8_k block");

#endif
