/* quants.c - reference (de)quantization and dot products for the ggml types: the spec.
 *
 * Every function here is a plain loop meant to be read next to the block
 * structs in qtypes.h. Quantized blocks are handled in two steps: unpack a
 * block into integer codes and its scales (the unpack_* helpers, which are
 * the only places that know a bit layout), then either multiply out
 * (to_float) or dot the codes with the int8 activation codes (vec_dot).
 *
 * Numerics follow ggml's CPU backend as built for x86 with AVX2/AVX-512,
 * because pdserve's logits are compared with llama.cpp's:
 *
 *  - Activations to Q8_0 / Q8_1 (quantize_row_q8_0/_1 in ggml-cpu/arch/x86):
 *    amax = max |x| over the 32 values; d = amax / 127 (stored as f16, round
 *    to nearest even); codes = round_half_even(x * (127 / amax)). Note the
 *    multiplier is 127/amax computed directly, not 1/d, and the rounding is
 *    vroundps' nearest-even, not roundf's half-away-from-zero (that is what
 *    ggml's generic quantize_row_q8_0_ref does; the two differ on exact .5
 *    ties and, through 1/d vs 127/amax, on values near a .5 boundary).
 *    Q8_1 also stores s = f16(d * sum(codes)) with the unrounded f32 d.
 *  - Activations to Q8_K (quantize_row_q8_K_ref, which x86 uses as is): max =
 *    the element of largest |x| (the first one on ties), iscale = -127 / max
 *    (signed: the largest element always maps to -127), codes =
 *    round_half_even(iscale * x) capped at 127, d = 1 / iscale as f32 (so
 *    d has the opposite sign of max), bsums[k] = sum of codes 16k..16k+15.
 *    An all-zero block gets d = 0 and zero codes.
 *  - Dot products: integer sums per block are exact; each block then adds
 *    (d_x * d_y) * isum to an f32 accumulator, the scale product formed
 *    first as ggml's x86 kernels do (its generic C does (isum * d_x) * d_y).
 *    Q4_1/Q5_1 add m_x * s_y per block into a separate sum added at the end;
 *    the K-quants with a min (Q4_K, Q5_K) subtract dmin_x * d_y * sum_j
 *    min_j * (bsums of sub-block j), also summed separately. The SIMD
 *    kernels spread the same terms over vector lanes, so their f32 results
 *    differ from these in the last bits; the integer parts are identical.
 *  - F16/BF16/F32 dots accumulate in double, in index order. Every product
 *    of two f16, bf16 or f32 values is exact in double (at most 48
 *    significant bits), so the double sum is the correctly rounded result
 *    for all practical n, which makes this the oracle SIMD versions are
 *    measured against (ggml's scalar fallback also sums in double; its
 *    SIMD path uses f32 lanes and differs by a few ulps).
 *  - Q4_0 as a weight type (model synthesis) is quantize_row_q4_0_ref:
 *    d = max / -8 with max the signed element of largest |x|, codes =
 *    min(15, trunc(x / d + 8.5)).
 *
 * Alignment: block pointers (void *) may have any alignment; each block is
 * copied into a local struct with memcpy before use, and output blocks are
 * built locally and copied out. float pointers must be float-aligned.
 *
 *  - Q4_K and Q6_K as weight types (benchmark models: bench/requant.c makes
 *    Q4_K_M files from F16/F32 ones) use simple rules, not llama-quantize's
 *    error-minimising search: Q4_K per 32-element sub-block scale =
 *    (max - min) / 15 with min capped at 0, codes round((x - min) / scale),
 *    the 6-bit sub-block scales and mins relative to the block's largest;
 *    Q6_K per 16-element sub-block scale = (signed max) / -32, int8 scales
 *    relative to the largest |scale| / 127, codes round(x / scale) + 32.
 *    Valid blocks any reader decodes the same way; about 1.2x the error of
 *    llama-quantize's output.
 *
 * Left out: quantizers for the other weight types (llama.cpp's quantize tool
 * makes those files), the IQ and ternary types, Q2_K/Q3_K.
 * n must be a multiple of the type's block (32 or 256): checking that is the
 * caller's job (kern_matmul sizes rows by the weight type); it is asserted.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "kernels/kernels_int.h"

/* ---- small helpers ------------------------------------------------------ */

static inline float f16(uint16_t h)
{
	return half_f16_to_f32(h);
}

static inline uint16_t load_u16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}

static inline void store_u16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

/* v rounded to the nearest integer, ties to even (vroundps imm 0, and ggml's
   nearest_int trick), clamped to [lo, hi]. For finite activations the clamp
   never changes anything; it only keeps inf/nan input defined (nan -> 0). */
static inline int round_even_clamp(float v, int lo, int hi)
{
	if (v != v)
		return 0;
	float r = nearbyintf(v);
	if (r < (float)lo)
		return lo;
	if (r > (float)hi)
		return hi;
	return (int)r;
}

/* ---- unpacking: the bit layouts ---------------------------------------- */

/* Q4_0, Q4_1: byte j holds element j in its low nibble, element j+16 in its
   high nibble. Codes are 0..15 (Q4_0 subtracts 8 when used). */
static void unpack_nibbles32(const uint8_t qs[16], int q[32])
{
	for (int j = 0; j < 16; j++) {
		q[j] = qs[j] & 15;
		q[j + 16] = qs[j] >> 4;
	}
}

/* Q5_0, Q5_1: nibbles as Q4_0, plus a 32-bit little-endian qh whose bit i is
   bit 4 of element i. Codes are 0..31 (Q5_0 subtracts 16 when used). */
static void unpack_q5(const uint8_t qs[16], const uint8_t qh_bytes[4], int q[32])
{
	uint32_t qh = (uint32_t)qh_bytes[0] | (uint32_t)qh_bytes[1] << 8 |
		      (uint32_t)qh_bytes[2] << 16 | (uint32_t)qh_bytes[3] << 24;
	unpack_nibbles32(qs, q);
	for (int i = 0; i < 32; i++)
		q[i] |= (int)((qh >> i) & 1) << 4;
}

/* Q4_K, Q5_K: eight sub-blocks of 32 elements, each with a 6-bit scale and a
   6-bit min, packed into 12 bytes:
     bytes 0-3   bits 0-5: scale of sub-blocks 0-3;  bits 6-7: scale 4-7 bits 4-5
     bytes 4-7   bits 0-5: min of sub-blocks 0-3;    bits 6-7: min 4-7 bits 4-5
     bytes 8-11  bits 0-3: scale 4-7 bits 0-3;       bits 4-7: min 4-7 bits 0-3 */
static void unpack_k_scales(const uint8_t s[K_SCALE_SIZE], int sc[8], int mn[8])
{
	for (int j = 0; j < 4; j++) {
		sc[j] = s[j] & 63;
		mn[j] = s[j + 4] & 63;
		sc[j + 4] = (s[j + 8] & 15) | (s[j] >> 6) << 4;
		mn[j + 4] = (s[j + 8] >> 4) | (s[j + 4] >> 6) << 4;
	}
}

/* Q4_K codes: the 256 elements are 4 chunks of 64; chunk c uses qs[32c..32c+31],
   low nibbles for elements 64c+l, high nibbles for 64c+32+l (l < 32). So
   sub-block 2c is the low nibbles and 2c+1 the high nibbles. Codes 0..15. */
static void unpack_q4_k(const block_q4_k *b, int q[QK_K])
{
	for (int c = 0; c < 4; c++)
		for (int l = 0; l < 32; l++) {
			q[64 * c + l] = b->qs[32 * c + l] & 15;
			q[64 * c + 32 + l] = b->qs[32 * c + l] >> 4;
		}
}

/* Q5_K codes: nibbles as Q4_K; bit 4 of element 64c+l is bit 2c of qh[l], of
   element 64c+32+l bit 2c+1 of qh[l]. Codes 0..31. */
static void unpack_q5_k(const block_q5_k *b, int q[QK_K])
{
	for (int c = 0; c < 4; c++)
		for (int l = 0; l < 32; l++) {
			int lo = b->qs[32 * c + l] & 15, hi = b->qs[32 * c + l] >> 4;
			q[64 * c + l] = lo | ((b->qh[l] >> (2 * c)) & 1) << 4;
			q[64 * c + 32 + l] = hi | ((b->qh[l] >> (2 * c + 1)) & 1) << 4;
		}
}

/* Q6_K codes, -32..31: two halves of 128 elements, each using 64 bytes of ql
   and 32 bytes of qh. Within half h, element 32k+l (k < 4, l < 32) takes
     low 4 bits: ql[64h + l + 32*(k & 1)], low nibble for k < 2, high for k >= 2
     high 2 bits: bits 2k, 2k+1 of qh[32h + l]
   and its scale is scales[8h + 2k + l/16] (one int8 scale per 16 elements,
   which makes scale index = element index / 16 overall). */
static void unpack_q6_k(const block_q6_k *b, int q[QK_K])
{
	for (int h = 0; h < 2; h++)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < 32; l++) {
				uint8_t lo_byte = b->ql[64 * h + l + 32 * (k & 1)];
				int lo = k < 2 ? lo_byte & 15 : lo_byte >> 4;
				int hi = (b->qh[32 * h + l] >> (2 * k)) & 3;
				q[128 * h + 32 * k + l] = (lo | hi << 4) - 32;
			}
}

/* ---- to_float ------------------------------------------------------------ */

static void to_float_f32(const void *src, float *dst, int64_t n)
{
	memcpy(dst, src, (size_t)n * sizeof(float));
}

static void to_float_f16(const void *src, float *dst, int64_t n)
{
	const uint8_t *p = src;
	for (int64_t i = 0; i < n; i++)
		dst[i] = half_f16_to_f32(load_u16(p + 2 * i));
}

static void to_float_bf16(const void *src, float *dst, int64_t n)
{
	const uint8_t *p = src;
	for (int64_t i = 0; i < n; i++)
		dst[i] = half_bf16_to_f32(load_u16(p + 2 * i));
}

static void to_float_q4_0(const void *src, float *dst, int64_t n)
{
	assert(n % QK4_0 == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK4_0; i++, dst += QK4_0) {
		block_q4_0 b;
		int q[32];
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		unpack_nibbles32(b.qs, q);
		float d = f16(b.d);
		for (int j = 0; j < 32; j++)
			dst[j] = (float)(q[j] - 8) * d;
	}
}

static void to_float_q4_1(const void *src, float *dst, int64_t n)
{
	assert(n % QK4_1 == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK4_1; i++, dst += QK4_1) {
		block_q4_1 b;
		int q[32];
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		unpack_nibbles32(b.qs, q);
		float d = f16(b.d), m = f16(b.m);
		for (int j = 0; j < 32; j++)
			dst[j] = (float)q[j] * d + m;
	}
}

static void to_float_q5_0(const void *src, float *dst, int64_t n)
{
	assert(n % QK5_0 == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK5_0; i++, dst += QK5_0) {
		block_q5_0 b;
		int q[32];
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		unpack_q5(b.qs, b.qh, q);
		float d = f16(b.d);
		for (int j = 0; j < 32; j++)
			dst[j] = (float)(q[j] - 16) * d;
	}
}

static void to_float_q5_1(const void *src, float *dst, int64_t n)
{
	assert(n % QK5_1 == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK5_1; i++, dst += QK5_1) {
		block_q5_1 b;
		int q[32];
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		unpack_q5(b.qs, b.qh, q);
		float d = f16(b.d), m = f16(b.m);
		for (int j = 0; j < 32; j++)
			dst[j] = (float)q[j] * d + m;
	}
}

static void to_float_q8_0(const void *src, float *dst, int64_t n)
{
	assert(n % QK8_0 == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK8_0; i++, dst += QK8_0) {
		block_q8_0 b;
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		float d = f16(b.d);
		for (int j = 0; j < 32; j++)
			dst[j] = (float)b.qs[j] * d;
	}
}

static void to_float_q8_1(const void *src, float *dst, int64_t n)
{
	assert(n % QK8_1 == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK8_1; i++, dst += QK8_1) {
		block_q8_1 b;
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		float d = f16(b.d);
		for (int j = 0; j < 32; j++)
			dst[j] = (float)b.qs[j] * d;
	}
}

/* Q4_K and Q5_K: element = d * scale_j * code - dmin * min_j for sub-block j. */
static void to_float_q4_k(const void *src, float *dst, int64_t n)
{
	assert(n % QK_K == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
		block_q4_k b;
		int q[QK_K], sc[8], mn[8];
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		unpack_q4_k(&b, q);
		unpack_k_scales(b.scales, sc, mn);
		float d = f16(b.d), dmin = f16(b.dmin);
		for (int j = 0; j < 8; j++) {
			float dj = d * (float)sc[j], mj = dmin * (float)mn[j];
			for (int l = 0; l < 32; l++)
				dst[32 * j + l] = dj * (float)q[32 * j + l] - mj;
		}
	}
}

static void to_float_q5_k(const void *src, float *dst, int64_t n)
{
	assert(n % QK_K == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
		block_q5_k b;
		int q[QK_K], sc[8], mn[8];
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		unpack_q5_k(&b, q);
		unpack_k_scales(b.scales, sc, mn);
		float d = f16(b.d), dmin = f16(b.dmin);
		for (int j = 0; j < 8; j++) {
			float dj = d * (float)sc[j], mj = dmin * (float)mn[j];
			for (int l = 0; l < 32; l++)
				dst[32 * j + l] = dj * (float)q[32 * j + l] - mj;
		}
	}
}

/* Q6_K: element = d * scales[e / 16] * code. */
static void to_float_q6_k(const void *src, float *dst, int64_t n)
{
	assert(n % QK_K == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
		block_q6_k b;
		int q[QK_K];
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		unpack_q6_k(&b, q);
		float d = f16(b.d);
		for (int e = 0; e < QK_K; e++)
			dst[e] = d * (float)b.scales[e / 16] * (float)q[e];
	}
}

static void to_float_q8_k(const void *src, float *dst, int64_t n)
{
	assert(n % QK_K == 0);
	const uint8_t *p = src;
	for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
		block_q8_k b;
		memcpy(&b, p + i * sizeof(b), sizeof(b));
		for (int e = 0; e < QK_K; e++)
			dst[e] = b.d * (float)b.qs[e];
	}
}

/* ---- from_float ---------------------------------------------------------- */

static void from_float_f32(const float *src, void *dst, int64_t n)
{
	memcpy(dst, src, (size_t)n * sizeof(float));
}

static void from_float_f16(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	for (int64_t i = 0; i < n; i++)
		store_u16(p + 2 * i, half_f32_to_f16(src[i]));
}

static void from_float_bf16(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	for (int64_t i = 0; i < n; i++)
		store_u16(p + 2 * i, half_f32_to_bf16(src[i]));
}

/* The Q8_0/Q8_1 activation rule of ggml's x86 kernels (see the top of the
   file). Returns the unrounded scale d and fills the 32 codes. */
static float quantize_block_q8(const float *x, int8_t qs[32])
{
	float amax = 0.0f;
	for (int j = 0; j < 32; j++)
		amax = fmaxf(amax, fabsf(x[j]));
	float id = amax != 0.0f ? 127.0f / amax : 0.0f;
	for (int j = 0; j < 32; j++)
		qs[j] = (int8_t)round_even_clamp(x[j] * id, -128, 127);
	return amax / 127.0f;
}

static void from_float_q8_0(const float *src, void *dst, int64_t n)
{
	assert(n % QK8_0 == 0);
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK8_0; i++, src += QK8_0) {
		block_q8_0 b;
		b.d = half_f32_to_f16(quantize_block_q8(src, b.qs));
		memcpy(p + i * sizeof(b), &b, sizeof(b));
	}
}

static void from_float_q8_1(const float *src, void *dst, int64_t n)
{
	assert(n % QK8_1 == 0);
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK8_1; i++, src += QK8_1) {
		block_q8_1 b;
		float d = quantize_block_q8(src, b.qs);
		int sum = 0;
		for (int j = 0; j < 32; j++)
			sum += b.qs[j];
		b.d = half_f32_to_f16(d);
		b.s = half_f32_to_f16(d * (float)sum);
		memcpy(p + i * sizeof(b), &b, sizeof(b));
	}
}

static void from_float_q8_k(const float *src, void *dst, int64_t n)
{
	assert(n % QK_K == 0);
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK_K; i++, src += QK_K) {
		block_q8_k b;
		memset(&b, 0, sizeof(b));
		float amax = 0.0f, max = 0.0f;
		for (int e = 0; e < QK_K; e++)
			if (fabsf(src[e]) > amax) {
				amax = fabsf(src[e]);
				max = src[e];
			}
		if (amax != 0.0f) {
			float iscale = -127.0f / max;
			for (int e = 0; e < QK_K; e++)
				b.qs[e] = (int8_t)round_even_clamp(iscale * src[e], -128, 127);
			for (int k = 0; k < QK_K / 16; k++) {
				int s = 0;
				for (int l = 0; l < 16; l++)
					s += b.qs[16 * k + l];
				b.bsums[k] = (int16_t)s;
			}
			b.d = 1.0f / iscale;
		}
		memcpy(p + i * sizeof(b), &b, sizeof(b));
	}
}

/* Q4_0 weights, ggml's quantize_row_q4_0_ref (the rule llama-quantize uses
   when no importance matrix is given). */
static void from_float_q4_0(const float *src, void *dst, int64_t n)
{
	assert(n % QK4_0 == 0);
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK4_0; i++, src += QK4_0) {
		block_q4_0 b;
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < 32; j++)
			if (fabsf(src[j]) > amax) {
				amax = fabsf(src[j]);
				max = src[j];
			}
		float d = max / -8.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		b.d = half_f32_to_f16(d);
		for (int j = 0; j < 16; j++) {
			/* x*id + 8.5 lies in [0.5, 16.5]: truncation is rounding half up */
			int lo = (int)(src[j] * id + 8.5f), hi = (int)(src[j + 16] * id + 8.5f);
			lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
			hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
			b.qs[j] = (uint8_t)(lo | hi << 4);
		}
		memcpy(p + i * sizeof(b), &b, sizeof(b));
	}
}

/* Q4_K weights (see the top of the file). */
static void from_float_q4_k(const float *src, void *dst, int64_t n)
{
	assert(n % QK_K == 0);
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK_K; i++, src += QK_K) {
		float scale[8], mins[8], max_scale = 0, max_min = 0;
		for (int j = 0; j < 8; j++) {
			float mn = src[32 * j], mx = src[32 * j];
			for (int l = 1; l < 32; l++) {
				mn = fminf(mn, src[32 * j + l]);
				mx = fmaxf(mx, src[32 * j + l]);
			}
			if (mn > 0)
				mn = 0;
			scale[j] = (mx - mn) / 15.0f;
			mins[j] = -mn;
			max_scale = fmaxf(max_scale, scale[j]);
			max_min = fmaxf(max_min, mins[j]);
		}
		block_q4_k b;
		memset(&b, 0, sizeof(b));
		float d = max_scale / 63.0f, dmin = max_min / 63.0f;
		b.d = half_f32_to_f16(d);
		b.dmin = half_f32_to_f16(dmin);
		d = f16(b.d);
		dmin = f16(b.dmin);
		int sc[8], mn[8];
		for (int j = 0; j < 8; j++) {
			sc[j] = d > 0 ? round_even_clamp(scale[j] / d, 0, 63) : 0;
			mn[j] = dmin > 0 ? round_even_clamp(mins[j] / dmin, 0, 63) : 0;
		}
		for (int j = 0; j < 4; j++) { /* the packing unpack_k_scales reads */
			b.scales[j] = (uint8_t)((sc[j] & 63) | (sc[j + 4] >> 4) << 6);
			b.scales[j + 4] = (uint8_t)((mn[j] & 63) | (mn[j + 4] >> 4) << 6);
			b.scales[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
		}
		for (int j = 0; j < 8; j++) {
			float ds = d * (float)sc[j], dm = dmin * (float)mn[j];
			for (int l = 0; l < 32; l++) {
				int q = ds > 0 ? round_even_clamp((src[32 * j + l] + dm) / ds, 0, 15) : 0;
				int c = j / 2; /* chunk of 64: low nibbles for even j, high for odd */
				b.qs[32 * c + l] |= (uint8_t)(j % 2 ? q << 4 : q);
			}
		}
		memcpy(p + i * sizeof(b), &b, sizeof(b));
	}
}

/* Q6_K weights (see the top of the file). */
static void from_float_q6_k(const float *src, void *dst, int64_t n)
{
	assert(n % QK_K == 0);
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK_K; i++, src += QK_K) {
		float scale[16], amax_s = 0, max_s = 0;
		for (int k = 0; k < 16; k++) {
			float amax = 0, max = 0;
			for (int l = 0; l < 16; l++)
				if (fabsf(src[16 * k + l]) > amax) {
					amax = fabsf(src[16 * k + l]);
					max = src[16 * k + l];
				}
			scale[k] = max / -32.0f;
			if (fabsf(scale[k]) > amax_s) {
				amax_s = fabsf(scale[k]);
				max_s = scale[k];
			}
		}
		block_q6_k b;
		memset(&b, 0, sizeof(b));
		float d = max_s / -128.0f;
		b.d = half_f32_to_f16(d);
		d = f16(b.d);
		int q[QK_K];
		for (int k = 0; k < 16; k++) {
			b.scales[k] = (int8_t)(d != 0 ? round_even_clamp(scale[k] / d, -128, 127) : 0);
			float ds = d * (float)b.scales[k];
			for (int l = 0; l < 16; l++)
				q[16 * k + l] = ds != 0 ? round_even_clamp(src[16 * k + l] / ds, -32, 31) + 32 : 32;
		}
		for (int h = 0; h < 2; h++) /* the layout unpack_q6_k reads */
			for (int k = 0; k < 4; k++)
				for (int l = 0; l < 32; l++) {
					int v = q[128 * h + 32 * k + l];
					uint8_t *lo = &b.ql[64 * h + l + 32 * (k & 1)];
					*lo |= (uint8_t)(k < 2 ? v & 15 : (v & 15) << 4);
					b.qh[32 * h + l] |= (uint8_t)((v >> 4) << (2 * k));
				}
		memcpy(p + i * sizeof(b), &b, sizeof(b));
	}
}

/* ---- vec_dot --------------------------------------------------------------- */

static float vec_dot_f32(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	double sum = 0.0;
	for (int64_t i = 0; i < n; i++) {
		float a, b;
		memcpy(&a, x + 4 * i, 4);
		memcpy(&b, y + 4 * i, 4);
		sum += (double)a * (double)b;
	}
	return (float)sum;
}

static float vec_dot_f16(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	double sum = 0.0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)half_f16_to_f32(load_u16(x + 2 * i)) *
		       (double)half_f16_to_f32(load_u16(y + 2 * i));
	return (float)sum;
}

static float vec_dot_bf16(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	double sum = 0.0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)half_bf16_to_f32(load_u16(x + 2 * i)) *
		       (double)half_bf16_to_f32(load_u16(y + 2 * i));
	return (float)sum;
}

static float vec_dot_q4_0_q8_0(int64_t n, const void *vx, const void *vy)
{
	assert(n % QK8_0 == 0);
	const uint8_t *px = vx, *py = vy;
	float sum = 0.0f;
	for (int64_t i = 0; i < n / QK8_0; i++) {
		block_q4_0 x;
		block_q8_0 y;
		int q[32];
		memcpy(&x, px + i * sizeof(x), sizeof(x));
		memcpy(&y, py + i * sizeof(y), sizeof(y));
		unpack_nibbles32(x.qs, q);
		int isum = 0;
		for (int j = 0; j < 32; j++)
			isum += (q[j] - 8) * y.qs[j];
		sum += (f16(x.d) * f16(y.d)) * (float)isum;
	}
	return sum;
}

static float vec_dot_q4_1_q8_1(int64_t n, const void *vx, const void *vy)
{
	assert(n % QK8_1 == 0);
	const uint8_t *px = vx, *py = vy;
	float sum = 0.0f, sum_min = 0.0f;
	for (int64_t i = 0; i < n / QK8_1; i++) {
		block_q4_1 x;
		block_q8_1 y;
		int q[32];
		memcpy(&x, px + i * sizeof(x), sizeof(x));
		memcpy(&y, py + i * sizeof(y), sizeof(y));
		unpack_nibbles32(x.qs, q);
		int isum = 0;
		for (int j = 0; j < 32; j++)
			isum += q[j] * y.qs[j];
		sum += (f16(x.d) * f16(y.d)) * (float)isum;
		/* sum_j (q_j d_x + m_x) (y_j d_y) = d_x d_y isum + m_x * s_y */
		sum_min += f16(x.m) * f16(y.s);
	}
	return sum + sum_min;
}

static float vec_dot_q5_0_q8_0(int64_t n, const void *vx, const void *vy)
{
	assert(n % QK8_0 == 0);
	const uint8_t *px = vx, *py = vy;
	float sum = 0.0f;
	for (int64_t i = 0; i < n / QK8_0; i++) {
		block_q5_0 x;
		block_q8_0 y;
		int q[32];
		memcpy(&x, px + i * sizeof(x), sizeof(x));
		memcpy(&y, py + i * sizeof(y), sizeof(y));
		unpack_q5(x.qs, x.qh, q);
		int isum = 0;
		for (int j = 0; j < 32; j++)
			isum += (q[j] - 16) * y.qs[j];
		sum += (f16(x.d) * f16(y.d)) * (float)isum;
	}
	return sum;
}

static float vec_dot_q5_1_q8_1(int64_t n, const void *vx, const void *vy)
{
	assert(n % QK8_1 == 0);
	const uint8_t *px = vx, *py = vy;
	float sum = 0.0f, sum_min = 0.0f;
	for (int64_t i = 0; i < n / QK8_1; i++) {
		block_q5_1 x;
		block_q8_1 y;
		int q[32];
		memcpy(&x, px + i * sizeof(x), sizeof(x));
		memcpy(&y, py + i * sizeof(y), sizeof(y));
		unpack_q5(x.qs, x.qh, q);
		int isum = 0;
		for (int j = 0; j < 32; j++)
			isum += q[j] * y.qs[j];
		sum += (f16(x.d) * f16(y.d)) * (float)isum;
		sum_min += f16(x.m) * f16(y.s);
	}
	return sum + sum_min;
}

static float vec_dot_q8_0_q8_0(int64_t n, const void *vx, const void *vy)
{
	assert(n % QK8_0 == 0);
	const uint8_t *px = vx, *py = vy;
	float sum = 0.0f;
	for (int64_t i = 0; i < n / QK8_0; i++) {
		block_q8_0 x, y;
		memcpy(&x, px + i * sizeof(x), sizeof(x));
		memcpy(&y, py + i * sizeof(y), sizeof(y));
		int isum = 0;
		for (int j = 0; j < 32; j++)
			isum += x.qs[j] * y.qs[j];
		sum += (f16(x.d) * f16(y.d)) * (float)isum;
	}
	return sum;
}

/* Q4_K/Q5_K x Q8_K. With element = d sc_j q - dmin m_j and activation = d_y a:
     dot = d d_y sum_j sc_j (q . a)_j  -  dmin d_y sum_j m_j (sum of a in sub-block j)
   and the activation sums of sub-block j (32 elements) are bsums[2j] + bsums[2j+1].
   isum stays below 2^31: 256 * 31 * 127 * 63 < 6.4e7. */
static float dot_k_with_min(const int q[QK_K], const uint8_t scales[K_SCALE_SIZE], uint16_t d,
			    uint16_t dmin, const block_q8_k *y, float *min_term)
{
	int sc[8], mn[8];
	unpack_k_scales(scales, sc, mn);
	int isum = 0, imin = 0;
	for (int j = 0; j < 8; j++) {
		int s = 0;
		for (int l = 0; l < 32; l++)
			s += q[32 * j + l] * y->qs[32 * j + l];
		isum += sc[j] * s;
		imin += mn[j] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
	}
	*min_term = (y->d * f16(dmin)) * (float)imin;
	return (y->d * f16(d)) * (float)isum;
}

static float vec_dot_q4_k_q8_k(int64_t n, const void *vx, const void *vy)
{
	assert(n % QK_K == 0);
	const uint8_t *px = vx, *py = vy;
	float sum = 0.0f, sum_min = 0.0f;
	for (int64_t i = 0; i < n / QK_K; i++) {
		block_q4_k x;
		block_q8_k y;
		int q[QK_K];
		float m;
		memcpy(&x, px + i * sizeof(x), sizeof(x));
		memcpy(&y, py + i * sizeof(y), sizeof(y));
		unpack_q4_k(&x, q);
		sum += dot_k_with_min(q, x.scales, x.d, x.dmin, &y, &m);
		sum_min += m;
	}
	return sum - sum_min;
}

static float vec_dot_q5_k_q8_k(int64_t n, const void *vx, const void *vy)
{
	assert(n % QK_K == 0);
	const uint8_t *px = vx, *py = vy;
	float sum = 0.0f, sum_min = 0.0f;
	for (int64_t i = 0; i < n / QK_K; i++) {
		block_q5_k x;
		block_q8_k y;
		int q[QK_K];
		float m;
		memcpy(&x, px + i * sizeof(x), sizeof(x));
		memcpy(&y, py + i * sizeof(y), sizeof(y));
		unpack_q5_k(&x, q);
		sum += dot_k_with_min(q, x.scales, x.d, x.dmin, &y, &m);
		sum_min += m;
	}
	return sum - sum_min;
}

/* Q6_K x Q8_K: dot = d d_y sum_k scales[k] (q . a over elements 16k..16k+15).
   |isum| < 16 * 128 * 16 * 32 * 127 < 1.4e8. */
static float vec_dot_q6_k_q8_k(int64_t n, const void *vx, const void *vy)
{
	assert(n % QK_K == 0);
	const uint8_t *px = vx, *py = vy;
	float sum = 0.0f;
	for (int64_t i = 0; i < n / QK_K; i++) {
		block_q6_k x;
		block_q8_k y;
		int q[QK_K];
		memcpy(&x, px + i * sizeof(x), sizeof(x));
		memcpy(&y, py + i * sizeof(y), sizeof(y));
		unpack_q6_k(&x, q);
		int isum = 0;
		for (int k = 0; k < QK_K / 16; k++) {
			int s = 0;
			for (int l = 0; l < 16; l++)
				s += q[16 * k + l] * y.qs[16 * k + l];
			isum += x.scales[k] * s;
		}
		sum += (y.d * f16(x.d)) * (float)isum;
	}
	return sum;
}

/* ---- the table ------------------------------------------------------------- */

void kern_ref_fill_quants(kern_table *t)
{
	t->to_float[QTYPE_F32] = to_float_f32;
	t->to_float[QTYPE_F16] = to_float_f16;
	t->to_float[QTYPE_BF16] = to_float_bf16;
	t->to_float[QTYPE_Q4_0] = to_float_q4_0;
	t->to_float[QTYPE_Q4_1] = to_float_q4_1;
	t->to_float[QTYPE_Q5_0] = to_float_q5_0;
	t->to_float[QTYPE_Q5_1] = to_float_q5_1;
	t->to_float[QTYPE_Q8_0] = to_float_q8_0;
	t->to_float[QTYPE_Q8_1] = to_float_q8_1;
	t->to_float[QTYPE_Q4_K] = to_float_q4_k;
	t->to_float[QTYPE_Q5_K] = to_float_q5_k;
	t->to_float[QTYPE_Q6_K] = to_float_q6_k;
	t->to_float[QTYPE_Q8_K] = to_float_q8_k;

	t->from_float[QTYPE_F32] = from_float_f32;
	t->from_float[QTYPE_F16] = from_float_f16;
	t->from_float[QTYPE_BF16] = from_float_bf16;
	t->from_float[QTYPE_Q8_0] = from_float_q8_0;
	t->from_float[QTYPE_Q8_1] = from_float_q8_1;
	t->from_float[QTYPE_Q8_K] = from_float_q8_k;
	t->from_float[QTYPE_Q4_0] = from_float_q4_0;
	t->from_float[QTYPE_Q4_K] = from_float_q4_k;
	t->from_float[QTYPE_Q6_K] = from_float_q6_k;

	t->vec_dot[QTYPE_F32] = vec_dot_f32;
	t->vec_dot[QTYPE_F16] = vec_dot_f16;
	t->vec_dot[QTYPE_BF16] = vec_dot_bf16;
	t->vec_dot[QTYPE_Q4_0] = vec_dot_q4_0_q8_0;
	t->vec_dot[QTYPE_Q4_1] = vec_dot_q4_1_q8_1;
	t->vec_dot[QTYPE_Q5_0] = vec_dot_q5_0_q8_0;
	t->vec_dot[QTYPE_Q5_1] = vec_dot_q5_1_q8_1;
	t->vec_dot[QTYPE_Q8_0] = vec_dot_q8_0_q8_0;
	t->vec_dot[QTYPE_Q4_K] = vec_dot_q4_k_q8_k;
	t->vec_dot[QTYPE_Q5_K] = vec_dot_q5_k_q8_k;
	t->vec_dot[QTYPE_Q6_K] = vec_dot_q6_k_q8_k;
}
