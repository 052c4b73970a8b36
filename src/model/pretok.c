/* pretok.c - the pre-tokenizer regexes as hand-written matchers.
 *
 * Design. llama.cpp runs a list of regexes per vocabulary; each regex cuts
 * every piece left by the previous ones into matches and the gaps between
 * them (a gap is a word too). We keep that shape: a kind is a list of stages,
 * each stage maps a list of word lengths to a finer one (run_stages, with two
 * ping-pong buffers). A stage is either
 *   - a "match" function: length of the regex match starting at pos, or 0;
 *     split_matches() then does what std::regex_iterator does (leftmost
 *     match, gaps emitted as words). All our regexes match at least one code
 *     point, so there is no empty-match case; or
 *   - a whole-piece splitter, for the GPT-2 / Llama-3 / Qwen2 regexes, which
 *     llama.cpp also implements by hand (unicode.cpp, *_custom_*) with a few
 *     differences from the textbook regex that the test vectors encode.
 * Matchers never look outside [begin, end) of their piece: llama.cpp runs
 * each regex on one piece at a time, so lookahead stops at the piece end.
 *
 * Where llama.cpp differs from a textbook engine, we follow llama.cpp:
 *   1. GPT-2/Llama-3/Qwen2: \s+(?!\S) is "a run of 2+ white space minus its
 *      last character, unless the run ends the piece". For " x" after the run
 *      that gives the same words as backtracking would.
 *   2. Llama-3/Qwen2: " ?[^\s\p{L}\p{N}]+" matches a lone space at the very end
 *      of a piece (llama.cpp tests the first character, not the one after the
 *      optional space). The word is the same " " that \s+ would have made.
 *   3. Llama-3/Qwen2: (?i:'s|...) lower-cases with ASCII rules. That is exact:
 *      the only non-ASCII code points whose lowercase is ASCII are U+0130 (i)
 *      and U+212A (k), and neither letter occurs in the contractions.
 *   4. Regexes without a hand-written version in llama.cpp (deepseek-coder,
 *      the "default" list) run in std::regex over a "collapsed" text in which
 *      every non-ASCII code point becomes one byte naming its class (white
 *      space -> \v, letters -> 0xD2, ...), and \p{L} becomes [\xD2A-Za-z].
 *      Consequences we copy: \s is ASCII white space plus every non-ASCII
 *      White_Space code point; \p{P} on ASCII is exactly
 *      !"#%&'()*,-./:;?@[\]_{} ; a non-ASCII white-space code point is never
 *      a letter/number/punctuation even when its category says so. The CJK
 *      class of deepseek-coder runs on code points, with non-ASCII white space
 *      replaced by \v first (so U+3000 is not "CJK" although it lies in the
 *      range).
 *
 * Invariants: every stage writes lengths >= 1 that add up to its input's
 * total; a stage never writes more entries than code points it has consumed,
 * which is why n entries of scratch are enough.
 *
 * Left out: the other ~40 pre-tokenizers llama.cpp knows (tokenizer.c
 * refuses them by name).
 */
#include "model/pretok.h"

#include <string.h>

#include "model/unicode.h"

typedef struct {
	uint32_t *out;
	size_t n;
} sink;

static void emit(sink *s, size_t len)
{
	if (len)
		s->out[s->n++] = (uint32_t)len;
}

/* Flags of c[pos], or 0 past the piece (llama.cpp's "no flags" sentinel). */
static unsigned fl(const uint32_t *c, size_t pos, size_t end)
{
	return pos < end ? unicode_flags(c[pos]) : 0;
}

#define IS_L(f) ((f) & UNICODE_LETTER)
#define IS_N(f) ((f) & UNICODE_NUMBER)
#define IS_WS(f) ((f) & UNICODE_WHITESPACE)
/* [^\s\p{L}\p{N}], and inside the piece */
#define IS_OTHER(f) ((f) && !((f) & (UNICODE_WHITESPACE | UNICODE_LETTER | UNICODE_NUMBER)))

static uint32_t ascii_lower(uint32_t c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* 's|'t|'re|'ve|'m|'ll|'d at pos: 0, 2 or 3 code points. */
static size_t contraction(const uint32_t *c, size_t pos, size_t end, int icase)
{
	if (c[pos] != '\'' || pos + 1 >= end)
		return 0;
	uint32_t a = icase ? ascii_lower(c[pos + 1]) : c[pos + 1];
	if (a == 's' || a == 't' || a == 'm' || a == 'd')
		return 2;
	if (pos + 2 >= end)
		return 0;
	uint32_t b = icase ? ascii_lower(c[pos + 2]) : c[pos + 2];
	if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
		return 3;
	return 0;
}

/* ---------------------------------------------------------------- GPT-2 */

static void split_gpt2(const uint32_t *c, size_t begin, size_t end, sink *s)
{
	size_t pos = begin;
	while (pos < end) {
		size_t start = pos;
		size_t k = contraction(c, pos, end, 0);
		if (k) {
			emit(s, k);
			pos += k;
			continue;
		}
		/* " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": class of the
		   character after the optional space */
		size_t q = pos + (c[pos] == ' ');
		unsigned f = fl(c, q, end);
		if (IS_L(f) || IS_N(f) || IS_OTHER(f)) {
			unsigned want = IS_L(f) ? UNICODE_LETTER : IS_N(f) ? UNICODE_NUMBER : 0;
			pos = q;
			for (;;) {
				unsigned g = fl(c, pos, end);
				if (want ? !(g & want) : !IS_OTHER(g))
					break;
				pos++;
			}
			emit(s, pos - start);
			continue;
		}
		size_t nws = 0;
		while (IS_WS(fl(c, pos + nws, end)))
			nws++;
		if (nws > 1 && pos + nws < end)
			pos += nws - 1; /* \s+(?!\S): leave the last one to the next word */
		else if (nws > 0)
			pos += nws;     /* \s+ */
		else
			pos++;          /* nothing matches: one code point */
		emit(s, pos - start);
	}
}

/* ---------------------------------------------------------------- Llama 3 / Qwen2 */

static void split_llama3_like(const uint32_t *c, size_t begin, size_t end, sink *s, size_t max_digits)
{
	size_t pos = begin;
	while (pos < end) {
		size_t start = pos;
		uint32_t cp = c[pos];
		unsigned f = fl(c, pos, end);
		size_t k = contraction(c, pos, end, 1);
		if (k) {
			emit(s, k);
			pos += k;
			continue;
		}
		/* [^\r\n\p{L}\p{N}]?\p{L}+ */
		if (cp != '\r' && cp != '\n' && !IS_N(f) && (IS_L(f) || IS_L(fl(c, pos + 1, end)))) {
			pos++;
			while (IS_L(fl(c, pos, end)))
				pos++;
			emit(s, pos - start);
			continue;
		}
		/* \p{N}{1,max_digits} */
		if (IS_N(f)) {
			size_t run = 0;
			while (IS_N(fl(c, pos, end))) {
				pos++;
				if (++run == max_digits) {
					emit(s, pos - start);
					start = pos;
					run = 0;
				}
			}
			emit(s, pos - start);
			continue;
		}
		/* " ?[^\s\p{L}\p{N}]+[\r\n]*"; the test is on f (deviation 2) */
		unsigned f2 = cp == ' ' ? fl(c, pos + 1, end) : f;
		if (!(IS_WS(f2) || IS_L(f2) || IS_N(f2)) && f) {
			pos += (cp == ' ');
			while (IS_OTHER(fl(c, pos, end)))
				pos++;
			while (pos < end && (c[pos] == '\r' || c[pos] == '\n'))
				pos++;
			emit(s, pos - start);
			continue;
		}
		/* white space: \s*[\r\n]+ | \s+(?!\S) | \s+ */
		size_t nws = 0, after_nl = 0;
		while (IS_WS(fl(c, pos + nws, end))) {
			if (c[pos + nws] == '\r' || c[pos + nws] == '\n')
				after_nl = pos + nws + 1;
			nws++;
		}
		if (after_nl)
			pos = after_nl;
		else if (nws > 1 && pos + nws < end)
			pos += nws - 1;
		else if (nws > 0)
			pos += nws;
		else
			pos++;
		emit(s, pos - start);
	}
}

static void split_llama3(const uint32_t *c, size_t begin, size_t end, sink *s)
{
	split_llama3_like(c, begin, end, s, 3);
}

static void split_qwen2(const uint32_t *c, size_t begin, size_t end, sink *s)
{
	split_llama3_like(c, begin, end, s, 1);
}

/* ---------------------------------------------------------------- collapsed classes (deviation 4) */

static int col_space(uint32_t c)
{
	return c < 0x80 ? (c == ' ' || (c >= 0x09 && c <= 0x0D)) : unicode_is_whitespace(c);
}

/* Category of a non-ASCII code point as the collapsed text sees it. */
static unsigned col_cat(uint32_t c)
{
	unsigned f = unicode_flags(c);
	return (f & UNICODE_WHITESPACE) ? 0 : (f & 0xFF);
}

static int col_letter(uint32_t c)
{
	if (c < 0x80)
		return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
	return col_cat(c) == UNICODE_LETTER;
}

static int col_number(uint32_t c)
{
	return c < 0x80 ? (c >= '0' && c <= '9') : col_cat(c) == UNICODE_NUMBER;
}

static int col_punct(uint32_t c)
{
	if (c < 0x80)
		return c && strchr("!\"#%&'()*,-./:;?@[\\]_{}", (int)c) != NULL;
	return col_cat(c) == UNICODE_PUNCT;
}

static size_t run_of(const uint32_t *c, size_t pos, size_t end, int (*cls)(uint32_t))
{
	size_t p = pos;
	while (p < end && cls(c[p]))
		p++;
	return p - pos;
}

/* [\r\n] */
static size_t m_newline(const uint32_t *c, size_t pos, size_t end)
{
	return c[pos] == '\r' || c[pos] == '\n';
}

/* \s?X+ for a class X that never contains white space */
static size_t m_space_run(const uint32_t *c, size_t pos, size_t end, int (*cls)(uint32_t))
{
	if (col_space(c[pos]) && pos + 1 < end && cls(c[pos + 1]))
		return 1 + run_of(c, pos + 1, end, cls);
	return run_of(c, pos, end, cls);
}

static size_t m_space_letters(const uint32_t *c, size_t pos, size_t end)
{
	return m_space_run(c, pos, end, col_letter);
}

static size_t m_space_puncts(const uint32_t *c, size_t pos, size_t end)
{
	return m_space_run(c, pos, end, col_punct);
}

/* [一-龥ࠀ-一가-퟿]+ = [U+0800-U+9FA5 U+AC00-U+D7FF]+, white space excluded */
static int cjk(uint32_t c)
{
	return ((c >= 0x0800 && c <= 0x9FA5) || (c >= 0xAC00 && c <= 0xD7FF)) && !unicode_is_whitespace(c);
}

static size_t m_cjk(const uint32_t *c, size_t pos, size_t end)
{
	return run_of(c, pos, end, cjk);
}

/* \p{N} */
static size_t m_number(const uint32_t *c, size_t pos, size_t end)
{
	return col_number(c[pos]);
}

/* \p{N}+ */
static size_t m_numbers(const uint32_t *c, size_t pos, size_t end)
{
	return run_of(c, pos, end, col_number);
}

/* [\p{P}\$\+<=>\^~\|]+ */
static int punct_or_sym(uint32_t c)
{
	return col_punct(c) || (c < 0x80 && c && strchr("$+<=>^~|", (int)c) != NULL);
}

static size_t m_punct_syms(const uint32_t *c, size_t pos, size_t end)
{
	return run_of(c, pos, end, punct_or_sym);
}

/* [0-9][0-9][0-9] */
static size_t m_digits3(const uint32_t *c, size_t pos, size_t end)
{
	for (size_t i = 0; i < 3; i++)
		if (pos + i >= end || c[pos + i] < '0' || c[pos + i] > '9')
			return 0;
	return 3;
}

/* ---------------------------------------------------------------- driver */

typedef struct {
	void (*split)(const uint32_t *c, size_t begin, size_t end, sink *s);
	size_t (*match)(const uint32_t *c, size_t pos, size_t end);
} stage;

#define MAX_STAGES 5

static const stage kinds[PRETOK_COUNT][MAX_STAGES] = {
	[PRETOK_DEFAULT] = { { NULL, m_punct_syms }, { split_gpt2, NULL }, { NULL, m_numbers }, { NULL, m_digits3 } },
	[PRETOK_GPT2] = { { split_gpt2, NULL } },
	[PRETOK_LLAMA3] = { { split_llama3, NULL } },
	[PRETOK_QWEN2] = { { split_qwen2, NULL } },
	[PRETOK_DEEPSEEK_CODER] = { { NULL, m_newline }, { NULL, m_space_letters }, { NULL, m_space_puncts },
				    { NULL, m_cjk }, { NULL, m_number } },
};

static void split_matches(const uint32_t *c, size_t begin, size_t end, sink *s,
			  size_t (*match)(const uint32_t *, size_t, size_t))
{
	size_t gap = begin;
	size_t pos = begin;
	while (pos < end) {
		size_t len = match(c, pos, end);
		if (!len) {
			pos++;
			continue;
		}
		emit(s, pos - gap);
		emit(s, len);
		pos += len;
		gap = pos;
	}
	emit(s, end - gap);
}

size_t pretok_split(pretok_kind kind, const uint32_t *cpts, size_t n, uint32_t *lens, uint32_t *tmp)
{
	if (n == 0)
		return 0;
	const stage *st = kinds[kind < PRETOK_COUNT ? kind : PRETOK_GPT2];
	size_t n_stages = 0;
	while (n_stages < MAX_STAGES && (st[n_stages].split || st[n_stages].match))
		n_stages++;

	/* stage i reads bufs[i & 1] and writes the other; make the last write land in lens */
	uint32_t *bufs[2] = { n_stages % 2 ? tmp : lens, n_stages % 2 ? lens : tmp };
	bufs[0][0] = (uint32_t)n;
	size_t count = 1;
	for (size_t i = 0; i < n_stages; i++) {
		const uint32_t *in = bufs[i & 1];
		sink s = { bufs[(i & 1) ^ 1], 0 };
		size_t begin = 0;
		for (size_t w = 0; w < count; w++) {
			size_t end = begin + in[w];
			if (st[i].split)
				st[i].split(cpts, begin, end, &s);
			else
				split_matches(cpts, begin, end, &s, st[i].match);
			begin = end;
		}
		count = s.n;
	}
	return count;
}
