/* tokenizer_test.c - model/tokenizer (+ unicode, pretok) against llama.cpp.
 *
 * Fixtures (each test skips when its file is absent):
 *   - ../shared/models/vocab/ GGUFs with llama.cpp's test vectors (.inp/.out,
 *     add_special = parse_special = false): every vector must pass, and the
 *     ids must decode back to the text;
 *   - ../shared/models/synth/ goldens: prompt text -> prompt_ids with
 *     add_special = parse_special = true, the EOG set, and gen_ids -> the
 *     exact bytes llama.cpp printed (gen_bytes_hex);
 *   - stories260K: "Once upon a time" -> 1 403 407 261 378.
 * Fixed expectations below marked "llama.cpp:" were read from llama.cpp
 * (node-llama-cpp 3.21.1, llama.cpp 80fb11a) with a vocab-only load.
 *
 * Also: the unicode tables and decoder, pre-tokenizer invariants, streaming
 * detokenization (never a partial character), random and invalid bytes,
 * broken vocabularies built in memory (clear errors), failed allocations,
 * threads, and a 100 KB speed bound.
 */
#include <criterion/criterion.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "golden.h"
#include "model/gguf.h"
#include "model/gguf_write.h"
#include "model/pretok.h"
#include "model/tokenizer.h"
#include "model/unicode.h"
#include "testutil.h"

/* ---- helpers ----------------------------------------------------------- */

typedef struct {
	gguf *g;
	tokenizer *t;
	void *mem; /* in-memory GGUF bytes, if any */
} vocab;

/* Load ../shared/<rel>; skips the test when the file is not there. */
static vocab load(const char *rel)
{
	const char *path = test_shared(rel);
	if (!path)
		cr_skip_test("fixture %s not found", rel);
	char err[ERR_LEN] = "";
	vocab v = { 0 };
	v.g = gguf_open(path, err);
	cr_assert(v.g, "gguf_open %s: %s", rel, err);
	v.t = tokenizer_create(v.g, err);
	cr_assert(v.t, "tokenizer_create %s: %s", rel, err);
	cr_assert(tokenizer_check(v.t, err) == 0, "tokenizer_check %s: %s", rel, err);
	return v;
}

static void unload(vocab *v)
{
	tokenizer_destroy(v->t);
	gguf_close(v->g);
	alloc_free(v->mem);
}

static size_t enc(const tokenizer *t, const char *s, size_t len, bool add, bool parse, int32_t **ids)
{
	size_t n;
	int rc = tokenizer_encode(t, s, len, add, parse, ids, &n);
	cr_assert(rc == 0, "tokenizer_encode: %s", err_name(rc));
	return n;
}

static char *fmt_ids(const int32_t *ids, size_t n)
{
	static char buf[8192];
	size_t k = 0;
	buf[0] = 0;
	for (size_t i = 0; i < n && k < sizeof(buf) - 16; i++)
		k += (size_t)snprintf(buf + k, sizeof(buf) - k, i ? " %d" : "%d", ids[i]);
	return buf;
}

static void assert_ids(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want, const char *what)
{
	int same = n_got == n_want && (n_got == 0 || memcmp(got, want, n_got * sizeof(*got)) == 0);
	if (!same) {
		char g[8192];
		snprintf(g, sizeof(g), "%s", fmt_ids(got, n_got));
		cr_assert(same, "%s\n  got:  %s\n  want: %s", what, g, fmt_ids(want, n_want));
	}
}

/* Concatenated pieces (what llama.cpp prints while generating). */
static char *pieces(const tokenizer *t, const int32_t *ids, size_t n, bool special, size_t *len)
{
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		size_t pl;
		tokenizer_piece(t, ids[i], special, &pl);
		total += pl;
	}
	char *s = malloc(total + 1);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		size_t pl;
		const char *p = tokenizer_piece(t, ids[i], special, &pl);
		memcpy(s + k, p, pl);
		k += pl;
	}
	*len = k;
	return s;
}

static int all_valid_utf8(const char *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		int v = unicode_valid_len(s + i, n - i);
		if (v <= 0)
			return 0;
		i += (size_t)v;
	}
	return 1;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* ---- unicode ----------------------------------------------------------- */

Test(unicode, classes)
{
	const struct {
		uint32_t c;
		unsigned want;
	} cases[] = {
		{ 'a', UNICODE_LETTER }, { 'Z', UNICODE_LETTER }, { '7', UNICODE_NUMBER },
		{ 0xBD, UNICODE_NUMBER } /* ½ */, { 0x2167, UNICODE_NUMBER } /* Ⅷ */,
		{ '!', UNICODE_PUNCT }, { '$', UNICODE_SYMBOL }, { '`', UNICODE_SYMBOL },
		{ ' ', UNICODE_SEPARATOR | UNICODE_WHITESPACE }, { '\n', UNICODE_CONTROL | UNICODE_WHITESPACE },
		{ 0x1C, UNICODE_CONTROL } /* not White_Space, unlike str.isspace */,
		{ 0x85, UNICODE_CONTROL | UNICODE_WHITESPACE }, { 0xA0, UNICODE_SEPARATOR | UNICODE_WHITESPACE },
		{ 0x3000, UNICODE_SEPARATOR | UNICODE_WHITESPACE }, { 0x200B, UNICODE_CONTROL } /* ZWSP: Cf */,
		{ 0x0301, UNICODE_MARK }, { 0x4E2D, UNICODE_LETTER }, { 0xFFFD, UNICODE_SYMBOL },
		{ 0x1F999, UNICODE_SYMBOL }, { 0xE000, UNICODE_CONTROL }, { 0x0378, UNICODE_UNDEFINED },
		{ 0x10FFFF, UNICODE_UNDEFINED }, { 0x110000, UNICODE_UNDEFINED },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		cr_expect_eq(unicode_flags(cases[i].c), cases[i].want, "U+%04X: got 0x%x want 0x%x", cases[i].c,
			     unicode_flags(cases[i].c), cases[i].want);
	/* every code point has exactly one category bit */
	for (uint32_t c = 0; c <= UNICODE_MAX; c += 7) {
		unsigned f = unicode_flags(c) & 0xFF;
		cr_assert(f && (f & (f - 1)) == 0, "U+%04X: flags 0x%x", c, f);
	}
}

Test(unicode, lenient_decode_like_llamacpp)
{
	const struct {
		const char *s;
		size_t n;
		uint32_t cpt;
		size_t used;
	} cases[] = {
		{ "A", 1, 'A', 1 },
		{ "\xC3\xA9", 2, 0xE9, 2 },
		{ "\xE2\x82\xAC", 3, 0x20AC, 3 },
		{ "\xF0\x9F\xA6\x99", 4, 0x1F999, 4 },
		{ "\x80", 1, 0xFFFD, 1 },                 /* stray continuation */
		{ "\xC3", 1, 0xFFFD, 1 },                 /* truncated */
		{ "\xE2\x82" "A", 3, 0xFFFD, 1 },         /* broken by a non-continuation */
		{ "\xC0\x80", 2, 0, 2 },                  /* overlong: accepted like llama.cpp */
		{ "\xED\xA0\x80", 3, 0xD800, 3 },         /* surrogate: accepted like llama.cpp */
		{ "\xF4\x8F\xBF\xBF", 4, 0x10FFFF, 4 },
		{ "\xF7\xBF\xBF\xBF", 4, 0xFFFD, 1 },     /* > U+10FFFF (llama.cpp throws) */
		{ "\xF8\x88\x80\x80\x80", 5, 0xFFFD, 1 },
		{ "\xFF", 1, 0xFFFD, 1 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t used;
		uint32_t c = unicode_decode(cases[i].s, cases[i].n, &used);
		cr_expect(c == cases[i].cpt && used == cases[i].used, "case %zu: got U+%04X/%zu", i, c, used);
	}
}

Test(unicode, strict_validity)
{
	cr_assert_eq(unicode_valid_len("a", 1), 1);
	cr_assert_eq(unicode_valid_len("\xE2\x82\xAC", 3), 3);
	cr_assert_eq(unicode_valid_len("\xE2\x82", 2), -2);
	cr_assert_eq(unicode_valid_len("\xF0", 1), -1);
	cr_assert_eq(unicode_valid_len("\xC0\x80", 2), 0);
	cr_assert_eq(unicode_valid_len("\xE0\x80\x80", 3), 0);
	cr_assert_eq(unicode_valid_len("\xED\xA0\x80", 3), 0);
	cr_assert_eq(unicode_valid_len("\xF4\x90\x80\x80", 4), 0);
	cr_assert_eq(unicode_valid_len("\x80", 1), 0);
	cr_assert_eq(unicode_valid_len("\xE2" "a", 2), 0);
}

Test(unicode, byte_alphabet)
{
	int seen[0x200] = { 0 };
	for (int b = 0; b < 256; b++) {
		uint32_t c = unicode_byte_to_cpt((uint8_t)b);
		cr_assert(c < 0x200 && !seen[c], "byte %d -> U+%04X", b, c);
		seen[c] = 1;
		cr_assert_eq(unicode_cpt_to_byte(c), b);
	}
	cr_assert_eq(unicode_byte_to_cpt(' '), 0x120);  /* Ġ */
	cr_assert_eq(unicode_byte_to_cpt('\n'), 0x10A); /* Ċ */
	cr_assert_eq(unicode_byte_to_cpt('a'), 'a');
	cr_assert_eq(unicode_byte_to_cpt(0xAD), 0x143);
	cr_assert_eq(unicode_cpt_to_byte(0x144), -1);
	cr_assert_eq(unicode_cpt_to_byte(' '), -1);
}

/* ---- pretok ------------------------------------------------------------ */

Test(pretok, words_cover_the_text)
{
	static const uint32_t alphabet[] = { 'a', 'Z', '1', ' ', ' ', '\n', '\r', '\t', '\'', 's', '!', '$',
					     0xA0, 0x3000, 0x4E2D, 0xAC00, 0x0301, 0xBD, 0x1F999, 0xFFFD, 0x85 };
	uint32_t c[64], lens[64], tmp[64];
	for (int iter = 0; iter < 20000; iter++) {
		size_t n = rng() % 64;
		for (size_t i = 0; i < n; i++)
			c[i] = alphabet[rng() % (sizeof(alphabet) / sizeof(alphabet[0]))];
		for (int k = 0; k < PRETOK_COUNT; k++) {
			size_t nw = pretok_split((pretok_kind)k, c, n, lens, tmp), sum = 0;
			cr_assert(nw <= n);
			for (size_t w = 0; w < nw; w++) {
				cr_assert(lens[w] > 0);
				sum += lens[w];
			}
			cr_assert_eq(sum, n, "kind %d: words cover %zu of %zu", k, sum, n);
		}
	}
}

Test(pretok, known_splits)
{
	/* "Hello world  123456!!\n\n x" */
	const char *s = "Hello world  123456!!\n\n x";
	uint32_t c[64], lens[64], tmp[64];
	size_t n = 0;
	for (const char *p = s; *p; p++)
		c[n++] = (uint8_t)*p;
	/* GPT-2: "  123456" -> " ", " 123456"; "\n\n x" -> "\n\n", " x" */
	static const uint32_t gpt2[] = { 5, 6, 1, 7, 2, 2, 2 };
	/* Llama 3: the space before digits is a word of its own; digits by 3;
	   "!!\n\n" is one word */
	static const uint32_t llama3[] = { 5, 6, 1, 1, 3, 3, 4, 2 };
	static const uint32_t qwen2[] = { 5, 6, 1, 1, 1, 1, 1, 1, 1, 1, 4, 2 };
	const struct {
		pretok_kind k;
		const uint32_t *want;
		size_t n;
	} cases[] = {
		{ PRETOK_GPT2, gpt2, 7 }, { PRETOK_LLAMA3, llama3, 8 }, { PRETOK_QWEN2, qwen2, 12 },
	};
	for (size_t i = 0; i < 3; i++) {
		size_t nw = pretok_split(cases[i].k, c, n, lens, tmp);
		cr_assert(nw == cases[i].n && memcmp(lens, cases[i].want, nw * 4) == 0, "kind %d: %zu words",
			  cases[i].k, nw);
	}
}

/* ---- llama.cpp's test vectors ------------------------------------------ */

static void run_vectors(const char *name)
{
	char rel[256];
	snprintf(rel, sizeof(rel), "models/vocab/%s", name);
	vocab v = load(rel);
	char p_inp[256], p_out[256];
	snprintf(p_inp, sizeof(p_inp), "%s.inp", test_shared(rel));
	snprintf(p_out, sizeof(p_out), "%s.out", test_shared(rel));
	size_t n_inp, n_out;
	char *inp = test_read_file(p_inp, &n_inp), *out = test_read_file(p_out, &n_out);
	cr_assert(inp && out, "cannot read %s vectors", name);

	static const char sep[] = "\n__ggml_vocab_test__\n";
	const size_t sep_n = sizeof(sep) - 1;
	char *text = inp, *line = out;
	int n_vec = 0;
	while (text < inp + n_inp) {
		char *end = memmem(text, (size_t)(inp + n_inp - text), sep, sep_n);
		cr_assert(end, "%s: vector %d has no separator", name, n_vec);
		size_t len = (size_t)(end - text);
		char *nl = strchr(line, '\n');
		cr_assert(nl, "%s: .out has no line for vector %d", name, n_vec);
		*nl = 0;

		int32_t want[1024];
		size_t n_want = 0;
		for (char *q = line, *e;; q = e) {
			long id = strtol(q, &e, 10);
			if (e == q)
				break;
			want[n_want++] = (int32_t)id;
		}
		int32_t *ids;
		size_t n = enc(v.t, text, len, false, false, &ids);
		char what[160];
		snprintf(what, sizeof(what), "%s vector %d '%.*s'", name, n_vec, (int)(len > 60 ? 60 : len), text);
		assert_ids(ids, n, want, n_want, what);

		/* back to the text: raw pieces for byte-level BPE; llama_detokenize
		   (which drops the SPM dummy-prefix space) for SPM */
		size_t dl;
		char *dec;
		if (tokenizer_get_kind(v.t) == TOKENIZER_SPM) {
			cr_assert(tokenizer_decode(v.t, ids, n, 0, &dec, &dl, NULL) == 0);
			cr_assert(dl == len && memcmp(dec, text, len) == 0, "%s: decode '%.*s'", what, (int)dl, dec);
			alloc_free(dec);
		} else {
			dec = pieces(v.t, ids, n, false, &dl);
			cr_assert(dl == len && memcmp(dec, text, len) == 0, "%s: pieces '%.*s'", what, (int)dl, dec);
			free(dec);
		}
		alloc_free(ids);
		text = end + sep_n;
		line = nl + 1;
		n_vec++;
	}
	cr_assert_eq(n_vec, 46, "%s: %d vectors", name, n_vec);
	free(inp);
	free(out);
	unload(&v);
}

Test(vectors, llama_spm) { run_vectors("ggml-vocab-llama-spm.gguf"); }
Test(vectors, gpt_2) { run_vectors("ggml-vocab-gpt-2.gguf"); }
Test(vectors, llama_bpe) { run_vectors("ggml-vocab-llama-bpe.gguf"); }
Test(vectors, qwen2) { run_vectors("ggml-vocab-qwen2.gguf"); }
Test(vectors, deepseek_coder) { run_vectors("ggml-vocab-deepseek-coder.gguf"); }

/* ---- vocabulary facts -------------------------------------------------- */

Test(vocab, special_ids_like_llamacpp)
{
	/* llama.cpp: bos, eos, eot, nl, add_bos for each vocab-only file */
	const struct {
		const char *file;
		int32_t bos, eos, eot, nl;
		bool add_bos;
	} cases[] = {
		{ "models/vocab/ggml-vocab-llama-spm.gguf", 1, 2, TOKENIZER_NULL, 13, true },
		{ "models/vocab/ggml-vocab-gpt-2.gguf", 50256, 50256, 50256, 198, false },
		{ "models/vocab/ggml-vocab-llama-bpe.gguf", 128000, 128001, 128009, 198, true },
		{ "models/vocab/ggml-vocab-qwen2.gguf", 151643, 151643, 151645, 198, false },
		{ "models/vocab/ggml-vocab-deepseek-coder.gguf", 32013, 32014, 32014, 185, true },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (!test_shared(cases[i].file))
			continue;
		vocab v = load(cases[i].file);
		cr_expect_eq(tokenizer_bos(v.t), cases[i].bos, "%s bos", cases[i].file);
		cr_expect_eq(tokenizer_eos(v.t), cases[i].eos, "%s eos", cases[i].file);
		cr_expect_eq(tokenizer_eot(v.t), cases[i].eot, "%s eot", cases[i].file);
		cr_expect_eq(tokenizer_nl(v.t), cases[i].nl, "%s nl", cases[i].file);
		cr_expect_eq(tokenizer_add_bos(v.t), cases[i].add_bos, "%s add_bos", cases[i].file);
		cr_expect(tokenizer_is_eog(v.t, cases[i].eos));
		cr_expect(!tokenizer_is_eog(v.t, 0));
		unload(&v);
	}
}

Test(vocab, special_tokens_parse_and_plain)
{
	/* llama.cpp: tokenize(text, parse_special) with add_special = false */
	const struct {
		const char *file, *text;
		int32_t plain[16], special[16];
		size_t n_plain, n_special;
	} cases[] = {
		{ "models/vocab/ggml-vocab-qwen2.gguf", "<|im_start|>user hi<|im_end|>",
		  { 27, 91, 318, 4906, 91, 29, 872, 15588, 27, 91, 318, 6213, 91, 29 }, { 151644, 872, 15588, 151645 }, 14, 4 },
		/* after a special token SPM adds the dummy prefix again: "</s> " -> "▁▁" */
		{ "models/vocab/ggml-vocab-llama-spm.gguf", "<s>hi</s> <unk>",
		  { 529, 29879, 29958, 2918, 829, 29879, 29958, 529, 2960, 29958 }, { 1, 7251, 2, 259, 0 }, 10, 5 },
		/* "õ" is a user-defined token: matched even without parse_special */
		{ "models/vocab/ggml-vocab-deepseek-coder.gguf", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>x \xc3\xb5",
		  { 27, 169, 121, 237, 69, 308, 11028, 210, 946, 169, 121, 237, 29, 87, 207, 32000 }, { 32016, 87, 207, 32000 }, 16, 4 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (!test_shared(cases[i].file))
			continue;
		vocab v = load(cases[i].file);
		int32_t *ids;
		size_t n = enc(v.t, cases[i].text, strlen(cases[i].text), false, false, &ids);
		assert_ids(ids, n, cases[i].plain, cases[i].n_plain, cases[i].text);
		alloc_free(ids);
		n = enc(v.t, cases[i].text, strlen(cases[i].text), false, true, &ids);
		assert_ids(ids, n, cases[i].special, cases[i].n_special, cases[i].text);
		alloc_free(ids);
		unload(&v);
	}
}

Test(vocab, decode_rules_like_llamacpp)
{
	if (!test_shared("models/vocab/ggml-vocab-gpt-2.gguf") || !test_shared("models/vocab/ggml-vocab-llama-spm.gguf"))
		cr_skip_test("vocab fixtures not found");
	char *s;
	size_t n;
	/* GPT-2 cleans tokenization spaces (llama.cpp: "Hello, world? I'm here'ok") */
	vocab v = load("models/vocab/ggml-vocab-gpt-2.gguf");
	int32_t g[] = { 15496, 837, 995, 5633, 314, 705, 76, 994, 705, 12876 };
	cr_assert(tokenizer_decode(v.t, g, 10, 0, &s, &n, NULL) == 0);
	cr_assert_str_eq(s, "Hello, world? I'm here'ok");
	alloc_free(s);
	int32_t bad = 50257;
	char err[ERR_LEN] = "";
	cr_assert_eq(tokenizer_decode(v.t, &bad, 1, 0, &s, &n, err), ERR_INVAL);
	cr_assert(strstr(err, "50257"), "%s", err);
	unload(&v);

	/* SPM drops the first piece's leading space, but not after a BOS
	   (llama.cpp: " Hello", "Hello", " Hello", " Hello") */
	v = load("models/vocab/ggml-vocab-llama-spm.gguf");
	const struct {
		int32_t ids[3];
		size_t n;
		unsigned flags;
		const char *want;
	} cases[] = {
		{ { 1, 15043 }, 2, 0, " Hello" },
		{ { 15043 }, 1, 0, "Hello" },
		{ { 1, 1, 15043 }, 3, 0, " Hello" },
		{ { 1, 15043 }, 2, TOKENIZER_DECODE_REMOVE_SPECIAL, " Hello" },
		{ { 1, 15043, 2 }, 3, TOKENIZER_DECODE_SPECIAL, "<s> Hello</s>" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert(tokenizer_decode(v.t, cases[i].ids, cases[i].n, cases[i].flags, &s, &n, NULL) == 0);
		cr_expect_str_eq(s, cases[i].want, "case %zu", i);
		alloc_free(s);
	}
	unload(&v);
}

Test(vocab, stories260K_once_upon_a_time)
{
	vocab v = load("models/stories260K.gguf");
	int32_t *ids;
	size_t n = enc(v.t, "Once upon a time", 16, true, true, &ids);
	static const int32_t want[] = { 1, 403, 407, 261, 378 };
	assert_ids(ids, n, want, 5, "Once upon a time");
	alloc_free(ids);
	cr_assert_eq(tokenizer_n_vocab(v.t), 512);
	unload(&v);
}

/* ---- goldens ----------------------------------------------------------- */

static void run_golden(const char *golden, const char *model)
{
	char rel[256];
	snprintf(rel, sizeof(rel), "models/synth/%s", golden);
	const char *gp = test_shared(rel);
	if (!gp)
		cr_skip_test("%s not found", rel);
	json_object *j = golden_load(gp);
	cr_assert(j, "cannot parse %s", gp);
	snprintf(rel, sizeof(rel), "models/synth/%s", model);
	vocab v = load(rel);

	json_object *info, *o;
	cr_assert(json_object_object_get_ex(j, "model_info", &info));
	json_object_object_get_ex(info, "n_vocab", &o);
	cr_expect_eq(tokenizer_n_vocab(v.t), json_object_get_int(o));
	json_object_object_get_ex(info, "add_bos", &o);
	cr_expect_eq(tokenizer_add_bos(v.t), json_object_get_boolean(o), "%s add_bos", golden);
	json_object_object_get_ex(info, "bos", &o);
	cr_expect_eq(tokenizer_bos(v.t), json_object_get_int(o), "%s bos", golden);
	json_object_object_get_ex(info, "eos", &o);
	cr_expect_eq(tokenizer_eos(v.t), json_object_get_int(o), "%s eos", golden);
	int n_eog_want;
	int32_t *eog_want = golden_ids(info, "eog_ids", &n_eog_want);
	size_t n_eog;
	const int32_t *eog = tokenizer_eog_ids(v.t, &n_eog);
	assert_ids(eog, n_eog, eog_want, (size_t)n_eog_want, "EOG set");
	free(eog_want);

	json_object *prompts;
	cr_assert(json_object_object_get_ex(j, "prompts", &prompts));
	for (size_t i = 0; i < json_object_array_length(prompts); i++) {
		json_object *p = json_object_array_get_idx(prompts, i), *text, *name, *fe;
		json_object_object_get_ex(p, "name", &name);
		cr_assert(json_object_object_get_ex(p, "text", &text));
		int n_want;
		int32_t *want = golden_ids(p, "prompt_ids", &n_want);
		int32_t *ids;
		size_t n = enc(v.t, json_object_get_string(text), (size_t)json_object_get_string_len(text), true, true, &ids);
		char what[128];
		snprintf(what, sizeof(what), "%s prompt %s", golden, json_object_get_string(name));
		assert_ids(ids, n, want, (size_t)n_want, what);
		alloc_free(ids);
		free(want);

		/* gen_ids up to the first EOG -> exactly the bytes llama.cpp printed,
		   through the streaming detokenizer; with REPLACE every chunk is
		   valid UTF-8 */
		int n_gen;
		int32_t *gen = golden_ids(p, "gen_ids", &n_gen);
		json_object_object_get_ex(p, "first_eog_step", &fe);
		if (fe && !json_object_is_type(fe, json_type_null))
			n_gen = json_object_get_int(fe);
		json_object_object_get_ex(p, "gen_bytes_hex", &o);
		const char *hex = json_object_get_string(o);
		size_t want_n = strlen(hex) / 2;
		char *want_b = malloc(want_n + 1);
		for (size_t k = 0; k < want_n; k++)
			sscanf(hex + 2 * k, "%2hhx", (unsigned char *)&want_b[k]);

		char *buf = malloc(tokenizer_detok_cap(v.t)), *got = malloc(want_n + 64 * (size_t)n_gen + 64);
		size_t got_n = 0;
		tokenizer_detok d;
		tokenizer_detok_init(&d, v.t, 0);
		for (int k = 0; k < n_gen; k++) {
			cr_assert(!tokenizer_is_eog(v.t, gen[k]), "%s: step %d is EOG", what, k);
			size_t w = tokenizer_detok_push(&d, gen[k], buf);
			memcpy(got + got_n, buf, w);
			got_n += w;
		}
		size_t w = tokenizer_detok_flush(&d, buf);
		memcpy(got + got_n, buf, w);
		got_n += w;
		cr_assert(got_n == want_n && memcmp(got, want_b, want_n) == 0, "%s: generated bytes differ (%zu vs %zu)",
			  what, got_n, want_n);

		tokenizer_detok_init(&d, v.t, TOKENIZER_DETOK_REPLACE);
		for (int k = 0; k <= n_gen; k++) {
			size_t m = k < n_gen ? tokenizer_detok_push(&d, gen[k], buf) : tokenizer_detok_flush(&d, buf);
			cr_assert(all_valid_utf8(buf, m), "%s: step %d emitted invalid UTF-8", what, k);
		}
		if (n_gen < (int)json_object_array_length(json_object_object_get(p, "gen_ids")))
			cr_assert(tokenizer_is_eog(v.t, gen[n_gen]), "%s: first_eog_step is not EOG here", what);
		free(buf);
		free(got);
		free(want_b);
		free(gen);
	}
	unload(&v);
	json_object_put(j);
}

Test(golden, ktiny) { run_golden("ktiny-f32.golden.json", "ktiny-f32.gguf"); }
Test(golden, ktiny_bf16) { run_golden("ktiny-bf16.golden.json", "ktiny-bf16.gguf"); }
Test(golden, ktiny_q4_0) { run_golden("ktiny-q4_0.golden.json", "ktiny-q4_0.gguf"); }
Test(golden, llama3tiny) { run_golden("llama3tiny-q4_k_m.golden.json", "llama3tiny-q4_k_m.gguf"); }
Test(golden, llama3tiny_f32) { run_golden("llama3tiny-f32.golden.json", "llama3tiny-q4_k_m.gguf"); }
Test(golden, qwen2tiny) { run_golden("qwen2tiny-q8_0.golden.json", "qwen2tiny-q8_0.gguf"); }
Test(golden, qwen2tiny_f32) { run_golden("qwen2tiny-f32.golden.json", "qwen2tiny-q8_0.gguf"); }

/* ---- streaming --------------------------------------------------------- */

static size_t push(tokenizer_detok *d, int32_t id, char *buf)
{
	return tokenizer_detok_push(d, id, buf);
}

Test(detok, byte_tokens_never_split_a_character)
{
	vocab v = load("models/stories260K.gguf");
	char *buf = malloc(tokenizer_detok_cap(v.t));
	const int32_t e2 = 3 + 0xE2, x82 = 3 + 0x82, xac = 3 + 0xAC; /* <0xE2><0x82><0xAC> = "€" */
	int32_t a = tokenizer_find(v.t, "a", 1);
	cr_assert(a >= 0);
	for (unsigned flags = 0; flags <= TOKENIZER_DETOK_REPLACE; flags += TOKENIZER_DETOK_REPLACE) {
		tokenizer_detok d;
		tokenizer_detok_init(&d, v.t, flags);
		cr_assert_eq(push(&d, e2, buf), 0);
		cr_assert_eq(push(&d, x82, buf), 0);
		cr_assert_eq(push(&d, xac, buf), 3);
		cr_assert(memcmp(buf, "\xe2\x82\xac", 3) == 0);
		cr_assert_eq(tokenizer_detok_flush(&d, buf), 0);

		/* a broken sequence: held, then released when it cannot complete */
		cr_assert_eq(push(&d, e2, buf), 0);
		cr_assert_eq(push(&d, x82, buf), 0);
		size_t m = push(&d, a, buf);
		if (flags & TOKENIZER_DETOK_REPLACE)
			cr_assert(m == 4 && memcmp(buf, "\xef\xbf\xbd" "a", 4) == 0, "replace: %zu bytes", m);
		else
			cr_assert(m == 3 && memcmp(buf, "\xe2\x82" "a", 3) == 0, "raw: %zu bytes", m);

		/* end of stream with a held prefix */
		cr_assert_eq(push(&d, e2, buf), 0);
		m = tokenizer_detok_flush(&d, buf);
		if (flags & TOKENIZER_DETOK_REPLACE)
			cr_assert(m == 3 && memcmp(buf, "\xef\xbf\xbd", 3) == 0);
		else
			cr_assert(m == 1 && (uint8_t)buf[0] == 0xE2);
		cr_assert_eq(tokenizer_detok_flush(&d, buf), 0);
	}
	/* control tokens are silent unless asked for; bad ids add nothing */
	tokenizer_detok d;
	tokenizer_detok_init(&d, v.t, 0);
	cr_assert_eq(push(&d, 1, buf), 0);
	cr_assert_eq(push(&d, -5, buf), 0);
	cr_assert_eq(push(&d, 1 << 30, buf), 0);
	tokenizer_detok_init(&d, v.t, TOKENIZER_DETOK_SPECIAL);
	cr_assert_eq(push(&d, 1, buf), 3);
	cr_assert(memcmp(buf, "<s>", 3) == 0);
	free(buf);
	unload(&v);
}

/* Random ids: the raw stream is exactly the pieces; with REPLACE every
   chunk is valid UTF-8. */
static void stream_random(const char *rel)
{
	vocab v = load(rel);
	int32_t nv = tokenizer_n_vocab(v.t);
	char *buf = malloc(tokenizer_detok_cap(v.t)), *got = malloc(1 << 16);
	int32_t ids[64];
	for (int iter = 0; iter < 300; iter++) {
		size_t n = rng() % 64;
		for (size_t i = 0; i < n; i++) {
			/* bias towards single-byte tokens, which split characters */
			ids[i] = (int32_t)(rng() % 2 ? rng() % 300 : rng() % (uint64_t)nv);
		}
		tokenizer_detok raw, rep;
		tokenizer_detok_init(&raw, v.t, 0);
		tokenizer_detok_init(&rep, v.t, TOKENIZER_DETOK_REPLACE);
		size_t got_n = 0;
		for (size_t i = 0; i <= n; i++) {
			size_t m = i < n ? tokenizer_detok_push(&raw, ids[i], buf) : tokenizer_detok_flush(&raw, buf);
			memcpy(got + got_n, buf, m);
			got_n += m;
			m = i < n ? tokenizer_detok_push(&rep, ids[i], buf) : tokenizer_detok_flush(&rep, buf);
			cr_assert(all_valid_utf8(buf, m), "%s: invalid UTF-8 out of the REPLACE stream", rel);
		}
		size_t want_n;
		char *want = pieces(v.t, ids, n, false, &want_n);
		cr_assert(got_n == want_n && memcmp(got, want, want_n) == 0, "%s: raw stream differs from pieces", rel);
		free(want);
	}
	free(got);
	free(buf);
	unload(&v);
}

Test(detok, random_ids_spm) { stream_random("models/vocab/ggml-vocab-llama-spm.gguf"); }
Test(detok, random_ids_bpe) { stream_random("models/vocab/ggml-vocab-qwen2.gguf"); }

/* ---- untrusted input --------------------------------------------------- */

static void random_bytes(const char *rel)
{
	vocab v = load(rel);
	int32_t nv = tokenizer_n_vocab(v.t);
	static const char *const nasty[] = {
		"\xff\xfe\xfd", "\xc0\x80", "\xed\xa0\x80\xed\xbf\xbf", "\xf4\x90\x80\x80", "\xf7\xbf\xbf\xbf",
		"\xe2\x82", "\xe2" "ab", "\x80\x80\x80", "a\xf0\x9f\xa6", "<|im_start|\xff>", "<s\xc3>",
	};
	char buf[128];
	for (int iter = 0; iter < 3000; iter++) {
		size_t n;
		const char *s = buf;
		if (iter < (int)(sizeof(nasty) / sizeof(nasty[0]))) {
			s = nasty[iter];
			n = strlen(s);
		} else {
			n = rng() % sizeof(buf);
			for (size_t i = 0; i < n; i++)
				buf[i] = (char)(rng() % 4 ? rng() : (rng() % 2 ? 0x80 | rng() % 64 : ' '));
		}
		for (int mode = 0; mode < 4; mode++) {
			int32_t *ids;
			size_t m = enc(v.t, s, n, mode & 1, mode & 2, &ids);
			for (size_t i = 0; i < m; i++)
				cr_assert(ids[i] >= 0 && ids[i] < nv, "%s: id %d out of range", rel, ids[i]);
			char *text;
			size_t tl;
			cr_assert(tokenizer_decode(v.t, ids, m, TOKENIZER_DECODE_SPECIAL, &text, &tl, NULL) == 0);
			alloc_free(text);
			alloc_free(ids);
		}
	}
	/* SPM keeps bad bytes as byte tokens, so they come back exactly */
	if (tokenizer_get_kind(v.t) == TOKENIZER_SPM) {
		int32_t *ids;
		size_t m = enc(v.t, "\xff" "a\xe2\x82", 4, false, false, &ids);
		size_t pl;
		char *p = pieces(v.t, ids, m, false, &pl);
		cr_assert(pl == 5 && memcmp(p, " \xff" "a\xe2\x82", 5) == 0);
		free(p);
		alloc_free(ids);
	}
	/* byte-level BPE sees each bad byte as U+FFFD, like llama.cpp */
	if (tokenizer_get_kind(v.t) == TOKENIZER_BPE) {
		int32_t *a, *b;
		size_t na = enc(v.t, "x\xff" "y\x80", 4, false, false, &a);
		size_t nb = enc(v.t, "x\xef\xbf\xbdy\xef\xbf\xbd", 8, false, false, &b);
		assert_ids(a, na, b, nb, "bad bytes vs U+FFFD");
		alloc_free(a);
		alloc_free(b);
	}
	unload(&v);
}

Test(untrusted, random_bytes_spm) { random_bytes("models/vocab/ggml-vocab-llama-spm.gguf"); }
Test(untrusted, random_bytes_gpt2) { random_bytes("models/vocab/ggml-vocab-gpt-2.gguf"); }
Test(untrusted, random_bytes_llama3) { random_bytes("models/vocab/ggml-vocab-llama-bpe.gguf"); }
Test(untrusted, random_bytes_qwen2) { random_bytes("models/vocab/ggml-vocab-qwen2.gguf"); }
Test(untrusted, random_bytes_deepseek) { random_bytes("models/vocab/ggml-vocab-deepseek-coder.gguf"); }

/* ---- broken vocabularies ----------------------------------------------- */

/* A small byte-level BPE vocabulary: the 256 alphabet chars, "he", "ll",
   "hell", "hello", "<|end|>" (control); merges h+e, l+l, he+ll, hell+o. */
enum { MINI_N = 261 };
typedef struct {
	const char *skip;          /* key to leave out */
	const char *model, *pre;
	int n_types;               /* token_type length (MINI_N normally) */
	const char *merge0;        /* replaces merges[0] */
	const char *tok_dup;       /* replaces token "he" */
	bool empty_end;            /* "<|end|>" becomes "" */
	int64_t bos;               /* -1: none */
	bool add_bos;
} mini_opts;

static mini_opts mini_default(void)
{
	return (mini_opts){ .model = "gpt2", .pre = "gpt-2", .n_types = MINI_N, .bos = MINI_N - 1 };
}

static vocab mini(mini_opts o, char *err)
{
	static char alpha[256][4];
	const char *toks[MINI_N];
	for (int b = 0; b < 256; b++) {
		size_t k = unicode_encode(unicode_byte_to_cpt((uint8_t)b), alpha[b]);
		alpha[b][k] = 0;
		toks[b] = alpha[b];
	}
	toks[256] = o.tok_dup ? o.tok_dup : "he";
	toks[257] = "ll";
	toks[258] = "hell";
	toks[259] = "hello";
	toks[260] = o.empty_end ? "" : "<|end|>";
	int32_t types[MINI_N];
	for (int i = 0; i < MINI_N; i++)
		types[i] = i == 260 ? 3 : 1;
	const char *merges[] = { o.merge0 ? o.merge0 : "h e", "l l", "he ll", "hell o" };

	gguf_writer *w = gguf_writer_create();
	cr_assert(w);
#define SKIP(k) (o.skip && !strcmp(o.skip, k))
	if (!SKIP("tokenizer.ggml.model"))
		gguf_writer_set_str(w, "tokenizer.ggml.model", o.model);
	if (!SKIP("tokenizer.ggml.pre"))
		gguf_writer_set_str(w, "tokenizer.ggml.pre", o.pre);
	if (!SKIP("tokenizer.ggml.tokens"))
		gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, MINI_N);
	gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, (size_t)o.n_types);
	if (!SKIP("tokenizer.ggml.merges"))
		gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 4);
	if (o.bos >= 0)
		gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)o.bos);
	if (o.add_bos)
		gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
#undef SKIP
	vocab v = { 0 };
	size_t len;
	cr_assert(gguf_writer_write_mem(w, &v.mem, &len, err) == 0, "%s", err);
	gguf_writer_destroy(w);
	v.g = gguf_open_mem(v.mem, len, err);
	cr_assert(v.g, "%s", err);
	v.t = tokenizer_create(v.g, err);
	return v;
}

Test(broken, mini_vocab_works)
{
	char err[ERR_LEN] = "";
	vocab v = mini(mini_default(), err);
	cr_assert(v.t, "%s", err);
	cr_assert(tokenizer_check(v.t, err) == 0, "%s", err);
	int32_t *ids;
	size_t n = enc(v.t, "hello hello<|end|>", 18, false, true, &ids);
	int32_t sp = unicode_byte_to_cpt(' ') == 0x120 ? tokenizer_find(v.t, "\xc4\xa0", 2) : -1;
	const int32_t want[] = { 259, sp, 259, 260 };
	assert_ids(ids, n, want, 4, "mini");
	alloc_free(ids);
	cr_assert(tokenizer_is_eog(v.t, 260), "<|end|> is an EOG text");
	unload(&v);
}

static void expect_error(mini_opts o, const char *needle)
{
	char err[ERR_LEN] = "";
	vocab v = mini(o, err);
	cr_assert(v.t == NULL, "expected an error mentioning '%s'", needle);
	cr_assert(strstr(err, needle), "error '%s' does not mention '%s'", err, needle);
	unload(&v);
}

Test(broken, clear_errors)
{
	mini_opts o = mini_default();
	o.skip = "tokenizer.ggml.model";
	expect_error(o, "tokenizer.ggml.model");
	o = mini_default();
	o.model = "bert";
	expect_error(o, "'bert'");
	o = mini_default();
	o.pre = "tekken";
	expect_error(o, "'tekken'");
	o = mini_default();
	o.skip = "tokenizer.ggml.tokens";
	expect_error(o, "tokenizer.ggml.tokens");
	o = mini_default();
	o.skip = "tokenizer.ggml.merges";
	expect_error(o, "tokenizer.ggml.merges");
	o = mini_default();
	o.n_types = MINI_N - 1;
	expect_error(o, "tokenizer.ggml.token_type");
	o = mini_default();
	o.bos = 100000;
	expect_error(o, "bos_token_id");
	o = mini_default();
	o.merge0 = "h zz";
	expect_error(o, "merges[0]");
	o = mini_default();
	o.merge0 = "hello";
	expect_error(o, "merges[0]");
	o = mini_default();
	o.merge0 = "l o";
	expect_error(o, "not a token");
	o = mini_default();
	o.tok_dup = "ll";
	expect_error(o, "same text");
	o = mini_default();
	o.bos = -1;
	o.add_bos = true;
	/* default BPE bos is 11 and exists here, so this loads; a vocab of
	   SPM type without token 1 would not */
	char err[ERR_LEN];
	vocab v = mini(o, err);
	cr_assert(v.t, "%s", err);
	cr_assert_eq(tokenizer_bos(v.t), 11);
	unload(&v);
}

Test(broken, empty_token_is_renamed_like_llamacpp)
{
	char err[ERR_LEN] = "";
	mini_opts o = mini_default();
	o.empty_end = true;
	vocab v = mini(o, err);
	cr_assert(v.t, "%s", err);
	size_t n;
	const char *s = tokenizer_token_text(v.t, 260, &n);
	cr_assert(n == 11 && memcmp(s, "[EMPTY_260]", 11) == 0, "'%.*s'", (int)n, s);
	cr_assert_eq(tokenizer_find(v.t, "[EMPTY_260]", 11), 260);
	unload(&v);
}

/* An SPM vocabulary without byte tokens: where llama.cpp would throw, an
   unknown character becomes <unk>. */
Test(broken, spm_without_byte_tokens_uses_unk)
{
	const char *toks[] = { "<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "\xe2\x96\x81" "a" };
	const int32_t types[] = { 2, 3, 3, 1, 1, 1 };
	const float scores[] = { 0, 0, 0, -1, -2, -0.5f };
	gguf_writer *w = gguf_writer_create();
	gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
	gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 6);
	gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, 6);
	gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 6);
	char err[ERR_LEN] = "";
	vocab v = { 0 };
	size_t len;
	cr_assert(gguf_writer_write_mem(w, &v.mem, &len, err) == 0, "%s", err);
	gguf_writer_destroy(w);
	v.g = gguf_open_mem(v.mem, len, err);
	cr_assert(v.g, "%s", err);
	v.t = tokenizer_create(v.g, err);
	cr_assert(v.t, "%s", err);
	int32_t *ids;
	size_t n = enc(v.t, "ab a", 4, true, false, &ids);
	const int32_t want[] = { 1, 5, 0, 5 }; /* <s> ▁a <unk> ▁a */
	assert_ids(ids, n, want, 4, "spm without bytes");
	alloc_free(ids);
	cr_assert_eq(tokenizer_nl(v.t), TOKENIZER_NULL);
	unload(&v);
}

Test(broken, missing_pre_falls_back_to_default)
{
	char err[ERR_LEN] = "";
	mini_opts o = mini_default();
	o.skip = "tokenizer.ggml.pre";
	vocab v = mini(o, err);
	cr_assert(v.t, "%s", err);
	cr_assert_str_eq(tokenizer_pre_name(v.t), "default");
	unload(&v);
}

/* Truncating a real vocab GGUF anywhere never crashes the loader. */
Test(broken, truncated_file)
{
	const char *path = test_shared("models/stories260K.gguf");
	if (!path)
		cr_skip_test("stories260K.gguf not found");
	size_t len;
	char *data = test_read_file(path, &len);
	for (size_t cut = 0; cut < 20000 && cut < len; cut += 97) {
		char err[ERR_LEN];
		gguf *g = gguf_open_mem(data, cut, err);
		if (!g)
			continue;
		tokenizer *t = tokenizer_create(g, err);
		tokenizer_destroy(t);
		gguf_close(g);
	}
	free(data);
}

/* ---- resources --------------------------------------------------------- */

static int alloc_scenario(const gguf *g)
{
	char err[ERR_LEN];
	tokenizer *t = tokenizer_create(g, err);
	if (!t)
		return ERR_NOMEM;
	int32_t *ids = NULL;
	size_t n;
	const char *s = "<s>Hello\xff wörld  <unk>12345</s>";
	int rc = tokenizer_encode(t, s, strlen(s), true, true, &ids, &n);
	if (rc == 0) {
		char *text;
		size_t tl;
		rc = tokenizer_decode(t, ids, n, 0, &text, &tl, NULL);
		if (rc == 0)
			alloc_free(text);
	}
	alloc_free(ids);
	tokenizer_destroy(t);
	return rc;
}

static void failed_allocations(const char *rel)
{
	const char *path = test_shared(rel);
	if (!path)
		cr_skip_test("%s not found", rel);
	char err[ERR_LEN];
	gguf *g = gguf_open(path, err);
	cr_assert(g, "%s", err);
	alloc_fail_after(-1);
	cr_assert_eq(alloc_scenario(g), 0);
	long total = alloc_fail_after(-1);
	cr_assert(alloc_scenario(g) == 0);
	total = alloc_fail_after(-1);
	cr_assert(total > 5, "only %ld allocations", total);
	for (long i = 0; i < total; i++) {
		alloc_fail_after(i);
		int rc = alloc_scenario(g);
		alloc_fail_after(-1);
		cr_assert_eq(rc, ERR_NOMEM, "allocation %ld of %ld failed but the scenario returned %d", i, total, rc);
	}
	gguf_close(g);
}

Test(resources, failed_allocations_spm) { failed_allocations("models/stories260K.gguf"); }
Test(resources, failed_allocations_bpe) { failed_allocations("models/vocab/ggml-vocab-gpt-2.gguf"); }

static char *big_text(size_t want, size_t *len)
{
	const char *path = test_shared("models/vocab/ggml-vocab-qwen2.gguf.inp");
	if (!path)
		return NULL;
	size_t n;
	char *src = test_read_file(path, &n);
	char *s = malloc(want + n);
	size_t k = 0;
	while (k < want) {
		memcpy(s + k, src, n);
		k += n;
	}
	free(src);
	*len = want;
	/* cut on a character boundary */
	while ((s[*len] & 0xC0) == 0x80)
		(*len)--;
	return s;
}

Test(resources, speed_100k)
{
	size_t len;
	char *s = big_text(100000, &len);
	if (!s)
		cr_skip_test("vectors not found");
	const char *files[] = { "models/vocab/ggml-vocab-llama-spm.gguf", "models/vocab/ggml-vocab-llama-bpe.gguf",
				"models/vocab/ggml-vocab-qwen2.gguf", "models/vocab/ggml-vocab-deepseek-coder.gguf" };
	for (size_t f = 0; f < 4; f++) {
		if (!test_shared(files[f]))
			continue;
		vocab v = load(files[f]);
		double t0 = clock_now_s();
		int32_t *ids;
		size_t n = enc(v.t, s, len, true, true, &ids);
		double dt = clock_now_s() - t0;
		cr_assert(n > 10000);
		cr_assert(dt < 1.0, "%s: %zu bytes took %.3f s", files[f], len, dt);
		alloc_free(ids);
		unload(&v);
	}
	free(s);
}

typedef struct {
	const tokenizer *t;
	const char *s;
	size_t len;
	int32_t *ids;
	size_t n;
} job;

static void *worker(void *arg)
{
	job *j = arg;
	for (int r = 0; r < 3; r++) {
		alloc_free(j->ids);
		if (tokenizer_encode(j->t, j->s, j->len, true, true, &j->ids, &j->n))
			j->n = (size_t)-1;
	}
	return NULL;
}

Test(resources, threads_share_a_tokenizer)
{
	size_t len;
	char *s = big_text(20000, &len);
	if (!s)
		cr_skip_test("vectors not found");
	vocab v = load("models/vocab/ggml-vocab-llama-bpe.gguf");
	int32_t *ref;
	size_t n_ref = enc(v.t, s, len, true, true, &ref);
	pthread_t th[4];
	job jobs[4];
	for (int i = 0; i < 4; i++) {
		jobs[i] = (job){ v.t, s, len, NULL, 0 };
		pthread_create(&th[i], NULL, worker, &jobs[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		assert_ids(jobs[i].ids, jobs[i].n, ref, n_ref, "thread result");
		alloc_free(jobs[i].ids);
	}
	alloc_free(ref);
	free(s);
	unload(&v);
}
