/* alloc.h - the one door to the heap.
 *
 * Every allocation in pdserve goes through these functions so a test can make
 * the Nth one fail (alloc_fail_after) and check that the caller cleans up and
 * reports ERR_NOMEM. They return NULL on failure like malloc; alloc_array and
 * alloc_zeroed also fail (NULL) when count*size overflows. alloc_free(NULL) is
 * fine. Memory from alloc_aligned is freed with alloc_free too.
 */
#ifndef PDSERVE_BASE_ALLOC_H
#define PDSERVE_BASE_ALLOC_H

#include <stddef.h>

void *alloc_bytes(size_t n);
void *alloc_zeroed(size_t count, size_t size);
void *alloc_array(size_t count, size_t size);           /* uninitialised */
void *alloc_resize(void *p, size_t n);                  /* realloc; p kept on failure */
void *alloc_resize_array(void *p, size_t count, size_t size);
void *alloc_aligned(size_t align, size_t n);            /* align: power of two >= sizeof(void*) */
char *alloc_strdup(const char *s);
char *alloc_strndup(const char *s, size_t n);
void  alloc_free(void *p);

/* Test hook: the (n+1)th allocation from now fails, and every later one
   succeeds again. n < 0 disables. Returns how many allocations happened since
   the last call (so a test can first count, then fail each in turn). */
long alloc_fail_after(long n);

/* 1 when a*b overflows size_t, else 0 and *out = a*b. */
static inline int alloc_mul_overflow(size_t a, size_t b, size_t *out)
{
	return __builtin_mul_overflow(a, b, out);
}

#endif
