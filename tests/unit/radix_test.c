/* radix_test.c - the prefix tree and the page pool under it. */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/kvcache.h"
#include "engine/radix.h"
#include "kernels/qtypes.h"

static llama_hparams tiny_hp(void)
{
	llama_hparams hp;
	memset(&hp, 0, sizeof(hp));
	hp.n_layer = 2;
	hp.n_head = 2;
	hp.n_head_kv = 1;
	hp.head_dim = 8;
	return hp;
}

static kvcache *pool(int n_pages, int page_size)
{
	char err[ERR_LEN];
	llama_hparams hp = tiny_hp();
	kvcache_config c = { .dtype = QTYPE_F16, .page_size = page_size, .n_pages = n_pages };
	kvcache *kc = kvcache_create(&hp, &c, err);
	cr_assert(kc, "%s", err);
	return kc;
}

static void check(kvcache *kc, radix *rc)
{
	char err[ERR_LEN];
	cr_assert_eq(kvcache_check(kc, err), 0, "%s", err);
	if (rc)
		cr_assert_eq(radix_check(rc, err), 0, "%s", err);
}

Test(kvcache, alloc_release_refcount)
{
	kvcache *kc = pool(4, 4);
	int32_t p[4];
	cr_assert_eq(kvcache_alloc(kc, 3, p), 0);
	cr_expect_eq(p[0], 0);
	cr_expect_eq(kvcache_n_free(kc), 1);
	cr_expect_eq(kvcache_alloc(kc, 2, p + 3), ERR_FULL);
	cr_expect_eq(kvcache_n_free(kc), 1, "a failed alloc took pages");
	kvcache_ref(kc, p[1]);
	kvcache_release(kc, p, 3);
	cr_expect_eq(kvcache_n_free(kc), 3);
	cr_expect_eq(kvcache_refcount(kc, p[1]), 1);
	kvcache_release(kc, &p[1], 1);
	cr_expect_eq(kvcache_n_free(kc), 4);
	cr_expect_eq(kvcache_pages_for(kc, 9), 3);
	check(kc, NULL);
	kvcache_destroy(kc);
}

Test(kvcache, bad_config)
{
	char err[ERR_LEN];
	llama_hparams hp = tiny_hp();
	kvcache_config c = { .dtype = QTYPE_Q4_0, .page_size = 4, .n_pages = 4 };
	cr_expect_null(kvcache_create(&hp, &c, err));
	cr_expect(strstr(err, "dtype"), "%s", err);
	c.dtype = QTYPE_F32;
	c.n_pages = 0;
	cr_expect_null(kvcache_create(&hp, &c, err));
}

Test(radix, match_insert_share)
{
	kvcache *kc = pool(16, 4);
	char err[ERR_LEN];
	radix *rc = radix_create(kc, err);
	int32_t toks[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
	int32_t pages[3], got[3];
	cr_assert_eq(kvcache_alloc(kc, 3, pages), 0);
	cr_expect_eq(radix_match(rc, toks, 12, 3, got), 0);
	cr_expect_eq(radix_insert(rc, toks, 3, pages), 3);
	check(kc, rc);
	cr_expect_eq(kvcache_refcount(kc, pages[0]), 2);
	/* the request lets go: tree keeps them */
	kvcache_release(kc, pages, 3);
	cr_expect_eq(radix_n_pages(rc), 3);
	cr_expect_eq(radix_evictable(rc), 3);
	/* a prompt sharing 2 pages, then diverging */
	int32_t other[10] = { 1, 2, 3, 4, 5, 6, 7, 8, 99, 98 };
	cr_expect_eq(radix_match_len(rc, other, 10, 2), 2);
	cr_expect_eq(radix_match(rc, other, 10, 2, got), 2);
	cr_expect_eq(got[0], pages[0]);
	cr_expect_eq(got[1], pages[1]);
	cr_expect_eq(radix_evictable(rc), 1, "only the unshared third page is evictable");
	/* max_pages caps the match */
	int32_t tmp[3];
	cr_expect_eq(radix_match(rc, toks, 12, 1, tmp), 1);
	kvcache_release(kc, tmp, 1);
	/* inserting the same tokens again keeps the tree's pages */
	int32_t dup[3];
	cr_assert_eq(kvcache_alloc(kc, 3, dup), 0);
	cr_expect_eq(radix_insert(rc, toks, 3, dup), 0);
	kvcache_release(kc, dup, 3);
	check(kc, rc);
	kvcache_release(kc, got, 2);
	cr_expect_eq(radix_evict(rc, 100), 3);
	cr_expect_eq(kvcache_n_free(kc), 16);
	check(kc, rc);
	radix_destroy(rc);
	kvcache_destroy(kc);
}

Test(radix, evicts_lru_leaves_first)
{
	kvcache *kc = pool(16, 2);
	char err[ERR_LEN];
	radix *rc = radix_create(kc, err);
	int32_t a[4] = { 1, 2, 3, 4 }, b[4] = { 5, 6, 7, 8 };
	int32_t pa[2], pb[2], got[2];
	kvcache_alloc(kc, 2, pa);
	kvcache_alloc(kc, 2, pb);
	radix_insert(rc, a, 2, pa);
	radix_insert(rc, b, 2, pb);
	kvcache_release(kc, pa, 2);
	kvcache_release(kc, pb, 2);
	/* touch a: b becomes least recently used */
	cr_assert_eq(radix_match(rc, a, 4, 2, got), 2);
	kvcache_release(kc, got, 2);
	cr_expect_eq(radix_evict(rc, 2), 2);
	cr_expect_eq(radix_match_len(rc, a, 4, 2), 2, "a was used last and must survive");
	cr_expect_eq(radix_match_len(rc, b, 4, 2), 0);
	/* a page held by a request is never evicted */
	cr_assert_eq(radix_match(rc, a, 4, 2, got), 2);
	cr_expect_eq(radix_evict(rc, 10), 0);
	kvcache_release(kc, got, 2);
	radix_clear(rc);
	cr_expect_eq(radix_n_pages(rc), 0);
	cr_expect_eq(kvcache_n_free(kc), 16);
	check(kc, rc);
	radix_destroy(rc);
	kvcache_destroy(kc);
}

Test(kvcache, shared_pool_is_visible_through_its_fd)
{
	char err[ERR_LEN];
	llama_hparams hp = tiny_hp();
	kvcache_config c = { .dtype = QTYPE_F32, .page_size = 4, .n_pages = 8, .shared = true };
	kvcache *kc = kvcache_create(&hp, &c, err);
	cr_assert(kc, "%s", err);
	int fd = kvcache_shm_fd(kc);
	cr_assert_geq(fd, 0);
	size_t bytes = kvcache_bytes(kc);
	cr_expect_eq(bytes, kvcache_layer_bytes(kc) * 2 * (size_t)hp.n_layer);
	cr_expect_eq(kvcache_page_bytes(kc), 4 * 8 * sizeof(float));
	/* a second mapping of the fd (what the prefill process does) sees our writes */
	char *other = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(other, MAP_FAILED);
	const llama_kv *kv = kvcache_view(kc);
	((float *)kv->v[1])[5] = 42.0f;
	size_t off = (size_t)((char *)kv->v[1] - (char *)kvcache_base(kc));
	cr_expect_eq(off, 3 * kvcache_layer_bytes(kc));
	float got;
	memcpy(&got, other + off + 5 * sizeof(float), sizeof(float));
	cr_expect_eq(got, 42.0f);
	munmap(other, bytes);
	kvcache_destroy(kc);
	c.shared = false;
	kc = kvcache_create(&hp, &c, err);
	cr_expect_eq(kvcache_shm_fd(kc), -1);
	kvcache_destroy(kc);
}
