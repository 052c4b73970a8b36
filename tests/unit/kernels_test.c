/* kernels_test.c - the numeric kernels: conversions, quant formats, dot products,
 * matmul and the element-wise ops.
 *
 * What is checked, and against what:
 *  - half.h f16/bf16 conversions against the CPU's own instructions (F16C,
 *    AVX512-BF16), exhaustively where the domain is 2^16 and on every f16
 *    rounding tie plus random and edge f32 values the other way.
 *  - Dequantization against real files: ../shared/models/synth holds the
 *    same seeded weights as F32 and as llama-quantize output, so each
 *    quantized tensor, dequantized here, must be close to its F32 original.
 *    A wrong bit layout gives errors near 100%, far above every bound.
 *  - vec_dot against the dequantized dot product, for every weight type,
 *    on rows from our quantizers, from test-only quantizers (Q4_1, Q5_0,
 *    Q5_1), from random bytes, and from the files.
 *  - The exact ggml rules for activation quantization (Q8_0, Q8_1, Q8_K):
 *    ties to even, the 127/amax multiplier, the signed max of Q8_K, bsums,
 *    zero blocks, huge values; and the exact f32 combination of vec_dot.
 *  - matmul: bit-identical for any thread count and any batch position,
 *    equal to a naive vec_dot loop, odd shapes, unaligned pointers.
 *  - Every implementation the CPU supports against ref (today only ref).
 *
 * Tolerances sit in tables next to their one-line reasons.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

#include "base/alloc.h"
#include "base/half.h"
#include "base/threadpool.h"
#include "kernels/kernels.h"
#include "kernels/qtypes.h"
#include "model/gguf.h"
#include "testutil.h"

/* ------------------------------------------------------------------ random */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static void rng_seed(uint64_t s)
{
	rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static uint64_t rng_u64(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

static uint32_t rng_u32(void)
{
	return (uint32_t)(rng_u64() >> 32);
}

static double rng_unit(void) /* (0, 1) */
{
	return ((double)(rng_u64() >> 11) + 0.5) / 9007199254740992.0;
}

static float rng_normal(void)
{
	return (float)(sqrt(-2.0 * log(rng_unit())) * cos(6.283185307179586 * rng_unit()));
}

static void fill_normal(float *x, int64_t n, float scale)
{
	for (int64_t i = 0; i < n; i++)
		x[i] = scale * rng_normal();
}

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* ------------------------------------------------ f16 / bf16 vs the hardware */

__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f)
{
	return (uint16_t)_cvtss_sh(f, 0); /* round to nearest even */
}

__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h)
{
	return _cvtsh_ss(h);
}

/* AVX512-BF16 vcvtneps2bf16 on 16 floats. */
__attribute__((target("avx512f,avx512bf16"))) static void hw_f32_to_bf16_16(const float *x,
									  uint16_t *out)
{
	__m256bh r = _mm512_cvtneps_pbh(_mm512_loadu_ps(x));
	memcpy(out, &r, 32);
}

static int is_nan_bits(uint32_t u)
{
	return (u & 0x7fffffffu) > 0x7f800000u;
}

Test(half, f16_to_f32_exhaustive_vs_f16c)
{
	if (!__builtin_cpu_supports("f16c"))
		cr_skip_test("CPU has no F16C");
	int snan_diff = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		uint32_t got = f32_bits(half_f16_to_f32((uint16_t)h));
		uint32_t want = f32_bits(hw_f16_to_f32((uint16_t)h));
		int f16_snan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) && !(h & 0x200);
		if (f16_snan && got != want) {
			/* vcvtph2ps quiets signalling NaNs (sets the quiet bit);
			   half.h keeps the payload as is. Both are NaN. */
			cr_assert(is_nan_bits(got) && is_nan_bits(want) && (got | 0x400000u) == want,
				  "f16 %04x: got %08x want %08x", h, got, want);
			snan_diff++;
			continue;
		}
		cr_assert_eq(got, want, "f16 %04x -> f32: got %08x, hardware %08x", h, got, want);
	}
	cr_log_info("f16->f32: all 65536 match F16C except %d signalling NaNs (quieted by hardware)",
		    snan_diff);
}

static void check_f32_to_f16(float f)
{
	uint16_t got = half_f32_to_f16(f), want = hw_f32_to_f16(f);
	cr_assert_eq(got, want, "f32 %08x (%g) -> f16: got %04x, hardware %04x", f32_bits(f), (double)f,
		     got, want);
}

Test(half, f32_to_f16_vs_f16c)
{
	if (!__builtin_cpu_supports("f16c"))
		cr_skip_test("CPU has no F16C");
	/* every f16 value, the exact ties between neighbours, and one f32 ulp
	   either side of each tie: exercises round-to-nearest-even everywhere,
	   including the subnormal range and the overflow threshold */
	for (uint32_t h = 0; h < 0x7c00; h++) {
		for (int sign = 0; sign < 2; sign++) {
			float a = half_f16_to_f32((uint16_t)(h | sign << 15));
			float b = half_f16_to_f32((uint16_t)((h + 1) | sign << 15)); /* 0x7c00 = inf */
			check_f32_to_f16(a);
			double mid = ((double)a + (double)b) / 2; /* exact in f32 for finite b */
			if (isinf(b))
				mid = sign ? -65520.0 : 65520.0; /* the tie between 65504 and 65536 */
			float m = (float)mid;
			check_f32_to_f16(m);
			check_f32_to_f16(nextafterf(m, 0.0f));
			check_f32_to_f16(nextafterf(m, sign ? -INFINITY : INFINITY));
		}
	}
	static const float edge[] = { 0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, 1e5f, -1e5f,
				      3.4e38f, INFINITY, -INFINITY, 5.96e-8f, 2.98e-8f, 2.9802322e-8f,
				      1e-10f, 1.17549435e-38f, 1.4e-45f, 6.1035156e-05f, 6.0975552e-05f };
	for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]); i++)
		check_f32_to_f16(edge[i]);
	/* NaNs: quiet and signalling, both signs, assorted payloads */
	static const uint32_t nans[] = { 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fa00000u, 0x7fbfffffu,
					 0xff812345u, 0x7fffffffu, 0x7f802000u };
	for (size_t i = 0; i < sizeof(nans) / sizeof(nans[0]); i++)
		check_f32_to_f16(bits_f32(nans[i]));
	/* random bit patterns (all exponents) and random values in the f16 range */
	rng_seed(1);
	for (int i = 0; i < 2000000; i++) {
		check_f32_to_f16(bits_f32(rng_u32()));
		check_f32_to_f16((float)((rng_unit() * 2 - 1) * 70000.0));
		check_f32_to_f16((float)((rng_unit() * 2 - 1) * 1e-4));
	}
}

Test(half, bf16_vs_avx512bf16)
{
	/* bf16 -> f32 is a shift: check it on all 65536 values. */
	for (uint32_t h = 0; h < 65536; h++)
		cr_assert_eq(f32_bits(half_bf16_to_f32((uint16_t)h)), h << 16);

	if (!__builtin_cpu_supports("avx512bf16"))
		cr_skip_test("CPU has no AVX512-BF16 (bf16 -> f32 checked)");
	/* vcvtneps2bf16 treats subnormal inputs as zero; ggml's f32 -> bf16
	   (ggml_cpu_fp32_to_bf16, scalar) does not, and neither does half.h.
	   So subnormals are checked against the rounding rule instead. */
	rng_seed(2);
	enum { N = 16 };
	float x[N];
	uint16_t hw[N];
	for (int iter = 0; iter < 400000; iter++) {
		for (int i = 0; i < N; i++) {
			uint32_t u = rng_u32();
			switch (iter % 4) {
			case 0: break;                               /* any bits */
			case 1: u = (u & 0xffff0000u) | 0x8000u; break; /* exact ties */
			case 2: u = (u & 0xffff0000u) | 0x7fffu; break; /* just below a tie */
			default: u = (u & 0x807fffffu) | 0x3f800000u; break; /* [1, 2) */
			}
			x[i] = bits_f32(u);
		}
		hw_f32_to_bf16_16(x, hw);
		for (int i = 0; i < N; i++) {
			uint32_t u = f32_bits(x[i]);
			uint16_t got = half_f32_to_bf16(x[i]);
			if ((u & 0x7f800000u) == 0 && (u & 0x7fffffu)) {
				uint32_t want = (u + 0x7fffu + ((u >> 16) & 1)) >> 16;
				cr_assert_eq(got, want, "subnormal %08x: got %04x want %04x", u, got, want);
				continue;
			}
			cr_assert_eq(got, hw[i], "f32 %08x -> bf16: got %04x, hardware %04x", u, got, hw[i]);
		}
	}
	static const float edge[N] = { 0.0f, -0.0f, INFINITY, -INFINITY, 3.4028235e38f, -3.4028235e38f,
				       1.0f, 1.00390625f, 1.01171875f, 1.0f + 1.0f / 256 + 1e-7f,
				       NAN, -NAN, 1.17549435e-38f, 65504.0f, 1e-30f, -2.5f };
	memcpy(x, edge, sizeof(x));
	x[10] = bits_f32(0x7f800001u); /* signalling NaN */
	hw_f32_to_bf16_16(x, hw);
	for (int i = 0; i < N; i++)
		cr_assert_eq(half_f32_to_bf16(x[i]), hw[i], "edge %d (%08x): got %04x want %04x", i,
			     f32_bits(x[i]), half_f32_to_bf16(x[i]), hw[i]);
}

/* ---------------------------------------------------- test-only quantizers */

/* Q4_1 / Q5_1 / Q5_0 blocks the way ggml's reference quantizers build them
   (min/max or signed-max scaling); the library has no quantizer for these
   weight types, and vec_dot needs rows of them. */
static void test_quantize_q4_1(const float *x, block_q4_1 *b)
{
	float mn = x[0], mx = x[0];
	for (int j = 1; j < 32; j++) {
		mn = fminf(mn, x[j]);
		mx = fmaxf(mx, x[j]);
	}
	float d = (mx - mn) / 15, id = d ? 1 / d : 0;
	b->d = half_f32_to_f16(d);
	b->m = half_f32_to_f16(mn);
	for (int j = 0; j < 16; j++) {
		int lo = (int)((x[j] - mn) * id + 0.5f), hi = (int)((x[j + 16] - mn) * id + 0.5f);
		b->qs[j] = (uint8_t)((lo > 15 ? 15 : lo) | (hi > 15 ? 15 : hi) << 4);
	}
}

static void set_q5_high_bits(const int q[32], uint8_t qs[16], uint8_t qh[4])
{
	uint32_t h = 0;
	for (int j = 0; j < 16; j++)
		qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
	for (int j = 0; j < 32; j++)
		h |= (uint32_t)((q[j] >> 4) & 1) << j;
	for (int k = 0; k < 4; k++)
		qh[k] = (uint8_t)(h >> (8 * k));
}

static void test_quantize_q5_1(const float *x, block_q5_1 *b)
{
	float mn = x[0], mx = x[0];
	for (int j = 1; j < 32; j++) {
		mn = fminf(mn, x[j]);
		mx = fmaxf(mx, x[j]);
	}
	float d = (mx - mn) / 31, id = d ? 1 / d : 0;
	b->d = half_f32_to_f16(d);
	b->m = half_f32_to_f16(mn);
	int q[32];
	for (int j = 0; j < 32; j++) {
		int v = (int)((x[j] - mn) * id + 0.5f);
		q[j] = v > 31 ? 31 : v;
	}
	set_q5_high_bits(q, b->qs, b->qh);
}

static void test_quantize_q5_0(const float *x, block_q5_0 *b)
{
	float amax = 0, max = 0;
	for (int j = 0; j < 32; j++)
		if (fabsf(x[j]) > amax) {
			amax = fabsf(x[j]);
			max = x[j];
		}
	float d = max / -16, id = d ? 1 / d : 0;
	b->d = half_f32_to_f16(d);
	int q[32];
	for (int j = 0; j < 32; j++) {
		int v = (int)(x[j] * id + 16.5f);
		q[j] = v > 31 ? 31 : v < 0 ? 0 : v;
	}
	set_q5_high_bits(q, b->qs, b->qh);
}

/* ----------------------------------------------------------- row builders */

static const int weight_types[] = { QTYPE_F32, QTYPE_F16, QTYPE_BF16, QTYPE_Q4_0, QTYPE_Q4_1, QTYPE_Q5_0,
				    QTYPE_Q5_1, QTYPE_Q8_0, QTYPE_Q4_K, QTYPE_Q5_K, QTYPE_Q6_K };
#define N_WEIGHT_TYPES ((int)(sizeof(weight_types) / sizeof(weight_types[0])))

/* Random bytes for a block, with its f16 scale fields set to sane values so
   the dequantized row has no inf/nan. */
static void random_block(int type, uint8_t *b)
{
	const qtype_info *qi = qtype_get(type);
	for (int i = 0; i < qi->type_size; i++)
		b[i] = (uint8_t)rng_u32();
	uint16_t d = half_f32_to_f16((float)(0.001 + 0.01 * rng_unit()));
	uint16_t m = half_f32_to_f16((float)(-0.05 * rng_unit()));
	switch (type) {
	case QTYPE_Q4_0: case QTYPE_Q5_0: case QTYPE_Q8_0:
		memcpy(b, &d, 2);
		break;
	case QTYPE_Q4_1: case QTYPE_Q5_1:
		memcpy(b, &d, 2);
		memcpy(b + 2, &m, 2);
		break;
	case QTYPE_Q4_K: case QTYPE_Q5_K: {
		uint16_t dmin = half_f32_to_f16((float)(0.001 * rng_unit()));
		memcpy(b, &d, 2);
		memcpy(b + 2, &dmin, 2);
		break;
	}
	case QTYPE_Q6_K:
		memcpy(b + offsetof(block_q6_k, d), &d, 2);
		break;
	default:
		break;
	}
}

/* A weight row of n elements in `type`, written to dst: quantized from
   N(0,1) floats where some quantizer exists (ours or the test's), random
   blocks otherwise or when `random_bytes`. */
static void make_row(int type, int64_t n, void *dst, int random_bytes)
{
	const qtype_info *qi = qtype_get(type);
	const kern_table *ref = kern_ref();
	float *x = malloc((size_t)n * sizeof(float));
	fill_normal(x, n, 1.0f);
	uint8_t *p = dst;
	int64_t nb = n / qi->blck;
	if (qi->blck == 1 || (!random_bytes && ref->from_float[type])) {
		ref->from_float[type](x, dst, n);
	} else if (!random_bytes && type == QTYPE_Q4_1) {
		for (int64_t i = 0; i < nb; i++) {
			block_q4_1 b;
			test_quantize_q4_1(x + 32 * i, &b);
			memcpy(p + i * sizeof(b), &b, sizeof(b));
		}
	} else if (!random_bytes && type == QTYPE_Q5_1) {
		for (int64_t i = 0; i < nb; i++) {
			block_q5_1 b;
			test_quantize_q5_1(x + 32 * i, &b);
			memcpy(p + i * sizeof(b), &b, sizeof(b));
		}
	} else if (!random_bytes && type == QTYPE_Q5_0) {
		for (int64_t i = 0; i < nb; i++) {
			block_q5_0 b;
			test_quantize_q5_0(x + 32 * i, &b);
			memcpy(p + i * sizeof(b), &b, sizeof(b));
		}
	} else {
		for (int64_t i = 0; i < nb; i++)
			random_block(type, p + i * qi->type_size);
	}
	free(x);
}

/* -------------------------------------------------- dequant vs the F32 file */

typedef struct {
	int type;
	double bound; /* max relative RMS error over any tensor */
	const char *why;
	double worst; /* measured */
	int n_tensors;
} dequant_bound;

/* Relative RMS error ||deq - f32|| / ||f32|| per tensor of N(0, s^2) weights,
   bound = worst measured (in brackets, ktiny files) with 1.3-2x margin. A
   layout bug (nibble order, scale unpacking, sign) gives 0.2-1.5. */
static dequant_bound dequant_bounds[] = {
	{ QTYPE_F16, 5e-4, "[2.1e-4] f32 -> f16 rounding, 11-bit significand", 0, 0 },
	{ QTYPE_BF16, 3e-3, "[1.7e-3] f32 -> bf16 rounding, 8-bit significand", 0, 0 },
	{ QTYPE_Q8_0, 0.01, "[5.4e-3] 8-bit codes, step amax/127 per 32", 0, 0 },
	{ QTYPE_Q6_K, 0.025, "[0.018] 6-bit codes, 8-bit scale per 16", 0, 0 },
	{ QTYPE_Q5_K, 0.05, "[0.036] 5-bit codes, 6-bit scale and min per 32", 0, 0 },
	{ QTYPE_Q4_K, 0.10, "[0.072] 4-bit codes, 6-bit scale and min per 32", 0, 0 },
	{ QTYPE_Q4_0, 0.12, "[0.087] 4-bit codes, signed-max scale per 32, no min", 0, 0 },
};
#define N_DEQUANT_BOUNDS ((int)(sizeof(dequant_bounds) / sizeof(dequant_bounds[0])))

static dequant_bound *bound_for(int type)
{
	for (int i = 0; i < N_DEQUANT_BOUNDS; i++)
		if (dequant_bounds[i].type == type)
			return &dequant_bounds[i];
	return NULL;
}

static const char *const quant_files[] = {
	"models/synth/ktiny-f16.gguf",    "models/synth/ktiny-bf16.gguf",   "models/synth/ktiny-q8_0.gguf",
	"models/synth/ktiny-q4_0.gguf",   "models/synth/ktiny-q4_k_m.gguf", "models/synth/ktiny-q5_k_m.gguf",
	"models/synth/ktiny-q6_k.gguf",
};

Test(dequant, matches_f32_file)
{
	const char *f32_path = test_shared("models/synth/ktiny-f32.gguf");
	if (!f32_path)
		cr_skip_test("fixture models/synth/ktiny-f32.gguf not found");
	char err[ERR_LEN];
	gguf *g32 = gguf_open(f32_path, err);
	cr_assert_not_null(g32, "%s", err);
	const kern_table *ref = kern_ref();
	int n_files = 0;
	for (size_t fi = 0; fi < sizeof(quant_files) / sizeof(quant_files[0]); fi++) {
		const char *path = test_shared(quant_files[fi]);
		if (!path)
			continue;
		n_files++;
		gguf *g = gguf_open(path, err);
		cr_assert_not_null(g, "%s", err);
		for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
			const gguf_tensor *t = gguf_tensor_at(g, i);
			if (t->type == QTYPE_F32)
				continue; /* norms stay F32 */
			const gguf_tensor *t32 = gguf_find_tensor(g32, t->name);
			cr_assert_not_null(t32, "%s: tensor %s missing from the F32 file", quant_files[fi],
					   t->name);
			cr_assert_eq(t32->type, QTYPE_F32);
			int64_t n = gguf_tensor_nelements(t);
			cr_assert_eq(n, gguf_tensor_nelements(t32), "%s: shape differs", t->name);
			dequant_bound *b = bound_for(t->type);
			cr_assert_not_null(b, "%s: tensor %s has unexpected type %s", quant_files[fi], t->name,
					   qtype_name(t->type));
			cr_assert_not_null(ref->to_float[t->type]);
			float *deq = malloc((size_t)n * sizeof(float));
			/* rows are whole blocks, so the tensor converts in one call */
			ref->to_float[t->type](t->data, deq, n);
			const float *want = t32->data;
			double err2 = 0, ref2 = 0;
			for (int64_t k = 0; k < n; k++) {
				double e = (double)deq[k] - (double)want[k];
				err2 += e * e;
				ref2 += (double)want[k] * want[k];
			}
			free(deq);
			double rel = sqrt(err2 / ref2);
			cr_log_info("%-26s %-22s %-5s rel rms %.5f", quant_files[fi] + 13, t->name,
				    qtype_name(t->type), rel);
			if (rel > b->worst)
				b->worst = rel;
			b->n_tensors++;
			cr_expect_leq(rel, b->bound, "%s %s (%s): relative rms error %.4f > bound %.4f (%s)",
				      quant_files[fi], t->name, qtype_name(t->type), rel, b->bound, b->why);
		}
		gguf_close(g);
	}
	gguf_close(g32);
	if (!n_files)
		cr_skip_test("no quantized ktiny files found");
	for (int i = 0; i < N_DEQUANT_BOUNDS; i++)
		cr_log_info("%-5s worst rel rms %.5f over %d tensors (bound %.4g: %s)",
			    qtype_name(dequant_bounds[i].type), dequant_bounds[i].worst,
			    dequant_bounds[i].n_tensors, dequant_bounds[i].bound, dequant_bounds[i].why);
}

/* --------------------------------------------------- vec_dot consistency */

/* vec_dot(x, y) against sum(to_float(x) * to_float(y)) in double. The error
   allowed is rel * sum|x_i y_i|, plus for Q4_1/Q5_1 the f16 rounding of the
   Q8_1 s field (s = f16(d * sum q), times the weight min m, per block). */
typedef struct {
	int type;
	double rel;
	const char *why;
} dot_tol;

static const dot_tol dot_tols[] = {
	{ QTYPE_F32, 1e-6, "double accumulation: only the final f32 rounding" },
	{ QTYPE_F16, 1e-6, "double accumulation: only the final f32 rounding" },
	{ QTYPE_BF16, 1e-6, "double accumulation: only the final f32 rounding" },
	{ QTYPE_Q4_0, 2e-5, "f32 sum over n/32 blocks and f32 d_x*d_y products" },
	{ QTYPE_Q4_1, 2e-5, "as Q4_0, plus the s term allowed separately" },
	{ QTYPE_Q5_0, 2e-5, "as Q4_0" },
	{ QTYPE_Q5_1, 2e-5, "as Q4_1" },
	{ QTYPE_Q8_0, 2e-5, "as Q4_0" },
	{ QTYPE_Q4_K, 2e-5, "f32 sum over n/256 blocks; min term summed apart" },
	{ QTYPE_Q5_K, 2e-5, "as Q4_K" },
	{ QTYPE_Q6_K, 2e-5, "f32 sum over n/256 blocks" },
};

static double dot_tol_for(int type)
{
	for (size_t i = 0; i < sizeof(dot_tols) / sizeof(dot_tols[0]); i++)
		if (dot_tols[i].type == type)
			return dot_tols[i].rel;
	cr_assert_fail("no tolerance for %s", qtype_name(type));
	return 0;
}

/* Compares one weight row x (type) with activations a (f32, n). */
static void check_vec_dot(const kern_table *kt, int type, int64_t n, const void *x, const float *a,
			  const char *what)
{
	const qtype_info *qi = qtype_get(type);
	int vt = qi->vec_dot_type;
	size_t ysize = qtype_row_size(vt, n);
	cr_assert_gt(ysize, 0);
	uint8_t *y = malloc(ysize);
	float *xf = malloc((size_t)n * sizeof(float)), *yf = malloc((size_t)n * sizeof(float));
	kt->from_float[vt](a, y, n);
	kt->to_float[type](x, xf, n);
	kt->to_float[vt](y, yf, n);
	double want = 0, mag = 0, s_slack = 0;
	for (int64_t i = 0; i < n; i++) {
		want += (double)xf[i] * yf[i];
		mag += fabs((double)xf[i] * yf[i]);
	}
	if (type == QTYPE_Q4_1 || type == QTYPE_Q5_1) {
		for (int64_t b = 0; b < n / 32; b++) {
			block_q8_1 yb;
			uint16_t m;
			memcpy(&yb, y + b * sizeof(yb), sizeof(yb));
			memcpy(&m, (const uint8_t *)x + b * qi->type_size + 2, 2); /* d, m are the first fields */
			s_slack += fabs((double)half_f16_to_f32(m)) * fabs((double)half_f16_to_f32(yb.s)) *
				   (1.0 / 1024);
		}
	}
	float got = kt->vec_dot[type](n, x, y);
	double tol = dot_tol_for(type) * mag + s_slack + 1e-30;
	cr_assert(fabs((double)got - want) <= tol,
		  "%s vec_dot %s n=%ld (%s): got %.9g want %.9g, |diff| %.3g > tol %.3g", kt->name,
		  qtype_name(type), (long)n, what, (double)got, want, fabs((double)got - want), tol);
	free(y);
	free(xf);
	free(yf);
}

static const kern_table *impls_to_test(int i)
{
	/* ref always; the dispatched table too when it is another implementation */
	kern_init();
	if (i == 0)
		return kern_ref();
	if (i == 1 && strcmp(kern.name, "ref") != 0)
		return &kern;
	return NULL;
}

Test(vec_dot, matches_dequantized_dot)
{
	static const int64_t sizes[] = { 256, 512, 4096 };
	rng_seed(3);
	for (int ii = 0; impls_to_test(ii); ii++) {
		const kern_table *kt = impls_to_test(ii);
		for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
			int type = weight_types[ti];
			for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
				int64_t n = sizes[si];
				size_t rs = qtype_row_size(type, n);
				uint8_t *x = malloc(rs);
				float *a = malloc((size_t)n * sizeof(float));
				for (int rep = 0; rep < 8; rep++) {
					make_row(type, n, x, 0);
					fill_normal(a, n, rep % 2 ? 1.0f : 40.0f);
					check_vec_dot(kt, type, n, x, a, "quantized row");
					if (qtype_get(type)->blck > 1) {
						make_row(type, n, x, 1);
						check_vec_dot(kt, type, n, x, a, "random blocks");
					}
				}
				/* n = one block (n=1 for the float types) */
				int64_t n1 = qtype_get(type)->blck;
				make_row(type, n1, x, 0);
				fill_normal(a, n1, 1.0f);
				check_vec_dot(kt, type, n1, x, a, "one block");
				free(x);
				free(a);
			}
		}
	}
}

/* Rows straight from the quantized files (K-quants as llama-quantize made them). */
Test(vec_dot, matches_dequantized_dot_on_file_rows)
{
	static const char *const files[] = { "models/synth/ktiny-q4_k_m.gguf", "models/synth/ktiny-q5_k_m.gguf",
					     "models/synth/ktiny-q4_0.gguf", "models/synth/ktiny-q8_0.gguf",
					     "models/synth/ktiny-q6_k.gguf" };
	int found = 0;
	rng_seed(4);
	for (size_t fi = 0; fi < sizeof(files) / sizeof(files[0]); fi++) {
		const char *path = test_shared(files[fi]);
		if (!path)
			continue;
		found++;
		char err[ERR_LEN];
		gguf *g = gguf_open(path, err);
		cr_assert_not_null(g, "%s", err);
		for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
			const gguf_tensor *t = gguf_tensor_at(g, i);
			if (t->type == QTYPE_F32)
				continue;
			int64_t n = t->ne[0];
			size_t rs = qtype_row_size(t->type, n);
			float *a = malloc((size_t)n * sizeof(float));
			for (int r = 0; r < 3; r++) {
				int64_t row = (int64_t)(rng_u32() % (uint32_t)t->ne[1]);
				fill_normal(a, n, 3.0f);
				check_vec_dot(kern_ref(), t->type, n, (const uint8_t *)t->data + row * rs, a,
					      t->name);
			}
			free(a);
		}
		gguf_close(g);
	}
	if (!found)
		cr_skip_test("no quantized ktiny files found");
}

/* The f32 combination order is part of the spec (ggml x86): per block,
   (d_x * d_y) first, then times the integer sum, added in block order. */
Test(vec_dot, exact_combination_q8_0)
{
	enum { N = 1024 };
	rng_seed(5);
	const kern_table *ref = kern_ref();
	block_q8_0 x[N / 32], y[N / 32];
	float a[N];
	make_row(QTYPE_Q8_0, N, x, 0);
	fill_normal(a, N, 2.0f);
	ref->from_float[QTYPE_Q8_0](a, y, N);
	float want = 0;
	for (int b = 0; b < N / 32; b++) {
		int isum = 0;
		for (int j = 0; j < 32; j++)
			isum += x[b].qs[j] * y[b].qs[j];
		want += (half_f16_to_f32(x[b].d) * half_f16_to_f32(y[b].d)) * (float)isum;
	}
	float got = ref->vec_dot[QTYPE_Q8_0](N, x, y);
	cr_assert_eq(f32_bits(got), f32_bits(want), "got %.9g want %.9g", (double)got, (double)want);
}

Test(vec_dot, exact_combination_q4_k)
{
	enum { N = 1024 };
	rng_seed(6);
	const kern_table *ref = kern_ref();
	block_q4_k x[N / 256];
	block_q8_k y[N / 256];
	float a[N], xf[N];
	make_row(QTYPE_Q4_K, N, x, 1);
	fill_normal(a, N, 2.0f);
	ref->from_float[QTYPE_Q8_K](a, y, N);
	ref->to_float[QTYPE_Q4_K](x, xf, N);
	/* sum - summin with each part formed from integer sums; sub-block scale and
	   min are recovered from the dequantized values (value = d*sc*q - dmin*m). */
	float sum = 0, summin = 0;
	for (int b = 0; b < N / 256; b++) {
		float d = half_f16_to_f32(x[b].d), dmin = half_f16_to_f32(x[b].dmin);
		const uint8_t *s = x[b].scales;
		int isum = 0, imin = 0;
		for (int j = 0; j < 8; j++) {
			int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
			int mn = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | (s[j] >> 6) << 4;
			int dot = 0;
			for (int l = 0; l < 32; l++) {
				int e = 256 * b + 32 * j + l;
				int q = (j % 2 == 0) ? x[b].qs[32 * (j / 2) + l] & 15 : x[b].qs[32 * (j / 2) + l] >> 4;
				/* cross-check the code against the dequantized value */
				cr_assert_float_eq(xf[e], d * (float)sc * (float)q - dmin * (float)mn, 1e-6f);
				dot += q * y[b].qs[32 * j + l];
			}
			isum += sc * dot;
			imin += mn * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
		}
		sum += (y[b].d * d) * (float)isum;
		summin += (y[b].d * dmin) * (float)imin;
	}
	float want = sum - summin;
	float got = ref->vec_dot[QTYPE_Q4_K](N, x, y);
	cr_assert_eq(f32_bits(got), f32_bits(want), "got %.9g want %.9g", (double)got, (double)want);
}

/* ----------------------------------------- activation quantization rules */

/* ggml's nearest_int: add 1.5 * 2^23 and read the mantissa (ties to even). */
static int magic_round(float v)
{
	float t = v + 12582912.f;
	int32_t i;
	memcpy(&i, &t, 4);
	return (i & 0x007fffff) - 0x00400000;
}

Test(quant, q8_0_follows_ggml_x86_rule)
{
	enum { N = 32 * 200 };
	rng_seed(7);
	const kern_table *ref = kern_ref();
	static float a[N];
	static block_q8_0 y[N / 32];
	for (int i = 0; i < N; i++)
		a[i] = rng_normal() * (float)(i / 32 % 7 == 0 ? 1e-3 : 5.0);
	ref->from_float[QTYPE_Q8_0](a, y, N);
	for (int b = 0; b < N / 32; b++) {
		float amax = 0;
		for (int j = 0; j < 32; j++)
			amax = fmaxf(amax, fabsf(a[32 * b + j]));
		cr_assert_eq(y[b].d, half_f32_to_f16(amax / 127.f), "block %d scale", b);
		float id = 127.f / amax; /* not 1/d */
		for (int j = 0; j < 32; j++)
			cr_assert_eq(y[b].qs[j], magic_round(a[32 * b + j] * id), "block %d elem %d: %d vs %d",
				     b, j, y[b].qs[j], magic_round(a[32 * b + j] * id));
	}
	/* ties go to even: with amax = 127 the multiplier is exactly 1 */
	float t[32] = { 127.0f, 2.5f, 3.5f, -2.5f, -3.5f, 0.5f, -0.5f, 1.5f, 126.5f, -126.5f };
	block_q8_0 tb;
	ref->from_float[QTYPE_Q8_0](t, &tb, 32);
	static const int want[10] = { 127, 2, 4, -2, -4, 0, 0, 2, 126, -126 };
	for (int j = 0; j < 10; j++)
		cr_assert_eq(tb.qs[j], want[j], "tie %g -> %d, want %d", (double)t[j], tb.qs[j], want[j]);
	cr_assert_eq(half_f16_to_f32(tb.d), 1.0f);
}

Test(quant, q8_1_sum_field)
{
	enum { N = 32 * 64 };
	rng_seed(8);
	const kern_table *ref = kern_ref();
	float a[N];
	block_q8_1 y[N / 32];
	block_q8_0 y0[N / 32];
	fill_normal(a, N, 3.0f);
	for (int i = 0; i < 32; i++)
		a[i] = 0; /* a zero block */
	ref->from_float[QTYPE_Q8_1](a, y, N);
	ref->from_float[QTYPE_Q8_0](a, y0, N);
	for (int b = 0; b < N / 32; b++) {
		/* same codes and scale as Q8_0, plus s = f16(d * sum) with the unrounded d */
		cr_assert_eq(y[b].d, y0[b].d);
		cr_assert_eq(memcmp(y[b].qs, y0[b].qs, 32), 0);
		float amax = 0;
		int sum = 0;
		for (int j = 0; j < 32; j++) {
			amax = fmaxf(amax, fabsf(a[32 * b + j]));
			sum += y[b].qs[j];
		}
		cr_assert_eq(y[b].s, half_f32_to_f16(amax / 127.f * (float)sum), "block %d s", b);
	}
	cr_assert_eq(y[0].d, 0);
	cr_assert_eq(y[0].s, 0);
}

Test(quant, q8_k_follows_ggml_rule)
{
	enum { N = 256 * 40 };
	rng_seed(9);
	const kern_table *ref = kern_ref();
	static float a[N];
	static block_q8_k y[N / 256];
	fill_normal(a, N, 2.0f);
	ref->from_float[QTYPE_Q8_K](a, y, N);
	for (int b = 0; b < N / 256; b++) {
		const float *x = a + 256 * b;
		float amax = 0, max = 0;
		int arg = 0;
		for (int j = 0; j < 256; j++)
			if (fabsf(x[j]) > amax) {
				amax = fabsf(x[j]);
				max = x[j];
				arg = j;
			}
		float iscale = -127.f / max;
		cr_assert_eq(f32_bits(y[b].d), f32_bits(1 / iscale), "block %d: d must be 1/iscale", b);
		cr_assert_eq(y[b].qs[arg], -127, "block %d: the largest element maps to -127", b);
		cr_assert((y[b].d > 0) == (max < 0), "d has the sign opposite to max");
		for (int j = 0; j < 256; j++) {
			int v = magic_round(iscale * x[j]);
			cr_assert_eq(y[b].qs[j], v > 127 ? 127 : v, "block %d elem %d", b, j);
		}
		for (int k = 0; k < 16; k++) {
			int s = 0;
			for (int l = 0; l < 16; l++)
				s += y[b].qs[16 * k + l];
			cr_assert_eq(y[b].bsums[k], s, "block %d bsums[%d]", b, k);
		}
	}
	/* ties to even: max = -127 makes iscale exactly 1 */
	float t[256] = { -127.0f, 2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 126.5f };
	block_q8_k tb;
	ref->from_float[QTYPE_Q8_K](t, &tb, 256);
	static const int want[7] = { -127, 2, 4, -2, 0, 0, 126 };
	for (int j = 0; j < 7; j++)
		cr_assert_eq(tb.qs[j], want[j], "tie %g -> %d, want %d", (double)t[j], tb.qs[j], want[j]);
	cr_assert_eq(tb.d, 1.0f);
	/* on a tie in |x| the first element wins: +3 then -3 -> max = +3, d < 0 */
	float u[256] = { 0 };
	u[10] = 3.0f;
	u[20] = -3.0f;
	ref->from_float[QTYPE_Q8_K](u, &tb, 256);
	cr_assert_eq(tb.qs[10], -127);
	cr_assert_eq(tb.qs[20], 127);
	cr_assert_lt(tb.d, 0.0f);
}

/* Round trip: every element within half a step (plus the f16 rounding of
   the Q8_0 scale: 127 * 2^-11 of a step), and a small relative rms. */
Test(quant, activation_round_trip)
{
	static const struct {
		int type;
		double half_steps; /* |x - deq| <= half_steps * |d| */
		double rel_rms;
		const char *why;
	} cases[] = {
		{ QTYPE_Q8_0, 0.5 + 127.0 / 2048 + 1e-3, 0.01, "half a step + f16 scale rounding" },
		{ QTYPE_Q8_1, 0.5 + 127.0 / 2048 + 1e-3, 0.01, "same codes as Q8_0" },
		{ QTYPE_Q8_K, 0.5 + 1e-3, 0.01, "half a step, f32 scale" },
	};
	enum { N = 256 * 32 };
	static float a[N], back[N];
	static uint8_t q[N * 2];
	const kern_table *ref = kern_ref();
	rng_seed(10);
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		int type = cases[c].type;
		const qtype_info *qi = qtype_get(type);
		for (int i = 0; i < N; i++)
			a[i] = rng_normal() * (float)(1 + i / 256); /* blocks of growing scale */
		ref->from_float[type](a, q, N);
		ref->to_float[type](q, back, N);
		double e2 = 0, r2 = 0;
		for (int b = 0; b < N / qi->blck; b++) {
			const uint8_t *blk = q + (size_t)b * qi->type_size;
			float d;
			if (type == QTYPE_Q8_K) {
				memcpy(&d, blk, 4);
			} else {
				uint16_t h;
				memcpy(&h, blk, 2);
				d = half_f16_to_f32(h);
			}
			for (int j = 0; j < qi->blck; j++) {
				int k = b * qi->blck + j;
				double e = fabs((double)back[k] - a[k]);
				cr_assert(e <= cases[c].half_steps * fabs((double)d),
					  "%s elem %d: %g -> %g, step %g", qi->name, k, (double)a[k],
					  (double)back[k], (double)d);
				e2 += e * e;
				r2 += (double)a[k] * a[k];
			}
		}
		cr_assert_leq(sqrt(e2 / r2), cases[c].rel_rms, "%s rel rms %g (%s)", qi->name, sqrt(e2 / r2),
			      cases[c].why);
		cr_log_info("%s activation round trip rel rms %.5f", qi->name, sqrt(e2 / r2));
	}
}

Test(quant, zero_and_huge_blocks)
{
	const kern_table *ref = kern_ref();
	float z[256] = { 0 }, back[256];
	block_q8_0 b0[8];
	block_q8_k bk;
	memset(&bk, 0x5a, sizeof(bk));
	ref->from_float[QTYPE_Q8_0](z, b0, 256);
	ref->from_float[QTYPE_Q8_K](z, &bk, 256);
	for (int b = 0; b < 8; b++) {
		cr_assert_eq(b0[b].d, 0);
		for (int j = 0; j < 32; j++)
			cr_assert_eq(b0[b].qs[j], 0);
	}
	cr_assert_eq(bk.d, 0.0f);
	for (int j = 0; j < 256; j++)
		cr_assert_eq(bk.qs[j], 0);
	for (int k = 0; k < 16; k++)
		cr_assert_eq(bk.bsums[k], 0, "bsums of a zero block are zeroed (ggml leaves them stale)");
	ref->to_float[QTYPE_Q8_K](&bk, back, 256);
	for (int j = 0; j < 256; j++)
		cr_assert_eq(back[j], 0.0f);

	/* one huge value: it gets the full code, the small ones vanish */
	float h[256];
	for (int j = 0; j < 256; j++)
		h[j] = 1e-3f * (float)(j % 7 - 3);
	h[5] = 3e4f; /* d = 236 fits f16 */
	ref->from_float[QTYPE_Q8_0](h, b0, 256);
	cr_assert_eq(b0[0].qs[5], 127);
	for (int j = 0; j < 32; j++)
		if (j != 5)
			cr_assert_eq(b0[0].qs[j], 0);
	ref->from_float[QTYPE_Q8_K](h, &bk, 256);
	cr_assert_eq(bk.qs[5], -127);
	cr_assert_float_eq(bk.d, -3e4f / 127, 1e-2f);
	h[5] = 1e30f; /* Q8_K's f32 scale copes */
	ref->from_float[QTYPE_Q8_K](h, &bk, 256);
	cr_assert_eq(bk.qs[5], -127);
	cr_assert(isfinite(bk.d));
	/* as in ggml, a Q8_0 block whose amax/127 exceeds 65504 gets an infinite
	   f16 scale: activations are far below that in any real model */
	h[5] = 1e7f;
	ref->from_float[QTYPE_Q8_0](h, b0, 256);
	cr_assert(isinf(half_f16_to_f32(b0[0].d)));
}

/* n must be a multiple of the block: callers check with qtype_row_size (0
   when it is not) and kern_matmul CHECKs it (abort: a caller bug, never
   input). The conversion functions only assert it. */
Test(quant, partial_block_is_refused_by_row_size)
{
	cr_assert_eq(qtype_row_size(QTYPE_Q8_0, 33), 0);
	cr_assert_eq(qtype_row_size(QTYPE_Q8_K, 320), 0);
	cr_assert_eq(qtype_row_size(QTYPE_Q4_K, 128), 0);
	cr_assert_eq(qtype_row_size(QTYPE_Q8_0, 64), 68);
}

Test(quant, matmul_checks_partial_block, .signal = SIGABRT)
{
	static block_q8_0 w[4];
	float x[48] = { 0 }, y[2];
	kern_weight kw = { QTYPE_Q8_0, 48, 2, w }; /* 48 is not a multiple of 32 */
	static uint8_t scratch[4096] __attribute__((aligned(64)));
	kern_matmul(NULL, &kw, x, 1, y, scratch);
}

Test(quant, q4_0_weights_follow_ggml_ref)
{
	rng_seed(11);
	const kern_table *ref = kern_ref();
	float a[64];
	block_q4_0 b[2];
	fill_normal(a, 64, 1.0f);
	a[40] = -5.0f; /* signed max of block 1 is negative */
	ref->from_float[QTYPE_Q4_0](a, b, 64);
	for (int k = 0; k < 2; k++) {
		float amax = 0, max = 0;
		for (int j = 0; j < 32; j++)
			if (fabsf(a[32 * k + j]) > amax) {
				amax = fabsf(a[32 * k + j]);
				max = a[32 * k + j];
			}
		float d = max / -8, id = 1 / d;
		cr_assert_eq(b[k].d, half_f32_to_f16(d));
		for (int j = 0; j < 32; j++) {
			int v = (int)(a[32 * k + j] * id + 8.5f);
			v = v > 15 ? 15 : v;
			int got = j < 16 ? b[k].qs[j] & 15 : b[k].qs[j - 16] >> 4;
			cr_assert_eq(got, v, "block %d elem %d", k, j);
		}
	}
}

/* --------------------------------------------------------------- matmul */

static void *aligned_scratch(size_t n)
{
	void *p = alloc_aligned(64, n ? n : 64);
	cr_assert_not_null(p);
	return p;
}

/* y for tokens [0, n_tok) computed one vec_dot at a time, no pool. */
static void naive_matmul(const kern_weight *w, const float *x, int64_t n_tok, float *y)
{
	const qtype_info *qi = qtype_get(w->type);
	int vt = qi->vec_dot_type;
	size_t ys = qtype_row_size(vt, w->n_in), rs = qtype_row_size(w->type, w->n_in);
	uint8_t *act = malloc(ys);
	for (int64_t t = 0; t < n_tok; t++) {
		kern.from_float[vt](x + t * w->n_in, act, w->n_in);
		for (int64_t o = 0; o < w->n_out; o++)
			y[t * w->n_out + o] = kern.vec_dot[w->type](w->n_in, (const uint8_t *)w->data + o * rs, act);
	}
	free(act);
}

Test(matmul, thread_and_batch_invariant)
{
	kern_init();
	enum { N_TOK = 7, N_OUT = 37 };
	static const int64_t n_ins[] = { 256, 768 };
	threadpool *pools[4] = { NULL };
	char err[ERR_LEN];
	for (int p = 1; p <= 3; p++) {
		pools[p] = threadpool_create(p, err);
		cr_assert_not_null(pools[p], "%s", err);
	}
	rng_seed(12);
	for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
		int type = weight_types[ti];
		for (size_t ni = 0; ni < sizeof(n_ins) / sizeof(n_ins[0]); ni++) {
			int64_t n_in = n_ins[ni];
			size_t rs = qtype_row_size(type, n_in);
			/* weights at an odd address, activations off 16-byte alignment */
			uint8_t *wbuf = malloc(rs * N_OUT + 1);
			for (int o = 0; o < N_OUT; o++)
				make_row(type, n_in, wbuf + 1 + o * rs, o % 3 == 2);
			float *xbuf = malloc((N_TOK * n_in + 1) * sizeof(float));
			float *x = xbuf + 1;
			fill_normal(x, N_TOK * n_in, 1.5f);
			kern_weight w = { type, n_in, N_OUT, wbuf + 1 };
			void *scratch = aligned_scratch(kern_matmul_scratch(&w, N_TOK));
			float want[N_TOK * N_OUT], got[N_TOK * N_OUT], one[N_OUT];
			naive_matmul(&w, x, N_TOK, want);
			for (int p = 0; p <= 3; p++) {
				memset(got, 0xff, sizeof(got));
				kern_matmul(pools[p], &w, x, N_TOK, got, scratch);
				cr_assert_eq(memcmp(got, want, sizeof(got)), 0,
					     "%s n_in=%ld: %d threads differ from the naive loop", qtype_name(type),
					     (long)n_in, p ? p : 1);
			}
			for (int t = 0; t < N_TOK; t++) {
				kern_matmul(pools[3], &w, x + t * n_in, 1, one, scratch);
				cr_assert_eq(memcmp(one, want + t * N_OUT, sizeof(one)), 0,
					     "%s: token %d alone differs from its row in the batch",
					     qtype_name(type), t);
			}
			/* get_row is to_float of the row */
			float row[768], ref_row[768];
			kern_get_row(&w, N_OUT - 1, row);
			kern_ref()->to_float[type](wbuf + 1 + (N_OUT - 1) * rs, ref_row, n_in);
			cr_assert_eq(memcmp(row, ref_row, (size_t)n_in * sizeof(float)), 0);
			alloc_free(scratch);
			free(wbuf);
			free(xbuf);
		}
	}
	for (int p = 1; p <= 3; p++)
		threadpool_destroy(pools[p]);
}

/* More threads than rows, one row, one token: every thread count still agrees. */
Test(matmul, tiny_shapes)
{
	kern_init();
	char err[ERR_LEN];
	threadpool *tp = threadpool_create(5, err);
	cr_assert_not_null(tp, "%s", err);
	rng_seed(13);
	for (int n_out = 1; n_out <= 6; n_out++) {
		block_q8_0 w[6 * 1];
		make_row(QTYPE_Q8_0, 32 * n_out, w, 0);
		kern_weight kw = { QTYPE_Q8_0, 32, n_out, w };
		float x[3 * 32], y1[3 * 6], y5[3 * 6];
		fill_normal(x, 3 * 32, 1.0f);
		void *scratch = aligned_scratch(kern_matmul_scratch(&kw, 3));
		kern_matmul(NULL, &kw, x, 3, y1, scratch);
		kern_matmul(tp, &kw, x, 3, y5, scratch);
		cr_assert_eq(memcmp(y1, y5, sizeof(float) * 3 * (size_t)n_out), 0, "n_out=%d", n_out);
		alloc_free(scratch);
	}
	threadpool_destroy(tp);
}

Test(matmul, f32_weights_need_no_scratch)
{
	kern_weight w = { QTYPE_F32, 64, 3, NULL };
	cr_assert_eq(kern_matmul_scratch(&w, 100), 0);
	w.type = QTYPE_Q8_0;
	cr_assert_eq(kern_matmul_scratch(&w, 3), 3 * 128, "68-byte rows padded to 128");
	w.type = QTYPE_Q4_K;
	w.n_in = 512;
	cr_assert_eq(kern_matmul_scratch(&w, 2), 2 * 640, "2 Q8_K blocks = 584 bytes, padded to 640");
}

/* ----------------------------------------------------------------- ops */

typedef struct {
	const char *op;
	double tol;
	const char *why;
} op_tol;

static const op_tol op_tols[] = {
	{ "rmsnorm", 1e-6, "double sum of squares, then three f32 roundings" },
	{ "swiglu", 1e-6, "expf is within 1 ulp; ISA versions may use a polynomial" },
	{ "softmax", 2e-6, "f32 sum over n terms, relative to the largest probability" },
};

static double op_tol_for(const char *op)
{
	for (size_t i = 0; i < sizeof(op_tols) / sizeof(op_tols[0]); i++)
		if (strcmp(op_tols[i].op, op) == 0)
			return op_tols[i].tol;
	return 0;
}

Test(ops, against_double_formulas)
{
	enum { N = 1000 };
	static float x[N], w[N], out[N], g[N];
	rng_seed(14);
	for (int ii = 0; impls_to_test(ii); ii++) {
		const kern_table *kt = impls_to_test(ii);
		fill_normal(x, N, 3.0f);
		fill_normal(w, N, 1.0f);
		double ss = 0;
		for (int i = 0; i < N; i++)
			ss += (double)x[i] * x[i];
		double sc = 1 / sqrt(ss / N + 1e-5);
		kt->rmsnorm(out, x, w, N, 1e-5f);
		for (int i = 0; i < N; i++)
			cr_assert(fabs(out[i] - x[i] * sc * w[i]) <= op_tol_for("rmsnorm") * (fabs(x[i] * sc * w[i]) + 1e-3),
				  "rmsnorm[%d] %g vs %g", i, (double)out[i], x[i] * sc * w[i]);
		/* out may alias x */
		memcpy(g, x, sizeof(x));
		kt->rmsnorm(g, g, w, N, 1e-5f);
		cr_assert_eq(memcmp(g, out, sizeof(out)), 0, "rmsnorm in place differs");

		fill_normal(g, N, 4.0f);
		memcpy(out, x, sizeof(x));
		kt->swiglu(out, g, N);
		for (int i = 0; i < N; i++) {
			double want = g[i] / (1 + exp(-(double)g[i])) * x[i];
			cr_assert(fabs(out[i] - want) <= op_tol_for("swiglu") * fabs(want) + 1e-30,
				  "swiglu[%d] %g vs %g", i, (double)out[i], want);
		}

		fill_normal(x, N, 5.0f);
		x[3] = 1000.0f; /* would overflow expf without the max subtraction */
		memcpy(out, x, sizeof(x));
		kt->softmax(out, N);
		double z = 0;
		for (int i = 0; i < N; i++)
			z += exp((double)x[i] - 1000.0);
		double total = 0;
		for (int i = 0; i < N; i++) {
			double want = exp((double)x[i] - 1000.0) / z;
			cr_assert(fabs(out[i] - want) <= op_tol_for("softmax") * 1.0 + 1e-12,
				  "softmax[%d] %g vs %g", i, (double)out[i], want);
			total += out[i];
		}
		cr_assert(fabs(total - 1) < 1e-5);
		float one = 3.0f;
		kt->softmax(&one, 1);
		cr_assert_eq(one, 1.0f);
	}
}

/* --------------------------------------------------------------- dispatch */

Test(dispatch, tables_cover_supported_types)
{
	kern_init();
	const kern_table *tables[2] = { kern_ref(), &kern };
	for (int k = 0; k < 2; k++) {
		const kern_table *t = tables[k];
		cr_assert_not_null(t->name);
		cr_assert(t->rmsnorm && t->swiglu && t->softmax);
		for (int type = 0; type < QTYPE_COUNT; type++) {
			const qtype_info *qi = qtype_get(type);
			if (!qi || !qi->supported)
				continue;
			cr_assert_not_null(t->to_float[type], "%s: no to_float for %s", t->name, qi->name);
			cr_assert_not_null(t->vec_dot[type], "%s: no vec_dot for %s", t->name, qi->name);
			cr_assert_not_null(t->from_float[qi->vec_dot_type], "%s: no from_float for %s",
					   t->name, qtype_name(qi->vec_dot_type));
			cr_assert_not_null(t->to_float[qi->vec_dot_type]);
		}
	}
	/* the dispatch loop honours KERNELS=ref, checked in its own process */
}

Test(dispatch, kernels_env_ref)
{
	setenv("KERNELS", "ref", 1);
	kern_init();
	cr_assert_str_eq(kern.name, "ref");
}
