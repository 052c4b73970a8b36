/* avx512.c - AVX-512 kernels (F, BW, VL, DQ, VNNI, BF16; built with those -m flags).
 *
 * What is here, per op:
 *  - from_float for the activation types (Q8_0, Q8_1, Q8_K, F16, BF16):
 *    the reference's rules bit for bit (the same max, the same 127/amax or
 *    -127/max multiplier, vcvtps2dq's round-to-nearest-even, vcvtps2ph for
 *    f16 scales; NaN lanes become code 0 as in the reference).
 *  - Quantized matmul (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) through
 *    kern.mm_*, in two shapes that share one rule: integer block sums are
 *    exact (vpdpbusd), and the f32 steps are the reference's, in its order
 *    ((d_x * d_y) * isum added block after block, the min terms summed
 *    apart). So every output is bit-identical to the reference vec_dot, and
 *    hence to any other tiling (batch invariance for free).
 *      GEMV (n_tok < GEMM_MIN_TOK, passes of up to 4 tokens): 8 weight rows
 *      at a time, read straight from the mapped file. A row's codes become
 *      unsigned bytes (Q8_0: w ^ 0x80; Q4/Q5/Q6: the stored 4/5/6-bit codes),
 *      two 32-element blocks per 512-bit vector; vpdpbusd against the signed
 *      activation codes gives 8 lanes of partial sums per (row, block), and a
 *      transpose-add tree turns 8 rows x 2 blocks x 8 lanes into one vector
 *      of 16 exact sums. The code offset (128, 8, 16, 32) is taken back with
 *      the activation block's code sum: sum (u - off) a = sum u a - off sum a.
 *      K-quant sub-block scales multiply the partial sums with vpdpwssd:
 *      Q6_K's 8-lane vpdpbusd sums (they fit 16 bits); for Q4_K / Q5_K the
 *      pair products of vpmaddubsw, with the 6-bit scales unpacked by
 *      64-bit integer ops and placed by one vpshufb per vector (the scalar
 *      unpack and vpermw placement it replaced took half the instructions
 *      of a row; 1.2-1.4x from L2, +18% single-thread decode on 1.1B
 *      Q4_K_M). The rows of a tile are 8 short
 *      streams the hardware prefetcher follows poorly, so the next tile's
 *      bytes are prefetched into L2 one tile ahead (2x on 768-wide rows).
 *      GEMM (n_tok >= GEMM_MIN_TOK): activations are re-laid out for groups
 *      of 16 tokens, 4 consecutive codes of one token in each dword lane, as
 *      unsigned bytes (a + 128). A panel of 8 weight rows x KC elements is
 *      unpacked once into signed codes plus per-block scales and the
 *      correction -128 sum(codes); then for every token group each weight
 *      dword is broadcast straight from the panel into vpdpbusd ({1to16}
 *      memory operand), so one instruction does 4 multiply-adds for each of
 *      16 tokens, and the 16-lane result is already one token per lane: no
 *      horizontal sums. Results leave through an 8 x 16 register transpose
 *      (scatters are microcoded on Zen 4 and cost 40% of the time).
 *  - F32/F16/BF16 matmul: 16 f32 lanes per output, one fused multiply-add
 *    (vdpbf16ps for BF16) per 16 (32) elements in index order, a fixed
 *    reduction at the end; the tile (rows x tokens) only decides which
 *    outputs share the loads, so a tile and vec_dot agree bit for bit. These
 *    differ from the reference's double sums by f32 rounding (tolerance table
 *    in kernels_test.c).
 *  - rmsnorm (squares summed in double, like the reference), swiglu and
 *    softmax (a polynomial expf within 2 ulp), rope (bit-exact: the same
 *    products and sums, no FMA), paged attention (online softmax over
 *    chunks of 16 positions for a block of tokens x heads sharing K/V rows,
 *    scores by FMA and a transpose-add tree; a decode token's heads across
 *    kv heads in one pass over its rows; see kernels.h and attn below).
 *
 * Measured on Zen 4 (bench/kernels.c, one core): GEMM ~290 GOP/s of the
 * 470 GOP/s vpdpbusd peak; GEMV ~68 GOP/s in cache, i.e. 36 GB/s of Q8_0
 * and 19 GB/s of Q4_0 weights: above one core's DRAM bandwidth for Q8_0, at
 * it for Q4_0 (shuffle-port bound: the tree and the scale gather); K-quants
 * from L2 (`--filter 'in L2'`, `--best`): Q4_K 26, Q5_K 26, Q6_K 28 GB/s.
 *
 * Invariants: nothing allocates; panels and accumulators live on the stack
 * (under 64 KiB); every load of a weight or activation row stays inside its
 * row (tails use masks); prefetches may point past a row (they never fault).
 *
 * Left out: IQ types and Q2_K/Q3_K (not supported anywhere), to_float
 * (dequantization is only used for embedding rows), weight repacking at load
 * time (the panel is rebuilt per call instead, which costs little because it
 * is amortized over 16-token groups; for a single group, batched decode, it
 * is a large part of the work). Q8_0 skips the copy: its stored codes are
 * the signed codes, so the GEMM broadcasts them from the weights and the
 * panel holds only scales and corrections (+2-11% for 16 sequences on 110M).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "kernels/kernels_int.h"

#define INLINE static inline __attribute__((always_inline))

#ifndef PF_DIST
#define PF_DIST 512 /* bytes ahead of each weight row stream the GEMV prefetches */
#endif
#ifndef GEMM_PF_TILES
#define GEMM_PF_TILES 2 /* tiles ahead the GEMM prefetches weights (1: -8% on a 256 MiB Q8_0 matrix, 16 tokens) */
#endif
#ifndef GEMM_PF_HINT
#define GEMM_PF_HINT _MM_HINT_T1
#endif

/* ---- small helpers ------------------------------------------------------- */

static inline size_t round64(size_t n)
{
	return (n + 63) & ~(size_t)63;
}

INLINE float f16_to_f32(uint16_t h)
{
	return _cvtsh_ss(h);
}

INLINE uint16_t ld16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}

INLINE int32_t ld32(const void *p)
{
	int32_t v;
	memcpy(&v, p, 4);
	return v;
}

/* Sum of the 8 int32 lanes of each of v[0..7], as lane r of the result:
   a transpose-add tree (integer, so the order does not matter). */
INLINE __m256i tree8(const __m256i v[8])
{
	__m256i a01 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
	__m256i a23 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
	__m256i a45 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[4], v[5]), _mm256_unpackhi_epi32(v[4], v[5]));
	__m256i a67 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[6], v[7]), _mm256_unpackhi_epi32(v[6], v[7]));
	__m256i b03 = _mm256_add_epi32(_mm256_unpacklo_epi64(a01, a23), _mm256_unpackhi_epi64(a01, a23));
	__m256i b47 = _mm256_add_epi32(_mm256_unpacklo_epi64(a45, a67), _mm256_unpackhi_epi64(a45, a67));
	return _mm256_add_epi32(_mm256_permute2x128_si256(b03, b47, 0x20),
				_mm256_permute2x128_si256(b03, b47, 0x31));
}

INLINE __m256i fold512(__m512i v)
{
	return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/* f32 -> bf16 bits, round to nearest even, NaN kept quiet (= half_f32_to_bf16). */
INLINE __m256i bf16_round(__m512 x)
{
	__m512i u = _mm512_castps_si512(x);
	__m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
	__m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
	__mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
	r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(64)));
	return _mm512_cvtepi32_epi16(r);
}

INLINE __m512 bf16_to_f32(__m256i h)
{
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* ---- expf ------------------------------------------------------------------ */

/* e^x within 2 ulp for x in [-87, 88.7]; 0 below -104, inf above 88.8 is
   not reached by the callers (arguments are <= 0 or bounded). NaN stays NaN. */
INLINE __m512 exp512(__m512 x)
{
	x = _mm512_min_ps(_mm512_set1_ps(88.72f), x);
	x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
	__m512 p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
	p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
	return _mm512_scalef_ps(p, n);
}

/* ---- activation quantization (the reference's rules, bit for bit) ---------- */

/* Round to nearest even and clamp to [-128, 127]; NaN -> 0 (round_even_clamp). */
INLINE __m512i round_clamp(__m512 v)
{
	__mmask16 ok = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
	v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-128.0f)), _mm512_set1_ps(127.0f));
	return _mm512_maskz_cvtps_epi32(ok, v);
}

/* |x| with NaN as 0: what fmaxf(amax, fabsf(x)) sees. */
INLINE __m512 abs_nonan(__m512 x)
{
	return _mm512_max_ps(_mm512_abs_ps(x), _mm512_setzero_ps());
}

/* 32 floats by the Q8_0 rule: codes (ymm), returns d = amax / 127 (unrounded). */
INLINE __m256i q8_block(const float *x, float *d, __m512i *i0, __m512i *i1)
{
	__m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
	float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs_nonan(a), abs_nonan(b)));
	float id = amax != 0.0f ? 127.0f / amax : 0.0f;
	__m512 vid = _mm512_set1_ps(id);
	*i0 = round_clamp(_mm512_mul_ps(a, vid));
	*i1 = round_clamp(_mm512_mul_ps(b, vid));
	*d = amax / 127.0f;
	return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(*i0)),
				       _mm512_cvtepi32_epi8(*i1), 1);
}

static void from_float_q8_0(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK8_0; i++, src += QK8_0, p += sizeof(block_q8_0)) {
		float d;
		__m512i i0, i1;
		__m256i q = q8_block(src, &d, &i0, &i1);
		uint16_t dh = half_f32_to_f16(d);
		memcpy(p, &dh, 2);
		_mm256_storeu_si256((__m256i *)(p + 2), q);
	}
}

static void from_float_q8_1(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK8_1; i++, src += QK8_1, p += sizeof(block_q8_1)) {
		float d;
		__m512i i0, i1;
		__m256i q = q8_block(src, &d, &i0, &i1);
		int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
		uint16_t h[2] = { half_f32_to_f16(d), half_f32_to_f16(d * (float)sum) };
		memcpy(p, h, 4);
		_mm256_storeu_si256((__m256i *)(p + 4), q);
	}
}

/* 256 floats by the Q8_K rule: codes, d, bsums. */
INLINE void q8k_block(const float *x, int8_t *qs, float *d, int16_t *bsums)
{
	__m512 m = _mm512_setzero_ps();
	for (int k = 0; k < 16; k++)
		m = _mm512_max_ps(abs_nonan(_mm512_loadu_ps(x + 16 * k)), m);
	float amax = _mm512_reduce_max_ps(m);
	if (amax == 0.0f) {
		memset(qs, 0, QK_K);
		memset(bsums, 0, 32);
		*d = 0.0f;
		return;
	}
	float max = 0.0f;
	__m512 va = _mm512_set1_ps(amax);
	for (int k = 0; k < 16; k++) {
		__mmask16 e = _mm512_cmp_ps_mask(abs_nonan(_mm512_loadu_ps(x + 16 * k)), va, _CMP_EQ_OQ);
		if (e) {
			max = x[16 * k + __builtin_ctz(e)];
			break;
		}
	}
	float iscale = -127.0f / max;
	__m512 vs = _mm512_set1_ps(iscale);
	for (int k = 0; k < 16; k++) {
		__m512i q = round_clamp(_mm512_mul_ps(vs, _mm512_loadu_ps(x + 16 * k)));
		_mm_storeu_si128((__m128i *)(qs + 16 * k), _mm512_cvtepi32_epi8(q));
		bsums[k] = (int16_t)_mm512_reduce_add_epi32(q);
	}
	*d = 1.0f / iscale;
}

static void from_float_q8_k(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK_K; i++, src += QK_K, p += sizeof(block_q8_k)) {
		block_q8_k b;
		q8k_block(src, b.qs, &b.d, b.bsums);
		memcpy(p, &b, sizeof(b));
	}
}

static void from_float_f16(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(p + 2 * i),
				    _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
	if (i < n) {
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
		_mm256_mask_storeu_epi16(p + 2 * i, m,
					 _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT));
	}
}

static void from_float_bf16(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(p + 2 * i), bf16_round(_mm512_loadu_ps(src + i)));
	if (i < n) {
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
		_mm256_mask_storeu_epi16(p + 2 * i, m, bf16_round(_mm512_maskz_loadu_ps(m, src + i)));
	}
}

static void to_float_f16(const void *src, float *dst, int64_t n)
{
	const uint8_t *p = src;
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * i))));
	for (; i < n; i++)
		dst[i] = f16_to_f32(ld16(p + 2 * i));
}

static void to_float_bf16(const void *src, float *dst, int64_t n)
{
	const uint8_t *p = src;
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(dst + i, bf16_to_f32(_mm256_loadu_si256((const __m256i *)(p + 2 * i))));
	for (; i < n; i++)
		dst[i] = half_bf16_to_f32(ld16(p + 2 * i));
}

/* ---- quantized matmul: activation layouts ---------------------------------- */

#define GEMM_MIN_TOK 12 /* n_tok from which the GEMM shape is used (measured crossover) */
#define GEMV_TOK 4     /* tokens per GEMV pass over a tile (more: another pass, weights from L1/L2) */
#define GR 8           /* weight rows per tile */
#define KC 1024        /* panel chunk (elements), a multiple of 256 */
#define GB 32          /* token groups (of 16) per panel pass */
#define BLK8 640       /* GEMM bytes per Q8_0/Q8_1 block of a group: codes 512, d 64, s 64 */
#define BLKK 4416      /* GEMM bytes per Q8_K block of a group: codes 4096, d 64, min sums 256 */

static int use_gemm(int64_t n_tok)
{
	return n_tok >= GEMM_MIN_TOK;
}

/* GEMV layout: one record per token, stride bytes apart:
     codes int8[n_in] | k4 int8[n_in] (Q8_K: the codes in Q4_K nibble order:
     per 128 elements 0-31, 64-95, 32-63, 96-127) | d f32[nb] | s f32[nb] (Q8_1) | sum int32[n_in/32] |
     ssum int16[n_in/32] (Q8_K: sums of 32 codes) | bsums int16[n_in/16] (Q8_K)
   nb = blocks of the type (32 or 256 elements). */
typedef struct {
	size_t k4, d, s, sum, ssum, bsums, stride;
} rowlay;

static rowlay row_layout(int vt, int64_t n_in)
{
	rowlay L;
	size_t nb = (size_t)(vt == QTYPE_Q8_K ? n_in / QK_K : n_in / 32), n32 = (size_t)n_in / 32;
	L.k4 = round64((size_t)n_in);
	L.d = vt == QTYPE_Q8_K ? 2 * L.k4 : L.k4;
	L.s = L.d + round64(4 * nb);
	L.sum = L.s + round64(4 * nb);
	L.ssum = L.sum + round64(4 * n32);
	L.bsums = L.ssum + round64(2 * n32);
	L.stride = L.bsums + round64(2 * ((size_t)n_in / 16));
	return L;
}

static size_t group_stride(int vt, int64_t n_in)
{
	return vt == QTYPE_Q8_K ? (size_t)(n_in / QK_K) * BLKK : (size_t)(n_in / 32) * BLK8;
}

static size_t act_bytes(int vt, int64_t n_in, int64_t n_tok)
{
	if (use_gemm(n_tok))
		return (size_t)((n_tok + 15) / 16) * group_stride(vt, n_in);
	return (size_t)n_tok * row_layout(vt, n_in).stride;
}

static size_t act_bytes_q8_0(int64_t n_in, int64_t n_tok) { return act_bytes(QTYPE_Q8_0, n_in, n_tok); }
static size_t act_bytes_q8_1(int64_t n_in, int64_t n_tok) { return act_bytes(QTYPE_Q8_1, n_in, n_tok); }
static size_t act_bytes_q8_k(int64_t n_in, int64_t n_tok) { return act_bytes(QTYPE_Q8_K, n_in, n_tok); }

/* dword k of each 32-code block lands at lane l of row k: stride 64 bytes. */
INLINE void scatter8(uint8_t *lane_base, __m256i v)
{
	const __m256i idx = _mm256_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448);
	_mm256_i32scatter_epi32((int *)lane_base, idx, v, 1);
}

/* Q8_0 / Q8_1 activations, tokens split by groups of 16 (GEMM) or one by one. */
static void convert_q8(int vt, const float *x, int64_t n_in, int64_t n_tok, uint8_t *act, int ith, int nth)
{
	const int64_t nb = n_in / 32;
	if (!use_gemm(n_tok)) {
		rowlay L = row_layout(vt, n_in);
		int64_t t0, t1;
		kern_split(n_tok, ith, nth, &t0, &t1);
		for (int64_t t = t0; t < t1; t++) {
			uint8_t *r = act + (size_t)t * L.stride;
			float *d = (float *)(r + L.d), *s = (float *)(r + L.s);
			int32_t *sum = (int32_t *)(r + L.sum);
			memset(r + n_in, 0, L.d - (size_t)n_in);
			for (int64_t b = 0; b < nb; b++) {
				float db;
				__m512i i0, i1;
				__m256i q = q8_block(x + t * n_in + b * 32, &db, &i0, &i1);
				_mm256_storeu_si256((__m256i *)(r + b * 32), q);
				sum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
				d[b] = f16_to_f32(half_f32_to_f16(db));
				s[b] = f16_to_f32(half_f32_to_f16(db * (float)sum[b]));
			}
		}
		return;
	}
	const size_t gs = group_stride(vt, n_in);
	int64_t g0, g1;
	kern_split((n_tok + 15) / 16, ith, nth, &g0, &g1);
	for (int64_t g = g0; g < g1; g++) {
		uint8_t *G = act + (size_t)g * gs;
		for (int l = 0; l < 16; l++) {
			int64_t t = 16 * g + l;
			for (int64_t b = 0; b < nb; b++) {
				uint8_t *B = G + (size_t)b * BLK8;
				float db = 0, *d = (float *)(B + 512), *s = (float *)(B + 576);
				__m256i q = _mm256_setzero_si256();
				int sum = 0;
				if (t < n_tok) {
					__m512i i0, i1;
					q = q8_block(x + t * n_in + b * 32, &db, &i0, &i1);
					sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
				}
				scatter8(B + 4 * l, _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)));
				d[l] = f16_to_f32(half_f32_to_f16(db));
				s[l] = f16_to_f32(half_f32_to_f16(db * (float)sum));
			}
		}
	}
}

static void convert_q8_0(const float *x, int64_t n_in, int64_t n_tok, void *act, int ith, int nth)
{
	convert_q8(QTYPE_Q8_0, x, n_in, n_tok, act, ith, nth);
}

static void convert_q8_1(const float *x, int64_t n_in, int64_t n_tok, void *act, int ith, int nth)
{
	convert_q8(QTYPE_Q8_1, x, n_in, n_tok, act, ith, nth);
}

static void convert_q8_k(const float *x, int64_t n_in, int64_t n_tok, void *vact, int ith, int nth)
{
	uint8_t *act = vact;
	const int64_t nsb = n_in / QK_K;
	block_q8_k q;
	if (!use_gemm(n_tok)) {
		rowlay L = row_layout(QTYPE_Q8_K, n_in);
		int64_t t0, t1;
		kern_split(n_tok, ith, nth, &t0, &t1);
		for (int64_t t = t0; t < t1; t++) {
			uint8_t *r = act + (size_t)t * L.stride;
			float *d = (float *)(r + L.d);
			int16_t *ssum = (int16_t *)(r + L.ssum), *bs = (int16_t *)(r + L.bsums);
			for (int64_t b = 0; b < nsb; b++) {
				int8_t *qc = (int8_t *)r + b * QK_K, *k4 = (int8_t *)r + L.k4 + b * QK_K;
				q8k_block(x + t * n_in + b * QK_K, qc, &d[b], bs + 16 * b);
				for (int h = 0; h < 2; h++) {
					memcpy(k4 + 128 * h, qc + 128 * h, 32);
					memcpy(k4 + 128 * h + 32, qc + 128 * h + 64, 32);
					memcpy(k4 + 128 * h + 64, qc + 128 * h + 32, 32);
					memcpy(k4 + 128 * h + 96, qc + 128 * h + 96, 32);
				}
				for (int j = 0; j < 8; j++)
					ssum[8 * b + j] = (int16_t)(bs[16 * b + 2 * j] + bs[16 * b + 2 * j + 1]);
			}
		}
		return;
	}
	const size_t gs = group_stride(QTYPE_Q8_K, n_in);
	int64_t g0, g1;
	kern_split((n_tok + 15) / 16, ith, nth, &g0, &g1);
	for (int64_t g = g0; g < g1; g++) {
		uint8_t *G = act + (size_t)g * gs;
		for (int l = 0; l < 16; l++) {
			int64_t t = 16 * g + l;
			for (int64_t b = 0; b < nsb; b++) {
				uint8_t *B = G + (size_t)b * BLKK;
				if (t < n_tok) {
					q8k_block(x + t * n_in + b * QK_K, q.qs, &q.d, q.bsums);
				} else {
					memset(&q, 0, sizeof(q));
				}
				for (int c = 0; c < 8; c++)
					scatter8(B + c * 512 + 4 * l,
						 _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q.qs + 32 * c)),
								  _mm256_set1_epi8((char)0x80)));
				((float *)(B + 4096))[l] = q.d;
				for (int i = 0; i < 4; i++) {
					int s0 = q.bsums[4 * i] + q.bsums[4 * i + 1];
					int s1 = q.bsums[4 * i + 2] + q.bsums[4 * i + 3];
					((int32_t *)(B + 4160 + 64 * i))[l] =
						(int32_t)(((uint32_t)s0 & 0xffffu) | ((uint32_t)s1 << 16));
				}
			}
		}
	}
}

/* ---- quantized matmul: unsigned codes of one block ------------------------- */

/* 32 codes of a Q4 nibble block (qs: 16 bytes): element j low nibble of qs[j],
   element j+16 high nibble. */
INLINE __m256i nib32(const uint8_t *qs)
{
	__m128i q = _mm_loadu_si128((const __m128i *)qs);
	__m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
	return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

/* bit i of the 32-bit little-endian qh -> 0x10 in byte i */
INLINE __m256i hbit32(const uint8_t *qh)
{
	return _mm256_maskz_mov_epi8((__mmask32)(uint32_t)ld32(qh), _mm256_set1_epi8(16));
}

INLINE __m256i u_q8_0(const uint8_t *b) { return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(b + 2)), _mm256_set1_epi8((char)0x80)); }
INLINE __m256i u_q4_0(const uint8_t *b) { return nib32(b + 2); }
INLINE __m256i u_q4_1(const uint8_t *b) { return nib32(b + 4); }
INLINE __m256i u_q5_0(const uint8_t *b) { return _mm256_or_si256(nib32(b + 6), hbit32(b + 2)); }
INLINE __m256i u_q5_1(const uint8_t *b) { return _mm256_or_si256(nib32(b + 8), hbit32(b + 4)); }

/* d (low 16 bits) and m (high 16 bits) of 8 rows' block at byte offset off. */
INLINE __m256i gather_dm(const uint8_t *base, __m256i ridx, size_t off)
{
	return _mm256_i32gather_epi32((const int *)(base + off), ridx, 1);
}

INLINE __m256 h_lo(__m256i g) { return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(g)); }
INLINE __m256 h_hi(__m256i g) { return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(g, 16))); }

/* ---- GEMV, 32-element blocks ----------------------------------------------- */

typedef __m256i (*ufn)(const uint8_t *);
/* Unsigned codes of blocks b and b+1 of a row as [b | b+1] (act order); with
   `one` only block b (the upper half is zero and nothing past block b is read). */
typedef __m512i (*u2fn)(const uint8_t *row, int64_t b, int one);

INLINE __m512i u2_q8_0(const uint8_t *row, int64_t b, int one)
{
	const uint8_t *p = row + b * 34;
	__m256i lo = _mm256_loadu_si256((const __m256i *)(p + 2));
	__m256i hi = one ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)(p + 36));
	return _mm512_maskz_xor_epi64(one ? 0x0f : 0xff, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
				      _mm512_set1_epi8((char)0x80));
}

/* Nibble pairs: the 16 qs bytes at p + qoff (block b) and p + bs + qoff
   (block b+1) become the codes [lo b | hi b | lo b+1 | hi b+1]. */
INLINE __m512i nib2(const uint8_t *p, int bs, int qoff, int one)
{
	__m256i lo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + qoff)));
	__m256i hi = one ? _mm256_setzero_si256()
			 : _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + bs + qoff)));
	__m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
	/* high 16 bytes of each 32: the high nibbles (shift only those words) */
	return _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xff00ff00, v, 4), _mm512_set1_epi8(15));
}

/* bit i of qh_b -> 0x10 in byte i, bit i of qh_b1 -> byte 32 + i */
INLINE __m512i hbit2(const uint8_t *p, int bs, int qhoff, int one)
{
	uint64_t m = (uint32_t)ld32(p + qhoff);
	if (!one)
		m |= (uint64_t)(uint32_t)ld32(p + bs + qhoff) << 32;
	return _mm512_maskz_mov_epi8((__mmask64)m, _mm512_set1_epi8(16));
}

INLINE __m512i u2_q4_0(const uint8_t *row, int64_t b, int one) { return nib2(row + b * 18, 18, 2, one); }
INLINE __m512i u2_q4_1(const uint8_t *row, int64_t b, int one) { return nib2(row + b * 20, 20, 4, one); }
INLINE __m512i u2_q5_0(const uint8_t *row, int64_t b, int one)
{
	return _mm512_or_si512(nib2(row + b * 22, 22, 6, one), hbit2(row + b * 22, 22, 2, one));
}
INLINE __m512i u2_q5_1(const uint8_t *row, int64_t b, int one)
{
	return _mm512_or_si512(nib2(row + b * 24, 24, 8, one), hbit2(row + b * 24, 24, 4, one));
}

/* 8 vectors z[r] = [row r block b (8 lanes) | row r block b+1 (8 lanes)] ->
   one vector of (row, block) sums in "pair order": 128-bit lane 0 = rows 0-3
   of block b, lane 1 = rows 0-3 of b+1, lane 2 = rows 4-7 of b, lane 3 =
   rows 4-7 of b+1. */
INLINE __m512i tree16(const __m512i z[8])
{
	__m512i a01 = _mm512_add_epi32(_mm512_unpacklo_epi32(z[0], z[1]), _mm512_unpackhi_epi32(z[0], z[1]));
	__m512i a23 = _mm512_add_epi32(_mm512_unpacklo_epi32(z[2], z[3]), _mm512_unpackhi_epi32(z[2], z[3]));
	__m512i a45 = _mm512_add_epi32(_mm512_unpacklo_epi32(z[4], z[5]), _mm512_unpackhi_epi32(z[4], z[5]));
	__m512i a67 = _mm512_add_epi32(_mm512_unpacklo_epi32(z[6], z[7]), _mm512_unpackhi_epi32(z[6], z[7]));
	__m512i b03 = _mm512_add_epi32(_mm512_unpacklo_epi64(a01, a23), _mm512_unpackhi_epi64(a01, a23));
	__m512i b47 = _mm512_add_epi32(_mm512_unpacklo_epi64(a45, a67), _mm512_unpackhi_epi64(a45, a67));
	return _mm512_add_epi32(_mm512_shuffle_i32x4(b03, b47, _MM_SHUFFLE(2, 0, 2, 0)),
				_mm512_shuffle_i32x4(b03, b47, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Two values per token block pair in pair order: [v[b] x4, v[b+1] x4, v[b] x4, v[b+1] x4]. */
INLINE __m512i pair_order_epi32(const void *two)
{
	const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
	return _mm512_permutexvar_epi32(idx, _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)two)));
}

/* acc (pair order, lanes of block b meaningful) += p's block b, then += p's block b+1. */
INLINE __m512 add_pair(__m512 acc, __m512 p, int one)
{
	acc = _mm512_add_ps(acc, p);
	if (!one)
		acc = _mm512_add_ps(acc, _mm512_shuffle_f32x4(p, p, _MM_SHUFFLE(3, 3, 1, 1)));
	return acc;
}

INLINE void gemv32_tile(const uint8_t *w0, size_t rs, int nv, int64_t nb, int bs, u2fn U2, int off, int has_m,
			const uint8_t *act, const rowlay *L, int nt, float *y, int64_t ldy)
{
	const uint8_t *row[GR];
	for (int r = 0; r < GR; r++)
		row[r] = w0 + (size_t)(r < nv ? r : nv - 1) * rs;
	int32_t gi[16];
	for (int i = 0; i < 16; i++) {
		int r = (i >> 3) * 4 + (i & 3);
		gi[i] = (int32_t)((size_t)(r < nv ? r : nv - 1) * rs + (size_t)(((i >> 2) & 1) * bs));
	}
	const __m512i gidx = _mm512_loadu_si512((const void *)gi);
	const int sh = off == 128 ? 7 : off == 16 ? 4 : 3;
	__m512 acc[GEMV_TOK], accm[GEMV_TOK];
	for (int t = 0; t < nt; t++)
		acc[t] = accm[t] = _mm512_setzero_ps();
	for (int64_t b = 0; b < nb; b += 2) {
		const int one = b + 1 == nb;
		__m512i u[GR];
		/* the rows of a tile are 8 short streams: fetch the next tile's
		   blocks at the same offsets into L2, one tile ahead */
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++) {
			_mm_prefetch((const char *)row[r] + GR * rs + b * bs, _MM_HINT_T1);
			if (2 * bs > 64)
				_mm_prefetch((const char *)row[r] + GR * rs + b * bs + 64, _MM_HINT_T1);
		}
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++)
			u[r] = U2(row[r], b, one);
		__m512i dm = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), one ? 0x0f0f : 0xffff, gidx,
							 (const int *)(w0 + b * bs), 1);
		__m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
		for (int t = 0; t < nt; t++) {
			const uint8_t *a = act + (size_t)t * L->stride;
			__m512i av = _mm512_load_si512((const void *)(a + b * 32));
			__m512i D[GR];
#pragma GCC unroll 8
			for (int r = 0; r < GR; r++)
				D[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[r], av);
			__m512i is = tree16(D);
			if (off)
				is = _mm512_sub_epi32(is, _mm512_slli_epi32(pair_order_epi32((const int32_t *)(a + L->sum) + b), sh));
			__m512 da = _mm512_castsi512_ps(pair_order_epi32((const float *)(a + L->d) + b));
			acc[t] = add_pair(acc[t], _mm512_mul_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(is)), one);
			if (has_m) {
				__m512 m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
				__m512 sv = _mm512_castsi512_ps(pair_order_epi32((const float *)(a + L->s) + b));
				accm[t] = add_pair(accm[t], _mm512_mul_ps(m, sv), one);
			}
		}
	}
	__mmask8 m = (__mmask8)((1u << nv) - 1);
	for (int t = 0; t < nt; t++) {
		__m512 v = has_m ? _mm512_add_ps(acc[t], accm[t]) : acc[t];
		_mm256_mask_storeu_ps(y + t * ldy, m, _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(0, 0, 2, 0))));
	}
}

/* ---- GEMV, K-quants ---------------------------------------------------------- */

/* Q4_K / Q5_K scales: 8 six-bit scales (bytes 0-7) and mins (bytes 8-15). */
INLINE __m128i k_scales(const uint8_t *s)
{
	uint32_t u[4];
	memcpy(u, s, 12);
	const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
	u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
	uint32_t m03 = u[1] & k1;
	u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
	u[2] = m03;
	u[0] &= k1;
	return _mm_loadu_si128((const __m128i *)u);
}

/* [v[2c] x8 | v[2c+1] x8] */
INLINE __m512i pair_bcast(__m512i v, int c)
{
	const __m512i idx = _mm512_set_epi32(2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1,
					     2 * c + 1, 2 * c + 1, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c);
	return _mm512_permutexvar_epi32(idx, v);
}

/* [v[4q] x4 | v[4q+1] x4 | v[4q+2] x4 | v[4q+3] x4] */
INLINE __m512i quad_bcast(__m512i v, int q)
{
	const __m512i idx = _mm512_set_epi32(4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 2, 4 * q + 2,
					     4 * q + 2, 4 * q + 2, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q,
					     4 * q, 4 * q, 4 * q);
	return _mm512_permutexvar_epi32(idx, v);
}

/* 16-bit shift counts: lo in the low 256 bits, hi in the high 256 bits. */
INLINE __m512i cnt2(int lo, int hi)
{
	return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)lo)), _mm256_set1_epi16((short)hi), 1);
}

/* 64 unsigned codes of chunk c (elements 64c..64c+63) of a Q4_K / Q5_K block:
   the 32 bytes of chunk c in both halves, low nibbles in the low half, high
   nibbles in the high half. */
INLINE __m512i u_q4_k(const uint8_t *blk, int c)
{
	__m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * c)));
	return _mm512_and_si512(_mm512_srlv_epi16(q, cnt2(0, 4)), _mm512_set1_epi8(15));
}

/* Q5_K: nibbles as Q4_K (qs at 48), bit 4 = bit 2c (low half) or 2c+1 (high
   half) of qh[l] (qh at 16). */
INLINE __m512i u_q5_k(const uint8_t *blk, int c)
{
	__m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 48 + 32 * c)));
	q = _mm512_and_si512(_mm512_srlv_epi16(q, cnt2(0, 4)), _mm512_set1_epi8(15));
	__m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)));
	h = _mm512_and_si512(_mm512_srlv_epi16(h, cnt2(2 * c, 2 * c + 1)), _mm512_set1_epi8(1));
	return _mm512_or_si512(q, _mm512_slli_epi16(h, 4));
}

/* 64 unsigned codes (0..63) of quarter p (elements 64p..64p+63) of a Q6_K
   block: ql at 0 (low 4 bits), qh at 128 (2 bits each, see ref/quants.c). */
INLINE __m512i u_q6_k(const uint8_t *blk, int p)
{
	const int h = p >> 1, hi = p & 1;
	__m512i q = _mm512_loadu_si512((const void *)(blk + 64 * h));
	__m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h)));
	if (hi)
		hb = _mm512_srli_epi16(hb, 4);
	hb = _mm512_mask_srli_epi16(hb, 0xffff0000, hb, 2); /* high half: the next 2 bits */
	hb = _mm512_and_si512(_mm512_slli_epi16(hb, 4), _mm512_set1_epi8(0x30));
	if (hi)
		q = _mm512_srli_epi16(q, 4);
	return _mm512_ternarylogic_epi32(q, _mm512_set1_epi8(15), hb, 0xEA); /* (q & 15) | hb */
}

enum { KT_Q4, KT_Q5, KT_Q6 };

INLINE __m512i k_codes(const uint8_t *blk, int kt, int c)
{
	return kt == KT_Q4 ? u_q4_k(blk, c) : kt == KT_Q5 ? u_q5_k(blk, c) : u_q6_k(blk, c);
}

INLINE int k_bs(int kt)
{
	return kt == KT_Q4 ? 144 : kt == KT_Q5 ? 176 : 210;
}

/* Int32 lanes (scale in the low 16 bits, 0 above) picked from 16-bit values
   v: lane i gets v[idx_i]. For vpdpwssd, which then multiplies a lane's low
   16 bits (the block sum, |sum| < 2^15) by the scale: no vpmulld needed. */
INLINE __m512i scale_lanes(__m256i v16, __m512i idx)
{
	return _mm512_maskz_permutexvar_epi16(0x55555555, idx, _mm512_castsi256_si512(v16));
}

/* word 2i of lane i = base + i / 4 */
#define IDX4(base) _mm512_set_epi32((base) + 3, (base) + 3, (base) + 3, (base) + 3, (base) + 2, (base) + 2, (base) + 2, \
				    (base) + 2, (base) + 1, (base) + 1, (base) + 1, (base) + 1, base, base, base, base)

/* The row pointers of a K-quant tile (a short last tile repeats its last
   row) and their byte offsets from w0, the gather indices of gather_dm. */
INLINE __m256i tile_rows(const uint8_t *w0, size_t rs, int nv, const uint8_t *row[GR])
{
	int32_t ri[GR];
	for (int r = 0; r < GR; r++) {
		int rr = r < nv ? r : nv - 1;
		row[r] = w0 + (size_t)rr * rs;
		ri[r] = (int32_t)((size_t)rr * rs);
	}
	return _mm256_loadu_si256((const __m256i *)ri);
}

/* GEMV over Q6_K rows (Q4_K / Q5_K: gemvk45_tile below). The codes (stored
   + 32, so unsigned) in the natural order, 64 per vector; vpdpbusd forms the
   8-lane partial sums of each 16-element sub-block pair and vpdpwssd
   multiplies them by the sub-block scales (the sums fit 16 bits), two
   accumulators deep; 32 * sum_k scale_k * bsums_k takes the offset back.
   The integer sum of a row is the reference's isum, exactly. */
INLINE void gemvq6_tile(const uint8_t *w0, size_t rs, int nv, int64_t nsb, const uint8_t *act, const rowlay *L,
			int nt, float *y, int64_t ldy)
{
	const int bs = k_bs(KT_Q6);
	const uint8_t *row[GR];
	const __m256i ridx = tile_rows(w0, rs, nv, row);
	__m256 acc[GEMV_TOK];
	for (int t = 0; t < nt; t++)
		acc[t] = _mm256_setzero_ps();
	for (int64_t sb = 0; sb < nsb; sb++) {
		__m256i isr[GEMV_TOK][GR];
		for (int r = 0; r < GR; r++) {
			const uint8_t *blk = row[r] + sb * bs;
			for (int k = 0; k < bs; k += 64)
				_mm_prefetch((const char *)blk + GR * rs + k, _MM_HINT_T1);
			__m512i c[4], scv[4];
			const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
#pragma GCC unroll 4
			for (int p = 0; p < 4; p++)
				c[p] = u_q6_k(blk, p);
			scv[0] = scale_lanes(s16, IDX4(0));
			scv[1] = scale_lanes(s16, IDX4(4));
			scv[2] = scale_lanes(s16, IDX4(8));
			scv[3] = scale_lanes(s16, IDX4(12));
			for (int t = 0; t < nt; t++) {
				const uint8_t *a = act + (size_t)t * L->stride;
				const int8_t *ac = (const int8_t *)a + sb * QK_K;
				__m512i is0 = _mm512_setzero_si512(), is1 = _mm512_setzero_si512();
#pragma GCC unroll 4
				for (int k = 0; k < 4; k += 2) {
					__m512i D0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c[k],
									 _mm512_load_si512((const void *)(ac + 64 * k)));
					__m512i D1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c[k + 1],
									 _mm512_load_si512((const void *)(ac + 64 * k + 64)));
					is0 = _mm512_dpwssd_epi32(is0, D0, scv[k]);
					is1 = _mm512_dpwssd_epi32(is1, D1, scv[k + 1]);
				}
				/* codes were stored + 32: take back 32 * sum_k scale_k * bsums_k */
				__m256i corr = _mm256_madd_epi16(s16, _mm256_loadu_si256((const __m256i *)(a + L->bsums + 32 * sb)));
				isr[t][r] = _mm256_sub_epi32(fold512(_mm512_add_epi32(is0, is1)), _mm256_slli_epi32(corr, 5));
			}
		}
		__m256 dw = h_hi(gather_dm(w0, ridx, (size_t)sb * bs + 206));
		for (int t = 0; t < nt; t++) {
			const uint8_t *a = act + (size_t)t * L->stride;
			__m256 dy = _mm256_set1_ps(((const float *)(a + L->d))[sb]);
			acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(dy, dw), _mm256_cvtepi32_ps(tree8(isr[t]))));
		}
	}
	__mmask8 m = (__mmask8)((1u << nv) - 1);
	for (int t = 0; t < nt; t++)
		_mm256_mask_storeu_ps(y + t * ldy, m, acc[t]);
}

/* The 6-bit scales and mins of a Q4_K / Q5_K block (bytes 4-15; see
   k_scales), unpacked two 64-bit words at a time: bytes 0-3 of the result
   are scales 0-3, 4-7 mins 0-3, 8-11 scales 4-7, 12-15 mins 4-7. */
INLINE __m128i k_scales_mixed(const uint8_t *blk)
{
	uint64_t x;
	memcpy(&x, blk + 4, 8);
	const uint64_t u2 = (uint32_t)ld32(blk + 12);
	const uint64_t lo = x & 0x3f3f3f3f3f3f3f3full;
	const uint64_t hi = (((u2 | u2 << 28) & 0x0f0f0f0f0f0f0f0full) | ((x >> 2) & 0x3030303030303030ull));
	return _mm_insert_epi64(_mm_cvtsi64_si128((long long)lo), (long long)hi, 1);
}

/* vpshufb controls on k_scales_mixed's bytes broadcast to all four 128-bit
   lanes: words of scale a (lanes 0-1) and scale b (lanes 2-3), for the sub-
   block pairs (0,2) (1,3) (4,6) (5,7) of the nibble order; and the 8 mins as
   words. 0x80 makes a zero byte. */
#define SB(i) (char)0x80, (char)(i) /* high byte first: _mm512_set_epi8 */
#define SB4(i) SB(i), SB(i), SB(i), SB(i)
#define SCTL(a, b) _mm512_set_epi8(SB4(b), SB4(b), SB4(b), SB4(b), SB4(a), SB4(a), SB4(a), SB4(a))

/* GEMV over Q4_K / Q5_K rows. The codes come as two sub-blocks per 512-bit
   vector in nibble order (the activations in the matching k4 order);
   vpmaddubsw forms the products of code pairs (codes <= 31, |a| <= 127: no
   saturation) and vpdpwssd multiplies them by the sub-block's scale, which
   one vpshufb per vector places from the unpacked scales. The integer sum
   of a row is the reference's isum, exactly. About 45 instructions per row
   and super-block, against 85 when the scales were unpacked by scalar code
   and placed with vpermw. */
INLINE void gemvk45_tile(const uint8_t *w0, size_t rs, int nv, int64_t nsb, int kt, const uint8_t *act,
			 const rowlay *L, int nt, float *y, int64_t ldy)
{
	const int bs = k_bs(kt);
	const uint8_t *row[GR];
	const __m256i ridx = tile_rows(w0, rs, nv, row);
	const __m512i m15 = _mm512_set1_epi8(15);
	const __m512i ctl0 = SCTL(0, 2), ctl1 = SCTL(1, 3), ctl2 = SCTL(8, 10), ctl3 = SCTL(9, 11);
	const __m128i ctlm = _mm_set_epi8(SB(15), SB(14), SB(13), SB(12), SB(7), SB(6), SB(5), SB(4));
	__m256 acc[GEMV_TOK], accm[GEMV_TOK];
	for (int t = 0; t < nt; t++)
		acc[t] = accm[t] = _mm256_setzero_ps();
	for (int64_t sb = 0; sb < nsb; sb++) {
		__m256i isr[GEMV_TOK][GR], imr[GEMV_TOK][GR];
		for (int r = 0; r < GR; r++) {
			const uint8_t *blk = row[r] + sb * bs;
			for (int k = 0; k < bs; k += 64)
				_mm_prefetch((const char *)blk + GR * rs + k, _MM_HINT_T1);
			const __m128i X = k_scales_mixed(blk);
			const __m512i Xb = _mm512_broadcast_i32x4(X);
			const __m512i S0 = _mm512_shuffle_epi8(Xb, ctl0), S1 = _mm512_shuffle_epi8(Xb, ctl1);
			const __m512i S2 = _mm512_shuffle_epi8(Xb, ctl2), S3 = _mm512_shuffle_epi8(Xb, ctl3);
			const __m128i m16 = _mm_shuffle_epi8(X, ctlm);
			const uint8_t *qs = blk + (kt == KT_Q4 ? 16 : 48);
			__m512i q0 = _mm512_loadu_si512((const void *)qs), q1 = _mm512_loadu_si512((const void *)(qs + 64));
			__m512i c0 = _mm512_and_si512(q0, m15), c1 = _mm512_and_si512(_mm512_srli_epi16(q0, 4), m15);
			__m512i c2 = _mm512_and_si512(q1, m15), c3 = _mm512_and_si512(_mm512_srli_epi16(q1, 4), m15);
			if (kt == KT_Q5) {
				__m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)));
				/* bit 4 of the codes: qh bits 0 2 | 1 3 | 4 6 | 5 7 (low | high half) */
				__m512i h02 = _mm512_mask_srli_epi16(h, 0xffff0000, h, 2);
				const __m512i b4 = _mm512_set1_epi8(16);
				c0 = _mm512_or_si512(c0, _mm512_and_si512(_mm512_slli_epi16(h02, 4), b4));
				c1 = _mm512_or_si512(c1, _mm512_and_si512(_mm512_slli_epi16(h02, 3), b4));
				c2 = _mm512_or_si512(c2, _mm512_and_si512(h02, b4));
				c3 = _mm512_or_si512(c3, _mm512_and_si512(_mm512_srli_epi16(h02, 1), b4));
			}
			for (int t = 0; t < nt; t++) {
				const uint8_t *a = act + (size_t)t * L->stride;
				const __m512i *ac = (const __m512i *)(a + L->k4 + sb * QK_K);
				__m512i s0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
								 _mm512_maddubs_epi16(c0, _mm512_load_si512(ac)), S0);
				__m512i s1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
								 _mm512_maddubs_epi16(c1, _mm512_load_si512(ac + 1)), S1);
				s0 = _mm512_dpwssd_epi32(s0, _mm512_maddubs_epi16(c2, _mm512_load_si512(ac + 2)), S2);
				s1 = _mm512_dpwssd_epi32(s1, _mm512_maddubs_epi16(c3, _mm512_load_si512(ac + 3)), S3);
				isr[t][r] = fold512(_mm512_add_epi32(s0, s1));
				imr[t][r] = _mm256_zextsi128_si256(
					_mm_madd_epi16(m16, _mm_loadu_si128((const __m128i *)(a + L->ssum + 16 * sb))));
			}
		}
		__m256i dm = gather_dm(w0, ridx, (size_t)sb * bs);
		__m256 dw = h_lo(dm), dmin = h_hi(dm);
		for (int t = 0; t < nt; t++) {
			const uint8_t *a = act + (size_t)t * L->stride;
			__m256 dy = _mm256_set1_ps(((const float *)(a + L->d))[sb]);
			acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(dy, dw), _mm256_cvtepi32_ps(tree8(isr[t]))));
			accm[t] = _mm256_add_ps(accm[t], _mm256_mul_ps(_mm256_mul_ps(dy, dmin), _mm256_cvtepi32_ps(tree8(imr[t]))));
		}
	}
	__mmask8 m = (__mmask8)((1u << nv) - 1);
	for (int t = 0; t < nt; t++)
		_mm256_mask_storeu_ps(y + t * ldy, m, _mm256_sub_ps(acc[t], accm[t]));
}
#undef SCTL
#undef SB4
#undef SB

/* ---- GEMM: panels ------------------------------------------------------------ */

/* acc += dpbusd(a, the dword at p broadcast): with the broadcast folded into
   the instruction ({1to16} memory operand), which GCC does not do for this
   intrinsic; a separate vpbroadcastd costs a vector µop per multiply-add. */
INLINE __m512i dpbusd_bcst(__m512i acc, __m512i a, const void *p)
{
	__asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*(const int32_t *)p));
	return acc;
}

typedef struct {
	int8_t codes[GR][KC];             /* signed codes, row r */
	int32_t corr[KC / 32][GR];        /* -128 * sum of a block's codes (K: scaled, per super-block) */
	float d[KC / 32][GR], m[KC / 32][GR];
	int32_t sc[KC / QK_K][16][GR];    /* K: sub-block scales */
	int32_t mpair[KC / QK_K][4][GR];  /* Q4_K/Q5_K: mins 2i | 2i+1 << 16 */
	float dmin[KC / QK_K][GR];
} panel;

/* direct (Q8_0): the stored codes are already the signed codes, so the GEMM
   broadcasts them from the weights themselves and the panel only gets the
   scales and corrections (half the unpacking work at one token group). */
INLINE const int8_t *panel_codes(const panel *P, const uint8_t *const row[GR], int r, int64_t b0, int bl, int bs,
				 int direct)
{
	return direct ? (const int8_t *)(row[r] + (b0 + bl) * bs + 2) : P->codes[r] + 32 * bl;
}

INLINE void unpack32(panel *P, const uint8_t *const row[GR], size_t rs, int64_t b0, int nbk, int bs, ufn U,
		     int off, int has_m, int direct)
{
	for (int r = 0; r < GR; r++)
		for (int bl = 0; bl < nbk; bl++) {
			const uint8_t *blk = row[r] + (b0 + bl) * bs;
			if (!direct)
				_mm256_store_si256((__m256i *)(P->codes[r] + 32 * bl),
						   _mm256_sub_epi8(U(blk), _mm256_set1_epi8((char)off)));
			P->d[bl][r] = f16_to_f32(ld16(blk));
			if (has_m)
				P->m[bl][r] = f16_to_f32(ld16(blk + 2));
		}
	/* corr = -128 * sum of a block's signed codes, 8 rows at once: lane sums
	   by vpdpbusd with ones, then the transpose-add tree */
	const __m512i ones = _mm512_set1_epi8(1);
	for (int bl = 0; bl < nbk; bl++) {
		__m256i s[GR];
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++)
			s[r] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm512_castsi512_si256(ones),
						   _mm256_loadu_si256((const __m256i *)panel_codes(P, row, r, b0, bl, bs, direct)));
		_mm256_store_si256((__m256i *)P->corr[bl], _mm256_slli_epi32(_mm256_sub_epi32(_mm256_setzero_si256(), tree8(s)), 7));
	}
}

INLINE void unpackk(panel *P, const uint8_t *const row[GR], size_t rs, int64_t sb0, int nsbk, int kt)
{
	const int bs = k_bs(kt);
	const __m512i ones = _mm512_set1_epi8(1);
	for (int r = 0; r < GR; r++)
		for (int sl = 0; sl < nsbk; sl++) {
			const uint8_t *blk = row[r] + (sb0 + sl) * bs;
			__m512i s32, tot = _mm512_setzero_si512();
			if (kt != KT_Q6) {
				__m128i sm = k_scales(blk + 4);
				uint8_t sc[16];
				_mm_storeu_si128((__m128i *)sc, sm);
				s32 = _mm512_cvtepu8_epi32(sm);
				for (int j = 0; j < 8; j++)
					P->sc[sl][j][r] = sc[j];
				for (int i = 0; i < 4; i++)
					P->mpair[sl][i][r] = (int32_t)(sc[8 + 2 * i] | (uint32_t)sc[9 + 2 * i] << 16);
				P->d[sl][r] = f16_to_f32(ld16(blk));
				P->dmin[sl][r] = f16_to_f32(ld16(blk + 2));
			} else {
				__m128i s8 = _mm_loadu_si128((const __m128i *)(blk + 192));
				s32 = _mm512_cvtepi8_epi32(s8);
				for (int j = 0; j < 16; j++)
					P->sc[sl][j][r] = (int8_t)blk[192 + j];
				P->d[sl][r] = f16_to_f32(ld16(blk + 208));
			}
			for (int c = 0; c < 4; c++) {
				__m512i u = k_codes(blk, kt, c);
				if (kt == KT_Q6)
					u = _mm512_sub_epi8(u, _mm512_set1_epi8(32));
				_mm512_store_si512((void *)(P->codes[r] + QK_K * sl + 64 * c), u);
				__m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, u);
				tot = _mm512_add_epi32(tot, _mm512_mullo_epi32(s, kt == KT_Q6 ? quad_bcast(s32, c) : pair_bcast(s32, c)));
			}
			P->corr[sl][r] = -128 * _mm512_reduce_add_epi32(tot);
		}
}

/* One token group, one chunk of 32-element blocks: acc[r] lanes = tokens. */
/* pf: the same chunk of a later tile's rows (prefetched into L2 while this
   group computes, spread over its blocks), or NULL. first: the row's first
   chunk (the sums start at 0, not from accg / accmg). */
INLINE void gemm32_group(const panel *P, int nbk, const uint8_t *A, float *accg, float *accmg, int has_m,
			 const uint8_t *const *pf, int bs, const uint8_t *const row[GR], int64_t b0, int direct, int first)
{
	__m512 acc[GR];
#pragma GCC unroll 8
	for (int r = 0; r < GR; r++)
		acc[r] = first ? _mm512_setzero_ps() : _mm512_load_ps(accg + 16 * r);
	for (int bl = 0; bl < nbk; bl++) {
		const uint8_t *B = A + (size_t)bl * BLK8;
		if (pf)
#pragma GCC unroll 8
			for (int r = 0; r < GR; r++)
				_mm_prefetch((const char *)pf[r] + (size_t)bl * bs, GEMM_PF_HINT);
		__m512i a[8];
#pragma GCC unroll 8
		for (int k = 0; k < 8; k++)
			a[k] = _mm512_load_si512((const void *)(B + 64 * k));
		__m512 da = _mm512_load_ps((const float *)(B + 512));
		/* k outer, rows inner: 8 independent dependency chains in flight */
		__m512i is[GR];
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++)
			is[r] = _mm512_set1_epi32(P->corr[bl][r]);
#pragma GCC unroll 8
		for (int k = 0; k < 8; k++)
#pragma GCC unroll 8
			for (int r = 0; r < GR; r++)
				is[r] = dpbusd_bcst(is[r], a[k], panel_codes(P, row, r, b0, bl, bs, direct) + 4 * k);
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++)
			acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(P->d[bl][r]), da),
								     _mm512_cvtepi32_ps(is[r])));
	}
#pragma GCC unroll 8
	for (int r = 0; r < GR; r++)
		_mm512_store_ps(accg + 16 * r, acc[r]);
	if (!has_m)
		return;
#pragma GCC unroll 8
	for (int r = 0; r < GR; r++)
		acc[r] = first ? _mm512_setzero_ps() : _mm512_load_ps(accmg + 16 * r);
	for (int bl = 0; bl < nbk; bl++) {
		__m512 sv = _mm512_load_ps((const float *)(A + (size_t)bl * BLK8 + 576));
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++)
			acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_set1_ps(P->m[bl][r]), sv));
	}
#pragma GCC unroll 8
	for (int r = 0; r < GR; r++)
		_mm512_store_ps(accmg + 16 * r, acc[r]);
}

INLINE void gemmk_group(const panel *P, int nsbk, int kt, const uint8_t *A, float *accg, float *accmg,
			const uint8_t *const *pf, int first)
{
	const int nsub = kt == KT_Q6 ? 16 : 8, dws = kt == KT_Q6 ? 4 : 8, bs = k_bs(kt);
	for (int sl = 0; sl < nsbk; sl++) {
		const uint8_t *B = A + (size_t)sl * BLKK;
		if (pf)
			for (int r = 0; r < GR; r++)
				for (int k = 0; k < bs; k += 64)
					_mm_prefetch((const char *)pf[r] + (size_t)sl * bs + k, GEMM_PF_HINT);
		__m512i is[GR];
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++)
			is[r] = _mm512_set1_epi32(P->corr[sl][r]);
		for (int j = 0; j < nsub; j++) {
			__m512i a[8];
			for (int k = 0; k < dws; k++)
				a[k] = _mm512_load_si512((const void *)(B + 64 * (j * dws + k)));
			__m512i D[GR];
#pragma GCC unroll 8
			for (int r = 0; r < GR; r++)
				D[r] = _mm512_setzero_si512();
			for (int k = 0; k < dws; k++)
#pragma GCC unroll 8
				for (int r = 0; r < GR; r++)
					D[r] = dpbusd_bcst(D[r], a[k], P->codes[r] + QK_K * sl + 4 * dws * j + 4 * k);
#pragma GCC unroll 8
			for (int r = 0; r < GR; r++)
				is[r] = _mm512_add_epi32(is[r], _mm512_mullo_epi32(D[r], _mm512_set1_epi32(P->sc[sl][j][r])));
		}
		__m512 dv = _mm512_load_ps((const float *)(B + 4096));
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++) {
			__m512 v = _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_set1_ps(P->d[sl][r])), _mm512_cvtepi32_ps(is[r]));
			__m512 s0 = first && sl == 0 ? _mm512_setzero_ps() : _mm512_load_ps(accg + 16 * r);
			_mm512_store_ps(accg + 16 * r, _mm512_add_ps(s0, v));
		}
		if (kt == KT_Q6)
			continue;
		__m512i pr[4];
		for (int i = 0; i < 4; i++)
			pr[i] = _mm512_load_si512((const void *)(B + 4160 + 64 * i));
#pragma GCC unroll 8
		for (int r = 0; r < GR; r++) {
			__m512i im = _mm512_setzero_si512();
			for (int i = 0; i < 4; i++)
				im = _mm512_dpwssd_epi32(im, pr[i], _mm512_set1_epi32(P->mpair[sl][i][r]));
			__m512 v = _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_set1_ps(P->dmin[sl][r])), _mm512_cvtepi32_ps(im));
			__m512 s0 = first && sl == 0 ? _mm512_setzero_ps() : _mm512_load_ps(accmg + 16 * r);
			_mm512_store_ps(accmg + 16 * r, _mm512_add_ps(s0, v));
		}
	}
}

/* y[16g + lane][o0 + r] for the valid tokens and rows of one group. sign:
   0 = acc, +1 = acc + accm, -1 = acc - accm. The 8 rows x 16 tokens are
   transposed in registers (unpack, shuffle) and stored as 4-float pieces:
   AVX-512 scatters are microcoded and slow on some CPUs (Zen 4). */
INLINE void store_group(float *y, int64_t n_out, int64_t n_tok, int64_t g, int64_t o0, int nv, const float *accg,
			const float *accmg, int sign)
{
	int64_t nt = n_tok - 16 * g;
	if (nt > 16)
		nt = 16;
	__m512 v[GR], lo[GR], hi[GR];
#pragma GCC unroll 8
	for (int r = 0; r < GR; r++) {
		v[r] = _mm512_load_ps(accg + 16 * r);
		if (sign > 0)
			v[r] = _mm512_add_ps(v[r], _mm512_load_ps(accmg + 16 * r));
		else if (sign < 0)
			v[r] = _mm512_sub_ps(v[r], _mm512_load_ps(accmg + 16 * r));
	}
	/* per 128-bit lane k: lo[2i] = [r2i t0, r2i+1 t0, r2i t1, r2i+1 t1] (tokens 4k..), hi: t2, t3 */
#pragma GCC unroll 4
	for (int i = 0; i < GR / 2; i++) {
		lo[i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
		hi[i] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
	}
	/* q[h][j]: rows 4h..4h+3 of tokens {j, j+4, j+8, j+12} (128-bit lane k = token j + 4k) */
	__m512 q[2][4];
#pragma GCC unroll 2
	for (int h = 0; h < 2; h++) {
		q[h][0] = _mm512_shuffle_ps(lo[2 * h], lo[2 * h + 1], 0x44);
		q[h][1] = _mm512_shuffle_ps(lo[2 * h], lo[2 * h + 1], 0xEE);
		q[h][2] = _mm512_shuffle_ps(hi[2 * h], hi[2 * h + 1], 0x44);
		q[h][3] = _mm512_shuffle_ps(hi[2 * h], hi[2 * h + 1], 0xEE);
	}
	const __mmask8 m0 = (__mmask8)(nv >= 4 ? 0xf : (1u << nv) - 1);
	const __mmask8 m1 = (__mmask8)(nv <= 4 ? 0 : (1u << (nv - 4)) - 1);
	float *yg = y + 16 * g * n_out + o0;
	for (int t = 0; t < nt; t++) {
		int jj = t & 3, k = t >> 2;
		__m128 a, b;
		switch (k) { /* the lane index must be a constant */
		case 0: a = _mm512_extractf32x4_ps(q[0][jj], 0); b = _mm512_extractf32x4_ps(q[1][jj], 0); break;
		case 1: a = _mm512_extractf32x4_ps(q[0][jj], 1); b = _mm512_extractf32x4_ps(q[1][jj], 1); break;
		case 2: a = _mm512_extractf32x4_ps(q[0][jj], 2); b = _mm512_extractf32x4_ps(q[1][jj], 2); break;
		default: a = _mm512_extractf32x4_ps(q[0][jj], 3); b = _mm512_extractf32x4_ps(q[1][jj], 3); break;
		}
		_mm_mask_storeu_ps(yg + t * n_out, m0, a);
		if (m1)
			_mm_mask_storeu_ps(yg + t * n_out + 4, m1, b);
	}
}

/* kind: 0 = 32-element blocks, else KT_* + 1 */
INLINE void gemm_tiles(const kern_weight *w, const uint8_t *act, int64_t n_tok, float *y, int64_t tile0, int64_t tile1,
		       int kind, int bs, ufn U, int off, int has_m)
{
	const int kt = kind - 1;
	const int64_t n_out = w->n_out, ng = (n_tok + 15) / 16;
	const int blck = kind ? QK_K : 32;
	const int64_t nb = w->n_in / blck, chunk = KC / blck;
	const size_t rs = (size_t)nb * (kind ? k_bs(kt) : bs);
	const size_t gs = (size_t)nb * (kind ? BLKK : BLK8);
	const int sign = kind ? (kt == KT_Q6 ? 0 : -1) : (has_m ? 1 : 0);
	const int direct = !kind && bs == 34 && off == 128 && !has_m; /* Q8_0 */
	panel P __attribute__((aligned(64)));
	float accbuf[GB][GR][16] __attribute__((aligned(64)));
	float accmbuf[GB][GR][16] __attribute__((aligned(64)));
	for (int64_t tile = tile0; tile < tile1; tile++) {
		const int64_t o0 = tile * GR;
		const int nv = n_out - o0 < GR ? (int)(n_out - o0) : GR;
		const uint8_t *row[GR];
		for (int r = 0; r < GR; r++)
			row[r] = (const uint8_t *)w->data + (size_t)(o0 + (r < nv ? r : nv - 1)) * rs;
		for (int64_t gb0 = 0; gb0 < ng; gb0 += GB) {
			const int ngb = ng - gb0 < GB ? (int)(ng - gb0) : GB;
			for (int64_t b0 = 0; b0 < nb; b0 += chunk) {
				const int nbk = nb - b0 < chunk ? (int)(nb - b0) : (int)chunk;
				if (kind)
					unpackk(&P, row, rs, b0, nbk, kt);
				else
					unpack32(&P, row, rs, b0, nbk, bs, U, off, has_m, direct);
				/* the same chunk GEMM_PF_TILES tiles on, prefetched during the first group */
				const uint8_t *pf[GR];
				for (int r = 0; r < GR; r++)
					pf[r] = row[r] + GEMM_PF_TILES * GR * rs + (size_t)b0 * (kind ? k_bs(kt) : bs);
				for (int gi = 0; gi < ngb; gi++) {
					const uint8_t *A = act + (size_t)(gb0 + gi) * gs + (size_t)b0 * (kind ? BLKK : BLK8);
					if (kind)
						gemmk_group(&P, nbk, kt, A, accbuf[gi][0], accmbuf[gi][0], gi ? NULL : pf, b0 == 0);
					else
						gemm32_group(&P, nbk, A, accbuf[gi][0], accmbuf[gi][0], has_m, gi ? NULL : pf, bs,
							     row, b0, direct, b0 == 0);
				}
			}
			for (int gi = 0; gi < ngb; gi++)
				store_group(y, n_out, n_tok, gb0 + gi, o0, nv, accbuf[gi][0], accmbuf[gi][0], sign);
		}
	}
}

_Static_assert(GR == KERN_MM_TILE, "row tiles are the table's tiles");

INLINE void rows_quant(const kern_weight *w, const void *vact, int64_t n_tok, float *y, int64_t tile0, int64_t tile1,
		       int vt, int kind, int bs, ufn U, u2fn U2, int off, int has_m)
{
	const uint8_t *act = vact;
	const int64_t n_out = w->n_out;
	if (use_gemm(n_tok)) {
		gemm_tiles(w, act, n_tok, y, tile0, tile1, kind, bs, U, off, has_m);
		return;
	}
	const rowlay L = row_layout(vt, w->n_in);
	const int kt = kind - 1;
	const int64_t nb = w->n_in / (kind ? QK_K : 32);
	const size_t rs = (size_t)nb * (kind ? k_bs(kt) : bs);
	for (int64_t tile = tile0; tile < tile1; tile++) {
		const int64_t o0 = tile * GR;
		const int nv = n_out - o0 < GR ? (int)(n_out - o0) : GR;
		const uint8_t *w0 = (const uint8_t *)w->data + (size_t)o0 * rs;
		for (int64_t t0 = 0; t0 < n_tok; t0 += GEMV_TOK) {
			const uint8_t *a = act + (size_t)t0 * L.stride;
			float *yt = y + t0 * n_out + o0;
			switch (n_tok - t0 < GEMV_TOK ? n_tok - t0 : GEMV_TOK) {
#define GEMV_CASE(NT)                                                                          \
	case NT:                                                                               \
		if (kind && kt != KT_Q6)                                                       \
			gemvk45_tile(w0, rs, nv, nb, kt, a, &L, NT, yt, n_out);                \
		else if (kind)                                                                 \
			gemvq6_tile(w0, rs, nv, nb, a, &L, NT, yt, n_out);                     \
		else                                                                           \
			gemv32_tile(w0, rs, nv, nb, bs, U2, off, has_m, a, &L, NT, yt, n_out); \
		break;
				GEMV_CASE(1)
				GEMV_CASE(2)
				GEMV_CASE(3)
				GEMV_CASE(4)
#undef GEMV_CASE
			}
		}
	}
}

_Static_assert(GEMV_TOK == 4, "rows_quant instantiates the GEMV for 1..4 tokens");

#define ROWS32(NAME, VT, BS, U, OFF, HASM)                                                                         \
	static void NAME(const kern_weight *w, const void *act, int64_t n_tok, float *y, int64_t t0, int64_t t1)  \
	{                                                                                                          \
		rows_quant(w, act, n_tok, y, t0, t1, VT, 0, BS, u_##U, u2_##U, OFF, HASM);                         \
	}
ROWS32(rows_q8_0, QTYPE_Q8_0, 34, q8_0, 128, 0)
ROWS32(rows_q4_0, QTYPE_Q8_0, 18, q4_0, 8, 0)
ROWS32(rows_q5_0, QTYPE_Q8_0, 22, q5_0, 16, 0)
ROWS32(rows_q4_1, QTYPE_Q8_1, 20, q4_1, 0, 1)
ROWS32(rows_q5_1, QTYPE_Q8_1, 24, q5_1, 0, 1)
#undef ROWS32

#define ROWSK(NAME, KT)                                                                                            \
	static void NAME(const kern_weight *w, const void *act, int64_t n_tok, float *y, int64_t t0, int64_t t1)  \
	{                                                                                                          \
		rows_quant(w, act, n_tok, y, t0, t1, QTYPE_Q8_K, (KT) + 1, 0, u_q8_0, u2_q8_0, 0, 0);              \
	}
ROWSK(rows_q4_k, KT_Q4)
ROWSK(rows_q5_k, KT_Q5)
ROWSK(rows_q6_k, KT_Q6)
#undef ROWSK

/* ---- F32 / F16 / BF16 weights -------------------------------------------------- */

enum { FT_F32, FT_F16, FT_BF16 };

/* 16 f32 values of an F32 or F16 row at element i (first `m` lanes). */
INLINE __m512 fload(const uint8_t *p, int ft, int64_t i, __mmask16 m, int full)
{
	if (ft == FT_F32)
		return full ? _mm512_loadu_ps((const float *)p + i) : _mm512_maskz_loadu_ps(m, (const float *)p + i);
	__m256i h = full ? _mm256_loadu_si256((const __m256i *)(p + 2 * i)) : _mm256_maskz_loadu_epi16(m, p + 2 * i);
	return _mm512_cvtph_ps(h);
}

/* out[r * C + c] = dot(w[r], a[c]) over n elements: per output, 16 f32 lanes
   accumulate in index order (F32/F16: one FMA per 16 elements; BF16: one
   vdpbf16ps per 32), masked tail, then _mm512_reduce_add_ps. The same
   sequence for every (R, C), so tiles agree with vec_dot bit for bit. */
INLINE void ftile(int ft, int R, int C, const uint8_t *const *w, const uint8_t *const *a, int64_t n, float *out,
		  size_t pf)
{
	__m512 acc[8][4];
	#pragma GCC unroll 8
	for (int r = 0; r < R; r++)
		#pragma GCC unroll 8
		for (int c = 0; c < C; c++)
			acc[r][c] = _mm512_setzero_ps();
	int64_t i = 0;
	if (ft == FT_BF16) {
		for (; i + 32 <= n; i += 32) {
			__m512i wv[8], av[4];
#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				if (pf)
					_mm_prefetch((const char *)w[r] + pf + 2 * i, _MM_HINT_T1);
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				wv[r] = _mm512_loadu_si512((const void *)(w[r] + 2 * i));
			#pragma GCC unroll 8
			for (int c = 0; c < C; c++)
				av[c] = _mm512_loadu_si512((const void *)(a[c] + 2 * i));
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				#pragma GCC unroll 8
				for (int c = 0; c < C; c++)
					acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)wv[r], (__m512bh)av[c]);
		}
		if (i < n) {
			__mmask32 m = (__mmask32)((1ull << (n - i)) - 1);
			__m512i wv[8], av[4];
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				wv[r] = _mm512_maskz_loadu_epi16(m, w[r] + 2 * i);
			#pragma GCC unroll 8
			for (int c = 0; c < C; c++)
				av[c] = _mm512_maskz_loadu_epi16(m, a[c] + 2 * i);
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				#pragma GCC unroll 8
				for (int c = 0; c < C; c++)
					acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)wv[r], (__m512bh)av[c]);
		}
	} else {
		for (; i + 16 <= n; i += 16) {
			__m512 wv[8], av[4];
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				if (pf && (ft == FT_F32 || !(i & 31)))
					_mm_prefetch((const char *)w[r] + pf + (ft == FT_F32 ? 4 : 2) * i, _MM_HINT_T1);
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				wv[r] = fload(w[r], ft, i, 0xffff, 1);
			#pragma GCC unroll 8
			for (int c = 0; c < C; c++)
				av[c] = fload(a[c], ft, i, 0xffff, 1);
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				#pragma GCC unroll 8
				for (int c = 0; c < C; c++)
					acc[r][c] = _mm512_fmadd_ps(wv[r], av[c], acc[r][c]);
		}
		if (i < n) {
			__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
			__m512 wv[8], av[4];
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				wv[r] = fload(w[r], ft, i, m, 0);
			#pragma GCC unroll 8
			for (int c = 0; c < C; c++)
				av[c] = fload(a[c], ft, i, m, 0);
			#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				#pragma GCC unroll 8
				for (int c = 0; c < C; c++)
					acc[r][c] = _mm512_fmadd_ps(wv[r], av[c], acc[r][c]);
		}
	}
	#pragma GCC unroll 8
	for (int r = 0; r < R; r++)
		#pragma GCC unroll 8
		for (int c = 0; c < C; c++)
			out[r * C + c] = _mm512_reduce_add_ps(acc[r][c]);
}

static float vec_dot_f32(int64_t n, const void *x, const void *y)
{
	const uint8_t *w = x, *a = y;
	float o;
	ftile(FT_F32, 1, 1, &w, &a, n, &o, 0);
	return o;
}

static float vec_dot_f16(int64_t n, const void *x, const void *y)
{
	const uint8_t *w = x, *a = y;
	float o;
	ftile(FT_F16, 1, 1, &w, &a, n, &o, 0);
	return o;
}

static float vec_dot_bf16(int64_t n, const void *x, const void *y)
{
	const uint8_t *w = x, *a = y;
	float o;
	ftile(FT_BF16, 1, 1, &w, &a, n, &o, 0);
	return o;
}

/* F16 / BF16 activations: rows of n_in halves, stride rounded up to 64 bytes. */
static size_t act_bytes_half(int64_t n_in, int64_t n_tok)
{
	return (size_t)n_tok * round64(2 * (size_t)n_in);
}

static void convert_half(const float *x, int64_t n_in, int64_t n_tok, uint8_t *act, int ith, int nth, int bf)
{
	int64_t t0, t1;
	kern_split(n_tok, ith, nth, &t0, &t1);
	for (int64_t t = t0; t < t1; t++) {
		if (bf)
			from_float_bf16(x + t * n_in, act + (size_t)t * round64(2 * (size_t)n_in), n_in);
		else
			from_float_f16(x + t * n_in, act + (size_t)t * round64(2 * (size_t)n_in), n_in);
	}
}

static void convert_f16(const float *x, int64_t n_in, int64_t n_tok, void *act, int ith, int nth)
{
	convert_half(x, n_in, n_tok, act, ith, nth, 0);
}

static void convert_bf16(const float *x, int64_t n_in, int64_t n_tok, void *act, int ith, int nth)
{
	convert_half(x, n_in, n_tok, act, ith, nth, 1);
}

INLINE void rows_float(const kern_weight *w, const void *vact, int64_t n_tok, float *y, int64_t tile0, int64_t tile1,
		       int ft)
{
	const uint8_t *act = vact;
	const int64_t n = w->n_in, n_out = w->n_out;
	const size_t es = ft == FT_F32 ? 4 : 2, rs = (size_t)n * es;
	const size_t as = ft == FT_F32 ? (size_t)n * 4 : round64(2 * (size_t)n);
	for (int64_t tile = tile0; tile < tile1; tile++) {
		const int64_t o0 = tile * 8;
		const int nv = n_out - o0 < 8 ? (int)(n_out - o0) : 8;
		const uint8_t *wr[8];
		for (int r = 0; r < 8; r++)
			wr[r] = (const uint8_t *)w->data + (size_t)(o0 + (r < nv ? r : nv - 1)) * rs;
		if (n_tok < 4) {
			for (int64_t t = 0; t < n_tok; t++) {
				const uint8_t *ar = act + (size_t)t * as;
				float out[8];
				ftile(ft, 8, 1, wr, &ar, n, out, t == 0 ? 8 * rs : 0);
				for (int r = 0; r < nv; r++)
					y[t * n_out + o0 + r] = out[r];
			}
			continue;
		}
		for (int half = 0; half < 2 && 4 * half < nv; half++) {
			for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
				const uint8_t *ar[4];
				for (int c = 0; c < 4; c++)
					ar[c] = act + (size_t)(t0 + c < n_tok ? t0 + c : n_tok - 1) * as;
				float out[16];
				ftile(ft, 4, 4, wr + 4 * half, ar, n, out, 0);
				for (int r = 0; r < 4 && 4 * half + r < nv; r++)
					for (int c = 0; c < 4 && t0 + c < n_tok; c++)
						y[(t0 + c) * n_out + o0 + 4 * half + r] = out[r * 4 + c];
			}
		}
	}
}

static void rows_f32(const kern_weight *w, const void *act, int64_t n_tok, float *y, int64_t t0, int64_t t1)
{
	rows_float(w, act, n_tok, y, t0, t1, FT_F32);
}

static void rows_f16(const kern_weight *w, const void *act, int64_t n_tok, float *y, int64_t t0, int64_t t1)
{
	rows_float(w, act, n_tok, y, t0, t1, FT_F16);
}

static void rows_bf16(const kern_weight *w, const void *act, int64_t n_tok, float *y, int64_t t0, int64_t t1)
{
	rows_float(w, act, n_tok, y, t0, t1, FT_BF16);
}

/* ---- element-wise ops ------------------------------------------------------------- */

INLINE __mmask16 tail16(int64_t k)
{
	return (__mmask16)((1u << k) - 1);
}

static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
	__m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
	int64_t i = 0;
	for (; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
		__m512 v = _mm512_maskz_loadu_ps(m, x + i);
		__m512 sq = _mm512_mul_ps(v, v);
		s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(sq)));
		s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sq), 1))));
	}
	double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
	float mean = (float)(sum / (double)n);
	const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(mean + eps));
	for (i = 0; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
		__m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), scale), _mm512_maskz_loadu_ps(m, w + i));
		_mm512_mask_storeu_ps(out + i, m, v);
	}
}

static void swiglu(float *x, const float *gate, int64_t n)
{
	const __m512 one = _mm512_set1_ps(1.0f);
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
		__m512 g = _mm512_maskz_loadu_ps(m, gate + i);
		__m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
		__m512 v = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(m, x + i));
		_mm512_mask_storeu_ps(x + i, m, v);
	}
}

static void softmax(float *x, int64_t n)
{
	__m512 mx = _mm512_set1_ps(-INFINITY);
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
		mx = _mm512_mask_max_ps(mx, m, _mm512_maskz_loadu_ps(m, x + i), mx);
	}
	const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
	__m512 sum = _mm512_setzero_ps();
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
		__m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax)));
		_mm512_mask_storeu_ps(x + i, m, e);
		sum = _mm512_add_ps(sum, e);
	}
	const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
		_mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
	}
}

/* Exactly the reference's arithmetic: products rounded, then one add or subtract. */
static void rope(float *x, int n_heads, int head_dim, int n_rot, int neox, const float *cs, const float *sn)
{
	const int half = n_rot / 2;
	const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
	for (int h = 0; h < n_heads; h++) {
		float *v = x + (size_t)h * head_dim;
		int i = 0;
		if (neox) {
			for (; i + 16 <= half; i += 16) {
				__m512 a = _mm512_loadu_ps(v + i), b = _mm512_loadu_ps(v + half + i);
				__m512 c = _mm512_loadu_ps(cs + i), s = _mm512_loadu_ps(sn + i);
				_mm512_storeu_ps(v + i, _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
				_mm512_storeu_ps(v + half + i, _mm512_add_ps(_mm512_mul_ps(a, s), _mm512_mul_ps(b, c)));
			}
		} else {
			for (; i + 8 <= half; i += 8) {
				__m512 a = _mm512_loadu_ps(v + 2 * i);
				__m512 c = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(cs + i)));
				__m512 s = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(sn + i)));
				__m512 t1 = _mm512_mul_ps(a, c), t2 = _mm512_mul_ps(_mm512_permute_ps(a, 0xB1), s);
				_mm512_storeu_ps(v + 2 * i, _mm512_mask_add_ps(_mm512_sub_ps(t1, t2), 0xAAAA, t1, t2));
			}
		}
		for (; i < half; i++) {
			int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
			float x0 = v[ia], x1 = v[ib];
			v[ia] = x0 * cs[i] - x1 * sn[i];
			v[ib] = x0 * sn[i] + x1 * cs[i];
		}
	}
}

/* ---- paged attention --------------------------------------------------------------- */

/* 16 elements of a kv row (kv dtype) at element i as f32 (first m lanes). */
INLINE __m512 kvload(const uint8_t *row, int dt, int i, __mmask16 m)
{
	if (dt == QTYPE_F32)
		return _mm512_maskz_loadu_ps(m, (const float *)row + i);
	__m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * i);
	return dt == QTYPE_F16 ? _mm512_cvtph_ps(h) : bf16_to_f32(h);
}

/* A K/V row as f32 into dst (16 nch floats, zero past the head dimension):
   the values kvload gives, with the type's branch outside the loop and
   plain loads for every chunk but the last (prefill stages 32 rows a chunk
   of 16 positions: bench/kernels' prefill attention 4.43-4.58 -> 4.20-4.40
   ms, one core). */
INLINE void stage_row(float *dst, const uint8_t *row, int dt, int nch, __mmask16 lastm)
{
	if (dt == QTYPE_F16) {
		for (int c = 0; c < nch - 1; c++)
			_mm512_store_ps(dst + 16 * c, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 32 * c))));
		_mm512_store_ps(dst + 16 * (nch - 1), _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lastm, row + 32 * (nch - 1))));
		return;
	}
	for (int c = 0; c < nch; c++)
		_mm512_store_ps(dst + 16 * c, kvload(row, dt, 16 * c, c == nch - 1 ? lastm : 0xffff));
}

INLINE __m512 round_kv(__m512 v, int dt)
{
	if (dt == QTYPE_F16)
		return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
	if (dt == QTYPE_BF16)
		return bf16_to_f32(bf16_round(v));
	return v;
}

/* 16 vectors -> one vector whose lane j is the sum of v[j]'s 16 lanes
   (transpose-add tree; the sum order of each lane is fixed). */
INLINE __m512 tree16_ps(const __m512 v[16])
{
	__m512 t[8], u[4];
#pragma GCC unroll 8
	for (int k = 0; k < 8; k++)
		t[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
#pragma GCC unroll 4
	for (int k = 0; k < 4; k++)
		u[k] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * k], t[2 * k + 1], 0x44), _mm512_shuffle_ps(t[2 * k], t[2 * k + 1], 0xEE));
	__m512 a = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
				 _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
	__m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
				 _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
	return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* K/V rows past the end of a chunk: zeros of the widest head dimension
   the attention accepts (kern_attention CHECKs head_dim <= 512). */
static const float zero_row[512] __attribute__((aligned(64)));

/* Element 16c.. of a K/V row for the score and P.V loops. mode 0: an f32
   row padded to a multiple of 16 (staged, or read in place); QTYPE_F16 /
   QTYPE_BF16: the pool's own row, converted here (m masks a short last
   chunk). The converted values are those staging would store. */
INLINE __m512 kv_at(const void *row, int c, __mmask16 m, const int mode)
{
	if (mode == 0)
		return _mm512_loadu_ps((const float *)row + 16 * c);
	__m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + 16 * c);
	return mode == QTYPE_F16 ? _mm512_cvtph_ps(h) : bf16_to_f32(h);
}

/* acc[0 .. 16 nch) = acc * alpha + sum over j < np of p[j] v[j], for head
   dimensions up to 128 (nch <= 8): the accumulators stay in registers and
   the positions are the outer loop, so the nch chains are independent (the
   position-inner order was one chain of np dependent FMAs per 16 lanes).
   Each lane adds its terms in the same order (j = 0, 1, ...) either way, so
   the results are bit for bit those of the plain loop. */
INLINE void pv_acc8(float *acc, int nch, __mmask16 lastm, __m512 alpha, const float *p, const void *const *v,
		    size_t off, int np, const int mode)
{
	__m512 o[8];
#pragma GCC unroll 8
	for (int c = 0; c < 8; c++)
		o[c] = c < nch ? _mm512_mul_ps(_mm512_load_ps(acc + 16 * c), alpha) : _mm512_setzero_ps();
	for (int j = 0; j < np; j++) {
		const __m512 pj = _mm512_set1_ps(p[j]);
		const char *vj = (const char *)v[j] + off;
#pragma GCC unroll 8
		for (int c = 0; c < 8; c++)
			if (c < nch)
				o[c] = _mm512_fmadd_ps(pj, kv_at(vj, c, c == nch - 1 ? lastm : 0xffff, mode), o[c]);
	}
#pragma GCC unroll 8
	for (int c = 0; c < 8; c++)
		if (c < nch)
			_mm512_store_ps(acc + 16 * c, o[c]);
}

/* One row's step over a chunk of up to 16 positions: scores by FMA and the
   transpose-add tree, the online-softmax update, acc += p v. The row's K/V
   data are off bytes into kp[j] / vp[j] (its kv head, in place). */
INLINE void attn_row(const float *q, float *acc, float *mr, float *lr, float *pbuf, int nch, __mmask16 lastm,
		     __m512 scale, const void *const kp[16], const void *const vp[16], size_t off, int np,
		     const int mode)
{
	const __mmask16 pm = tail16(np);
	__m512 sacc[16];
#pragma GCC unroll 16
	for (int j = 0; j < 16; j++)
		sacc[j] = _mm512_setzero_ps();
	for (int c = 0; c < nch; c++) {
		__m512 qv = _mm512_load_ps(q + 16 * c);
		__mmask16 m = c == nch - 1 ? lastm : 0xffff;
#pragma GCC unroll 16
		for (int j = 0; j < 16; j++)
			sacc[j] = _mm512_fmadd_ps(qv, kv_at((const char *)kp[j] + off, c, m, mode), sacc[j]);
	}
	__m512 sv = _mm512_mul_ps(tree16_ps(sacc), scale);
	float cmax = _mm512_mask_reduce_max_ps(pm, sv);
	float mnew = cmax > *mr ? cmax : *mr;
	/* e^0 is exactly 1 in exp512: a chunk that leaves the max where it was
	   skips the rescale factor's polynomial, with the same result */
	float alpha = 1.0f;
	if (!(mnew == *mr && *mr > -INFINITY))
		alpha = _mm512_cvtss_f32(exp512(_mm512_set1_ps(*mr - mnew)));
	__m512 pv = _mm512_maskz_mov_ps(pm, exp512(_mm512_sub_ps(sv, _mm512_set1_ps(mnew))));
	*lr = *lr * alpha + _mm512_reduce_add_ps(pv);
	*mr = mnew;
	_mm512_store_ps(pbuf, pv);
	const __m512 va = _mm512_set1_ps(alpha);
	if (nch <= 8) {
		pv_acc8(acc, nch, lastm, va, pbuf, vp, off, np, mode);
		return;
	}
	for (int c = 0; c < nch; c++) {
		__m512 o = _mm512_mul_ps(_mm512_load_ps(acc + 16 * c), va);
		for (int j = 0; j < np; j++)
			o = _mm512_fmadd_ps(_mm512_set1_ps(pbuf[j]),
					    kv_at((const char *)vp[j] + off, c, c == nch - 1 ? lastm : 0xffff, mode), o);
		_mm512_store_ps(acc + 16 * c, o);
	}
}

/* Pool slots of positions p0 .. p0+n-1 (n <= 16) of a sequence: one base
   plus j when pages hold a multiple of 16 positions (a chunk then lies
   inside one page; the default page of 16), else a walk across pages. */
INLINE void chunk_slots(const int32_t *pages, int ps, int p0, int n, size_t slot[16])
{
	int pg = p0 / ps, off = p0 % ps;
	if (ps % 16 == 0) {
		const size_t s0 = (size_t)pages[pg] * ps + (size_t)off;
		for (int j = 0; j < n; j++)
			slot[j] = s0 + (size_t)j;
		return;
	}
	for (int j = 0; j < n; j++) {
		slot[j] = (size_t)pages[pg] * ps + (size_t)off;
		if (++off == ps) {
			pg++;
			off = 0;
		}
	}
}

/* Online softmax over chunks of 16 positions (KERN_ATTN_CHUNK). Per chunk the
   K and V rows of the kv head are converted once to f32 (zero-padded to a
   multiple of 16) for every row of the call (tokens x query heads), then
   for each row that still attends there: 16 scores by FMA over the head
   dimension and a transpose-add tree, the running max m, sum l and
   accumulator acc rescaled by e^(m_old - m_new), and acc += e^(s - m_new) v
   over the row's own positions. A row's arithmetic depends only on its
   query and its positions, not on which rows share the call.
   A call may span kv heads g0..g1. Rows read their f16/bf16 K/V in place
   ("raw") when at most 2 rows share a kv head (decode: one token): then one
   pass over the chunks serves every kv head of the call, so a decode token's
   K/V rows are read from end to end, chunk by chunk, instead of 128 bytes of
   each row per head in separate passes (bench/kernels, 16 sequences at ctx
   128 over 12 layers' pools: 0.63 -> 0.35 ms per layer). Rows that stage
   (convert once for several rows) get one call per kv head. */
static void attn(const kern_attn *a, int t0, int t1, int h0, int h1, float *work)
{
	const int hd = a->head_dim, group = a->n_head / a->n_head_kv, g0 = h0 / group, g1 = (h1 - 1) / group;
	const int G = h1 - h0, R = (t1 - t0) * G;
	const int nch = (hd + 15) / 16, hdp = 16 * nch, dt = a->kv_dtype;
	/* few rows per kv head (decode: one token, the heads of a kv group):
	   converting each f16/bf16 K/V row where it is used costs less than
	   staging it */
	const int raw = dt != QTYPE_F32 && (t1 - t0) * (G < group ? G : group) <= 2;
	if (!raw && g1 > g0) {
		for (int h = h0; h < h1;) {
			int e = (h / group + 1) * group < h1 ? (h / group + 1) * group : h1;
			attn(a, t0, t1, h, e, work);
			h = e;
		}
		return;
	}
	const __mmask16 lastm = hd % 16 ? tail16(hd % 16) : 0xffff;
	const size_t es = dt == QTYPE_F32 ? 4 : 2, kvd = (size_t)a->n_head_kv * hd, qd = (size_t)a->n_head * hd;
	const int32_t *pages = a->pages[a->seq[t0]];
	const int ps = a->page_size;
	/* bytes per slot; the first kv head's offset; the kv heads' span */
	const size_t rowb = kvd * es, hoff = (size_t)g0 * hd * es, span = (size_t)(g1 - g0 + 1) * hd * es;
	const int direct = dt == QTYPE_F32 && hd % 16 == 0; /* read f32 rows in place */
	/* work: qc [R][hdp], acc [R][hdp], m [R], l [R], kf [16][hdp], vf [16][hdp], p [16] */
	float *qc = work, *acc = qc + (size_t)R * hdp, *mr = acc + (size_t)R * hdp, *lr = mr + R;
	float *kf = qc + (size_t)KERN_ATTN_MAX_ROWS * (2 * hdp + 2), *vf = kf + 16 * (size_t)hdp;
	float *pbuf = vf + 16 * (size_t)hdp;
	int nmax = 0, nrow[KERN_ATTN_MAX_ROWS];
	size_t roff[KERN_ATTN_MAX_ROWS]; /* a row's kv head in a raw row, from hoff */
	for (int i = 0; i < R; i++) {
		const int t = t0 + i / G, h = h0 + i % G;
		roff[i] = raw ? (size_t)(h / group - g0) * hd * es : 0;
		const float *q = a->q + (size_t)t * qd + (size_t)h * hd;
		for (int c = 0; c < nch; c++) {
			__mmask16 m = c == nch - 1 ? lastm : 0xffff;
			_mm512_store_ps(qc + i * hdp + 16 * c, round_kv(_mm512_maskz_loadu_ps(m, q + 16 * c), dt));
			_mm512_store_ps(acc + i * hdp + 16 * c, _mm512_setzero_ps());
		}
		mr[i] = -INFINITY;
		lr[i] = 0.0f;
		nrow[i] = a->pos[t] + 1;
		nmax = nrow[i] > nmax ? nrow[i] : nmax;
	}
	const __m512 scale = _mm512_set1_ps(a->scale);
	size_t slots[2][16]; /* pool slots of this chunk and the next */
	chunk_slots(pages, ps, 0, nmax < 16 ? nmax : 16, slots[0]);
	for (int p0 = 0; p0 < nmax; p0 += 16) {
		const int npa = nmax - p0 < 16 ? nmax - p0 : 16;
		const void *kp[16], *vp[16];
		/* fetch the next chunk's rows while this one is computed: decode reads
		   K/V pages that have left the caches (hides the DRAM latency); its
		   slots are this chunk's in the next round */
		const size_t *sl = slots[(p0 / 16) & 1];
		if (p0 + 16 < nmax) {
			const int n2 = nmax - p0 - 16 < 16 ? nmax - p0 - 16 : 16;
			size_t *s2 = slots[(p0 / 16 + 1) & 1];
			chunk_slots(pages, ps, p0 + 16, n2, s2);
			for (int j = 0; j < n2; j++) {
				const char *kr = (const char *)a->k + s2[j] * rowb + hoff;
				const char *vr = (const char *)a->v + s2[j] * rowb + hoff;
				for (size_t b = 0; b < span; b += 64) {
					_mm_prefetch(kr + b, _MM_HINT_T0);
					_mm_prefetch(vr + b, _MM_HINT_T0);
				}
			}
		}
		for (int j = 0; j < 16; j++) {
			if (j >= npa) {
				kp[j] = vp[j] = zero_row; /* zeros as f32, f16 and bf16 */
				continue;
			}
			const uint8_t *kr = (const uint8_t *)a->k + sl[j] * rowb + hoff;
			const uint8_t *vr = (const uint8_t *)a->v + sl[j] * rowb + hoff;
			if (direct || raw) {
				kp[j] = kr;
				vp[j] = vr;
				continue;
			}
			stage_row(kf + j * hdp, kr, dt, nch, lastm);
			stage_row(vf + j * hdp, vr, dt, nch, lastm);
			kp[j] = kf + j * hdp;
			vp[j] = vf + j * hdp;
		}
		for (int i = 0; i < R; i++) {
			if (nrow[i] <= p0)
				continue;
			const int np = nrow[i] - p0 < 16 ? nrow[i] - p0 : 16;
			float *qi = qc + i * hdp, *ai = acc + i * hdp;
			/* head dimensions 64 and 128 get copies with the chunk count a
			   constant: the per-chunk loops then carry no bound checks */
#define ATTN_ROW(NCH)                                                                                           \
	do {                                                                                                    \
		if (!raw)                                                                                       \
			attn_row(qi, ai, mr + i, lr + i, pbuf, NCH, lastm, scale, kp, vp, roff[i], np, 0);      \
		else if (dt == QTYPE_F16)                                                                       \
			attn_row(qi, ai, mr + i, lr + i, pbuf, NCH, lastm, scale, kp, vp, roff[i], np, QTYPE_F16); \
		else                                                                                            \
			attn_row(qi, ai, mr + i, lr + i, pbuf, NCH, lastm, scale, kp, vp, roff[i], np, QTYPE_BF16); \
	} while (0)
			if (nch == 4)
				ATTN_ROW(4);
			else if (nch == 8)
				ATTN_ROW(8);
			else
				ATTN_ROW(nch);
#undef ATTN_ROW
		}
	}
	for (int i = 0; i < R; i++) {
		float *out = a->out + (size_t)(t0 + i / G) * qd + (size_t)(h0 + i % G) * hd;
		const __m512 inv = _mm512_set1_ps(1.0f / lr[i]);
		for (int c = 0; c < nch; c++)
			_mm512_mask_storeu_ps(out + 16 * c, c == nch - 1 ? lastm : 0xffff,
					      _mm512_mul_ps(_mm512_load_ps(acc + i * hdp + 16 * c), inv));
	}
}

/* ---- the table ------------------------------------------------------------------------ */

void kern_avx512_fill(kern_table *t)
{
	t->from_float[QTYPE_Q8_0] = from_float_q8_0;
	t->from_float[QTYPE_Q8_1] = from_float_q8_1;
	t->from_float[QTYPE_Q8_K] = from_float_q8_k;
	t->from_float[QTYPE_F16] = from_float_f16;
	t->from_float[QTYPE_BF16] = from_float_bf16;
	t->to_float[QTYPE_F16] = to_float_f16;
	t->to_float[QTYPE_BF16] = to_float_bf16;

	t->vec_dot[QTYPE_F32] = vec_dot_f32;
	t->vec_dot[QTYPE_F16] = vec_dot_f16;
	t->vec_dot[QTYPE_BF16] = vec_dot_bf16;

	t->mm_act_bytes[QTYPE_Q8_0] = act_bytes_q8_0;
	t->mm_act_bytes[QTYPE_Q8_1] = act_bytes_q8_1;
	t->mm_act_bytes[QTYPE_Q8_K] = act_bytes_q8_k;
	t->mm_act_bytes[QTYPE_F16] = act_bytes_half;
	t->mm_act_bytes[QTYPE_BF16] = act_bytes_half;
	t->mm_act_convert[QTYPE_Q8_0] = convert_q8_0;
	t->mm_act_convert[QTYPE_Q8_1] = convert_q8_1;
	t->mm_act_convert[QTYPE_Q8_K] = convert_q8_k;
	t->mm_act_convert[QTYPE_F16] = convert_f16;
	t->mm_act_convert[QTYPE_BF16] = convert_bf16;

	t->mm_rows[QTYPE_F32] = rows_f32;
	t->mm_rows[QTYPE_F16] = rows_f16;
	t->mm_rows[QTYPE_BF16] = rows_bf16;
	t->mm_rows[QTYPE_Q8_0] = rows_q8_0;
	t->mm_rows[QTYPE_Q4_0] = rows_q4_0;
	t->mm_rows[QTYPE_Q5_0] = rows_q5_0;
	t->mm_rows[QTYPE_Q4_1] = rows_q4_1;
	t->mm_rows[QTYPE_Q5_1] = rows_q5_1;
	t->mm_rows[QTYPE_Q4_K] = rows_q4_k;
	t->mm_rows[QTYPE_Q5_K] = rows_q5_k;
	t->mm_rows[QTYPE_Q6_K] = rows_q6_k;

	t->rmsnorm = rmsnorm;
	t->swiglu = swiglu;
	t->softmax = softmax;
	t->rope = rope;
	t->attn = attn;
}
