/* alloc.c - heap wrappers with a fail-the-Nth-allocation test hook.
 *
 * The counter is a process-wide atomic: tests that use the hook run one
 * scenario at a time, and production code never sets it, so the cost is one
 * relaxed atomic load per allocation.
 */
#include "base/alloc.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fail_countdown = -1; /* allocations left before the failure; -1 = off */
static atomic_long alloc_count;

static int should_fail(void)
{
	atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
	long left = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
	if (left < 0)
		return 0;
	left = atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed);
	return left == 0;
}

long alloc_fail_after(long n)
{
	atomic_store(&fail_countdown, n < 0 ? -1 : n);
	return atomic_exchange(&alloc_count, 0);
}

void *alloc_bytes(size_t n)
{
	if (should_fail())
		return NULL;
	return malloc(n ? n : 1);
}

void *alloc_zeroed(size_t count, size_t size)
{
	size_t n;
	if (alloc_mul_overflow(count, size, &n) || should_fail())
		return NULL;
	return calloc(n ? count : 1, n ? size : 1);
}

void *alloc_array(size_t count, size_t size)
{
	size_t n;
	if (alloc_mul_overflow(count, size, &n))
		return NULL;
	return alloc_bytes(n);
}

void *alloc_resize(void *p, size_t n)
{
	if (should_fail())
		return NULL;
	return realloc(p, n ? n : 1);
}

void *alloc_resize_array(void *p, size_t count, size_t size)
{
	size_t n;
	if (alloc_mul_overflow(count, size, &n))
		return NULL;
	return alloc_resize(p, n);
}

void *alloc_aligned(size_t align, size_t n)
{
	void *p;
	if (should_fail())
		return NULL;
	if (posix_memalign(&p, align, n ? n : 1) != 0)
		return NULL;
	return p;
}

char *alloc_strndup(const char *s, size_t n)
{
	char *d = alloc_bytes(n + 1);
	if (!d)
		return NULL;
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

char *alloc_strdup(const char *s)
{
	return alloc_strndup(s, strlen(s));
}

void alloc_free(void *p)
{
	free(p);
}
