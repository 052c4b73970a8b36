/* chat_template.c - built-in renderers for the chat template families.
 *
 * Design. One function per family writes the prompt into a growable buffer,
 * following the family's Jinja template statement by statement; the comment
 * above each renderer quotes the rules that are easy to get wrong. Messages
 * are first checked and classified once (role -> enum, content length), so
 * the renderers never see NULL or an unknown role. A template's
 * raise_exception() becomes ERR_INVAL with the same message; we raise at the
 * point the template would, so when a conversation breaks two rules the
 * message is the one Jinja gives.
 *
 * The Jinja string operations map to byte operations: `in`, split and replace
 * on valid UTF-8 give the same result on bytes, because UTF-8 is
 * self-synchronising. trim / rstrip strip Python's str.isspace() set (which,
 * unlike Unicode White_Space, includes U+001C..U+001F), decoded from UTF-8;
 * a byte that does not start a valid sequence counts as not space, so broken
 * input passes through untouched. tojson of a string is Python's json.dumps
 * with ensure_ascii=False.
 *
 * Invariants: on success the buffer is NUL-terminated and len excludes the
 * NUL; a failed append marks the buffer failed and later appends do nothing,
 * so renderers check once at the end. Nothing here keeps state between calls.
 *
 * Deliberately left out: tools (the "tools" variable is never defined, and a
 * message never has tool_calls), content that is not a string, and the
 * templates' behaviour on an empty message list (most index messages[0] and
 * fail; we refuse n == 0 for every family).
 */
#include "model/chat_template.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/alloc.h"

/* ---- output buffer -------------------------------------------------------- */

typedef struct {
	char *p;
	size_t n, cap;
	bool failed; /* allocation failed or size overflowed */
} sbuf;

static void put(sbuf *b, const char *s, size_t k)
{
	if (b->failed || k == 0)
		return;
	size_t need;
	if (__builtin_add_overflow(b->n, k, &need) || __builtin_add_overflow(need, 1, &need)) {
		b->failed = true;
		return;
	}
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < need)
			cap = cap > SIZE_MAX / 2 ? need : cap * 2;
		char *p = alloc_resize(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, k);
	b->n += k;
	b->p[b->n] = '\0';
}

static void put_str(sbuf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* ---- strings as Python sees them ---------------------------------------- */

/* A slice of a message's content. */
typedef struct {
	const char *p;
	size_t n;
} span;

static void put_span(sbuf *b, span s)
{
	put(b, s.p, s.n);
}

/* Decode one strictly valid UTF-8 sequence at s[0..n), n >= 1. Returns its
   length and sets *cp, or 0 when s does not start a valid sequence. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned c = s[0];
	size_t k;
	uint32_t v, min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if (c >= 0xc2 && c <= 0xdf) {
		k = 2, v = c & 0x1f, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		k = 3, v = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		k = 4, v = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (n < k)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return k;
}

/* Python's str.isspace(): bidirectional class WS, B or S, or category Zs. */
static bool py_space(uint32_t c)
{
	if (c <= 0x20)
		return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20);
	return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
	       c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Python's s.strip() (left and right) or s.rstrip() (right only). One forward
   pass: the end is the end of the last non-space character. */
static span py_strip(span s, bool left)
{
	const unsigned char *u = (const unsigned char *)s.p;
	size_t i = 0, begin = 0, end = 0;
	bool leading = left;
	while (i < s.n) {
		uint32_t cp;
		size_t k = utf8_decode(u + i, s.n - i, &cp);
		bool sp = k > 0 && py_space(cp);
		if (k == 0)
			k = 1;
		if (!sp) {
			if (leading) {
				begin = i;
				leading = false;
			}
			end = i + k;
		}
		i += k;
	}
	if (leading) /* all space: Python gives "" */
		return (span){ s.p, 0 };
	return (span){ s.p + begin, end > begin ? end - begin : 0 };
}

static span trim(span s)
{
	return py_strip(s, true);
}

/* First occurrence of needle in s at or after from, or SIZE_MAX. */
static size_t find(span s, size_t from, const char *needle)
{
	size_t k = strlen(needle);
	if (from > s.n || s.n - from < k)
		return SIZE_MAX;
	const char *hit = memmem(s.p + from, s.n - from, needle, k);
	return hit ? (size_t)(hit - s.p) : SIZE_MAX;
}

static bool contains(span s, const char *needle)
{
	return find(s, 0, needle) != SIZE_MAX;
}

/* Python's s.replace(needle, "") (non-overlapping, left to right) into b. */
static void put_without(sbuf *b, span s, const char *needle)
{
	size_t k = strlen(needle), at = 0, hit;
	while ((hit = find(s, at, needle)) != SIZE_MAX) {
		put(b, s.p + at, hit - at);
		at = hit + k;
	}
	put(b, s.p + at, s.n - at);
}

/* json.dumps(s, ensure_ascii=False): quote, backslash and control
   characters escaped; everything else, non-ASCII included, as is. */
static void put_json_string(sbuf *b, span s)
{
	static const char hex[] = "0123456789abcdef";
	put(b, "\"", 1);
	size_t run = 0;
	for (size_t i = 0; i < s.n; i++) {
		unsigned char c = (unsigned char)s.p[i];
		const char *esc = NULL;
		char u[6];
		switch (c) {
		case '"': esc = "\\\""; break;
		case '\\': esc = "\\\\"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		case '\b': esc = "\\b"; break;
		case '\f': esc = "\\f"; break;
		default:
			if (c >= 0x20)
				continue;
			memcpy(u, "\\u00", 4);
			u[4] = hex[c >> 4];
			u[5] = hex[c & 15];
		}
		put(b, s.p + run, i - run);
		if (esc)
			put_str(b, esc);
		else
			put(b, u, 6);
		run = i + 1;
	}
	put(b, s.p + run, s.n - run);
	put(b, "\"", 1);
}

/* ---- messages ------------------------------------------------------------ */

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL } role;

static const char *const role_names[] = { "system", "user", "assistant", "tool" };

typedef struct {
	role r;
	span c;
} msg;

typedef struct {
	const msg *m;
	size_t n;
	bool gen;
	const char *bos, *eos;
	const char *date; /* NULL = family default */
	bool no_think;
} conv;

static void put_role(sbuf *b, role r)
{
	put_str(b, role_names[r]);
}

/* ---- families ------------------------------------------------------------ */

#define IM_START "<|im_start|>"
#define IM_END "<|im_end|>"

/* Plain ChatML and Qwen2-Instruct: every message verbatim, any role. Qwen2
   puts "You are a helpful assistant" (no full stop) before a first message
   that is not a system message. */
static int render_chatml(sbuf *b, const conv *cv, const char *default_system)
{
	for (size_t i = 0; i < cv->n; i++) {
		if (i == 0 && default_system && cv->m[0].r != ROLE_SYSTEM) {
			put_str(b, IM_START "system\n");
			put_str(b, default_system);
			put_str(b, IM_END "\n");
		}
		put_str(b, IM_START);
		put_role(b, cv->m[i].r);
		put_str(b, "\n");
		put_span(b, cv->m[i].c);
		put_str(b, IM_END "\n");
	}
	if (cv->gen)
		put_str(b, IM_START "assistant\n");
	return 0;
}

/* Qwen2.5 without tools: always a system turn (the first message if it is a
   system message, else "You are Qwen, created by Alibaba Cloud. You are a
   helpful assistant."). Later system messages are ordinary turns. A run of
   consecutive tool messages becomes one user turn with one
   "\n<tool_response>\n...\n</tool_response>" per message. Content is never
   trimmed. */
static int render_qwen25(sbuf *b, const conv *cv)
{
	const msg *m = cv->m;
	if (m[0].r == ROLE_SYSTEM) {
		put_str(b, IM_START "system\n");
		put_span(b, m[0].c);
		put_str(b, IM_END "\n");
	} else {
		put_str(b, IM_START "system\nYou are Qwen, created by Alibaba Cloud. "
			     "You are a helpful assistant." IM_END "\n");
	}
	for (size_t i = 0; i < cv->n; i++) {
		if (m[i].r == ROLE_TOOL) {
			if (i == 0 || m[i - 1].r != ROLE_TOOL)
				put_str(b, IM_START "user");
			put_str(b, "\n<tool_response>\n");
			put_span(b, m[i].c);
			put_str(b, "\n</tool_response>");
			if (i + 1 == cv->n || m[i + 1].r != ROLE_TOOL)
				put_str(b, IM_END "\n");
		} else if (!(m[i].r == ROLE_SYSTEM && i == 0)) {
			put_str(b, IM_START);
			put_role(b, m[i].r);
			put_str(b, "\n");
			put_span(b, m[i].c);
			put_str(b, IM_END "\n");
		}
	}
	if (cv->gen)
		put_str(b, IM_START "assistant\n");
	return 0;
}

#define L3_HEADER(role) "<|start_header_id|>" role "<|end_header_id|>\n\n"
#define L3_EOT "<|eot_id|>"

static void put_llama3_turn(sbuf *b, const msg *m)
{
	put_str(b, "<|start_header_id|>");
	put_role(b, m->r);
	put_str(b, "<|end_header_id|>\n\n");
	put_span(b, trim(m->c));
	put_str(b, L3_EOT);
}

/* Meta-Llama-3-8B-Instruct: bos before the first turn (so nothing at all for
   no messages), content trimmed, any role verbatim. */
static int render_llama3(sbuf *b, const conv *cv)
{
	for (size_t i = 0; i < cv->n; i++) {
		if (i == 0)
			put_str(b, cv->bos);
		put_llama3_turn(b, &cv->m[i]);
	}
	if (cv->gen)
		put_str(b, L3_HEADER("assistant"));
	return 0;
}

/* Today as strftime("%d %b %Y") in the C locale: "05 Mar 2025". */
static void put_today(sbuf *b)
{
	static const char mon[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t t = time(NULL);
	struct tm tm;
	char s[32];
	if (!localtime_r(&t, &tm) || tm.tm_mon < 0 || tm.tm_mon > 11) {
		put_str(b, "26 Jul 2024"); /* the template's own fallback */
		return;
	}
	int k = snprintf(s, sizeof s, "%02d %s %d", tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900);
	put(b, s, k > 0 && (size_t)k < sizeof s ? (size_t)k : 0);
}

/* Llama 3.1 / 3.2 without tools: bos, then a system turn that always exists:
   "Cutting Knowledge Date: December 2023\nToday Date: <date>\n\n" followed by
   the first message's content trimmed if that message is a system message
   (it is then consumed). Every other message is a trimmed turn under its own
   role, except "tool", which becomes an ipython turn whose content is
   JSON-quoted: the template asks `content is iterable`, and a string is. */
static int render_llama31(sbuf *b, const conv *cv, bool today_default)
{
	const msg *m = cv->m;
	size_t i = 0;
	put_str(b, cv->bos);
	put_str(b, L3_HEADER("system") "Cutting Knowledge Date: December 2023\nToday Date: ");
	if (cv->date)
		put_str(b, cv->date);
	else if (today_default)
		put_today(b);
	else
		put_str(b, "26 Jul 2024");
	put_str(b, "\n\n");
	if (m[0].r == ROLE_SYSTEM) {
		put_span(b, trim(m[0].c));
		i = 1;
	}
	put_str(b, L3_EOT);
	for (; i < cv->n; i++) {
		if (m[i].r == ROLE_TOOL) {
			put_str(b, L3_HEADER("ipython"));
			put_json_string(b, m[i].c);
			put_str(b, L3_EOT);
		} else {
			put_llama3_turn(b, &m[i]);
		}
	}
	if (cv->gen)
		put_str(b, L3_HEADER("assistant"));
	return 0;
}

static const char nemo_alternate[] =
	"After the optional system message, conversation roles must alternate "
	"user/assistant/user/assistant/...";

/* Mistral Nemo: a leading system message is taken out and only reappears
   inside the LAST message, and only if that is a user message:
   "[INST]" system "\n\n" content "[/INST]"; a conversation that ends with an
   assistant message loses it. No spaces around [INST]; assistant turns are
   content + eos. There is no generation prompt at all. The alternation check
   (tool messages skipped) runs over all messages before anything renders;
   then a later system message raises its own error and a tool message
   raises for its missing tool call id. */
static int render_mistral_nemo(sbuf *b, const conv *cv, char *err)
{
	const msg *m = cv->m;
	size_t n = cv->n;
	span sys = { NULL, 0 };
	if (m[0].r == ROLE_SYSTEM) {
		sys = m[0].c;
		m++, n--;
	}
	size_t idx = 0;
	for (size_t i = 0; i < n; i++) {
		if (m[i].r == ROLE_TOOL)
			continue;
		if ((m[i].r == ROLE_USER) != (idx % 2 == 0))
			return err_set(err, ERR_INVAL, "%s", nemo_alternate);
		idx++;
	}
	put_str(b, cv->bos);
	for (size_t i = 0; i < n; i++) {
		switch (m[i].r) {
		case ROLE_USER:
			put_str(b, "[INST]");
			if (i + 1 == n && sys.p) {
				put_span(b, sys);
				put_str(b, "\n\n");
			}
			put_span(b, m[i].c);
			put_str(b, "[/INST]");
			break;
		case ROLE_ASSISTANT:
			put_span(b, m[i].c);
			put_str(b, cv->eos);
			break;
		case ROLE_TOOL:
			return err_set(err, ERR_INVAL,
				       "Tool call IDs should be alphanumeric strings with length 9!");
		case ROLE_SYSTEM:
			return err_set(err, ERR_INVAL,
				       "Only user and assistant roles are supported, with the "
				       "exception of an initial optional system message!");
		}
	}
	return 0;
}

/* Gemma 1 / 2: bos; a first system message raises; otherwise message i must
   be a user message exactly when i is even (so a tool message is accepted at
   an odd index and printed under its own name). Assistant is "model";
   content is trimmed. */
static int render_gemma(sbuf *b, const conv *cv, char *err)
{
	const msg *m = cv->m;
	put_str(b, cv->bos);
	if (m[0].r == ROLE_SYSTEM)
		return err_set(err, ERR_INVAL, "System role not supported");
	for (size_t i = 0; i < cv->n; i++) {
		if ((m[i].r == ROLE_USER) != (i % 2 == 0))
			return err_set(err, ERR_INVAL,
				       "Conversation roles must alternate user/assistant/user/assistant/...");
		put_str(b, "<start_of_turn>");
		put_str(b, m[i].r == ROLE_ASSISTANT ? "model" : role_names[m[i].r]);
		put_str(b, "\n");
		put_span(b, trim(m[i].c));
		put_str(b, "<end_of_turn>\n");
	}
	if (cv->gen)
		put_str(b, "<start_of_turn>model\n");
	return 0;
}

/* Phi 3.5: no bos; a system message with empty content is skipped, tool
   messages are dropped; content untrimmed. Without a generation prompt the
   prompt ends with eos. */
static int render_phi3(sbuf *b, const conv *cv)
{
	for (size_t i = 0; i < cv->n; i++) {
		const msg *m = &cv->m[i];
		const char *tag = NULL;
		if (m->r == ROLE_SYSTEM && m->c.n > 0)
			tag = "<|system|>\n";
		else if (m->r == ROLE_USER)
			tag = "<|user|>\n";
		else if (m->r == ROLE_ASSISTANT)
			tag = "<|assistant|>\n";
		if (!tag)
			continue;
		put_str(b, tag);
		put_span(b, m->c);
		put_str(b, "<|end|>\n");
	}
	put_str(b, cv->gen ? "<|assistant|>\n" : cv->eos);
	return 0;
}

#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"                       /* <｜User｜> */
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"        /* <｜Assistant｜> */
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_TOOL(x) "<\xef\xbd\x9ctool\xe2\x96\x81" x "\xef\xbd\x9c>" /* <｜tool▁x｜> */
#define DS_SEP "\xe2\x96\x81"                                          /* ▁ */

/* DeepSeek R1 distills: bos, then the content of the LAST system message
   (wherever it is) with no separator; system messages render nothing in
   place. An assistant message keeps only what follows its last "</think>",
   untrimmed, and ends with a literal <｜end▁of▁sentence｜> (not eos_token).
   Tool messages: the first ever opens <｜tool▁outputs▁begin｜>; later ones,
   even in a later group, start with "\n"; the assistant message after a tool
   group closes it and is not stripped of </think>. A conversation ending in
   tool output gets no generation prompt. The generation prompt opens a
   <think> block. */
static int render_deepseek_r1(sbuf *b, const conv *cv)
{
	const msg *m = cv->m;
	span sys = { "", 0 };
	for (size_t i = 0; i < cv->n; i++)
		if (m[i].r == ROLE_SYSTEM)
			sys = m[i].c;
	put_str(b, cv->bos);
	put_span(b, sys);
	bool is_tool = false, output_first = true;
	for (size_t i = 0; i < cv->n; i++) {
		span c = m[i].c;
		switch (m[i].r) {
		case ROLE_USER:
			is_tool = false;
			put_str(b, DS_USER);
			put_span(b, c);
			break;
		case ROLE_ASSISTANT:
			if (is_tool) {
				put_str(b, DS_TOOL("outputs" DS_SEP "end"));
				is_tool = false;
			} else {
				size_t at = 0, hit;
				while ((hit = find(c, at, "</think>")) != SIZE_MAX)
					at = hit + strlen("</think>");
				c = (span){ c.p + at, c.n - at };
				put_str(b, DS_ASSISTANT);
			}
			put_span(b, c);
			put_str(b, DS_EOS);
			break;
		case ROLE_TOOL:
			is_tool = true;
			if (output_first) {
				put_str(b, DS_TOOL("outputs" DS_SEP "begin"));
				output_first = false;
			} else {
				put_str(b, "\n");
			}
			put_str(b, DS_TOOL("output" DS_SEP "begin"));
			put_span(b, c);
			put_str(b, DS_TOOL("output" DS_SEP "end"));
			break;
		case ROLE_SYSTEM:
			break;
		}
	}
	if (is_tool)
		put_str(b, DS_TOOL("outputs" DS_SEP "end"));
	else if (cv->gen)
		put_str(b, DS_ASSISTANT "<think>\n");
	return 0;
}

static const char smol_think_text[] =
	"You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an "
	"assistant involves thoroughly exploring questions through a systematic thinking process "
	"before providing the final precise and accurate solutions. This requires engaging in a "
	"comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, "
	"backtracking, and iteration to develop well-considered thinking process. Please "
	"structure your response into two main sections: Thought and Solution using the "
	"specified format: <think> Thought section </think> Solution section. In the Thought "
	"section, detail your reasoning process in steps. Each step should include detailed "
	"considerations such as analysing questions, summarizing relevant findings, "
	"brainstorming new ideas, verifying the accuracy of the current steps, refining any "
	"errors, and revisiting previous steps. In the Solution section, based on various "
	"attempts, explorations, and reflections from the Thought section, systematically "
	"present the final solution that you deem correct. The Solution section should be "
	"logical, accurate, and concise and detail necessary steps needed to reach the "
	"conclusion.";

/* SmolLM3 (enable_thinking defaults to true): a system turn always comes
   first, a metadata block. A first system message decides the mode ("/no_think"
   anywhere wins over "/think", both over the kwarg) and becomes the custom
   instructions with every "/no_think" then every "/think" removed and
   trailing space stripped; if that leaves nothing, a default text per mode
   follows instead. The system message is not repeated; other system messages
   are dropped; tool messages are user turns. Assistant content loses leading
   "\n" only; in no-think mode assistant turns and the generation prompt get
   an empty "<think>\n\n</think>\n" block. */
static int render_smollm3(sbuf *b, const conv *cv)
{
	const msg *m = cv->m;
	bool think = !cv->no_think;
	sbuf custom = { 0 };
	span ci = { "", 0 };
	if (m[0].r == ROLE_SYSTEM) {
		span s = m[0].c;
		if (contains(s, "/no_think"))
			think = false;
		else if (contains(s, "/think"))
			think = true;
		sbuf once = { 0 };
		put_without(&once, s, "/no_think");
		put_without(&custom, (span){ once.p ? once.p : "", once.n }, "/think");
		if (once.failed)
			custom.failed = true;
		alloc_free(once.p);
		if (custom.failed) {
			alloc_free(custom.p);
			b->failed = true;
			return 0;
		}
		if (custom.p)
			ci = py_strip((span){ custom.p, custom.n }, false);
	}
	put_str(b, IM_START "system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: ");
	put_str(b, think ? "/think" : "/no_think");
	put_str(b, "\n\n## Custom Instructions\n\n");
	if (ci.n > 0)
		put_span(b, ci);
	else if (think)
		put_str(b, smol_think_text);
	else
		put_str(b, "You are a helpful AI assistant named SmolLM, trained by Hugging Face.");
	put_str(b, "\n\n" IM_END "\n");
	alloc_free(custom.p);

	const char *empty_think = think ? "" : "<think>\n\n</think>\n";
	for (size_t i = 0; i < cv->n; i++) {
		span c = m[i].c;
		switch (m[i].r) {
		case ROLE_USER:
		case ROLE_TOOL:
			put_str(b, IM_START "user\n");
			put_span(b, c);
			put_str(b, IM_END "\n");
			break;
		case ROLE_ASSISTANT:
			while (c.n > 0 && c.p[0] == '\n')
				c.p++, c.n--;
			put_str(b, IM_START "assistant\n");
			put_str(b, empty_think);
			put_span(b, c);
			put_str(b, IM_END "\n");
			break;
		case ROLE_SYSTEM:
			break;
		}
	}
	if (cv->gen) {
		put_str(b, IM_START "assistant\n");
		put_str(b, empty_think);
	}
	return 0;
}

/* ---- public API ------------------------------------------------------------ */

static const char *const family_names[CHAT_TMPL_COUNT] = {
	[CHAT_TMPL_CHATML] = "chatml",
	[CHAT_TMPL_QWEN2] = "qwen2",
	[CHAT_TMPL_QWEN25] = "qwen2.5",
	[CHAT_TMPL_LLAMA3] = "llama3",
	[CHAT_TMPL_LLAMA31] = "llama3.1",
	[CHAT_TMPL_LLAMA32] = "llama3.2",
	[CHAT_TMPL_MISTRAL_NEMO] = "mistral-nemo",
	[CHAT_TMPL_GEMMA] = "gemma",
	[CHAT_TMPL_PHI3] = "phi3",
	[CHAT_TMPL_DEEPSEEK_R1] = "deepseek-r1",
	[CHAT_TMPL_SMOLLM3] = "smollm3",
};

const char *chat_template_name(chat_tmpl_family f)
{
	return (unsigned)f < CHAT_TMPL_COUNT ? family_names[f] : "?";
}

/* Other spellings. llama.cpp's --chat-template names that mean one of our
   formats are chatml, llama3, gemma, phi3 (our names) and mistral-v3-tekken;
   SGLang's are chatml, llama-3-instruct and gemma-it. The rest are obvious
   variants. */
static const struct {
	const char *name;
	chat_tmpl_family f;
} aliases[] = {
	{ "llama-3", CHAT_TMPL_LLAMA3 },
	{ "llama-3-instruct", CHAT_TMPL_LLAMA3 },
	{ "llama-3.1", CHAT_TMPL_LLAMA31 },
	{ "llama3.3", CHAT_TMPL_LLAMA31 },
	{ "llama-3.3", CHAT_TMPL_LLAMA31 },
	{ "llama-3.2", CHAT_TMPL_LLAMA32 },
	{ "qwen2-instruct", CHAT_TMPL_QWEN2 },
	{ "qwen25", CHAT_TMPL_QWEN25 },
	{ "qwen-2.5", CHAT_TMPL_QWEN25 },
	{ "mistral", CHAT_TMPL_MISTRAL_NEMO },
	{ "mistral-v3-tekken", CHAT_TMPL_MISTRAL_NEMO },
	{ "gemma2", CHAT_TMPL_GEMMA },
	{ "gemma-2", CHAT_TMPL_GEMMA },
	{ "gemma-it", CHAT_TMPL_GEMMA },
	{ "phi-3", CHAT_TMPL_PHI3 },
	{ "phi3.5", CHAT_TMPL_PHI3 },
	{ "phi-3.5", CHAT_TMPL_PHI3 },
	{ "deepseek-r1-distill", CHAT_TMPL_DEEPSEEK_R1 },
};

int chat_template_from_name(const char *name, chat_tmpl_family *out)
{
	if (!name)
		return ERR_NOTFOUND;
	for (int f = 0; f < CHAT_TMPL_COUNT; f++) {
		if (strcasecmp(name, family_names[f]) == 0) {
			*out = (chat_tmpl_family)f;
			return 0;
		}
	}
	for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
		if (strcasecmp(name, aliases[i].name) == 0) {
			*out = aliases[i].f;
			return 0;
		}
	}
	return ERR_NOTFOUND;
}

/* Signatures, most specific first: SmolLM3 and DeepSeek R1 also contain
   ChatML or think markers, Qwen templates contain <|im_start|>. Each
   signature is text only that family's template has; where a related model's
   template has the same markers but renders differently (Gemma 3, Mistral v1
   with "[INST] ", Llama 3.0 vs 3.1 vs 3.2), the distinguishing text is part
   of the test. */
chat_tmpl_family chat_template_detect(const char *text, size_t len, bool *known)
{
	span t = { text ? text : "", text ? len : 0 };
	chat_tmpl_family f = CHAT_TMPL_CHATML;
	bool ok = true;
	if (contains(t, "<|im_start|>") && contains(t, "Reasoning Mode: ") &&
	    contains(t, "SmolLM"))
		f = CHAT_TMPL_SMOLLM3;
	else if (contains(t, DS_USER) && contains(t, DS_ASSISTANT) && contains(t, "</think>"))
		f = CHAT_TMPL_DEEPSEEK_R1;
	else if (contains(t, "<|im_start|>") &&
		 contains(t, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."))
		f = CHAT_TMPL_QWEN25;
	else if (contains(t, "<|im_start|>") && contains(t, "You are a helpful assistant<|im_end|>"))
		f = CHAT_TMPL_QWEN2;
	else if (contains(t, "<|start_header_id|>") && contains(t, "Cutting Knowledge Date"))
		f = contains(t, "strftime_now") ? CHAT_TMPL_LLAMA32 : CHAT_TMPL_LLAMA31;
	else if (contains(t, "<|start_header_id|>") && contains(t, "<|eot_id|>"))
		f = CHAT_TMPL_LLAMA3;
	else if (contains(t, "[INST]") && contains(t, "[/INST]") && !contains(t, "[INST] ") &&
		 !contains(t, " [/INST]") && !contains(t, "[SYSTEM_PROMPT]"))
		f = CHAT_TMPL_MISTRAL_NEMO;
	else if (contains(t, "<start_of_turn>") && contains(t, "System role not supported"))
		f = CHAT_TMPL_GEMMA;
	else if (contains(t, "<|user|>") && contains(t, "<|assistant|>") && contains(t, "<|end|>"))
		f = CHAT_TMPL_PHI3;
	else /* plain ChatML, not Phi-4's <|im_sep|>, Qwen3's <think> or tool use */
		ok = contains(t, "<|im_start|>") && contains(t, "<|im_end|>") &&
		     !contains(t, "<|im_sep|>") && !contains(t, "<think>") && !contains(t, "tool");
	if (known)
		*known = ok;
	return f;
}

static int classify(const chat_msg *msgs, size_t n, msg *m, char *err)
{
	for (size_t i = 0; i < n; i++) {
		if (!msgs[i].role || !msgs[i].content)
			return err_set(err, ERR_INVAL, "message %zu: %s is missing", i,
				       msgs[i].role ? "content" : "role");
		int r = -1;
		for (int k = 0; k < 4; k++)
			if (strcmp(msgs[i].role, role_names[k]) == 0)
				r = k;
		if (r < 0)
			return err_set(err, ERR_INVAL,
				       "message %zu: unknown role \"%.40s\" (expected system, user, "
				       "assistant or tool)",
				       i, msgs[i].role);
		m[i].r = (role)r;
		m[i].c = (span){ msgs[i].content, strlen(msgs[i].content) };
	}
	return 0;
}

int chat_template_render(chat_tmpl_family f, const chat_msg *msgs, size_t n,
			 const chat_render_opts *o, char **out, size_t *len, char err[ERR_LEN])
{
	static const chat_render_opts defaults;
	sbuf b = { 0 };
	msg *m = NULL;
	conv cv;
	int rc;
	*out = NULL;
	*len = 0;
	if (!o)
		o = &defaults;
	if ((unsigned)f >= CHAT_TMPL_COUNT)
		return err_set(err, ERR_INVAL, "chat template family %d out of range", (int)f);
	if (n == 0 || !msgs)
		return err_set(err, ERR_INVAL, "messages: the conversation is empty");
	m = alloc_array(n, sizeof *m);
	if (!m) {
		rc = err_set(err, ERR_NOMEM, "chat template: out of memory for %zu messages", n);
		goto fail;
	}
	rc = classify(msgs, n, m, err);
	if (rc)
		goto fail;
	cv = (conv){
		.m = m, .n = n, .gen = o->add_generation_prompt,
		.bos = o->bos_token ? o->bos_token : "",
		.eos = o->eos_token ? o->eos_token : "",
		.date = o->date_string, .no_think = o->disable_thinking,
	};
	switch (f) {
	case CHAT_TMPL_CHATML: rc = render_chatml(&b, &cv, NULL); break;
	case CHAT_TMPL_QWEN2: rc = render_chatml(&b, &cv, "You are a helpful assistant"); break;
	case CHAT_TMPL_QWEN25: rc = render_qwen25(&b, &cv); break;
	case CHAT_TMPL_LLAMA3: rc = render_llama3(&b, &cv); break;
	case CHAT_TMPL_LLAMA31: rc = render_llama31(&b, &cv, false); break;
	case CHAT_TMPL_LLAMA32: rc = render_llama31(&b, &cv, true); break;
	case CHAT_TMPL_MISTRAL_NEMO: rc = render_mistral_nemo(&b, &cv, err); break;
	case CHAT_TMPL_GEMMA: rc = render_gemma(&b, &cv, err); break;
	case CHAT_TMPL_PHI3: rc = render_phi3(&b, &cv); break;
	case CHAT_TMPL_DEEPSEEK_R1: rc = render_deepseek_r1(&b, &cv); break;
	case CHAT_TMPL_SMOLLM3: rc = render_smollm3(&b, &cv); break;
	case CHAT_TMPL_COUNT: break;
	}
	if (rc)
		goto fail;
	if (!b.failed && !b.p)
		b.p = alloc_strdup(""); /* e.g. Mistral Nemo, a lone system message, no bos */
	if (b.failed || !b.p) {
		rc = err_set(err, ERR_NOMEM, "chat template %s: out of memory for the prompt",
			     family_names[f]);
		goto fail;
	}
	alloc_free(m);
	*out = b.p;
	*len = b.n;
	return 0;
fail:
	alloc_free(b.p);
	alloc_free(m);
	return rc;
}

size_t chat_template_strip_bos_eos(char *prompt, size_t len, const char *bos, const char *eos)
{
	size_t k = bos ? strlen(bos) : 0;
	bool cut = false;
	if (k > 0 && len >= k && memcmp(prompt, bos, k) == 0) {
		memmove(prompt, prompt + k, len - k);
		len -= k;
		cut = true;
	}
	k = eos ? strlen(eos) : 0;
	if (k > 0 && len >= k && memcmp(prompt + len - k, eos, k) == 0) {
		len -= k;
		cut = true;
	}
	if (cut)
		prompt[len] = '\0';
	return len;
}
