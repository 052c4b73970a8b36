/* half.h - IEEE binary16 (f16) and bfloat16 conversions, scalar and exact.
 *
 * f32 -> f16 and f32 -> bf16 round to nearest, ties to even, as the hardware
 * instructions (F16C vcvtps2ph with rounding mode 0, AVX512-BF16 vcvtneps2bf16)
 * and ggml do; NaN stays NaN (quiet). These are the reference: SIMD code must
 * agree bit for bit.
 */
#ifndef PDSERVE_BASE_HALF_H
#define PDSERVE_BASE_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t half_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float half_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline float half_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;
	if (exp == 0x1f) /* inf / nan */
		return half_bits_f32(sign | 0x7f800000u | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return half_bits_f32(sign);
		/* subnormal: man * 2^-24 is exact in f32 */
		float v = (float)man * (1.0f / 16777216.0f);
		return sign ? -v : v;
	}
	return half_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t half_f32_to_f16(float f)
{
	uint32_t u = half_f32_bits(f);
	uint32_t sign = (u >> 16) & 0x8000;
	uint32_t abs = u & 0x7fffffffu;
	if (abs >= 0x7f800000u) /* inf or nan */
		return (uint16_t)(sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 | ((abs >> 13) & 0x3ff) : 0));
	if (abs >= 0x477ff000u) /* rounds to >= 65536: overflow to inf */
		return (uint16_t)(sign | 0x7c00);
	if (abs < 0x38800000u) { /* below 2^-14: f16 subnormal or zero */
		/* value = abs_f * 2^24 units of 2^-24; round to nearest even integer */
		uint32_t e = abs >> 23;
		if (e < 102) /* < 2^-25: rounds to zero */
			return (uint16_t)sign;
		uint32_t m = (abs & 0x7fffff) | 0x800000;
		uint32_t shift = 126 - e; /* 14..24 */
		uint32_t q = m >> shift;
		uint32_t rem = m & ((1u << shift) - 1);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (q & 1)))
			q++;
		return (uint16_t)(sign | q);
	}
	uint32_t r = abs + 0xfff + ((abs >> 13) & 1); /* round to nearest even at bit 13 */
	r -= 0x38000000u;                              /* rebias 127 -> 15 */
	return (uint16_t)(sign | (r >> 13));
}

static inline float half_bf16_to_f32(uint16_t h)
{
	return half_bits_f32((uint32_t)h << 16);
}

static inline uint16_t half_f32_to_bf16(float f)
{
	uint32_t u = half_f32_bits(f);
	if ((u & 0x7fffffffu) > 0x7f800000u) /* nan: keep it quiet */
		return (uint16_t)((u >> 16) | 64);
	return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

#endif
