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
 *  - Every implementation the CPU supports (ref, avx2, avx512) against ref
 *    (the "impl" suites): activation quantization and f16/bf16 conversion
 *    bit for bit; quantized matmul bit for bit in both shapes (GEMV for 1-7
 *    tokens, GEMM for more) on edge shapes (n_in = one block, n_in not a
 *    multiple of the panel chunk, 1 and odd row counts, partial token groups,
 *    unaligned weights and activations, several thread counts); float
 *    matmul, element-wise ops and paged attention within the tolerance
 *    table `impl_tols`.
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
	/* ref only; SIMD float dots use float_dot_tol() below */
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

/* SIMD F32/F16/BF16 dots sum in 16 f32 lanes (n/16 roundings per lane,
   vdpbf16ps: 2 per 32 elements) and a 4-level tree: the classic bound
   (n/16 + 8) * 2^-24 of sum |x y|. A dropped or doubled element costs about
   1/n of it, far above the bound. */
static double float_dot_tol(int64_t n)
{
	return ((double)n / 16 + 8) * 0x1p-24;
}

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
	double rel = dot_tol_for(type);
	if (strcmp(kt->name, "ref") && qi->blck == 1)
		rel = float_dot_tol(n);
	double tol = rel * mag + s_slack + 1e-30;
	cr_assert(fabs((double)got - want) <= tol,
		  "%s vec_dot %s n=%ld (%s): got %.9g want %.9g, |diff| %.3g > tol %.3g", kt->name,
		  qtype_name(type), (long)n, what, (double)got, want, fabs((double)got - want), tol);
	free(y);
	free(xf);
	free(yf);
}

/* The i-th implementation this CPU supports: ref, then avx2, avx512. */
static const kern_table *impls_to_test(int i)
{
	static const char *const names[] = { "ref", "avx2", "avx512" };
	kern_init();
	for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
		const kern_table *t = kern_impl(names[k]);
		if (t && i-- == 0)
			return t;
	}
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
	const kern_table *ref = kern_ref();
	kern_weight w = { QTYPE_F32, 64, 3, NULL };
	cr_assert_eq(kern_matmul_scratch(&w, 100), 0);
	w.type = QTYPE_Q8_0;
	cr_assert_eq(kern_matmul_scratch_t(ref, &w, 3), 3 * 128, "68-byte rows padded to 128");
	w.type = QTYPE_Q4_K;
	w.n_in = 512;
	cr_assert_eq(kern_matmul_scratch_t(ref, &w, 2), 2 * 640, "2 Q8_K blocks = 584 bytes, padded to 640");
	/* an ISA's tiled layout may need more, never less */
	cr_assert_geq(kern_matmul_scratch(&w, 2), 2 * 640);
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
		cr_assert(t->rmsnorm && t->swiglu && t->softmax && t->rope && t->attn);
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

/* ------------------------------------------------ implementations vs ref */

/* Per-op tolerances of a SIMD implementation against the reference. 0 means
   bit-identical. Quantized dot products and matmuls are always exact: their
   integer block sums are exact and the f32 steps are the reference's. */
typedef struct {
	const char *op;
	double tol;
	const char *why;
} impl_tol;

static const impl_tol impl_tols[] = {
	{ "from_float", 0, "same max, multiplier, rounding mode and scale rounding as ref" },
	{ "matmul_quant", 0, "exact integer block sums, ref's f32 steps in ref's order" },
	{ "matmul_float", -1, "float_dot_tol(n) * sum|w x|: f32 lanes instead of a double sum" },
	{ "rmsnorm", 1e-6, "double sum of squares in another order, same f32 steps (relative)" },
	{ "swiglu", 1e-6, "polynomial expf within 2 ulp, then the same f32 steps (relative)" },
	{ "softmax", 2e-6, "polynomial expf, f32 lane sums (absolute, probabilities <= 1)" },
	{ "rope", 0, "the same products and one add/sub, no FMA" },
	{ "attn_f32", 4e-6, "f32 lane dots, online softmax rescaling (x max|v|)" },
	{ "attn_f16", 5e-4, "ref rounds the weights p/sum to f16: 2^-11 relative (x max|v|)" },
	{ "attn_bf16", 4e-3, "ref rounds the weights p/sum to bf16: 2^-8 relative (x max|v|)" },
};

static double impl_tol_for(const char *op)
{
	for (size_t i = 0; i < sizeof(impl_tols) / sizeof(impl_tols[0]); i++)
		if (!strcmp(impl_tols[i].op, op))
			return impl_tols[i].tol;
	cr_assert_fail("no tolerance for %s", op);
	return 0;
}

/* Activations with the awkward cases mixed in: blocks of zeros, ties, huge
   and tiny values, a lone inf or NaN, denormals. */
static void fill_awkward(float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		int64_t blk = i / 32;
		switch (blk % 9) {
		case 1: x[i] = 0; break;
		case 2: x[i] = (float)((int)(rng_u32() % 255) - 127) + 0.5f; break; /* .5 ties at amax 127 */
		case 3: x[i] = rng_normal() * 1e-30f; break;
		case 4: x[i] = rng_normal() * 3e4f; break;
		case 5: x[i] = i % 32 == 7 ? INFINITY : rng_normal(); break;
		case 6: x[i] = i % 32 == 3 ? NAN : rng_normal(); break;
		case 7: x[i] = bits_f32(rng_u32() & 0x807fffffu); break; /* denormals */
		default: x[i] = rng_normal() * 2.0f; break;
		}
	}
	if (n >= 32) {
		x[64 % n] = 127.0f; /* block 2 has amax 127: multiplier exactly 1 */
	}
}

Test(impl, from_float_bit_exact)
{
	static const int types[] = { QTYPE_Q8_0, QTYPE_Q8_1, QTYPE_Q8_K, QTYPE_F16, QTYPE_BF16 };
	static const int64_t sizes[] = { 1, 5, 16, 17, 33, 256, 768, 4096 };
	enum { MAXN = 4096 };
	float *xbuf = malloc((MAXN + 1) * sizeof(float));
	uint8_t *want = malloc(MAXN * 4), *got = malloc(MAXN * 4 + 1);
	const kern_table *ref = kern_ref();
	rng_seed(21);
	for (int ii = 1; impls_to_test(ii); ii++) {
		const kern_table *kt = impls_to_test(ii);
		for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
			int type = types[ti];
			for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
				int64_t n = sizes[si];
				size_t bytes = qtype_row_size(type, n);
				if (!bytes)
					continue;
				for (int rep = 0; rep < 3; rep++) {
					float *x = xbuf + (rep & 1); /* unaligned half the time */
					if (rep == 2)
						fill_awkward(x, n);
					else
						fill_normal(x, n, rep ? 50.0f : 1.0f);
					ref->from_float[type](x, want, n);
					memset(got, 0xa5, bytes + 1);
					kt->from_float[type](x, got + (rep & 1), n);
					cr_assert_eq(memcmp(got + (rep & 1), want, bytes), 0, "%s from_float %s n=%ld rep %d",
						     kt->name, qtype_name(type), (long)n, rep);
				}
			}
		}
	}
	free(xbuf);
	free(want);
	free(got);
}

/* y = x W^T by the reference: from_float + vec_dot, one element at a time. */
static void ref_matmul(const kern_weight *w, const float *x, int64_t n_tok, float *y, double *mag)
{
	const kern_table *ref = kern_ref();
	int vt = qtype_get(w->type)->vec_dot_type;
	size_t ys = qtype_row_size(vt, w->n_in), rs = qtype_row_size(w->type, w->n_in);
	uint8_t *act = malloc(ys);
	float *wf = malloc((size_t)w->n_in * sizeof(float)), *af = malloc((size_t)w->n_in * sizeof(float));
	for (int64_t t = 0; t < n_tok; t++) {
		ref->from_float[vt](x + t * w->n_in, act, w->n_in);
		ref->to_float[vt](act, af, w->n_in);
		for (int64_t o = 0; o < w->n_out; o++) {
			const uint8_t *row = (const uint8_t *)w->data + o * rs;
			y[t * w->n_out + o] = ref->vec_dot[w->type](w->n_in, row, act);
			if (mag) {
				ref->to_float[w->type](row, wf, w->n_in);
				double m = 0;
				for (int64_t i = 0; i < w->n_in; i++)
					m += fabs((double)wf[i] * af[i]);
				mag[t * w->n_out + o] = m;
			}
		}
	}
	free(act);
	free(wf);
	free(af);
}

/* The impl's own vec_dot, element by element (the batch-invariance contract). */
static void own_matmul(const kern_table *kt, const kern_weight *w, const float *x, int64_t n_tok, float *y)
{
	int vt = qtype_get(w->type)->vec_dot_type;
	size_t ys = qtype_row_size(vt, w->n_in), rs = qtype_row_size(w->type, w->n_in);
	uint8_t *act = malloc(ys);
	for (int64_t t = 0; t < n_tok; t++) {
		kt->from_float[vt](x + t * w->n_in, act, w->n_in);
		for (int64_t o = 0; o < w->n_out; o++)
			y[t * w->n_out + o] = kt->vec_dot[w->type](w->n_in, (const uint8_t *)w->data + o * rs, act);
	}
	free(act);
}

Test(impl, matmul_vs_ref_edge_shapes, .timeout = 120)
{
	/* n_in: one block, a few blocks, not a multiple of the 1024-element
	   panel chunk; n_tok: GEMV sizes 1-7 (passes of 4), GEMM from 8, partial
	   groups of 16;
	   n_out: 1, odd, more than one 8-row tile. */
	static const int64_t n_toks[] = { 1, 2, 3, 4, 5, 7, 8, 16, 17, 35 };
	static const int64_t n_outs[] = { 1, 7, 37 };
	char err[ERR_LEN];
	threadpool *pools[4] = { NULL };
	for (int p = 2; p <= 3; p++) {
		pools[p] = threadpool_create(p, err);
		cr_assert_not_null(pools[p], "%s", err);
	}
	rng_seed(22);
	for (int ii = 1; impls_to_test(ii); ii++) {
		const kern_table *kt = impls_to_test(ii);
		for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
			int type = weight_types[ti];
			const qtype_info *qi = qtype_get(type);
			int blk = qi->blck == QK_K ? QK_K : 32;
			const int64_t n_ins[] = { blk, 2 * blk, qi->blck == QK_K ? 5 * QK_K : 1280,
						  qi->blck == 1 ? 33 : blk };
			for (size_t ni = 0; ni < sizeof(n_ins) / sizeof(n_ins[0]); ni++) {
				int64_t n_in = n_ins[ni];
				for (size_t oi = 0; oi < sizeof(n_outs) / sizeof(n_outs[0]); oi++) {
					int64_t n_out = n_outs[oi];
					size_t rs = qtype_row_size(type, n_in);
					uint8_t *wbuf = malloc(rs * n_out + 1);
					for (int64_t o = 0; o < n_out; o++)
						make_row(type, n_in, wbuf + 1 + o * rs, o % 3 == 1);
					kern_weight w = { type, n_in, n_out, wbuf + 1 };
					int64_t maxt = n_toks[sizeof(n_toks) / sizeof(n_toks[0]) - 1];
					float *xbuf = malloc(((size_t)(maxt * n_in) + 1) * sizeof(float));
					float *x = xbuf + 1;
					fill_normal(x, maxt * n_in, 2.0f);
					float *want = malloc(sizeof(float) * (size_t)(maxt * n_out));
					float *own = malloc(sizeof(float) * (size_t)(maxt * n_out));
					float *got = malloc(sizeof(float) * (size_t)(maxt * n_out));
					double *mag = malloc(sizeof(double) * (size_t)(maxt * n_out));
					ref_matmul(&w, x, maxt, want, mag);
					own_matmul(kt, &w, x, maxt, own);
					for (size_t k = 0; k < sizeof(n_toks) / sizeof(n_toks[0]); k++) {
						int64_t nt = n_toks[k];
						void *scratch = aligned_scratch(kern_matmul_scratch_t(kt, &w, nt));
						for (int p = 1; p <= 3; p++) {
							memset(got, 0xff, sizeof(float) * (size_t)(nt * n_out));
							kern_matmul_t(kt, pools[p], &w, x, nt, got, scratch);
							cr_assert_eq(memcmp(got, own, sizeof(float) * (size_t)(nt * n_out)), 0,
								     "%s %s n_in=%ld n_out=%ld n_tok=%ld %d threads: "
								     "matmul differs from its own vec_dot",
								     kt->name, qi->name, (long)n_in, (long)n_out, (long)nt, p);
						}
						alloc_free(scratch);
					}
					for (int64_t e = 0; e < maxt * n_out; e++) {
						if (qi->blck > 1) {
							cr_assert_eq(f32_bits(own[e]), f32_bits(want[e]),
								     "%s %s n_in=%ld elem %ld: %.9g vs ref %.9g (%s)",
								     kt->name, qi->name, (long)n_in, (long)e, (double)own[e],
								     (double)want[e], impl_tols[1].why);
						} else {
							double tol = float_dot_tol(n_in) * mag[e] + 1e-30;
							cr_assert(fabs((double)own[e] - want[e]) <= tol,
								  "%s %s n_in=%ld elem %ld: %.9g vs ref %.9g > %.3g (%s)",
								  kt->name, qi->name, (long)n_in, (long)e, (double)own[e],
								  (double)want[e], tol, impl_tols[2].why);
						}
					}
					free(wbuf);
					free(xbuf);
					free(want);
					free(own);
					free(got);
					free(mag);
				}
			}
		}
	}
	for (int p = 2; p <= 3; p++)
		threadpool_destroy(pools[p]);
	(void)impl_tol_for("matmul_quant");
}

/* Several weights in one call (Q, K, V) give what each gives alone. */
Test(impl, matmul_n_equals_single)
{
	char err[ERR_LEN];
	threadpool *tp = threadpool_create(2, err);
	cr_assert_not_null(tp, "%s", err);
	rng_seed(26);
	static const int64_t n_outs[3] = { 40, 13, 8 };
	static const int64_t n_toks[] = { 1, 5, 20 };
	for (int ii = 0; impls_to_test(ii); ii++) {
		const kern_table *kt = impls_to_test(ii);
		for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
			int type = weight_types[ti];
			int64_t n_in = qtype_get(type)->blck == QK_K ? 512 : 96;
			kern_weight w[3];
			const kern_weight *wp[3];
			uint8_t *wb[3];
			for (int i = 0; i < 3; i++) {
				size_t rs = qtype_row_size(type, n_in);
				wb[i] = malloc(rs * (size_t)n_outs[i]);
				for (int64_t o = 0; o < n_outs[i]; o++)
					make_row(type, n_in, wb[i] + o * rs, 0);
				w[i] = (kern_weight){ type, n_in, n_outs[i], wb[i] };
				wp[i] = &w[i];
			}
			for (size_t k = 0; k < sizeof(n_toks) / sizeof(n_toks[0]); k++) {
				int64_t nt = n_toks[k];
				float *x = malloc(sizeof(float) * (size_t)(nt * n_in));
				fill_normal(x, nt * n_in, 1.0f);
				float *one[3], *many[3];
				void *scratch = aligned_scratch(kern_matmul_scratch_t(kt, &w[0], nt));
				for (int i = 0; i < 3; i++) {
					one[i] = malloc(sizeof(float) * (size_t)(nt * n_outs[i]));
					many[i] = malloc(sizeof(float) * (size_t)(nt * n_outs[i]));
					kern_matmul_t(kt, tp, &w[i], x, nt, one[i], scratch);
				}
				kern_matmul_n_t(kt, tp, 3, wp, x, nt, many, scratch);
				for (int i = 0; i < 3; i++) {
					cr_assert_eq(memcmp(one[i], many[i], sizeof(float) * (size_t)(nt * n_outs[i])), 0,
						     "%s %s n_tok=%ld weight %d", kt->name, qtype_name(type), (long)nt, i);
					free(one[i]);
					free(many[i]);
				}
				alloc_free(scratch);
				free(x);
			}
			for (int i = 0; i < 3; i++)
				free(wb[i]);
		}
	}
	threadpool_destroy(tp);
}

/* Many token groups (more than one pass of 32 groups of 16) and a long row. */
Test(impl, matmul_many_tokens, .timeout = 120)
{
	static const int types[] = { QTYPE_Q8_0, QTYPE_Q4_K, QTYPE_Q6_K, QTYPE_F16 };
	enum { N_TOK = 530, N_OUT = 9 };
	rng_seed(23);
	for (int ii = 1; impls_to_test(ii); ii++) {
		const kern_table *kt = impls_to_test(ii);
		for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
			int type = types[ti];
			int64_t n_in = 2304; /* 2 panel chunks + 256 */
			size_t rs = qtype_row_size(type, n_in);
			uint8_t *wb = malloc(rs * N_OUT);
			for (int o = 0; o < N_OUT; o++)
				make_row(type, n_in, wb + o * rs, 0);
			kern_weight w = { type, n_in, N_OUT, wb };
			float *x = malloc(sizeof(float) * N_TOK * (size_t)n_in);
			fill_normal(x, N_TOK * n_in, 1.0f);
			float *own = malloc(sizeof(float) * N_TOK * N_OUT), *got = malloc(sizeof(float) * N_TOK * N_OUT);
			own_matmul(kt, &w, x, N_TOK, own);
			void *scratch = aligned_scratch(kern_matmul_scratch_t(kt, &w, N_TOK));
			kern_matmul_t(kt, NULL, &w, x, N_TOK, got, scratch);
			cr_assert_eq(memcmp(got, own, sizeof(float) * N_TOK * N_OUT), 0, "%s %s", kt->name,
				     qtype_name(type));
			alloc_free(scratch);
			free(wb);
			free(x);
			free(own);
			free(got);
		}
	}
}

Test(impl, ops_vs_ref)
{
	static const int64_t sizes[] = { 1, 7, 16, 33, 1000 };
	enum { MAXN = 1000 };
	float *buf = malloc(8 * (MAXN + 1) * sizeof(float));
	const kern_table *ref = kern_ref();
	rng_seed(24);
	for (int ii = 1; impls_to_test(ii); ii++) {
		const kern_table *kt = impls_to_test(ii);
		for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
			int64_t n = sizes[si];
			float *x = buf + 1, *w = x + MAXN + 1, *g = w + MAXN + 1, *a = g + MAXN + 1, *b = a + MAXN + 1;
			fill_normal(x, n, 3.0f);
			fill_normal(w, n, 1.0f);
			fill_normal(g, n, 4.0f);
			ref->rmsnorm(a, x, w, n, 1e-5f);
			kt->rmsnorm(b, x, w, n, 1e-5f);
			for (int64_t i = 0; i < n; i++)
				cr_assert(fabs(a[i] - b[i]) <= impl_tol_for("rmsnorm") * fabs(a[i]) + 1e-30,
					  "%s rmsnorm n=%ld [%ld]: %g vs %g", kt->name, (long)n, (long)i, (double)b[i],
					  (double)a[i]);
			memcpy(a, x, sizeof(float) * (size_t)n);
			memcpy(b, x, sizeof(float) * (size_t)n);
			ref->swiglu(a, g, n);
			kt->swiglu(b, g, n);
			for (int64_t i = 0; i < n; i++)
				cr_assert(fabs(a[i] - b[i]) <= impl_tol_for("swiglu") * fabs(a[i]) + 1e-30,
					  "%s swiglu n=%ld [%ld]: %g vs %g", kt->name, (long)n, (long)i, (double)b[i],
					  (double)a[i]);
			memcpy(a, g, sizeof(float) * (size_t)n);
			memcpy(b, g, sizeof(float) * (size_t)n);
			a[n / 2] = b[n / 2] = 90.0f; /* expf(90) overflows without the max subtraction */
			ref->softmax(a, n);
			kt->softmax(b, n);
			for (int64_t i = 0; i < n; i++)
				cr_assert(fabs(a[i] - b[i]) <= impl_tol_for("softmax"), "%s softmax n=%ld [%ld]: %g vs %g",
					  kt->name, (long)n, (long)i, (double)b[i], (double)a[i]);
		}
		/* rope: both pair layouts, partial rotation, head sizes with tails */
		static const int shapes[][3] = { { 64, 64, 3 }, { 8, 8, 2 }, { 80, 64, 2 }, { 32, 18, 1 }, { 128, 128, 1 } };
		for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
			int hd = shapes[k][0], n_rot = shapes[k][1], nh = shapes[k][2];
			for (int neox = 0; neox < 2; neox++) {
				float *x = buf + 1, *cs = x + 1024, *sn = cs + 128, *a = sn + 128, *b = a + 1024;
				fill_normal(x, hd * nh, 2.0f);
				for (int i = 0; i < n_rot / 2; i++) {
					float ang = (float)(rng_unit() * 6.28);
					cs[i] = cosf(ang);
					sn[i] = sinf(ang);
				}
				memcpy(a, x, sizeof(float) * (size_t)(hd * nh));
				memcpy(b, x, sizeof(float) * (size_t)(hd * nh));
				ref->rope(a, nh, hd, n_rot, neox, cs, sn);
				kt->rope(b, nh, hd, n_rot, neox, cs, sn);
				cr_assert_eq(memcmp(a, b, sizeof(float) * (size_t)(hd * nh)), 0, "%s rope hd=%d n_rot=%d neox=%d",
					     kt->name, hd, n_rot, neox);
				(void)impl_tol_for("rope");
			}
		}
	}
	free(buf);
}

/* A paged K/V pool with shuffled pages for n_seq sequences of up to max_pos. */
typedef struct {
	int n_head, n_head_kv, hd, dtype, page_size, n_pages, max_pos, n_seq;
	uint8_t *k, *v;
	int32_t *pages[4];
	float vmax;
} test_pool;

static void pool_make(test_pool *P, int n_head, int n_head_kv, int hd, int dtype, int page_size, int max_pos, int n_seq)
{
	memset(P, 0, sizeof(*P));
	P->n_head = n_head;
	P->n_head_kv = n_head_kv;
	P->hd = hd;
	P->dtype = dtype;
	P->page_size = page_size;
	P->max_pos = max_pos;
	P->n_seq = n_seq;
	int per_seq = (max_pos + page_size - 1) / page_size;
	P->n_pages = per_seq * n_seq;
	size_t kvd = (size_t)n_head_kv * hd, es = dtype == QTYPE_F32 ? 4 : 2;
	size_t n = (size_t)P->n_pages * page_size * kvd;
	P->k = malloc(n * es + 2);
	P->v = malloc(n * es + 2);
	float *tmp = malloc(n * sizeof(float));
	const kern_table *ref = kern_ref();
	fill_normal(tmp, (int64_t)n, 1.5f);
	ref->from_float[dtype](tmp, P->k, (int64_t)n);
	fill_normal(tmp, (int64_t)n, 1.0f);
	P->vmax = 0;
	for (size_t i = 0; i < n; i++)
		P->vmax = fmaxf(P->vmax, fabsf(tmp[i]));
	ref->from_float[dtype](tmp, P->v, (int64_t)n);
	free(tmp);
	/* pages dealt out in a scrambled order */
	int32_t *perm = malloc(sizeof(int32_t) * (size_t)P->n_pages);
	for (int i = 0; i < P->n_pages; i++)
		perm[i] = i;
	for (int i = P->n_pages - 1; i > 0; i--) {
		int j = (int)(rng_u32() % (uint32_t)(i + 1));
		int32_t tmpp = perm[i];
		perm[i] = perm[j];
		perm[j] = tmpp;
	}
	for (int s = 0; s < n_seq; s++) {
		P->pages[s] = malloc(sizeof(int32_t) * (size_t)per_seq);
		memcpy(P->pages[s], perm + s * per_seq, sizeof(int32_t) * (size_t)per_seq);
	}
	free(perm);
}

static void pool_free(test_pool *P)
{
	free(P->k);
	free(P->v);
	for (int s = 0; s < P->n_seq; s++)
		free(P->pages[s]);
}

static void run_attn(const kern_table *kt, threadpool *tp, const test_pool *P, int n_tok, const int32_t *pos,
		     const int32_t *seq, const float *q, float *out)
{
	kern_attn a = { .n_tokens = n_tok, .n_head = P->n_head, .n_head_kv = P->n_head_kv, .head_dim = P->hd,
			.kv_dtype = P->dtype, .page_size = P->page_size, .scale = 1.0f / sqrtf((float)P->hd),
			.q = q, .out = out, .k = P->k, .v = P->v, .pos = pos, .seq = seq,
			.pages = (const int32_t *const *)P->pages };
	int nth = tp ? threadpool_size(tp) : 1;
	size_t wf = kern_attn_work_floats(P->n_head, P->n_head_kv, P->hd, P->max_pos);
	float *work = aligned_scratch(sizeof(float) * wf * (size_t)nth);
	kern_attention_t(kt, tp, &a, work, wf);
	alloc_free(work);
}

Test(impl, attention_vs_ref_and_invariant, .timeout = 120)
{
	/* head_dim with and without a 16-lane tail (64 and 128 have their own
	   copies in avx512.c), GQA 1:1 to 4:1, page sizes 1, 7, 16 and 32 (a
	   multiple of 16 keeps every chunk inside one page), contexts around
	   the 16-position chunk */
	static const int shapes[][4] = { /* n_head, n_head_kv, hd, page_size */
		{ 4, 4, 64, 16 }, { 8, 2, 32, 7 }, { 4, 1, 80, 16 }, { 8, 8, 8, 1 }, { 6, 3, 48, 5 }, { 4, 2, 128, 32 },
	};
	static const int dtypes[] = { QTYPE_F32, QTYPE_F16, QTYPE_BF16 };
	static const char *const tol_names[] = { "attn_f32", "attn_f16", "attn_bf16" };
	/* a prefill-like run of 20 tokens of sequence 0 (blocks of 8 share K/V
	   conversions), then single tokens of both sequences */
	enum { N_TOK = 26 };
	int32_t pos[N_TOK], seq[N_TOK];
	for (int t = 0; t < 20; t++) {
		pos[t] = 60 + t;
		seq[t] = 0;
	}
	const int32_t tail_pos[6] = { 0, 15, 16, 17, 99, 40 }, tail_seq[6] = { 1, 1, 0, 1, 0, 1 };
	for (int t = 0; t < 6; t++) {
		pos[20 + t] = tail_pos[t];
		seq[20 + t] = tail_seq[t];
	}
	char err[ERR_LEN];
	threadpool *tp3 = threadpool_create(3, err);
	cr_assert_not_null(tp3, "%s", err);
	rng_seed(25);
	for (int ii = 1; impls_to_test(ii); ii++) {
		const kern_table *kt = impls_to_test(ii);
		for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
			for (size_t di = 0; di < sizeof(dtypes) / sizeof(dtypes[0]); di++) {
				test_pool P;
				pool_make(&P, shapes[si][0], shapes[si][1], shapes[si][2], dtypes[di], shapes[si][3], 100, 2);
				size_t qd = (size_t)P.n_head * P.hd;
				float *q = malloc(sizeof(float) * qd * N_TOK), *want = malloc(sizeof(float) * qd * N_TOK);
				float *got = malloc(sizeof(float) * qd * N_TOK), *one = malloc(sizeof(float) * qd);
				fill_normal(q, (int64_t)qd * N_TOK, 1.0f);
				run_attn(kern_ref(), NULL, &P, N_TOK, pos, seq, q, want);
				run_attn(kt, NULL, &P, N_TOK, pos, seq, q, got);
				double tol = impl_tol_for(tol_names[di]) * P.vmax;
				for (size_t e = 0; e < qd * N_TOK; e++)
					cr_assert(fabs((double)got[e] - want[e]) <= tol,
						  "%s attn heads %d/%d hd %d page %d %s elem %zu: %g vs ref %g (tol %g)",
						  kt->name, P.n_head, P.n_head_kv, P.hd, P.page_size, qtype_name(P.dtype), e,
						  (double)got[e], (double)want[e], tol);
				/* bit-identical with 3 threads (other unit sizes) and token by token */
				float *got3 = malloc(sizeof(float) * qd * N_TOK);
				run_attn(kt, tp3, &P, N_TOK, pos, seq, q, got3);
				cr_assert_eq(memcmp(got3, got, sizeof(float) * qd * N_TOK), 0, "%s attn: 3 threads differ",
					     kt->name);
				for (int t = 0; t < N_TOK; t++) {
					run_attn(kt, tp3, &P, 1, pos + t, seq + t, q + t * qd, one);
					cr_assert_eq(memcmp(one, got + t * qd, sizeof(float) * qd), 0,
						     "%s attn: token %d alone differs", kt->name, t);
				}
				/* a decode step (tokens 22..25 alternate sequences): units
				   are walked token-major, a thread's heads of one token in
				   one call, across kv heads */
				for (int nth = 1; nth <= 3; nth += 2) {
					run_attn(kt, nth == 3 ? tp3 : NULL, &P, 4, pos + 22, seq + 22, q + 22 * qd, got3);
					cr_assert_eq(memcmp(got3, got + 22 * qd, sizeof(float) * qd * 4), 0,
						     "%s attn: decode step (%d threads) differs", kt->name, nth);
				}
				free(got3);
				free(q);
				free(want);
				free(got);
				free(one);
				pool_free(&P);
			}
		}
	}
	threadpool_destroy(tp3);
}
