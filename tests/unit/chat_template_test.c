/* chat_template_test.c - model/chat_template against the real Jinja templates.
 *
 * tests/data/chat/cases.json (written by tools/gen_chat_expected.py with
 * Python's jinja2) lists conversations and, per template family, either the
 * file holding the exact prompt the real template renders or the message it
 * raises. Every pair must match byte for byte, or with the same ERR_INVAL
 * message. A mismatch prints the first differing offset with both sides'
 * bytes around it, escaped.
 *
 * Also: detection of every template under ../shared/models/templates and in
 * the two GGUFs that carry one (skipped when ../shared is absent), names,
 * our own argument errors, 1 MB contents, random NUL-free bytes in every
 * family, failed allocations, and the BOS/EOS stripping helper.
 */
#include <criterion/criterion.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "model/chat_template.h"
#include "model/gguf.h"
#include "testutil.h"

#define CHAT_DATA PDSERVE_SRCDIR "/tests/data/chat/"

/* ---- helpers ------------------------------------------------------------- */

static json_object *load_json(const char *file)
{
	char path[1024];
	snprintf(path, sizeof path, CHAT_DATA "%s", file);
	json_object *j = json_object_from_file(path);
	cr_assert(j, "cannot read %s (run tools/gen_chat_expected.py)", path);
	return j;
}

static json_object *load_index(void)
{
	return load_json("cases.json");
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v))
		return NULL;
	return json_object_get_string(v);
}

static json_object *jget(json_object *o, const char *key)
{
	json_object *v = NULL;
	json_object_object_get_ex(o, key, &v);
	return v;
}

static json_object *family_entry(json_object *index, const char *name)
{
	json_object *fams = jget(index, "families");
	for (size_t i = 0; i < json_object_array_length(fams); i++) {
		json_object *f = json_object_array_get_idx(fams, i);
		if (strcmp(jstr(f, "name"), name) == 0)
			return f;
	}
	cr_assert_fail("family %s not in cases.json", name);
	return NULL;
}

/* Bytes around offset at of s, escaped, into out. */
static void context(const char *s, size_t n, size_t at, char *out, size_t cap)
{
	size_t b = at > 40 ? at - 40 : 0, e = at + 40 < n ? at + 40 : n, k = 0;
	for (size_t i = b; i < e && k + 8 < cap; i++) {
		unsigned char c = (unsigned char)s[i];
		if (i == at)
			k += (size_t)snprintf(out + k, cap - k, "[>]");
		if (c == '\n')
			k += (size_t)snprintf(out + k, cap - k, "\\n");
		else if (c < 0x20 || c == 0x7f || c == '\\')
			k += (size_t)snprintf(out + k, cap - k, "\\x%02x", c);
		else
			out[k++] = (char)c;
	}
	if (at >= e && k + 4 < cap)
		k += (size_t)snprintf(out + k, cap - k, "[>]");
	out[k] = '\0';
}

/* 0 when equal; else prints where they differ and returns 1. */
static int compare(const char *what, const char *got, size_t got_n, const char *want, size_t want_n)
{
	size_t i = 0;
	while (i < got_n && i < want_n && got[i] == want[i])
		i++;
	if (i == got_n && i == want_n)
		return 0;
	char g[512], w[512];
	context(got, got_n, i, g, sizeof g);
	context(want, want_n, i, w, sizeof w);
	fprintf(stderr,
		"%s: differs at byte %zu (got %zu bytes, want %zu)\n  got:  ...%s...\n  want: ...%s...\n",
		what, i, got_n, want_n, g, w);
	return 1;
}

/* ---- the golden prompts ---------------------------------------------------- */

/* Renders one case for one family; 0 when it matches the expectation. */
static int check_one(json_object *index, json_object *cs, const char *fam_name, json_object *res)
{
	char what[256];
	snprintf(what, sizeof what, "%s/%s", fam_name, jstr(cs, "name"));
	chat_tmpl_family f;
	cr_assert_eq(chat_template_from_name(fam_name, &f), 0, "family name %s", fam_name);
	cr_assert_str_eq(chat_template_name(f), fam_name);
	json_object *fam = family_entry(index, fam_name);

	json_object *ms = jget(cs, "messages");
	size_t n = json_object_array_length(ms);
	chat_msg *msgs = calloc(n, sizeof *msgs);
	cr_assert(msgs);
	for (size_t i = 0; i < n; i++) {
		json_object *m = json_object_array_get_idx(ms, i);
		msgs[i].role = jstr(m, "role");
		msgs[i].content = jstr(m, "content");
	}
	json_object *kw = jget(cs, "kwargs");
	json_object *think = jget(kw, "enable_thinking");
	chat_render_opts o = {
		.add_generation_prompt = json_object_get_boolean(jget(cs, "add_generation_prompt")),
		.bos_token = jget(cs, "bos") ? jstr(cs, "bos") : jstr(fam, "bos"),
		.eos_token = jget(cs, "eos") ? jstr(cs, "eos") : jstr(fam, "eos"),
		.date_string = jstr(kw, "date_string"),
		.disable_thinking = think && !json_object_get_boolean(think),
	};
	char *out = NULL, err[ERR_LEN] = "";
	size_t len = 0;
	int rc = chat_template_render(f, msgs, n, &o, &out, &len, err);
	free(msgs);

	int bad = 0;
	const char *want_err = jstr(res, "error");
	if (want_err) {
		if (rc != ERR_INVAL || strcmp(err, want_err) != 0) {
			fprintf(stderr, "%s: want ERR_INVAL \"%s\", got %s \"%s\"\n", what, want_err,
				err_name(rc), err);
			bad = 1;
		}
		cr_assert_null(out);
	} else {
		char path[1024];
		size_t want_n;
		char *want;
		json_object *text = jget(res, "text");
		if (text) { /* random.json holds it inline */
			want_n = (size_t)json_object_get_string_len(text);
			want = malloc(want_n + 1);
			memcpy(want, json_object_get_string(text), want_n + 1);
		} else {
			snprintf(path, sizeof path, CHAT_DATA "%s", jstr(res, "file"));
			want = test_read_file(path, &want_n);
			cr_assert(want, "cannot read %s", path);
		}
		if (rc != 0) {
			fprintf(stderr, "%s: want a prompt, got %s \"%s\"\n", what, err_name(rc), err);
			bad = 1;
		} else {
			bad = compare(what, out, len, want, want_n);
			cr_assert_eq(out[len], '\0', "%s: not NUL-terminated", what);
		}
		free(want);
	}
	alloc_free(out);
	return bad;
}

Test(chat_template, every_case_matches_jinja)
{
	json_object *index = load_index();
	json_object *cases = jget(index, "cases");
	int checked = 0, bad = 0, errors = 0;
	int per_family[CHAT_TMPL_COUNT] = { 0 };
	for (size_t c = 0; c < json_object_array_length(cases); c++) {
		json_object *cs = json_object_array_get_idx(cases, c);
		json_object_object_foreach(jget(cs, "results"), fam_name, res)
		{
			bad += check_one(index, cs, fam_name, res);
			checked++;
			errors += jget(res, "error") != NULL;
			chat_tmpl_family f;
			chat_template_from_name(fam_name, &f);
			per_family[f]++;
		}
	}
	json_object_put(index);
	fprintf(stderr, "chat_template: %d cases checked (%d expect an error), %d mismatches\n",
		checked, errors, bad);
	cr_assert_eq(bad, 0, "%d of %d cases differ from the Jinja rendering (details above)", bad,
		     checked);
	for (int f = 0; f < CHAT_TMPL_COUNT; f++)
		cr_assert_geq(per_family[f], 30, "family %s has only %d cases",
			      chat_template_name((chat_tmpl_family)f), per_family[f]);
	cr_assert_geq(errors, 20);
}

/* Seeded random conversations (tools/gen_chat_expected.py RANDOM_*): random
   roles, contents glued from whitespace, think tags and markers. */
Test(chat_template, random_conversations_match_jinja)
{
	json_object *index = load_index(), *rnd = load_json("random.json");
	json_object *cases = jget(rnd, "cases");
	int checked = 0, bad = 0;
	for (size_t c = 0; c < json_object_array_length(cases); c++) {
		json_object *cs = json_object_array_get_idx(cases, c);
		json_object_object_foreach(jget(cs, "results"), fam_name, res)
		{
			bad += check_one(index, cs, fam_name, res);
			checked++;
		}
	}
	json_object_put(rnd);
	json_object_put(index);
	cr_assert_eq(bad, 0, "%d of %d random cases differ from the Jinja rendering", bad, checked);
	cr_assert_geq(checked, 40 * CHAT_TMPL_COUNT);
}

/* ---- detection ----------------------------------------------------------- */

static chat_tmpl_family detect_str(const char *s, bool *known)
{
	return chat_template_detect(s, s ? strlen(s) : 0, known);
}

static void expect_detect(const char *what, const char *text, size_t n, chat_tmpl_family want)
{
	bool known = false;
	chat_tmpl_family got = chat_template_detect(text, n, &known);
	cr_assert_eq(got, want, "%s: detected %s, want %s", what, chat_template_name(got),
		     chat_template_name(want));
	cr_assert(known, "%s: detected as a fallback", what);
}

static void expect_detect_gguf(const char *rel, chat_tmpl_family want)
{
	const char *path = test_shared(rel);
	if (!path) {
		fprintf(stderr, "skip: ../shared/%s not here\n", rel);
		return;
	}
	char err[ERR_LEN];
	gguf *g = gguf_open(path, err);
	cr_assert(g, "%s: %s", rel, err);
	gguf_str s;
	cr_assert_eq(gguf_get_str(g, "tokenizer.chat_template", &s, err), 0, "%s: %s", rel, err);
	expect_detect(rel, s.p, (size_t)s.n, want);
	gguf_close(g);
}

Test(chat_template, detects_every_fixture_template)
{
	json_object *index = load_index();
	json_object *fams = jget(index, "families");
	int seen = 0;
	for (size_t i = 0; i < json_object_array_length(fams); i++) {
		json_object *fe = json_object_array_get_idx(fams, i);
		chat_tmpl_family want;
		cr_assert_eq(chat_template_from_name(jstr(fe, "name"), &want), 0);
		if (jstr(fe, "template")) {
			const char *t = jstr(fe, "template");
			expect_detect(jstr(fe, "name"), t, strlen(t), want);
		} else if (jstr(fe, "gguf")) {
			expect_detect_gguf(jstr(fe, "gguf"), want);
		} else {
			const char *path = test_shared(jstr(fe, "shared"));
			if (!path) {
				fprintf(stderr, "skip: ../shared/%s not here\n", jstr(fe, "shared"));
				continue;
			}
			size_t n;
			char *t = test_read_file(path, &n);
			cr_assert(t);
			/* Length-delimited, like a GGUF string: no NUL after it. */
			char *exact = malloc(n ? n : 1);
			memcpy(exact, t, n);
			expect_detect(jstr(fe, "shared"), exact, n, want);
			free(exact);
			free(t);
		}
		seen++;
	}
	json_object_put(index);
	cr_assert_eq(seen, CHAT_TMPL_COUNT);
	expect_detect_gguf("models/synth/qwen2tiny-q8_0.gguf", CHAT_TMPL_QWEN2);
	expect_detect_gguf("models/synth/llama3tiny-q4_k_m.gguf", CHAT_TMPL_LLAMA31);
}

Test(chat_template, detect_fallbacks_and_near_misses)
{
	bool known = true;
	cr_assert_eq(detect_str(NULL, &known), CHAT_TMPL_CHATML);
	cr_assert_not(known);
	known = true;
	cr_assert_eq(chat_template_detect("", 0, &known), CHAT_TMPL_CHATML);
	cr_assert_not(known);
	cr_assert_eq(detect_str("{{ messages }}", &known), CHAT_TMPL_CHATML);
	cr_assert_not(known);
	cr_assert_eq(detect_str("{{ messages }}", NULL), CHAT_TMPL_CHATML); /* NULL known is fine */

	/* ChatML markers but more than ChatML (Qwen3-like think handling, tool use). */
	cr_assert_eq(detect_str("{{'<|im_start|>' + m.role}}{% if '</think>' in c %}<think>", &known),
		     CHAT_TMPL_CHATML);
	cr_assert_not(known);
	cr_assert_eq(detect_str("<|im_start|>{% for tool in tools %}", &known), CHAT_TMPL_CHATML);
	cr_assert_not(known);
	cr_assert_eq(detect_str("<|im_start|>{{ m.role }}<|im_sep|>{{ c }}<|im_end|>", &known),
		     CHAT_TMPL_CHATML); /* Phi-4 */
	cr_assert_not(known);
	cr_assert_eq(detect_str("{{'<|im_start|>' + message['role'] + '\\n'}}<|im_end|>", &known),
		     CHAT_TMPL_CHATML);
	cr_assert(known);

	/* Mistral v1 / v7 and Gemma 3 render differently from what we have. */
	cr_assert_eq(detect_str("{{ '[INST] ' + m['content'] + ' [/INST]' }}", &known),
		     CHAT_TMPL_CHATML);
	cr_assert_not(known);
	cr_assert_eq(detect_str("[SYSTEM_PROMPT]{{ s }}[/SYSTEM_PROMPT][INST]{{ c }}[/INST]", &known),
		     CHAT_TMPL_CHATML);
	cr_assert_not(known);
	cr_assert_eq(detect_str("{{ bos_token }}{%- set first_user_prefix = s -%}<start_of_turn>",
				&known),
		     CHAT_TMPL_CHATML);
	cr_assert_not(known);

	/* Signatures found anywhere, also past an embedded NUL (GGUF strings are
	   length-delimited). */
	const char t[] = "junk\0{{'<|start_header_id|>' + r}}<|eot_id|>";
	cr_assert_eq(chat_template_detect(t, sizeof t - 1, &known), CHAT_TMPL_LLAMA3);
	cr_assert(known);
	/* A prefix cut before the signature does not see it. */
	cr_assert_eq(chat_template_detect(t, 10, &known), CHAT_TMPL_CHATML);
	cr_assert_not(known);
}

/* ---- names --------------------------------------------------------------- */

Test(chat_template, names)
{
	for (int f = 0; f < CHAT_TMPL_COUNT; f++) {
		chat_tmpl_family got = CHAT_TMPL_COUNT;
		const char *name = chat_template_name((chat_tmpl_family)f);
		cr_assert_eq(chat_template_from_name(name, &got), 0, "%s", name);
		cr_assert_eq(got, f, "%s", name);
	}
	static const struct {
		const char *name;
		chat_tmpl_family f;
	} more[] = {
		{ "ChatML", CHAT_TMPL_CHATML },         { "llama3", CHAT_TMPL_LLAMA3 },
		{ "llama-3", CHAT_TMPL_LLAMA3 },        { "LLAMA-3-INSTRUCT", CHAT_TMPL_LLAMA3 },
		{ "llama3.1", CHAT_TMPL_LLAMA31 },      { "llama-3.1", CHAT_TMPL_LLAMA31 },
		{ "llama3.3", CHAT_TMPL_LLAMA31 },      { "llama-3.2", CHAT_TMPL_LLAMA32 },
		{ "qwen2", CHAT_TMPL_QWEN2 },           { "qwen2.5", CHAT_TMPL_QWEN25 },
		{ "qwen25", CHAT_TMPL_QWEN25 },         { "mistral", CHAT_TMPL_MISTRAL_NEMO },
		{ "mistral-nemo", CHAT_TMPL_MISTRAL_NEMO },
		{ "mistral-v3-tekken", CHAT_TMPL_MISTRAL_NEMO },
		{ "gemma", CHAT_TMPL_GEMMA },           { "gemma2", CHAT_TMPL_GEMMA },
		{ "gemma-it", CHAT_TMPL_GEMMA },        { "phi3", CHAT_TMPL_PHI3 },
		{ "phi-3.5", CHAT_TMPL_PHI3 },          { "deepseek-r1", CHAT_TMPL_DEEPSEEK_R1 },
		{ "smollm3", CHAT_TMPL_SMOLLM3 },
	};
	for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
		chat_tmpl_family got = CHAT_TMPL_COUNT;
		cr_assert_eq(chat_template_from_name(more[i].name, &got), 0, "%s", more[i].name);
		cr_assert_eq(got, more[i].f, "%s -> %s", more[i].name, chat_template_name(got));
	}
	chat_tmpl_family keep = CHAT_TMPL_GEMMA;
	cr_assert_eq(chat_template_from_name("llama2", &keep), ERR_NOTFOUND);
	cr_assert_eq(chat_template_from_name("", &keep), ERR_NOTFOUND);
	cr_assert_eq(chat_template_from_name("chatml ", &keep), ERR_NOTFOUND);
	cr_assert_eq(chat_template_from_name(NULL, &keep), ERR_NOTFOUND);
	cr_assert_eq(keep, CHAT_TMPL_GEMMA);
	cr_assert_str_eq(chat_template_name(CHAT_TMPL_COUNT), "?");
	cr_assert_str_eq(chat_template_name((chat_tmpl_family)-1), "?");
}

/* ---- argument errors ------------------------------------------------------- */

static int render(chat_tmpl_family f, const chat_msg *m, size_t n, const chat_render_opts *o,
		  char **out, size_t *len, char *err)
{
	*out = (char *)1; /* must be overwritten */
	*len = 99;
	return chat_template_render(f, m, n, o, out, len, err);
}

Test(chat_template, argument_errors)
{
	char *out, err[ERR_LEN];
	size_t len;
	chat_msg ok[] = { { "user", "hi" } };
	for (int f = 0; f < CHAT_TMPL_COUNT; f++) {
		cr_assert_eq(render((chat_tmpl_family)f, ok, 0, NULL, &out, &len, err), ERR_INVAL);
		cr_assert_null(out);
		cr_assert_eq(len, 0);
		cr_assert(strstr(err, "empty"), "%s", err);
		cr_assert_eq(render((chat_tmpl_family)f, NULL, 1, NULL, &out, &len, err), ERR_INVAL);

		chat_msg dev[] = { { "user", "hi" }, { "assistant", "a" }, { "developer", "x" } };
		cr_assert_eq(render((chat_tmpl_family)f, dev, 3, NULL, &out, &len, err), ERR_INVAL);
		cr_assert_str_eq(err, "message 2: unknown role \"developer\" (expected system, user, "
				      "assistant or tool)");
		cr_assert_null(out);
		chat_msg caps[] = { { "User", "hi" } };
		cr_assert_eq(render((chat_tmpl_family)f, caps, 1, NULL, &out, &len, err), ERR_INVAL);
		chat_msg nocontent[] = { { "user", NULL } };
		cr_assert_eq(render((chat_tmpl_family)f, nocontent, 1, NULL, &out, &len, err), ERR_INVAL);
		cr_assert_str_eq(err, "message 0: content is missing");
		chat_msg norole[] = { { NULL, "x" } };
		cr_assert_eq(render((chat_tmpl_family)f, norole, 1, NULL, &out, &len, NULL), ERR_INVAL);
	}
	cr_assert_eq(render(CHAT_TMPL_COUNT, ok, 1, NULL, &out, &len, err), ERR_INVAL);
	cr_assert_eq(render((chat_tmpl_family)-1, ok, 1, NULL, &out, &len, err), ERR_INVAL);
	cr_assert_null(out);

	/* A long role is cut in the message, which stays one sentence. */
	char role[1000];
	memset(role, 'r', sizeof role - 1);
	role[sizeof role - 1] = '\0';
	chat_msg lr[] = { { role, "x" } };
	cr_assert_eq(render(CHAT_TMPL_CHATML, lr, 1, NULL, &out, &len, err), ERR_INVAL);
	cr_assert_lt(strlen(err), 150);

	/* NULL opts: no generation prompt, empty bos/eos. */
	cr_assert_eq(render(CHAT_TMPL_GEMMA, ok, 1, NULL, &out, &len, err), 0);
	cr_assert_str_eq(out, "<start_of_turn>user\nhi<end_of_turn>\n");
	cr_assert_eq(len, strlen(out));
	alloc_free(out);

	/* Mistral Nemo with only a system message and no bos renders nothing:
	   still a string. */
	chat_msg sys[] = { { "system", "s" } };
	cr_assert_eq(render(CHAT_TMPL_MISTRAL_NEMO, sys, 1, NULL, &out, &len, err), 0);
	cr_assert_str_eq(out, "");
	cr_assert_eq(len, 0);
	alloc_free(out);
}

/* ---- dates ----------------------------------------------------------------- */

Test(chat_template, llama32_defaults_to_today)
{
	chat_msg m[] = { { "user", "hi" } };
	char *out, err[ERR_LEN];
	size_t len;
	time_t t = time(NULL);
	struct tm tm;
	localtime_r(&t, &tm);
	static const char *mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
				     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	char want[64];
	snprintf(want, sizeof want, "Today Date: %02d %s %d\n\n", tm.tm_mday, mon[tm.tm_mon],
		 tm.tm_year + 1900);
	cr_assert_eq(chat_template_render(CHAT_TMPL_LLAMA32, m, 1, NULL, &out, &len, err), 0);
	cr_assert(strstr(out, want), "want '%s' in '%s'", want, out);
	alloc_free(out);
	cr_assert_eq(chat_template_render(CHAT_TMPL_LLAMA31, m, 1, NULL, &out, &len, err), 0);
	cr_assert(strstr(out, "Today Date: 26 Jul 2024\n\n"), "%s", out);
	alloc_free(out);
}

/* ---- big and hostile input ------------------------------------------------- */

static const char *const roles[] = { "system", "user", "assistant", "tool" };

Test(chat_template, one_megabyte_contents)
{
	size_t big = 1 << 20;
	char *a = malloc(big + 1), *b = malloc(big + 1);
	for (size_t i = 0; i < big; i++) {
		a[i] = (char)('a' + i % 26);
		b[i] = i % 1000 == 0 ? '\n' : ' ';
	}
	a[big] = b[big] = '\0';
	a[0] = a[big - 1] = ' ';
	chat_msg m[] = { { "user", a }, { "assistant", b }, { "user", a } };
	chat_render_opts o = { .add_generation_prompt = true, .bos_token = "<s>", .eos_token = "</s>" };
	for (int f = 0; f < CHAT_TMPL_COUNT; f++) {
		char *out = NULL, err[ERR_LEN];
		size_t len;
		cr_assert_eq(chat_template_render((chat_tmpl_family)f, m, 3, &o, &out, &len, err), 0,
			     "%s: %s", chat_template_name((chat_tmpl_family)f), err);
		cr_assert_geq(len, 2 * (big - 2), "%s", chat_template_name((chat_tmpl_family)f));
		cr_assert_lt(len, 3 * big + 4096);
		cr_assert_eq(strlen(out), len);
		alloc_free(out);
	}
	free(a);
	free(b);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Random NUL-free bytes, biased towards the characters the renderers look at
   (space, newline, '<', '/', think tags, broken UTF-8 sequence heads), in
   random role orders. Every call either renders a NUL-free prompt of the
   reported length or fails with ERR_INVAL and a message. */
Test(chat_template, random_bytes_do_not_crash)
{
	static const char *const pieces[] = { "</think>", "/think", "/no_think", "\xe2\x80", "\xe2\x80\xa8",
					      "\xc2", "\xc2\xa0", "\xf4\x90\x80\x80", "\xed\xa0\x80",
					      "\xe3\x80\x80", " ", "\n", "\"", "\\", "\x01" };
	uint64_t s = 0x9e3779b97f4a7c15u;
	char buf[8][200];
	int ok = 0, refused = 0;
	for (int iter = 0; iter < 20000; iter++) {
		size_t n = 1 + rng_next(&s) % 8;
		chat_msg m[8];
		for (size_t i = 0; i < n; i++) {
			size_t len = rng_next(&s) % 120, k = 0;
			while (k < len) {
				uint64_t r = rng_next(&s);
				if (r % 4 == 0) {
					const char *p = pieces[(r >> 8) % (sizeof pieces / sizeof pieces[0])];
					size_t pl = strlen(p);
					if (k + pl >= sizeof buf[i])
						break;
					memcpy(buf[i] + k, p, pl);
					k += pl;
				} else {
					buf[i][k++] = (char)(1 + (r >> 8) % 255);
				}
			}
			buf[i][k] = '\0';
			m[i].role = roles[rng_next(&s) % 4];
			m[i].content = buf[i];
		}
		chat_render_opts o = { .add_generation_prompt = rng_next(&s) & 1,
				       .bos_token = "<bos>", .eos_token = "<eos>",
				       .disable_thinking = rng_next(&s) & 1 };
		chat_tmpl_family f = (chat_tmpl_family)(rng_next(&s) % CHAT_TMPL_COUNT);
		char *out = NULL, err[ERR_LEN] = "";
		size_t len = 0;
		int rc = chat_template_render(f, m, n, &o, &out, &len, err);
		if (rc == 0) {
			cr_assert_eq(strlen(out), len);
			ok++;
		} else {
			cr_assert_eq(rc, ERR_INVAL, "%s: %s", chat_template_name(f), err);
			cr_assert(err[0]);
			cr_assert_null(out);
			refused++;
		}
		alloc_free(out);
	}
	cr_assert_gt(ok, 10000);
	cr_assert_gt(refused, 100);
}

/* Broken UTF-8 is never trimmed into: a cut U+2028 at the end stays, a whole
   one goes. */
Test(chat_template, trim_and_broken_utf8)
{
	chat_msg m[] = { { "user", " \xe2\x80\xa8x\xe2\x80" } };
	char *out, err[ERR_LEN];
	size_t len;
	cr_assert_eq(chat_template_render(CHAT_TMPL_GEMMA, m, 1, NULL, &out, &len, err), 0);
	cr_assert_str_eq(out, "<start_of_turn>user\nx\xe2\x80<end_of_turn>\n");
	alloc_free(out);
	chat_msg m2[] = { { "user", "\xa0 x \xc2\xa0\xc2" } }; /* lone continuation / head bytes */
	cr_assert_eq(chat_template_render(CHAT_TMPL_LLAMA3, m2, 1, NULL, &out, &len, err), 0);
	cr_assert_str_eq(out, "<|start_header_id|>user<|end_header_id|>\n\n\xa0 x \xc2\xa0\xc2<|eot_id|>");
	alloc_free(out);
}

/* ---- failed allocations --------------------------------------------------- */

Test(chat_template, failed_allocations)
{
	chat_msg m[] = { { "system", "Be brief /no_think /think" }, { "user", "hi" },
			 { "assistant", "<think>x</think>y" }, { "user", "again" } };
	chat_render_opts o = { .add_generation_prompt = true, .bos_token = "<s>" };
	for (int f = 0; f < CHAT_TMPL_COUNT; f++) {
		char *out, err[ERR_LEN];
		size_t len;
		/* Gemma refuses the system message: start it at the user. */
		const chat_msg *mm = f == CHAT_TMPL_GEMMA ? m + 1 : m;
		size_t n = f == CHAT_TMPL_GEMMA ? 3 : 4;
		alloc_fail_after(-1);
		int rc = chat_template_render((chat_tmpl_family)f, mm, n, &o, &out, &len, err);
		long count = alloc_fail_after(-1);
		cr_assert_eq(rc, 0, "%s: %s", chat_template_name((chat_tmpl_family)f), err);
		alloc_free(out);
		cr_assert_geq(count, 2);
		for (long i = 0; i < count; i++) {
			alloc_fail_after(i);
			rc = chat_template_render((chat_tmpl_family)f, mm, n, &o, &out, &len, err);
			alloc_fail_after(-1);
			cr_assert_eq(rc, ERR_NOMEM, "%s: allocation %ld of %ld failing gave %d",
				     chat_template_name((chat_tmpl_family)f), i, count, rc);
			cr_assert_null(out);
			cr_assert(strstr(err, "out of memory"), "%s", err);
		}
	}
}

/* ---- BOS / EOS stripping --------------------------------------------------- */

Test(chat_template, strip_bos_eos)
{
	char s[64];
	strcpy(s, "<s>[INST]hi[/INST]ok</s>");
	size_t n = chat_template_strip_bos_eos(s, strlen(s), "<s>", "</s>");
	cr_assert_eq(n, strlen("[INST]hi[/INST]ok"));
	cr_assert_str_eq(s, "[INST]hi[/INST]ok");

	strcpy(s, "<s>x</s>");
	cr_assert_eq(chat_template_strip_bos_eos(s, 8, NULL, ""), 8);
	cr_assert_str_eq(s, "<s>x</s>");
	cr_assert_eq(chat_template_strip_bos_eos(s, 8, "<s>", NULL), 5);
	cr_assert_str_eq(s, "x</s>");

	strcpy(s, "<bos>"); /* only the bos: nothing left, and eos cannot overlap it */
	cr_assert_eq(chat_template_strip_bos_eos(s, 5, "<bos>", "<bos>"), 0);
	cr_assert_str_eq(s, "");

	strcpy(s, "<s"); /* shorter than bos */
	cr_assert_eq(chat_template_strip_bos_eos(s, 2, "<s>", "</s>"), 2);
	cr_assert_str_eq(s, "<s");

	strcpy(s, "a<s>b"); /* only a prefix counts */
	cr_assert_eq(chat_template_strip_bos_eos(s, 5, "<s>", "<s>"), 5);

	/* the real pairing: render, then strip what the tokenizer adds anyway */
	chat_msg m[] = { { "user", "hi" } };
	chat_render_opts o = { .add_generation_prompt = true, .bos_token = "<|begin_of_text|>" };
	char *out, err[ERR_LEN];
	size_t len;
	cr_assert_eq(chat_template_render(CHAT_TMPL_LLAMA3, m, 1, &o, &out, &len, err), 0);
	len = chat_template_strip_bos_eos(out, len, "<|begin_of_text|>", NULL);
	cr_assert_str_eq(out, "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
			      "<|start_header_id|>assistant<|end_header_id|>\n\n");
	cr_assert_eq(len, strlen(out));
	alloc_free(out);
}
