/* unicode.c - code point classes, UTF-8 and the GPT-2 byte alphabet.
 *
 * Design: the category table (unicode_tables.c, generated) is a sorted list of
 * runs {first code point, flag}, searched by bisection: 12 steps over ~2.2k
 * runs, cheap next to BPE merging, and no lazily built global state (the
 * tokenizers run on many threads). White space is the Unicode White_Space
 * property, a fixed list (the same one llama.cpp hard-codes).
 *
 * The decoder copies llama.cpp's leniency on purpose: the tokenizers must
 * produce llama.cpp's ids for any byte string, and llama.cpp turns each bad
 * byte into one U+FFFD but lets overlong forms and surrogates through. The
 * strict check (unicode_valid_len) is for what we emit to clients.
 *
 * Invariants: unicode_cat_runs is sorted by first code point, starts at 0,
 * and every flag is one UNICODE_* category bit (checked by the unit test).
 */
#include "model/unicode.h"

/* From unicode_tables.c (generated; no header of its own). */
extern const uint32_t unicode_cat_runs[][2];
extern const size_t unicode_n_cat_runs;

bool unicode_is_whitespace(uint32_t c)
{
	if (c <= 0x20)
		return c == 0x20 || (c >= 0x09 && c <= 0x0D);
	if (c < 0x85)
		return false;
	switch (c) {
	case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029:
	case 0x202F: case 0x205F: case 0x3000:
		return true;
	default:
		return c >= 0x2000 && c <= 0x200A;
	}
}

unsigned unicode_flags(uint32_t c)
{
	unsigned ws = unicode_is_whitespace(c) ? UNICODE_WHITESPACE : 0;
	if (c > UNICODE_MAX)
		return UNICODE_UNDEFINED;
	size_t lo = 0, hi = unicode_n_cat_runs; /* answer: last run with first <= c */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (unicode_cat_runs[mid][0] <= c)
			lo = mid;
		else
			hi = mid;
	}
	return unicode_cat_runs[lo][1] | ws;
}

size_t unicode_len_utf8(uint8_t lead)
{
	static const uint8_t len[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4 };
	return len[lead >> 4];
}

static int is_cont(uint8_t b)
{
	return (b & 0xC0) == 0x80;
}

uint32_t unicode_decode(const char *s, size_t n, size_t *used)
{
	const uint8_t *u = (const uint8_t *)s;
	uint8_t b = u[0];
	*used = 1;
	if (b < 0x80)
		return b;
	if (b < 0xC0 || b >= 0xF8)
		return UNICODE_REPLACEMENT;
	size_t len = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
	if (n < len)
		return UNICODE_REPLACEMENT;
	for (size_t i = 1; i < len; i++)
		if (!is_cont(u[i]))
			return UNICODE_REPLACEMENT;
	uint32_t c;
	if (len == 2)
		c = (uint32_t)(b & 0x1F) << 6 | (u[1] & 0x3F);
	else if (len == 3)
		c = (uint32_t)(b & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F);
	else
		c = (uint32_t)(b & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 |
		    (uint32_t)(u[2] & 0x3F) << 6 | (u[3] & 0x3F);
	if (c > UNICODE_MAX)
		return UNICODE_REPLACEMENT;
	*used = len;
	return c;
}

size_t unicode_encode(uint32_t c, char out[4])
{
	if (c < 0x80) {
		out[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		out[0] = (char)(0xC0 | (c >> 6));
		out[1] = (char)(0x80 | (c & 0x3F));
		return 2;
	}
	if (c < 0x10000) {
		out[0] = (char)(0xE0 | (c >> 12));
		out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
		out[2] = (char)(0x80 | (c & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | ((c >> 18) & 0x07));
	out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
	out[3] = (char)(0x80 | (c & 0x3F));
	return 4;
}

int unicode_valid_len(const char *s, size_t n)
{
	const uint8_t *u = (const uint8_t *)s;
	uint8_t b = u[0];
	if (b < 0x80)
		return 1;
	size_t len;
	uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
	if (b >= 0xC2 && b <= 0xDF)
		len = 2;
	else if (b >= 0xE0 && b <= 0xEF) {
		len = 3;
		if (b == 0xE0)
			lo = 0xA0; /* no overlongs */
		if (b == 0xED)
			hi = 0x9F; /* no surrogates */
	} else if (b >= 0xF0 && b <= 0xF4) {
		len = 4;
		if (b == 0xF0)
			lo = 0x90;
		if (b == 0xF4)
			hi = 0x8F; /* <= U+10FFFF */
	} else
		return 0;
	for (size_t i = 1; i < len; i++) {
		if (i >= n)
			return -(int)n;
		uint8_t c = u[i];
		if (i == 1 ? (c < lo || c > hi) : !is_cont(c))
			return 0;
	}
	return (int)len;
}

/* The 188 bytes that stand for themselves: '!'..'~', 0xA1..0xAC, 0xAE..0xFF. */
static int byte_is_printable(unsigned b)
{
	return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

uint32_t unicode_byte_to_cpt(uint8_t b)
{
	if (byte_is_printable(b))
		return b;
	/* rank of b among the non-printable bytes, in byte order */
	unsigned k;
	if (b <= 0x20)
		k = b;                  /* 0x00..0x20: 33 bytes */
	else if (b <= 0xA0)
		k = 33 + (b - 0x7F);    /* 0x7F..0xA0: 34 bytes */
	else
		k = 67;                 /* 0xAD */
	return 0x100 + k;
}

int unicode_cpt_to_byte(uint32_t c)
{
	if (c < 0x100)
		return byte_is_printable(c) ? (int)c : -1;
	if (c < 0x100 + 33)
		return (int)(c - 0x100);
	if (c < 0x100 + 67)
		return (int)(c - 0x100 - 33 + 0x7F);
	if (c == 0x100 + 67)
		return 0xAD;
	return -1;
}
