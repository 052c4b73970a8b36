/* dispatch.c - picks the kernel implementations once, from the CPU's features.
 *
 * Design: the reference table is built once from the ref/ fill functions.
 * kern_init() copies it into `kern`, then walks `impls` (fastest first) and
 * lets the first implementation that the CPU supports, and that KERNELS
 * allows, overwrite the entries it accelerates. Entries an implementation
 * leaves alone stay the reference ones, so a partial SIMD file is fine.
 *
 * KERNELS=ref forces the reference (to bisect numerical bugs); KERNELS=avx2
 * or avx512 asks for that one; a choice the CPU or this build lacks falls
 * back to the best available, with a warning. Unset or empty: the best.
 *
 * Invariants: `kern` is written only inside pthread_once, so after
 * kern_init() returns in any thread every reader sees the full table.
 *
 * kern_impl(name) builds the same way a table for every implementation the
 * CPU supports, so tests and benchmarks can compare them side by side.
 *
 * Left out: per-op selection (one implementation wins for the whole table)
 * and re-initialisation (the choice is fixed for the process).
 */
#include <cpuid.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "kernels/kernels_int.h"

kern_table kern;

static kern_table ref_table;
static pthread_once_t ref_once = PTHREAD_ONCE_INIT;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

typedef struct {
	const char *name;
	int (*cpu_ok)(void);          /* 1 when this CPU can run it */
	void (*fill)(kern_table *t);  /* overwrite the entries it provides */
} impl_desc;

/* CPU features from cpuid (leaf 1, leaf 7 subleaves 0 and 1) and the OS's
   saved-state mask (xgetbv): the same test with gcc and clang (clang 14's
   __builtin_cpu_supports knows neither "f16c" nor "avx512bf16"). */
static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (uint64_t)hi << 32 | lo;
}

static int cpu_has_avx2(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d))
		return 0;
	int fma = c >> 12 & 1, osxsave = c >> 27 & 1, f16c = c >> 29 & 1;
	if (!osxsave || (xgetbv0() & 0x6) != 0x6) /* XMM and YMM state enabled */
		return 0;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return 0;
	return fma && f16c && (b >> 5 & 1);
}

static int cpu_has_avx512(void)
{
	unsigned a, b, c, d, a1, b1, c1, d1;
	if (!cpu_has_avx2() || (xgetbv0() & 0xe6) != 0xe6) /* + opmask and ZMM state */
		return 0;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1))
		return 0;
	int f = b >> 16 & 1, dq = b >> 17 & 1, bw = b >> 30 & 1, vl = b >> 31 & 1, vnni = c >> 11 & 1;
	int bf16 = a1 >> 5 & 1;
	return f && dq && bw && vl && vnni && bf16;
}

/* Fastest first. */
static const impl_desc impls[] = {
	{ "avx512", cpu_has_avx512, kern_avx512_fill },
	{ "avx2", cpu_has_avx2, kern_avx2_fill },
	{ NULL, NULL, NULL }, /* end */
};

/* Full tables of every implementation the CPU supports, for kern_impl(). */
static kern_table impl_tables[sizeof(impls) / sizeof(impls[0])];
static pthread_once_t impl_once = PTHREAD_ONCE_INIT;

static void build_ref(void)
{
	memset(&ref_table, 0, sizeof(ref_table));
	ref_table.name = "ref";
	kern_ref_fill_quants(&ref_table);
	kern_ref_fill_ops(&ref_table);
}

const kern_table *kern_ref(void)
{
	pthread_once(&ref_once, build_ref);
	return &ref_table;
}

static int known_name(const char *s)
{
	static const char *const names[] = { "ref", "avx2", "avx512" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(s, names[i]) == 0)
			return 1;
	return 0;
}

static void choose(void)
{
	kern_table t = *kern_ref();
	const char *want = getenv("KERNELS");
	if (want && !*want)
		want = NULL;
	if (want && !known_name(want)) {
		LOGW("kernels", "KERNELS=%s is not one of ref, avx2, avx512; using the best available", want);
		want = NULL;
	}
	if (!want || strcmp(want, "ref") != 0) {
		const impl_desc *pick = NULL;
		for (const impl_desc *im = impls; im->name; im++) {
			if (!im->cpu_ok())
				continue;
			if (!want || strcmp(want, im->name) == 0) {
				pick = im;
				break;
			}
		}
		if (want && !pick) {
			/* asked for one this CPU or build lacks: take the best there is */
			for (const impl_desc *im = impls; im->name && !pick; im++)
				if (im->cpu_ok())
					pick = im;
			LOGW("kernels", "KERNELS=%s is not available on this CPU or build; using %s", want,
			     pick ? pick->name : "ref");
		}
		if (pick) {
			pick->fill(&t);
			t.name = pick->name;
		}
	}
	kern = t;
	LOGD("kernels", "using %s kernels", kern.name);
}

void kern_init(void)
{
	pthread_once(&init_once, choose);
}

static void build_impls(void)
{
	for (size_t i = 0; impls[i].name; i++) {
		impl_tables[i] = *kern_ref();
		if (impls[i].cpu_ok()) {
			impls[i].fill(&impl_tables[i]);
			impl_tables[i].name = impls[i].name;
		} else {
			impl_tables[i].name = NULL;
		}
	}
}

const kern_table *kern_impl(const char *name)
{
	if (!strcmp(name, "ref"))
		return kern_ref();
	pthread_once(&impl_once, build_impls);
	for (size_t i = 0; impls[i].name; i++)
		if (!strcmp(impls[i].name, name))
			return impl_tables[i].name ? &impl_tables[i] : NULL;
	return NULL;
}
