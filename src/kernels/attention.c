/* attention.c - paged attention over the thread pool.
 *
 * The work is a list of units, each a block of consecutive batch tokens of
 * one sequence (at most 8; prefill chunks make long runs) and a range of
 * query heads inside one kv group. All rows of a unit read the same K/V
 * rows, so an implementation converts each K/V row once for all of them
 * (GQA heads, and the tokens of a prefill chunk). When there are enough
 * tokens x kv groups to keep every thread busy, a unit spans a whole group;
 * otherwise (one decode token, few kv heads) a unit is one query head, and
 * blocks shrink until there are enough units. When blocks hold several
 * tokens (prefill), units are ordered head-major (all token blocks of a
 * head, then the next head), so a thread keeps one head's K/V rows in cache
 * while it walks the tokens; when every block is one token (decode steps of
 * many sequences), token-major, so a token's pages are read row after row;
 * a thread then hands its consecutive units of one token to one call (up to
 * KERN_ATTN_MAX_ROWS heads, across kv heads), which can walk the token's
 * K/V rows once for all of them. The list is split into contiguous ranges,
 * one per thread.
 *
 * Each (token, head) is computed entirely by one call of kern.attn, and
 * implementations compute a (token, head) the same way whichever other rows
 * share its call, so the result does not depend on the thread count, the
 * unit shapes or the batch (tests/unit/kernels_test.c checks this bit for
 * bit).
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
	(void)n_head;
	(void)n_head_kv;
	size_t hdp = round16((size_t)head_dim);
	size_t ref = hdp + round16((size_t)max_pos);
	size_t simd = (size_t)KERN_ATTN_MAX_ROWS * (2 * hdp + 2) + 2 * KERN_ATTN_CHUNK * hdp + KERN_ATTN_CHUNK + 64;
	return round16(ref > simd ? ref : simd);
}

typedef struct {
	const kern_table *t;
	const kern_attn *a;
	float *work;
	size_t work_floats;
	int heads_per_unit; /* query heads per call: a kv group (or a slice of one), or 1 */
	int tok_per_block;  /* tokens of one sequence per call */
	int n_blocks;       /* token blocks in the batch */
	int head_major;     /* unit order: all blocks of a head first, or all heads of a block */
} attn_job;

/* End of the token block that starts at s: consecutive batch tokens of the
   same sequence, at most tb of them. */
static int block_end(const kern_attn *a, int s, int tb)
{
	int e = s + 1;
	while (e < a->n_tokens && e - s < tb && a->seq[e] == a->seq[s])
		e++;
	return e;
}

static void attn_part(void *p, int ith, int nth)
{
	const attn_job *j = p;
	const kern_attn *a = j->a;
	const int group = a->n_head / a->n_head_kv, hpu = j->heads_per_unit;
	const int slices = (group + hpu - 1) / hpu; /* units per kv group */
	const int n_head_units = a->n_head_kv * slices;
	float *work = j->work + (size_t)ith * j->work_floats;
	/* head-major order, contiguous ranges: a thread walks the token blocks
	   of one head (group) in a row, so that head's K/V rows stay in cache */
	int64_t u0, u1;
	kern_split((int64_t)n_head_units * j->n_blocks, ith, nth, &u0, &u1);
	if (u0 >= u1)
		return;
	if (!j->head_major) { /* blocks are single tokens here: block b = token b */
		for (int64_t u = u0; u < u1;) {
			int b = (int)(u / n_head_units), h0 = -1, h1 = 0;
			/* this thread's consecutive units of token b, one call for up
			   to KERN_ATTN_MAX_ROWS heads: their K/V rows are one span of
			   each slot */
			for (; u < u1 && u / n_head_units == b; u++) {
				int r = (int)(u % n_head_units), g = r / slices, sl = r % slices;
				int s = g * group + sl * hpu, e = s + hpu < (g + 1) * group ? s + hpu : (g + 1) * group;
				if (h0 >= 0 && e - h0 > KERN_ATTN_MAX_ROWS)
					break;
				h0 = h0 < 0 ? s : h0;
				h1 = e;
			}
			j->t->attn(a, b, b + 1, h0, h1, work);
		}
		return;
	}
	int r = (int)(u0 / j->n_blocks), b = (int)(u0 % j->n_blocks), s = 0;
	for (int k = 0; k < b; k++)
		s = block_end(a, s, j->tok_per_block);
	for (int64_t u = u0; u < u1; u++) {
		int e = block_end(a, s, j->tok_per_block);
		int g = r / slices, sl = r % slices;
		int h0 = g * group + sl * hpu, h1 = h0 + hpu < (g + 1) * group ? h0 + hpu : (g + 1) * group;
		j->t->attn(a, s, e, h0, h1, work);
		s = e;
		if (++b == j->n_blocks) {
			b = 0;
			s = 0;
			r++;
		}
	}
}

void kern_attention_t(const kern_table *t, threadpool *tp, const kern_attn *a, float *work,
		      size_t work_floats)
{
	CHECK(a->n_head_kv > 0 && a->n_head % a->n_head_kv == 0 && a->head_dim > 0 && a->head_dim <= 512 &&
	      a->page_size > 0);
	int nth = tp ? threadpool_size(tp) : 1;
	const int group = a->n_head / a->n_head_kv;
	attn_job j = { t, a, work, work_floats, 1, 1, 0, 1 };
	/* whole groups when tokens x kv heads keep every thread busy, else single heads */
	if (a->n_tokens * a->n_head_kv >= 4 * nth)
		j.heads_per_unit = group < KERN_ATTN_MAX_ROWS ? group : KERN_ATTN_MAX_ROWS;
	j.tok_per_block = KERN_ATTN_MAX_ROWS / j.heads_per_unit;
	if (j.tok_per_block > 8)
		j.tok_per_block = 8;
	/* with few blocks, smaller ones keep the threads busy */
	while (j.tok_per_block > 1 && (a->n_tokens / j.tok_per_block) * a->n_head_kv < 4 * nth)
		j.tok_per_block /= 2;
	for (int s = 0; s < a->n_tokens; j.n_blocks++)
		s = block_end(a, s, j.tok_per_block);
	/* Tokens that share a sequence (prefill) are best walked head by head:
	   one head's K/V stays in cache for all of them. Decode steps of many
	   sequences are best walked token by token: a token's heads together read
	   its pages' rows from end to end, instead of 128 bytes of every row once
	   per head. */
	j.head_major = j.n_blocks < a->n_tokens;
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
