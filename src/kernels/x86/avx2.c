/* avx2.c - AVX2 + FMA + F16C kernels (built with -mavx2 -mfma -mf16c).
 *
 * For CPUs without AVX-512 (and as a second implementation the tests
 * compare with ref). What is here, per op:
 *  - from_float for Q8_0, Q8_1, Q8_K, F16, BF16: the reference's rules bit
 *    for bit (same max, same multiplier, vcvtps2dq's round-to-nearest-even,
 *    NaN lanes to code 0, vcvtps2ph for f16).
 *  - vec_dot for every quantized weight type, bit-identical to the
 *    reference: per block the integer sum is formed with vpmaddubsw (the
 *    unsigned operand is |x| or the unsigned weight code, so no pair can
 *    saturate: at most 2 * 128 * 127 < 2^15) and vpmaddwd, summed across
 *    lanes, and then the reference's f32 steps follow in its order.
 *  - vec_dot for F32/F16/BF16: 8 f32 lanes, one FMA per 8 elements in index
 *    order, a fixed 3-level reduction at the end (f32 rounding differs from
 *    the reference's double sum; tolerance in kernels_test.c).
 *  - rmsnorm (double sum of squares), swiglu and softmax (polynomial expf
 *    within 2 ulp), rope (bit-exact).
 * kern_matmul runs the generic path on top of these (no tiled matmul here),
 * so every output is one vec_dot: batch invariance is immediate.
 *
 * Left out: a tiled GEMM/GEMV and attention for AVX2 (the reference
 * attention runs); AVX-512 machines use avx512.c.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "kernels/kernels_int.h"

#define INLINE static inline __attribute__((always_inline))

INLINE uint16_t ld16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}

INLINE float f16(uint16_t h)
{
	return _cvtsh_ss(h);
}

INLINE int hsum_i32(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
	return _mm_cvtsi128_si32(s);
}

INLINE float hsum_ps(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* sum over 32 bytes of u (unsigned, <= 128) times s (signed), as 8 int32 lanes */
INLINE __m256i dot_us(__m256i u, __m256i s)
{
	return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* signed x signed, exact: |x| times y with x's sign */
INLINE __m256i dot_ss(__m256i x, __m256i y)
{
	return dot_us(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* ---- expf ------------------------------------------------------------------ */

INLINE __m256 exp256(__m256 x)
{
	x = _mm256_min_ps(_mm256_set1_ps(88.72f), x);
	x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
	__m256 p = _mm256_set1_ps(1.9875691500e-4f);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
	p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
	/* 2^n by the exponent field; n in [-126, 128]: split so each factor is a normal number */
	__m256i ni = _mm256_cvtps_epi32(n);
	__m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
	__m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
	__m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
	__m256 e = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
	/* below -87.3 the reference gives denormals or 0: flush (callers only care about <= 1e-38) */
	return e;
}

/* ---- activation quantization ------------------------------------------------ */

/* round to nearest even, clamp to [-128, 127], NaN -> 0 */
INLINE __m256i round_clamp(__m256 v)
{
	__m256 ok = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
	v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-128.0f)), _mm256_set1_ps(127.0f));
	return _mm256_and_si256(_mm256_cvtps_epi32(v), _mm256_castps_si256(ok));
}

INLINE __m256 abs_nonan(__m256 x)
{
	return _mm256_max_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_setzero_ps());
}

INLINE float hmax_ps(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* 8 int32 (in [-128, 127]) -> 8 bytes at dst */
INLINE void pack8(int8_t *dst, __m256i v)
{
	__m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	_mm_storel_epi64((__m128i *)dst, _mm_packs_epi16(w, w));
}

/* Q8_0 rule on 32 floats: codes to qs, returns amax / 127, *sum = sum of codes */
INLINE float q8_block(const float *x, int8_t *qs, int *sum)
{
	__m256 m = _mm256_setzero_ps();
	for (int k = 0; k < 4; k++)
		m = _mm256_max_ps(abs_nonan(_mm256_loadu_ps(x + 8 * k)), m);
	float amax = hmax_ps(m);
	float id = amax != 0.0f ? 127.0f / amax : 0.0f;
	__m256i s = _mm256_setzero_si256();
	for (int k = 0; k < 4; k++) {
		__m256i q = round_clamp(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), _mm256_set1_ps(id)));
		pack8(qs + 8 * k, q);
		s = _mm256_add_epi32(s, q);
	}
	*sum = hsum_i32(s);
	return amax / 127.0f;
}

static void from_float_q8_0(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK8_0; i++, src += QK8_0, p += sizeof(block_q8_0)) {
		int8_t qs[32];
		int sum;
		uint16_t d = half_f32_to_f16(q8_block(src, qs, &sum));
		memcpy(p, &d, 2);
		memcpy(p + 2, qs, 32);
	}
}

static void from_float_q8_1(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK8_1; i++, src += QK8_1, p += sizeof(block_q8_1)) {
		int8_t qs[32];
		int sum;
		float d = q8_block(src, qs, &sum);
		uint16_t h[2] = { half_f32_to_f16(d), half_f32_to_f16(d * (float)sum) };
		memcpy(p, h, 4);
		memcpy(p + 4, qs, 32);
	}
}

static void from_float_q8_k(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	for (int64_t i = 0; i < n / QK_K; i++, src += QK_K, p += sizeof(block_q8_k)) {
		block_q8_k b;
		memset(&b, 0, sizeof(b));
		__m256 m = _mm256_setzero_ps();
		for (int k = 0; k < 32; k++)
			m = _mm256_max_ps(abs_nonan(_mm256_loadu_ps(src + 8 * k)), m);
		float amax = hmax_ps(m);
		if (amax != 0.0f) {
			float max = 0.0f;
			for (int e = 0; e < QK_K; e++)
				if (fabsf(src[e]) == amax) { /* the first element of largest |x| */
					max = src[e];
					break;
				}
			float iscale = -127.0f / max;
			for (int k = 0; k < 32; k++) {
				__m256i q = round_clamp(_mm256_mul_ps(_mm256_set1_ps(iscale), _mm256_loadu_ps(src + 8 * k)));
				pack8(b.qs + 8 * k, q);
				int s = hsum_i32(q);
				b.bsums[k / 2] = (int16_t)(b.bsums[k / 2] + s);
			}
			b.d = 1.0f / iscale;
		}
		memcpy(p, &b, sizeof(b));
	}
}

static void from_float_f16(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(p + 2 * i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++) {
		uint16_t h = half_f32_to_f16(src[i]);
		memcpy(p + 2 * i, &h, 2);
	}
}

static void from_float_bf16(const float *src, void *dst, int64_t n)
{
	uint8_t *p = dst;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 x = _mm256_loadu_ps(src + i);
		__m256i u = _mm256_castps_si256(x);
		__m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
		__m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
		__m256i nanv = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
		r = _mm256_blendv_epi8(r, nanv, _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
		__m128i w = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
		_mm_storeu_si128((__m128i *)(p + 2 * i), w);
	}
	for (; i < n; i++) {
		uint16_t h = half_f32_to_bf16(src[i]);
		memcpy(p + 2 * i, &h, 2);
	}
}

/* ---- quantized dot products (bit-identical to ref) ---------------------------- */

INLINE __m256i nib32(const uint8_t *qs)
{
	__m128i q = _mm_loadu_si128((const __m128i *)qs);
	__m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
	return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

/* bit i of the 32-bit qh -> 0x10 in byte i */
INLINE __m256i hbit32(const uint8_t *qh)
{
	uint32_t h;
	memcpy(&h, qh, 4);
	const __m256i shuf = _mm256_setr_epi64x(0, 0x0101010101010101ll, 0x0202020202020202ll, 0x0303030303030303ll);
	__m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), shuf);
	const __m256i bits = _mm256_set1_epi64x(0x8040201008040201ll);
	v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
	return _mm256_and_si256(v, _mm256_set1_epi8(16));
}

/* isum of one 32-block: sum (u - off) * a, u unsigned codes <= 31 */
INLINE int isum_u(__m256i u, const int8_t *a, int off)
{
	__m256i av = _mm256_loadu_si256((const __m256i *)a);
	int s = hsum_i32(dot_us(u, av));
	if (off)
		s -= off * hsum_i32(dot_us(_mm256_set1_epi8(1), av));
	return s;
}

static float vec_dot_q8_0_q8_0(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	float sum = 0.0f;
	for (int64_t i = 0; i < n / 32; i++, x += 34, y += 34) {
		int isum = hsum_i32(dot_ss(_mm256_loadu_si256((const __m256i *)(x + 2)), _mm256_loadu_si256((const __m256i *)(y + 2))));
		sum += (f16(ld16(x)) * f16(ld16(y))) * (float)isum;
	}
	return sum;
}

static float vec_dot_q4_0_q8_0(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	float sum = 0.0f;
	for (int64_t i = 0; i < n / 32; i++, x += 18, y += 34) {
		int isum = isum_u(nib32(x + 2), (const int8_t *)(y + 2), 8);
		sum += (f16(ld16(x)) * f16(ld16(y))) * (float)isum;
	}
	return sum;
}

static float vec_dot_q5_0_q8_0(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	float sum = 0.0f;
	for (int64_t i = 0; i < n / 32; i++, x += 22, y += 34) {
		int isum = isum_u(_mm256_or_si256(nib32(x + 6), hbit32(x + 2)), (const int8_t *)(y + 2), 16);
		sum += (f16(ld16(x)) * f16(ld16(y))) * (float)isum;
	}
	return sum;
}

static float vec_dot_q4_1_q8_1(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	float sum = 0.0f, sum_min = 0.0f;
	for (int64_t i = 0; i < n / 32; i++, x += 20, y += 36) {
		int isum = isum_u(nib32(x + 4), (const int8_t *)(y + 4), 0);
		sum += (f16(ld16(x)) * f16(ld16(y))) * (float)isum;
		sum_min += f16(ld16(x + 2)) * f16(ld16(y + 2));
	}
	return sum + sum_min;
}

static float vec_dot_q5_1_q8_1(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	float sum = 0.0f, sum_min = 0.0f;
	for (int64_t i = 0; i < n / 32; i++, x += 24, y += 36) {
		int isum = isum_u(_mm256_or_si256(nib32(x + 8), hbit32(x + 4)), (const int8_t *)(y + 4), 0);
		sum += (f16(ld16(x)) * f16(ld16(y))) * (float)isum;
		sum_min += f16(ld16(x + 2)) * f16(ld16(y + 2));
	}
	return sum + sum_min;
}

INLINE void k_scales(const uint8_t *s, int sc[8], int mn[8])
{
	for (int j = 0; j < 4; j++) {
		sc[j] = s[j] & 63;
		mn[j] = s[j + 4] & 63;
		sc[j + 4] = (s[j + 8] & 15) | (s[j] >> 6) << 4;
		mn[j + 4] = (s[j + 8] >> 4) | (s[j + 4] >> 6) << 4;
	}
}

/* Q4_K (q5 = 0) and Q5_K (q5 = 1) against Q8_K. */
INLINE float dot_k45(int64_t n, const uint8_t *x, const uint8_t *y, int q5)
{
	const int bs = q5 ? 176 : 144;
	float sum = 0.0f, sum_min = 0.0f;
	for (int64_t i = 0; i < n / QK_K; i++, x += bs, y += sizeof(block_q8_k)) {
		block_q8_k b;
		memcpy(&b, y, sizeof(b));
		int sc[8], mn[8];
		k_scales(x + 4, sc, mn);
		const uint8_t *qs = x + (q5 ? 48 : 16), *qh = x + 16;
		__m256i h = q5 ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
		int isum = 0, imin = 0;
		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
			__m256i lo = _mm256_and_si256(q, _mm256_set1_epi8(15));
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(15));
			if (q5) {
				const __m256i one = _mm256_set1_epi8(1);
				lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * c), one), 4));
				hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * c + 1), one), 4));
			}
			isum += sc[2 * c] * hsum_i32(dot_us(lo, _mm256_loadu_si256((const __m256i *)(b.qs + 64 * c))));
			isum += sc[2 * c + 1] * hsum_i32(dot_us(hi, _mm256_loadu_si256((const __m256i *)(b.qs + 64 * c + 32))));
		}
		for (int j = 0; j < 8; j++)
			imin += mn[j] * (b.bsums[2 * j] + b.bsums[2 * j + 1]);
		sum += (b.d * f16(ld16(x))) * (float)isum;
		sum_min += (b.d * f16(ld16(x + 2))) * (float)imin;
	}
	return sum - sum_min;
}

static float vec_dot_q4_k_q8_k(int64_t n, const void *x, const void *y)
{
	return dot_k45(n, x, y, 0);
}

static float vec_dot_q5_k_q8_k(int64_t n, const void *x, const void *y)
{
	return dot_k45(n, x, y, 1);
}

static float vec_dot_q6_k_q8_k(int64_t n, const void *vx, const void *vy)
{
	const uint8_t *x = vx, *y = vy;
	float sum = 0.0f;
	for (int64_t i = 0; i < n / QK_K; i++, x += 210, y += sizeof(block_q8_k)) {
		block_q8_k b;
		memcpy(&b, y, sizeof(b));
		int isum = 0;
		for (int h = 0; h < 2; h++) {
			__m256i hb = _mm256_loadu_si256((const __m256i *)(x + 128 + 32 * h));
			for (int k = 0; k < 4; k++) {
				__m256i ql = _mm256_loadu_si256((const __m256i *)(x + 64 * h + 32 * (k & 1)));
				__m256i lo = k < 2 ? _mm256_and_si256(ql, _mm256_set1_epi8(15))
						   : _mm256_and_si256(_mm256_srli_epi16(ql, 4), _mm256_set1_epi8(15));
				__m256i hi = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * k), _mm256_set1_epi8(3));
				__m256i u = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)); /* 0..63, stored + 32 */
				const int8_t *a = b.qs + 128 * h + 32 * k;
				__m256i av = _mm256_loadu_si256((const __m256i *)a);
				/* two 16-element sub-blocks, each with its own scale */
				__m256i d = dot_us(u, av), s = dot_us(_mm256_set1_epi8(32), av);
				__m256i t = _mm256_sub_epi32(d, s); /* sum (u - 32) a per lane */
				int e = 128 * h + 32 * k;
				int lo4 = _mm_cvtsi128_si32(_mm_hadd_epi32(_mm_hadd_epi32(_mm256_castsi256_si128(t), _mm256_castsi256_si128(t)),
									   _mm256_castsi256_si128(t)));
				__m128i th = _mm256_extracti128_si256(t, 1);
				int hi4 = _mm_cvtsi128_si32(_mm_hadd_epi32(_mm_hadd_epi32(th, th), th));
				isum += (int8_t)x[192 + e / 16] * lo4 + (int8_t)x[192 + e / 16 + 1] * hi4;
			}
		}
		sum += (b.d * f16(ld16(x + 208))) * (float)isum;
	}
	return sum;
}

/* ---- F32 / F16 / BF16 dots ------------------------------------------------------- */

enum { FT_F32, FT_F16, FT_BF16 };

INLINE __m256 fload8(const uint8_t *p, int ft, int64_t i)
{
	if (ft == FT_F32)
		return _mm256_loadu_ps((const float *)p + i);
	__m128i h = _mm_loadu_si128((const __m128i *)(p + 2 * i));
	if (ft == FT_F16)
		return _mm256_cvtph_ps(h);
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE float fscalar(const uint8_t *p, int ft, int64_t i)
{
	if (ft == FT_F32) {
		float f;
		memcpy(&f, p + 4 * i, 4);
		return f;
	}
	return ft == FT_F16 ? f16(ld16(p + 2 * i)) : half_bf16_to_f32(ld16(p + 2 * i));
}

/* 8 lanes, FMA in index order, tail elements into lane 0..k-1 of a last FMA */
INLINE float fdot(int ft, int64_t n, const uint8_t *x, const uint8_t *y)
{
	__m256 acc = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		acc = _mm256_fmadd_ps(fload8(x, ft, i), fload8(y, ft, i), acc);
	if (i < n) {
		float xa[8] = { 0 }, ya[8] = { 0 };
		for (int k = 0; i + k < n; k++) {
			xa[k] = fscalar(x, ft, i + k);
			ya[k] = fscalar(y, ft, i + k);
		}
		acc = _mm256_fmadd_ps(_mm256_loadu_ps(xa), _mm256_loadu_ps(ya), acc);
	}
	return hsum_ps(acc);
}

static float vec_dot_f32(int64_t n, const void *x, const void *y) { return fdot(FT_F32, n, x, y); }
static float vec_dot_f16(int64_t n, const void *x, const void *y) { return fdot(FT_F16, n, x, y); }
static float vec_dot_bf16(int64_t n, const void *x, const void *y) { return fdot(FT_BF16, n, x, y); }

/* ---- element-wise ops --------------------------------------------------------------- */

static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
	__m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i), sq = _mm256_mul_ps(v, v);
		s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
		s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
	}
	__m256d s = _mm256_add_pd(s0, s1);
	__m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
	double sum = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
	for (; i < n; i++)
		sum += (double)(x[i] * x[i]);
	float mean = (float)(sum / (double)n);
	const float scale = 1.0f / sqrtf(mean + eps);
	const __m256 vs = _mm256_set1_ps(scale);
	for (i = 0; i + 8 <= n; i += 8)
		_mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
	for (; i < n; i++)
		out[i] = (x[i] * scale) * w[i];
}

static void swiglu(float *x, const float *gate, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 g = _mm256_loadu_ps(gate + i);
		__m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
		_mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)),
						      _mm256_loadu_ps(x + i)));
	}
	for (; i < n; i++)
		x[i] = gate[i] / (1.0f + expf(-gate[i])) * x[i];
}

static void softmax(float *x, int64_t n)
{
	float max = -INFINITY;
	for (int64_t i = 0; i < n; i++)
		max = fmaxf(max, x[i]);
	__m256 sum = _mm256_setzero_ps(), vm = _mm256_set1_ps(max);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
		_mm256_storeu_ps(x + i, e);
		sum = _mm256_add_ps(sum, e);
	}
	float s = hsum_ps(sum);
	for (; i < n; i++) {
		x[i] = expf(x[i] - max);
		s += x[i];
	}
	const float inv = 1.0f / s;
	for (i = 0; i < n; i++)
		x[i] *= inv;
}

static void rope(float *x, int n_heads, int head_dim, int n_rot, int neox, const float *cs, const float *sn)
{
	const int half = n_rot / 2;
	for (int h = 0; h < n_heads; h++) {
		float *v = x + (size_t)h * head_dim;
		int i = 0;
		if (neox) {
			for (; i + 8 <= half; i += 8) {
				__m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + half + i);
				__m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
				_mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
				_mm256_storeu_ps(v + half + i, _mm256_add_ps(_mm256_mul_ps(a, s), _mm256_mul_ps(b, c)));
			}
		} else {
			const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
			for (; i + 4 <= half; i += 4) {
				__m256 a = _mm256_loadu_ps(v + 2 * i);
				__m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cs + i)), dup);
				__m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sn + i)), dup);
				__m256 t1 = _mm256_mul_ps(a, c), t2 = _mm256_mul_ps(_mm256_permute_ps(a, 0xB1), s);
				_mm256_storeu_ps(v + 2 * i, _mm256_blend_ps(_mm256_sub_ps(t1, t2), _mm256_add_ps(t1, t2), 0xAA));
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

/* ---- the table ------------------------------------------------------------------------ */

void kern_avx2_fill(kern_table *t)
{
	t->from_float[QTYPE_Q8_0] = from_float_q8_0;
	t->from_float[QTYPE_Q8_1] = from_float_q8_1;
	t->from_float[QTYPE_Q8_K] = from_float_q8_k;
	t->from_float[QTYPE_F16] = from_float_f16;
	t->from_float[QTYPE_BF16] = from_float_bf16;

	t->vec_dot[QTYPE_F32] = vec_dot_f32;
	t->vec_dot[QTYPE_F16] = vec_dot_f16;
	t->vec_dot[QTYPE_BF16] = vec_dot_bf16;
	t->vec_dot[QTYPE_Q8_0] = vec_dot_q8_0_q8_0;
	t->vec_dot[QTYPE_Q4_0] = vec_dot_q4_0_q8_0;
	t->vec_dot[QTYPE_Q5_0] = vec_dot_q5_0_q8_0;
	t->vec_dot[QTYPE_Q4_1] = vec_dot_q4_1_q8_1;
	t->vec_dot[QTYPE_Q5_1] = vec_dot_q5_1_q8_1;
	t->vec_dot[QTYPE_Q4_K] = vec_dot_q4_k_q8_k;
	t->vec_dot[QTYPE_Q5_K] = vec_dot_q5_k_q8_k;
	t->vec_dot[QTYPE_Q6_K] = vec_dot_q6_k_q8_k;

	t->rmsnorm = rmsnorm;
	t->swiglu = swiglu;
	t->softmax = softmax;
	t->rope = rope;
}
