/* attention.c - paged attention over the thread pool.
 *
 * The work is a list of units, each one token and a range of query heads
 * inside one kv group (GQA: the heads of a group read the same K/V rows, so
 * an implementation can load each K/V row once for all of them). When there
 * are enough tokens x kv groups to keep every thread busy, a unit is a whole
 * group; otherwise (one decode token, few kv heads) a unit is one query
 * head. Units are dealt round-robin to the threads. Each (token, head) is
 * computed entirely by one call of kern.attn, and implementations compute a
 * head the same way whichever other heads share its call, so the result does
 * not depend on the thread count or the unit size (tests/unit/kernels_test.c
 * checks this bit for bit).
 *
 * Left out: splitting one long context over several threads (split-K with a
 * final reduction): it would make the sum order depend on the thread count.
 */
#include "base/err.h"
#include "kernels/kernels_int.h"

static size_t round16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

size_t kern_attn_work_floats(int n_head, int n_head_kv, int head_dim, int max_pos)
{
	size_t group = (size_t)(n_head / (n_head_kv > 0 ? n_head_kv : 1));
	size_t ref = round16((size_t)head_dim) + round16((size_t)max_pos);
	size_t simd = group * (3 * round16((size_t)head_dim) + 2 * KERN_ATTN_CHUNK) + 64;
	return round16(ref > simd ? ref : simd);
}

typedef struct {
	const kern_table *t;
	const kern_attn *a;
	float *work;
	size_t work_floats;
	int per_group; /* 1: a unit is a whole kv group; 0: one query head */
} attn_job;

static void attn_part(void *p, int ith, int nth)
{
	const attn_job *j = p;
	const kern_attn *a = j->a;
	const int group = a->n_head / a->n_head_kv;
	const int units_per_tok = j->per_group ? a->n_head_kv : a->n_head;
	const int n_units = a->n_tokens * units_per_tok;
	float *work = j->work + (size_t)ith * j->work_floats;
	for (int u = ith; u < n_units; u += nth) {
		int t = u / units_per_tok, r = u % units_per_tok;
		int h0 = j->per_group ? r * group : r;
		int h1 = j->per_group ? h0 + group : h0 + 1;
		j->t->attn(a, t, h0, h1, work);
	}
}

void kern_attention_t(const kern_table *t, threadpool *tp, const kern_attn *a, float *work,
		      size_t work_floats)
{
	CHECK(a->n_head_kv > 0 && a->n_head % a->n_head_kv == 0 && a->head_dim > 0 && a->page_size > 0);
	int nth = tp ? threadpool_size(tp) : 1;
	attn_job j = { t, a, work, work_floats, a->n_tokens * a->n_head_kv >= 4 * nth };
	if (tp)
		threadpool_run(tp, attn_part, &j);
	else
		attn_part(&j, 0, 1);
}

void kern_attention(threadpool *tp, const kern_attn *a, float *work, size_t work_floats)
{
	kern_init();
	kern_attention_t(&kern, tp, a, work, work_floats);
}
