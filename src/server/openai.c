/* openai.c - request parsing and response rendering for the OpenAI-compatible
 * and SGLang-native generation APIs.
 *
 * Design. Parsing is one pass over the json-c tree with typed getters that
 * name the field on failure (JSON null counts as absent, as OpenAI clients
 * send it). The tree stays alive inside the request so strings are borrowed,
 * not copied. Checks that need the model (vocabulary, context, template)
 * come later, in openai_check / openai_prompt_ids / openai_max_new_tokens, so
 * that malformed bodies are refused before touching the tokenizer.
 *
 * Output. A choice turns engine events into text:
 *
 *   token -> detok (whole UTF-8 chars, U+FFFD for invalid) -> text[len]
 *   text[0 .. safe)    final: no stop string can start here (streamable)
 *   text[safe .. len)  held back: a prefix of some stop string
 *   text[0 .. sent)    already streamed (sent <= safe)
 *
 * stop_scan() looks for a whole stop string starting at or after `safe`
 * (earlier starts were ruled out when safe moved past them), cuts the text
 * there and finishes the choice; otherwise it moves `safe` to the first
 * position whose tail could still grow into a stop string. At the end the
 * detokenizer is flushed and everything left becomes final. Because the
 * stream only ever sends text[sent .. safe), the concatenated deltas equal
 * the final text.
 *
 * Rendering builds json-c trees and prints them plain (no slash escaping).
 * Floats go out with %.9g (round-trips a float) via json_object_new_double_s;
 * -inf logprobs become -9999.0 as in vLLM, since JSON has no infinities.
 *
 * Left out: prompt logprobs (the engine does not compute them; echo with
 * logprobs returns the generated tokens' only), tools / tool calls,
 * response_format other than text, best_of != n, suffix, batch /generate.
 * These are refused with a 400 naming the field, never silently ignored.
 */
#include "server/openai.h"

#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

/* ---------------------------------------------------------------- errors */

int openai_error_set(openai_error *e, int status, const char *param, const char *fmt, ...)
{
	e->status = status;
	switch (status) {
	case 400:
	case 413:
	case 431: e->type = "invalid_request_error"; break;
	case 401: e->type = "authentication_error"; break;
	case 404: e->type = "not_found_error"; break;
	case 405: e->type = "method_not_allowed"; break;
	case 503: e->type = "service_unavailable_error"; break;
	default: e->type = "server_error"; break;
	}
	e->code = NULL;
	e->limit = NULL;
	snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
	return ERR_INVAL;
}

static char *dump(json_object *o, size_t *len)
{
	size_t n = 0;
	const char *s = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
							  &n);
	char *out = s ? alloc_strndup(s, n) : NULL;
	if (len)
		*len = out ? n : 0;
	return out;
}

/* "data: " + JSON + "\n\n" appended to *buf (NULL: a new one). */
static char *sse_append(char *buf, size_t *blen, json_object *o)
{
	size_t n = 0;
	const char *s = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
							  &n);
	if (!s)
		return buf;
	char *grown = alloc_resize(buf, *blen + n + 9);
	if (!grown)
		return buf;
	memcpy(grown + *blen, "data: ", 6);
	memcpy(grown + *blen + 6, s, n);
	memcpy(grown + *blen + 6 + n, "\n\n", 3);
	*blen += n + 8;
	return grown;
}

static json_object *jstr_len(const char *s, size_t n)
{
	return json_object_new_string_len(s ? s : "", (int)n);
}

static json_object *jstr(const char *s)
{
	return json_object_new_string(s ? s : "");
}

/* A float as JSON: %.9g, with -inf as -9999.0 and NaN as null. */
static json_object *jfloat(float f)
{
	if (isnan(f))
		return NULL;
	if (!isfinite(f))
		f = f < 0 ? -9999.0f : 9999.0f;
	char buf[32];
	snprintf(buf, sizeof(buf), "%.9g", (double)f);
	return json_object_new_double_s((double)f, buf);
}

static json_object *jdouble(double d)
{
	if (!isfinite(d))
		d = 0;
	char buf[32];
	snprintf(buf, sizeof(buf), "%.6f", d);
	return json_object_new_double_s(d, buf);
}

char *openai_error_json(const openai_error *e, size_t *len)
{
	json_object *root = json_object_new_object(), *err = json_object_new_object();
	json_object_object_add(err, "message", jstr(e->message));
	json_object_object_add(err, "type", jstr(e->type ? e->type : "server_error"));
	json_object_object_add(err, "param", e->param[0] ? jstr(e->param) : NULL);
	json_object_object_add(err, "code", e->code ? jstr(e->code) : json_object_new_int(e->status));
	json_object_object_add(root, "error", err);
	char *out = dump(root, len);
	json_object_put(root);
	return out;
}

char *openai_render_error_chunk(const openai_error *e, size_t *len)
{
	size_t n;
	char *body = openai_error_json(e, &n);
	if (!body) {
		*len = 0;
		return NULL;
	}
	char *out = alloc_bytes(n + 9);
	if (out) {
		memcpy(out, "data: ", 6);
		memcpy(out + 6, body, n);
		memcpy(out + 6 + n, "\n\n", 3);
		*len = n + 8;
	} else {
		*len = 0;
	}
	alloc_free(body);
	return out;
}

/* ---------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 character at s[0..n), or 0 when invalid; *bad
   gets the length of the maximal invalid subpart (>= 1) then. */
static size_t utf8_char(const unsigned char *s, size_t n, size_t *bad)
{
	unsigned c = s[0];
	size_t need;
	unsigned lo = 0x80, hi = 0xBF;
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		need = 2;
	} else if (c >= 0xE0 && c <= 0xEF) {
		need = 3;
		if (c == 0xE0)
			lo = 0xA0;
		if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 4;
		if (c == 0xF0)
			lo = 0x90;
		if (c == 0xF4)
			hi = 0x8F;
	} else {
		*bad = 1;
		return 0;
	}
	size_t i = 1;
	for (; i < need && i < n; i++) {
		unsigned b = s[i];
		if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF))
			break;
	}
	if (i == need)
		return need;
	*bad = i;
	return 0;
}

size_t openai_utf8_sanitize(const char *s, size_t n, char *out)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		size_t bad = 0, k = utf8_char(u + i, n - i, &bad);
		if (k) {
			memcpy(out + o, s + i, k);
			o += k;
			i += k;
		} else {
			memcpy(out + o, "\xEF\xBF\xBD", 3);
			o += 3;
			i += bad;
		}
	}
	return o;
}

static bool utf8_valid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		size_t bad = 0, k = utf8_char(u + i, n - i, &bad);
		if (!k)
			return false;
		i += k;
	}
	return true;
}

size_t openai_token_text(const tokenizer *tok, int32_t id, char *out, size_t cap)
{
	size_t n = 0;
	const char *p = tokenizer_piece(tok, id, true, &n);
	char tmp[3 * 256];
	if (n > 256)
		n = 256; /* token texts are short; a pathological one is cut */
	size_t k = openai_utf8_sanitize(p, n, tmp);
	if (cap == 0)
		return 0;
	if (k > cap - 1) {
		k = cap - 1;
		while (k > 0 && ((unsigned char)tmp[k] & 0xC0) == 0x80)
			k--;
	}
	memcpy(out, tmp, k);
	out[k] = '\0';
	return k;
}

/* ---------------------------------------------------------------- field getters */

/* JSON null and absent are the same: NULL. */
static json_object *field(json_object *o, const char *k)
{
	json_object *v = NULL;
	if (!o || !json_object_object_get_ex(o, k, &v))
		return NULL;
	return v;
}

static const char *tname(json_object *v)
{
	switch (json_object_get_type(v)) {
	case json_type_null: return "null";
	case json_type_boolean: return "a boolean";
	case json_type_double:
	case json_type_int: return "a number";
	case json_type_object: return "an object";
	case json_type_array: return "an array";
	case json_type_string: return "a string";
	}
	return "?";
}

/* Whole number (int, or a double with no fraction) in [lo, hi]. */
static int as_int64(json_object *v, const char *name, int64_t lo, int64_t hi, int64_t *out, openai_error *e)
{
	int64_t x;
	if (json_object_is_type(v, json_type_int)) {
		x = json_object_get_int64(v);
		if (x == INT64_MAX && json_object_get_uint64(v) > (uint64_t)INT64_MAX)
			return openai_error_set(e, 400, name, "%s: %llu is out of range", name,
						(unsigned long long)json_object_get_uint64(v));
	} else if (json_object_is_type(v, json_type_double)) {
		double d = json_object_get_double(v);
		if (!isfinite(d) || d != floor(d) || d < -9.2e18 || d > 9.2e18)
			return openai_error_set(e, 400, name, "%s: expected an integer, got %g", name, d);
		x = (int64_t)d;
	} else {
		return openai_error_set(e, 400, name, "%s: expected an integer, got %s", name, tname(v));
	}
	if (x < lo || x > hi)
		return openai_error_set(e, 400, name, "%s: %lld is outside [%lld, %lld]", name, (long long)x,
					(long long)lo, (long long)hi);
	*out = x;
	return 0;
}

static int get_int(json_object *o, const char *key, const char *name, int lo, int hi, int *out, openai_error *e)
{
	json_object *v = field(o, key);
	if (!v)
		return 0;
	int64_t x;
	if (as_int64(v, name, lo, hi, &x, e))
		return ERR_INVAL;
	*out = (int)x;
	return 0;
}

static int get_float(json_object *o, const char *key, const char *name, float *out, openai_error *e)
{
	json_object *v = field(o, key);
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
		return openai_error_set(e, 400, name, "%s: expected a number, got %s", name, tname(v));
	double d = json_object_get_double(v);
	if (!isfinite(d) || fabs(d) > 3.4e38)
		return openai_error_set(e, 400, name, "%s: %g is not a finite number", name, d);
	*out = (float)d;
	return 0;
}

static int get_bool(json_object *o, const char *key, const char *name, bool *out, openai_error *e)
{
	json_object *v = field(o, key);
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return openai_error_set(e, 400, name, "%s: expected a boolean, got %s", name, tname(v));
	*out = json_object_get_boolean(v);
	return 0;
}

static int get_string(json_object *o, const char *key, const char *name, const char **out, openai_error *e)
{
	json_object *v = field(o, key);
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_string))
		return openai_error_set(e, 400, name, "%s: expected a string, got %s", name, tname(v));
	*out = json_object_get_string(v);
	return 0;
}

/* An array of token ids: each a whole number in [0, INT32_MAX] (the vocab
   check comes later). *ids owned. */
static int id_array(json_object *v, const char *name, int max, int32_t **ids, int *n, openai_error *e)
{
	size_t len = json_object_array_length(v);
	if ((long)len > max)
		return openai_error_set(e, 400, name, "%s: %zu ids is more than %d", name, len, max);
	*ids = NULL;
	*n = 0;
	if (len == 0)
		return 0;
	int32_t *a = alloc_array(len, sizeof(int32_t));
	if (!a)
		return openai_error_set(e, 500, name, "out of memory");
	for (size_t i = 0; i < len; i++) {
		int64_t x;
		char nm[80];
		snprintf(nm, sizeof(nm), "%s[%zu]", name, i);
		if (as_int64(json_object_array_get_idx(v, i), nm, 0, INT32_MAX, &x, e)) {
			alloc_free(a);
			snprintf(e->param, sizeof(e->param), "%s", name);
			return ERR_INVAL;
		}
		a[i] = (int32_t)x;
	}
	*ids = a;
	*n = (int)len;
	return 0;
}

static bool all_type(json_object *arr, json_type t)
{
	size_t n = json_object_array_length(arr);
	for (size_t i = 0; i < n; i++)
		if (!json_object_is_type(json_object_array_get_idx(arr, i), t))
			return false;
	return true;
}

/* ---------------------------------------------------------------- parse */

static int parse_stop(json_object *o, const char *name, openai_request *r, openai_error *e)
{
	json_object *v = field(o, "stop");
	if (!v)
		return 0;
	json_object *one[1] = { v };
	size_t n = 1;
	bool arr = json_object_is_type(v, json_type_array);
	if (arr)
		n = json_object_array_length(v);
	else if (!json_object_is_type(v, json_type_string))
		return openai_error_set(e, 400, name, "%s: expected a string or a list of strings, got %s", name,
					tname(v));
	if (n > OPENAI_MAX_STOP) {
		openai_error_set(e, 400, name, "%s: %zu stop strings is more than %d", name, n, OPENAI_MAX_STOP);
		e->limit = "stop";
		return ERR_INVAL;
	}
	if (n == 0)
		return 0;
	r->stop = alloc_zeroed(n, sizeof(*r->stop));
	r->stop_len = alloc_zeroed(n, sizeof(*r->stop_len));
	if (!r->stop || !r->stop_len)
		return openai_error_set(e, 500, name, "out of memory");
	for (size_t i = 0; i < n; i++) {
		json_object *s = arr ? json_object_array_get_idx(v, i) : one[0];
		if (!json_object_is_type(s, json_type_string))
			return openai_error_set(e, 400, name, "%s[%zu]: expected a string, got %s", name, i, tname(s));
		size_t len = (size_t)json_object_get_string_len(s);
		const char *str = json_object_get_string(s);
		if (len > OPENAI_MAX_STOP_LEN)
			return openai_error_set(e, 400, name, "%s[%zu]: longer than %d bytes", name, i,
						OPENAI_MAX_STOP_LEN);
		if (!utf8_valid(str, len))
			return openai_error_set(e, 400, name, "%s[%zu]: not valid UTF-8", name, i);
		if (len == 0)
			continue; /* an empty stop string would stop everything at once; OpenAI ignores it */
		r->stop[r->n_stop] = str;
		r->stop_len[r->n_stop++] = len;
	}
	return 0;
}

static int parse_bias(json_object *o, const char *name, openai_request *r, openai_error *e)
{
	json_object *v = field(o, "logit_bias");
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_object))
		return openai_error_set(e, 400, name, "%s: expected an object of token id -> bias, got %s", name,
					tname(v));
	int n = json_object_object_length(v);
	if (n > OPENAI_MAX_BIAS)
		return openai_error_set(e, 400, name, "%s: %d entries is more than %d", name, n, OPENAI_MAX_BIAS);
	if (n == 0)
		return 0;
	if (!(r->bias = alloc_array((size_t)n, sizeof(*r->bias))))
		return openai_error_set(e, 500, name, "out of memory");
	int k = 0;
	json_object_object_foreach(v, key, val)
	{
		char *end;
		long id = strtol(key, &end, 10);
		if (!*key || *end || id < 0 || id > INT32_MAX)
			return openai_error_set(e, 400, name, "%s: key \"%.40s\" is not a token id", name, key);
		if (!json_object_is_type(val, json_type_int) && !json_object_is_type(val, json_type_double))
			return openai_error_set(e, 400, name, "%s[\"%s\"]: expected a number, got %s", name, key,
						tname(val));
		double b = json_object_get_double(val);
		if (!(b >= -100 && b <= 100))
			return openai_error_set(e, 400, name, "%s[\"%s\"]: %g is outside [-100, 100]", name, key, b);
		r->bias[k].id = (int32_t)id;
		r->bias[k++].bias = (float)b;
	}
	r->sampling.logit_bias = r->bias;
	r->sampling.n_logit_bias = k;
	return 0;
}

/* Fields every API shares, read from `o` (the body, or /generate's
   sampling_params); names prefixed for the error's param. */
static int parse_sampling(json_object *o, const char *pfx, openai_request *r, openai_error *e)
{
	char nm[64];
#define NM(k) (snprintf(nm, sizeof(nm), "%s%s", pfx, k), nm)
	sampler_params *s = &r->sampling;
	if (get_float(o, "temperature", NM("temperature"), &s->temperature, e) ||
	    get_float(o, "top_p", NM("top_p"), &s->top_p, e) ||
	    get_int(o, "top_k", NM("top_k"), -1, INT32_MAX, &s->top_k, e) ||
	    get_float(o, "min_p", NM("min_p"), &s->min_p, e) ||
	    get_float(o, "frequency_penalty", NM("frequency_penalty"), &s->frequency_penalty, e) ||
	    get_float(o, "presence_penalty", NM("presence_penalty"), &s->presence_penalty, e) ||
	    get_float(o, "repetition_penalty", NM("repetition_penalty"), &s->repetition_penalty, e) ||
	    get_bool(o, "ignore_eos", NM("ignore_eos"), &r->ignore_eos, e) ||
	    get_bool(o, "skip_special_tokens", NM("skip_special_tokens"), &r->skip_special_tokens, e) ||
	    parse_stop(o, NM("stop"), r, e) || parse_bias(o, NM("logit_bias"), r, e))
		return ERR_INVAL;
	json_object *v = field(o, "stop_token_ids");
	if (v) {
		if (!json_object_is_type(v, json_type_array))
			return openai_error_set(e, 400, NM("stop_token_ids"), "%s: expected a list of token ids, got %s",
						nm, tname(v));
		if (id_array(v, NM("stop_token_ids"), OPENAI_MAX_STOP_IDS, &r->stop_ids, &r->n_stop_ids, e))
			return ERR_INVAL;
	}
	const char *seed_key = field(o, "seed") ? "seed" : "sampling_seed";
	if ((v = field(o, seed_key))) {
		int64_t x;
		if (as_int64(v, NM(seed_key), INT64_MIN, INT64_MAX, &x, e))
			return ERR_INVAL;
		s->has_seed = true;
		s->seed = (uint64_t)x;
	}
#undef NM
	return 0;
}

static int parse_prompt(json_object *root, openai_request *r, openai_error *e)
{
	json_object *v = field(root, "prompt");
	if (!v)
		return openai_error_set(e, 400, "prompt", "prompt: required");
	if (json_object_is_type(v, json_type_string)) {
		if (!(r->prompts = alloc_zeroed(1, sizeof(*r->prompts))))
			return openai_error_set(e, 500, NULL, "out of memory");
		r->prompts[0].text = json_object_get_string(v);
		r->prompts[0].len = (size_t)json_object_get_string_len(v);
		r->n_prompts = 1;
		return 0;
	}
	if (!json_object_is_type(v, json_type_array))
		return openai_error_set(e, 400, "prompt", "prompt: expected a string, a list of token ids, or a list of "
					"either, got %s", tname(v));
	size_t n = json_object_array_length(v);
	if (n == 0)
		return openai_error_set(e, 400, "prompt", "prompt: the list is empty");
	if (all_type(v, json_type_int)) { /* one prompt of ids */
		if (!(r->prompts = alloc_zeroed(1, sizeof(*r->prompts))))
			return openai_error_set(e, 500, NULL, "out of memory");
		r->n_prompts = 1;
		return id_array(v, "prompt", 1 << 24, &r->prompts[0].ids, &r->prompts[0].n_ids, e);
	}
	bool strs = all_type(v, json_type_string), lists = all_type(v, json_type_array);
	if (!strs && !lists)
		return openai_error_set(e, 400, "prompt", "prompt: a list must hold only token ids, only strings, or "
					"only lists of token ids");
	if (n > OPENAI_MAX_PROMPTS)
		return openai_error_set(e, 400, "prompt", "prompt: %zu prompts is more than %d", n, OPENAI_MAX_PROMPTS);
	if (!(r->prompts = alloc_zeroed(n, sizeof(*r->prompts))))
		return openai_error_set(e, 500, NULL, "out of memory");
	r->n_prompts = (int)n;
	for (size_t i = 0; i < n; i++) {
		json_object *p = json_object_array_get_idx(v, i);
		if (strs) {
			r->prompts[i].text = json_object_get_string(p);
			r->prompts[i].len = (size_t)json_object_get_string_len(p);
		} else if (id_array(p, "prompt", 1 << 24, &r->prompts[i].ids, &r->prompts[i].n_ids, e)) {
			return ERR_INVAL;
		} else if (r->prompts[i].n_ids == 0) {
			return openai_error_set(e, 400, "prompt", "prompt[%zu]: the list is empty", i);
		}
	}
	return 0;
}

/* OpenAI content: a string, or a list of {"type":"text","text":...} parts. */
static int message_content(json_object *c, int i, const char *role, openai_request *r, openai_error *e)
{
	if (!c) {
		if (!strcmp(role, "assistant")) { /* tool-call turns carry null content */
			r->messages[i].content = "";
			return 0;
		}
		return openai_error_set(e, 400, "messages", "messages[%d].content: required", i);
	}
	if (json_object_is_type(c, json_type_string)) {
		r->messages[i].content = json_object_get_string(c);
		return 0;
	}
	if (!json_object_is_type(c, json_type_array))
		return openai_error_set(e, 400, "messages", "messages[%d].content: expected a string or a list of "
					"parts, got %s", i, tname(c));
	size_t n = json_object_array_length(c), total = 1;
	for (size_t k = 0; k < n; k++) {
		json_object *part = json_object_array_get_idx(c, k), *type = field(part, "type"),
			    *text = field(part, "text");
		if (!json_object_is_type(part, json_type_object) || !type ||
		    !json_object_is_type(type, json_type_string) || strcmp(json_object_get_string(type), "text"))
			return openai_error_set(e, 400, "messages", "messages[%d].content[%zu]: only {\"type\": \"text\"} "
						"parts are supported", i, k);
		if (!text || !json_object_is_type(text, json_type_string))
			return openai_error_set(e, 400, "messages", "messages[%d].content[%zu].text: expected a string", i,
						k);
		total += (size_t)json_object_get_string_len(text) + 1;
	}
	char *s = alloc_bytes(total);
	if (!s)
		return openai_error_set(e, 500, NULL, "out of memory");
	size_t o = 0;
	for (size_t k = 0; k < n; k++) {
		json_object *text = field(json_object_array_get_idx(c, k), "text");
		if (k)
			s[o++] = '\n';
		size_t len = (size_t)json_object_get_string_len(text);
		memcpy(s + o, json_object_get_string(text), len);
		o += len;
	}
	s[o] = '\0';
	r->msg_store[i] = s;
	r->messages[i].content = s;
	return 0;
}

static int parse_messages(json_object *root, openai_request *r, openai_error *e)
{
	json_object *v = field(root, "messages");
	if (!v)
		return openai_error_set(e, 400, "messages", "messages: required");
	if (!json_object_is_type(v, json_type_array))
		return openai_error_set(e, 400, "messages", "messages: expected a list, got %s", tname(v));
	size_t n = json_object_array_length(v);
	if (n == 0)
		return openai_error_set(e, 400, "messages", "messages: the list is empty");
	if (n > 100000)
		return openai_error_set(e, 400, "messages", "messages: too many (%zu)", n);
	r->messages = alloc_zeroed(n, sizeof(*r->messages));
	r->msg_store = alloc_zeroed(n, sizeof(*r->msg_store));
	if (!r->messages || !r->msg_store)
		return openai_error_set(e, 500, NULL, "out of memory");
	r->n_messages = (int)n;
	for (size_t i = 0; i < n; i++) {
		json_object *m = json_object_array_get_idx(v, i), *role;
		if (!json_object_is_type(m, json_type_object))
			return openai_error_set(e, 400, "messages", "messages[%zu]: expected an object, got %s", i,
						tname(m));
		if (!(role = field(m, "role")) || !json_object_is_type(role, json_type_string))
			return openai_error_set(e, 400, "messages", "messages[%zu].role: expected a string", i);
		const char *rs = json_object_get_string(role);
		if (!strcmp(rs, "developer")) /* OpenAI's newer name for system */
			rs = "system";
		if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") && strcmp(rs, "tool"))
			return openai_error_set(e, 400, "messages", "messages[%zu].role: \"%.40s\" is not one of system, "
						"user, assistant, tool", i, rs);
		r->messages[i].role = rs;
		if (message_content(field(m, "content"), (int)i, rs, r, e))
			return ERR_INVAL;
	}
	return 0;
}

static int parse_generate(json_object *root, openai_request *r, openai_error *e)
{
	json_object *text = field(root, "text"), *ids = field(root, "input_ids");
	if (!!text == !!ids)
		return openai_error_set(e, 400, text ? "input_ids" : "text", "give exactly one of text and input_ids");
	if (!(r->prompts = alloc_zeroed(1, sizeof(*r->prompts))))
		return openai_error_set(e, 500, NULL, "out of memory");
	r->n_prompts = 1;
	if (text) {
		if (json_object_is_type(text, json_type_array))
			return openai_error_set(e, 400, "text", "text: batches are not supported; send one request per "
						"prompt");
		if (!json_object_is_type(text, json_type_string))
			return openai_error_set(e, 400, "text", "text: expected a string, got %s", tname(text));
		r->prompts[0].text = json_object_get_string(text);
		r->prompts[0].len = (size_t)json_object_get_string_len(text);
	} else {
		if (!json_object_is_type(ids, json_type_array))
			return openai_error_set(e, 400, "input_ids", "input_ids: expected a list of token ids, got %s",
						tname(ids));
		if (json_object_array_length(ids) && !all_type(ids, json_type_int) &&
		    all_type(ids, json_type_array))
			return openai_error_set(e, 400, "input_ids", "input_ids: batches are not supported; send one "
						"request per prompt");
		if (id_array(ids, "input_ids", 1 << 24, &r->prompts[0].ids, &r->prompts[0].n_ids, e))
			return ERR_INVAL;
	}
	json_object *sp = field(root, "sampling_params");
	if (sp && !json_object_is_type(sp, json_type_object))
		return openai_error_set(e, 400, "sampling_params", "sampling_params: expected an object, got %s",
					tname(sp));
	if (sp) {
		if (parse_sampling(sp, "sampling_params.", r, e) ||
		    get_int(sp, "max_new_tokens", "sampling_params.max_new_tokens", 0, INT32_MAX, &r->max_tokens, e) ||
		    get_int(sp, "min_new_tokens", "sampling_params.min_new_tokens", 0, INT32_MAX, &r->min_tokens, e) ||
		    get_int(sp, "n", "sampling_params.n", 1, 1, &r->n, e))
			return ERR_INVAL;
	}
	if (get_bool(root, "stream", "stream", &r->stream, e) ||
	    get_bool(root, "return_logprob", "return_logprob", &r->logprobs, e) ||
	    get_int(root, "top_logprobs_num", "top_logprobs_num", 0, SAMPLER_MAX_TOP_LOGPROBS, &r->top_logprobs, e) ||
	    get_bool(root, "return_text_in_logprobs", "return_text_in_logprobs", &r->return_text_in_logprobs, e) ||
	    get_string(root, "rid", "rid", &r->rid, e))
		return ERR_INVAL;
	if (r->rid && (!*r->rid || strlen(r->rid) > 128))
		return openai_error_set(e, 400, "rid", "rid: must be 1 to 128 bytes");
	if (!r->logprobs)
		r->top_logprobs = 0;
	return 0;
}

static int parse_openai(json_object *root, openai_request *r, openai_error *e)
{
	bool chat = r->api == OPENAI_API_CHAT;
	if (chat ? parse_messages(root, r, e) : parse_prompt(root, r, e))
		return ERR_INVAL;
	if (get_string(root, "model", "model", &r->model, e) || parse_sampling(root, "", r, e) ||
	    get_int(root, "n", "n", 1, INT32_MAX, &r->n, e) || get_bool(root, "stream", "stream", &r->stream, e) ||
	    get_int(root, "min_tokens", "min_tokens", 0, INT32_MAX, &r->min_tokens, e))
		return ERR_INVAL;
	json_object *v;
	if (r->n > OPENAI_MAX_N) {
		openai_error_set(e, 400, "n", "n: at most %d", OPENAI_MAX_N);
		e->limit = "n";
		return ERR_INVAL;
	}
	if (chat && field(root, "max_completion_tokens")) {
		if (get_int(root, "max_completion_tokens", "max_completion_tokens", 0, INT32_MAX, &r->max_tokens, e))
			return ERR_INVAL;
	} else if (get_int(root, "max_tokens", "max_tokens", 0, INT32_MAX, &r->max_tokens, e)) {
		return ERR_INVAL;
	}
	json_object *so = field(root, "stream_options");
	if (so) {
		if (!json_object_is_type(so, json_type_object))
			return openai_error_set(e, 400, "stream_options", "stream_options: expected an object, got %s",
						tname(so));
		if (get_bool(so, "include_usage", "stream_options.include_usage", &r->include_usage, e))
			return ERR_INVAL;
	}
	int best_of = r->n;
	if (get_int(root, "best_of", "best_of", 1, OPENAI_MAX_N, &best_of, e))
		return ERR_INVAL;
	if (best_of != r->n)
		return openai_error_set(e, 400, "best_of", "best_of: only best_of == n is supported");
	if (field(root, "suffix"))
		return openai_error_set(e, 400, "suffix", "suffix: not supported");
	if ((v = field(root, "tools")) &&
	    (!json_object_is_type(v, json_type_array) || json_object_array_length(v) > 0))
		return openai_error_set(e, 400, "tools", "tools: tool calling is not supported");
	if ((v = field(root, "response_format"))) {
		json_object *t = field(v, "type");
		if (!t || !json_object_is_type(t, json_type_string) || strcmp(json_object_get_string(t), "text"))
			return openai_error_set(e, 400, "response_format", "response_format: only {\"type\": \"text\"} is "
						"supported");
	}
	if (chat) {
		if (get_bool(root, "logprobs", "logprobs", &r->logprobs, e) ||
		    get_int(root, "top_logprobs", "top_logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, &r->top_logprobs, e) ||
		    get_bool(root, "add_generation_prompt", "add_generation_prompt", &r->add_generation_prompt, e))
			return ERR_INVAL;
		if (r->top_logprobs > 0 && !r->logprobs)
			return openai_error_set(e, 400, "top_logprobs", "top_logprobs: needs logprobs set to true");
		json_object *kw = field(root, "chat_template_kwargs");
		if (kw) {
			bool think = true;
			if (!json_object_is_type(kw, json_type_object))
				return openai_error_set(e, 400, "chat_template_kwargs", "chat_template_kwargs: expected an "
							"object, got %s", tname(kw));
			if (get_bool(kw, "enable_thinking", "chat_template_kwargs.enable_thinking", &think, e))
				return ERR_INVAL;
			r->disable_thinking = !think;
		}
	} else {
		int lp = -1;
		if (get_int(root, "logprobs", "logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, &lp, e) ||
		    get_bool(root, "echo", "echo", &r->echo, e))
			return ERR_INVAL;
		if (lp >= 0) {
			r->logprobs = true;
			r->top_logprobs = lp;
		}
	}
	return 0;
}

/* bootstrap_host / bootstrap_port / bootstrap_room (SGLang's PD fields). */
static int parse_bootstrap(json_object *root, openai_request *r, openai_error *e)
{
	json_object *v;
	int64_t x;
	if (get_string(root, "bootstrap_host", "bootstrap_host", &r->bootstrap_host, e))
		return ERR_INVAL;
	if ((v = field(root, "bootstrap_port"))) {
		if (as_int64(v, "bootstrap_port", 1, 65535, &x, e))
			return ERR_INVAL;
		r->bootstrap_port = (int)x;
	}
	if ((v = field(root, "bootstrap_room"))) {
		if (as_int64(v, "bootstrap_room", 0, INT64_MAX, &x, e))
			return ERR_INVAL;
		r->bootstrap_room = (uint64_t)x;
		r->has_bootstrap = true;
	}
	return 0;
}

int openai_parse(openai_api api, const char *body, size_t len, openai_request *r, openai_error *e)
{
	memset(r, 0, sizeof(*r));
	r->api = api;
	r->n = 1;
	r->max_tokens = -1;
	r->skip_special_tokens = true;
	r->add_generation_prompt = true;
	r->model = "";
	r->sampling = sampler_params_default();
	r->sampling.temperature = 1.0f;

	if (len > (size_t)INT32_MAX)
		return openai_error_set(e, 413, NULL, "request body too large");
	json_tokener *tk = json_tokener_new();
	if (!tk)
		return openai_error_set(e, 500, NULL, "out of memory");
	json_tokener_set_flags(tk, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	json_object *root = json_tokener_parse_ex(tk, body ? body : "", (int)len);
	enum json_tokener_error je = json_tokener_get_error(tk);
	size_t end = json_tokener_get_parse_end(tk);
	json_tokener_free(tk);
	if (je != json_tokener_success || (!root && len == 0)) {
		json_object_put(root);
		if (je == json_tokener_continue || len == 0)
			return openai_error_set(e, 400, NULL, "malformed JSON: the body ends early");
		return openai_error_set(e, 400, NULL, "malformed JSON at byte %zu: %s", end, json_tokener_error_desc(je));
	}
	for (size_t i = end; i < len; i++)
		if (!strchr(" \t\r\n", body[i])) {
			json_object_put(root);
			return openai_error_set(e, 400, NULL, "malformed JSON: unexpected data after the object at byte %zu",
						i);
		}
	if (!json_object_is_type(root, json_type_object)) {
		openai_error_set(e, 400, NULL, "the body must be a JSON object, got %s", tname(root));
		json_object_put(root);
		return ERR_INVAL;
	}
	r->root = root;
	int rc = api == OPENAI_API_GENERATE ? parse_generate(root, r, e) : parse_openai(root, r, e);
	if (!rc)
		rc = parse_bootstrap(root, r, e);
	if (rc) {
		openai_request_fini(r);
		return ERR_INVAL;
	}
	r->sampling.min_tokens = r->min_tokens;
	r->sampling.logprobs = r->logprobs;
	r->sampling.top_logprobs = r->logprobs ? r->top_logprobs : 0;
	return 0;
}

void openai_request_fini(openai_request *r)
{
	if (!r)
		return;
	if (r->prompts)
		for (int i = 0; i < r->n_prompts; i++)
			alloc_free(r->prompts[i].ids);
	alloc_free(r->prompts);
	if (r->msg_store)
		for (int i = 0; i < r->n_messages; i++)
			alloc_free(r->msg_store[i]);
	alloc_free(r->msg_store);
	alloc_free(r->messages);
	alloc_free(r->bias);
	alloc_free(r->stop);
	alloc_free(r->stop_len);
	alloc_free(r->stop_ids);
	if (r->root)
		json_object_put((json_object *)r->root);
	memset(r, 0, sizeof(*r));
}

/* ---------------------------------------------------------------- model checks */

int openai_check(const openai_request *r, const openai_model *m, openai_error *e)
{
	char err[ERR_LEN];
	const char *pfx = r->api == OPENAI_API_GENERATE ? "sampling_params." : "";
	if (sampler_params_validate(&r->sampling, m->n_vocab, err) < 0) {
		char param[64];
		size_t k = strcspn(err, ":");
		snprintf(param, sizeof(param), "%s%.*s", pfx, (int)(k < 40 ? k : 40), err);
		return openai_error_set(e, 400, param, "%s%s", pfx, err);
	}
	if (m->max_n && r->n > m->max_n) {
		openai_error_set(e, 400, "n", "n: %d choices is more than this server allows (%d, --max-n)", r->n,
				 m->max_n);
		e->limit = "n";
		return ERR_INVAL;
	}
	if (m->max_stop && r->n_stop > m->max_stop) {
		char param[64];
		snprintf(param, sizeof(param), "%sstop", pfx);
		openai_error_set(e, 400, param, "%s: %d stop strings is more than this server allows (%d, "
				 "--max-stop-strings)", param, r->n_stop, m->max_stop);
		e->limit = "stop";
		return ERR_INVAL;
	}
	for (int i = 0; i < r->n_stop_ids; i++)
		if (r->stop_ids[i] >= m->n_vocab) {
			char param[64];
			snprintf(param, sizeof(param), "%sstop_token_ids", pfx);
			return openai_error_set(e, 400, param, "%s: token %d is outside the vocabulary (%d tokens)", param,
						r->stop_ids[i], m->n_vocab);
		}
	return 0;
}

int openai_render_chat(const openai_request *r, const openai_model *m, char **prompt, size_t *len, openai_error *e)
{
	char err[ERR_LEN] = "";
	size_t bl = 0, el = 0;
	const char *b = tokenizer_bos(m->tok) >= 0 ? tokenizer_token_text(m->tok, tokenizer_bos(m->tok), &bl) : NULL;
	const char *s = tokenizer_eos(m->tok) >= 0 ? tokenizer_token_text(m->tok, tokenizer_eos(m->tok), &el) : NULL;
	char *bos = b ? alloc_strndup(b, bl) : NULL, *eos = s ? alloc_strndup(s, el) : NULL;
	if ((b && !bos) || (s && !eos)) {
		alloc_free(bos);
		return openai_error_set(e, 500, NULL, "out of memory");
	}
	chat_render_opts o = { .add_generation_prompt = r->add_generation_prompt,
			       .bos_token = bos,
			       .eos_token = eos,
			       .disable_thinking = r->disable_thinking };
	int rc = chat_template_render(m->chat_family, r->messages, (size_t)r->n_messages, &o, prompt, len, err);
	alloc_free(bos);
	alloc_free(eos);
	if (rc == ERR_NOMEM)
		return openai_error_set(e, 500, NULL, "out of memory rendering the chat template");
	if (rc < 0)
		return openai_error_set(e, 400, "messages", "%s", err[0] ? err : "the chat template refused the messages");
	return 0;
}

int openai_prompt_ids(const openai_request *r, int k, const openai_model *m, int32_t **ids, int *n, openai_error *e)
{
	*ids = NULL;
	*n = 0;
	const char *param = r->api == OPENAI_API_CHAT ? "messages" :
			    r->api == OPENAI_API_GENERATE ? (r->prompts[0].text ? "text" : "input_ids") :
							    "prompt";
	if (r->api != OPENAI_API_CHAT && !r->prompts[k].text) {
		const openai_prompt *p = &r->prompts[k];
		if (p->n_ids == 0)
			return openai_error_set(e, 400, param, "%s: the prompt is empty", param);
		for (int i = 0; i < p->n_ids; i++)
			if (p->ids[i] >= m->n_vocab)
				return openai_error_set(e, 400, param, "%s[%d]: token %d is outside the vocabulary (%d tokens)",
							param, i, p->ids[i], m->n_vocab);
		if (!(*ids = alloc_array((size_t)p->n_ids, sizeof(int32_t))))
			return openai_error_set(e, 500, NULL, "out of memory");
		memcpy(*ids, p->ids, (size_t)p->n_ids * sizeof(int32_t));
		*n = p->n_ids;
		return 0;
	}
	char *chat = NULL;
	const char *text;
	size_t len;
	if (r->api == OPENAI_API_CHAT) {
		if (openai_render_chat(r, m, &chat, &len, e))
			return ERR_INVAL;
		/* the tokenizer adds BOS (EOS) itself: a rendered one would double it */
		char bos[256] = "", eos[256] = "";
		size_t bl = 0, el = 0;
		const char *b = tokenizer_add_bos(m->tok) && tokenizer_bos(m->tok) >= 0 ?
					tokenizer_token_text(m->tok, tokenizer_bos(m->tok), &bl) : NULL;
		const char *s = tokenizer_add_eos(m->tok) && tokenizer_eos(m->tok) >= 0 ?
					tokenizer_token_text(m->tok, tokenizer_eos(m->tok), &el) : NULL;
		if (b && bl < sizeof(bos))
			snprintf(bos, sizeof(bos), "%.*s", (int)bl, b);
		if (s && el < sizeof(eos))
			snprintf(eos, sizeof(eos), "%.*s", (int)el, s);
		len = chat_template_strip_bos_eos(chat, len, bos, eos);
		text = chat;
	} else {
		text = r->prompts[k].text;
		len = r->prompts[k].len;
	}
	size_t cnt = 0;
	int rc = tokenizer_encode(m->tok, text, len, true, true, ids, &cnt);
	alloc_free(chat);
	if (rc == ERR_NOMEM)
		return openai_error_set(e, 500, NULL, "out of memory tokenizing the prompt");
	if (rc < 0)
		return openai_error_set(e, 400, param, "%s: cannot be tokenized (too long?)", param);
	if (cnt == 0)
		return openai_error_set(e, 400, param, "%s: the prompt is empty and the model adds no BOS token", param);
	if (cnt > INT32_MAX / 2) {
		alloc_free(*ids);
		*ids = NULL;
		return openai_error_set(e, 400, param, "%s: too many tokens", param);
	}
	*n = (int)cnt;
	return 0;
}

int openai_max_new_tokens(const openai_request *r, const openai_model *m, int n_prompt, int *out, openai_error *e)
{
	int ctx = m->context_length;
	const char *param = r->api == OPENAI_API_CHAT ? "messages" :
			    r->api == OPENAI_API_GENERATE ? (r->prompts[0].text ? "text" : "input_ids") :
							    "prompt";
	if (n_prompt >= ctx) {
		openai_error_set(e, 400, param, "This model's maximum context length is %d tokens. However, your prompt "
			"has %d tokens, which leaves no room for the completion. Please reduce the length of the "
			"%s.", ctx, n_prompt, r->api == OPENAI_API_CHAT ? "messages" : "prompt");
		e->code = "context_length_exceeded";
		e->limit = "prompt_tokens";
		return ERR_INVAL;
	}
	if (m->max_prompt_tokens && n_prompt > m->max_prompt_tokens) {
		openai_error_set(e, 400, param, "%s: %d prompt tokens is more than this server allows (%d, "
				 "--max-prompt-tokens)", param, n_prompt, m->max_prompt_tokens);
		e->code = "prompt_too_long";
		e->limit = "prompt_tokens";
		return ERR_INVAL;
	}
	int room = ctx - n_prompt;
	const char *mt = r->api == OPENAI_API_GENERATE ? "sampling_params.max_new_tokens" : "max_tokens";
	if (m->max_new_tokens && r->max_tokens > m->max_new_tokens) {
		openai_error_set(e, 400, mt, "%s: %d is more than this server allows (%d, --max-tokens-limit)", mt,
				 r->max_tokens, m->max_new_tokens);
		e->limit = "max_tokens";
		return ERR_INVAL;
	}
	if (m->max_new_tokens && room > m->max_new_tokens)
		room = m->max_new_tokens; /* the default max_tokens stays within the limit */
	if (r->max_tokens < 0) {
		int def = r->api == OPENAI_API_COMPLETIONS ? 16 : r->api == OPENAI_API_GENERATE ? 128 : room;
		*out = def < room ? def : room;
		return 0;
	}
	if (r->max_tokens > room) {
		openai_error_set(e, 400, mt, "This model's maximum context length is %d tokens. However, you requested "
			"%lld tokens (%d in the %s, %d for the completion). Please reduce the length of the %s or "
			"the completion.", ctx, (long long)n_prompt + r->max_tokens, n_prompt,
			r->api == OPENAI_API_CHAT ? "messages" : "prompt", r->max_tokens,
			r->api == OPENAI_API_CHAT ? "messages" : "prompt");
		e->code = "context_length_exceeded";
		e->limit = "max_tokens";
		return ERR_INVAL;
	}
	*out = r->max_tokens;
	return 0;
}

void openai_engine_request(const openai_request *r, int choice, const int32_t *ids, int n_ids, int max_new_tokens,
			   engine_request *out)
{
	memset(out, 0, sizeof(*out));
	out->prompt = ids;
	out->n_prompt = n_ids;
	out->sampling = r->sampling;
	if (r->sampling.has_seed)
		out->sampling.seed = r->sampling.seed + (uint64_t)choice;
	out->max_new_tokens = max_new_tokens;
	out->ignore_eos = r->ignore_eos;
	out->stop_ids = r->stop_ids;
	out->n_stop_ids = r->n_stop_ids;
}

/* ---------------------------------------------------------------- choices */

int openai_choice_init(openai_choice *c, const tokenizer *tok, bool skip_special, int index, int prompt_index)
{
	memset(c, 0, sizeof(*c));
	c->index = index;
	c->prompt_index = prompt_index;
	c->matched_stop = -1;
	c->matched_id = -1;
	tokenizer_detok_init(&c->detok, tok, TOKENIZER_DETOK_REPLACE | (skip_special ? 0 : TOKENIZER_DETOK_SPECIAL));
	c->piece = alloc_bytes(tokenizer_detok_cap(tok) + 8);
	return c->piece ? 0 : ERR_NOMEM;
}

void openai_choice_fini(openai_choice *c)
{
	if (!c)
		return;
	alloc_free(c->piece);
	alloc_free(c->text);
	alloc_free(c->ids);
	alloc_free(c->lps);
	alloc_free(c->echo);
	memset(c, 0, sizeof(*c));
}

int openai_choice_set_echo(openai_choice *c, const tokenizer *tok, const openai_prompt *p)
{
	if (p->text) {
		c->echo = alloc_bytes(p->len * 3 + 1);
		if (!c->echo)
			return ERR_NOMEM;
		c->echo_len = openai_utf8_sanitize(p->text, p->len, c->echo);
		return 0;
	}
	char *t = NULL;
	size_t n = 0;
	int rc = tokenizer_decode(tok, p->ids, (size_t)p->n_ids, 0, &t, &n, NULL);
	if (rc < 0)
		return rc;
	c->echo = alloc_bytes(n * 3 + 1);
	if (c->echo)
		c->echo_len = openai_utf8_sanitize(t, n, c->echo);
	alloc_free(t);
	return c->echo ? 0 : ERR_NOMEM;
}

static int text_append(openai_choice *c, const char *s, size_t n)
{
	if (c->len + n + 1 > c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 256;
		while (cap < c->len + n + 1)
			cap *= 2;
		char *t = alloc_resize(c->text, cap);
		if (!t)
			return ERR_NOMEM;
		c->text = t;
		c->cap = cap;
	}
	memcpy(c->text + c->len, s, n);
	c->len += n;
	c->text[c->len] = '\0';
	return 0;
}

/* See the top comment. Returns true when a stop string matched. */
static bool stop_scan(openai_choice *c, const openai_request *r)
{
	if (r->n_stop == 0) {
		c->safe = c->len;
		return false;
	}
	size_t best = (size_t)-1, maxlen = 0;
	int bk = -1;
	for (int k = 0; k < r->n_stop; k++) {
		if (r->stop_len[k] > maxlen)
			maxlen = r->stop_len[k];
		const char *p = memmem(c->text + c->safe, c->len - c->safe, r->stop[k], r->stop_len[k]);
		if (p && (size_t)(p - c->text) < best) {
			best = (size_t)(p - c->text);
			bk = k;
		}
	}
	if (bk >= 0) {
		c->len = c->safe = best;
		c->text[c->len] = '\0';
		c->matched_stop = bk;
		c->finish = OPENAI_FINISH_STOP;
		return true;
	}
	size_t from = c->len > maxlen - 1 ? c->len - (maxlen - 1) : 0;
	if (from < c->safe)
		from = c->safe;
	for (size_t i = from; i < c->len; i++)
		for (int k = 0; k < r->n_stop; k++)
			if (c->len - i < r->stop_len[k] && !memcmp(c->text + i, r->stop[k], c->len - i)) {
				c->safe = i;
				return false;
			}
	c->safe = c->len;
	return false;
}

static bool is_stop_token(const openai_request *r, const tokenizer *tok, int32_t t)
{
	if (tokenizer_is_eog(tok, t))
		return true;
	for (int i = 0; i < r->n_stop_ids; i++)
		if (r->stop_ids[i] == t)
			return true;
	return false;
}

int openai_choice_event(openai_choice *c, const openai_request *r, const tokenizer *tok, const engine_event *ev)
{
	if (c->finish != OPENAI_FINISH_NONE)
		return 0; /* stopped by a stop string: what the engine made after it is dropped */
	c->prompt_tokens = ev->prompt_tokens;
	c->cached_tokens = ev->cached_tokens;
	c->completion_tokens = ev->completion_tokens;
	bool final = ev->finish != ENGINE_FINISH_NONE;
	int32_t t = ev->token;
	bool stop_tok = final && ev->finish == ENGINE_FINISH_STOP && t >= 0 && is_stop_token(r, tok, t);
	if (t >= 0 && !stop_tok) {
		if (c->n_ids == c->cap_ids) {
			int cap = c->cap_ids ? c->cap_ids * 2 : 64;
			int32_t *g = alloc_resize_array(c->ids, (size_t)cap, sizeof(int32_t));
			if (!g)
				return ERR_NOMEM;
			c->ids = g;
			c->cap_ids = cap;
		}
		c->ids[c->n_ids++] = t;
		if (r->logprobs) {
			if (c->n_lps == c->cap_lps) {
				int cap = c->cap_lps ? c->cap_lps * 2 : 32;
				openai_lp *g = alloc_resize_array(c->lps, (size_t)cap, sizeof(openai_lp));
				if (!g)
					return ERR_NOMEM;
				c->lps = g;
				c->cap_lps = cap;
			}
			openai_lp *lp = &c->lps[c->n_lps++];
			lp->id = t;
			lp->logprob = ev->logprob;
			lp->n_top = ev->n_top < 0 ? 0 : ev->n_top > SAMPLER_MAX_TOP_LOGPROBS ? SAMPLER_MAX_TOP_LOGPROBS : ev->n_top;
			memcpy(lp->top, ev->top, (size_t)lp->n_top * sizeof(lp->top[0]));
		}
		size_t k = tokenizer_detok_push(&c->detok, t, c->piece);
		if (k && text_append(c, c->piece, k) < 0)
			return ERR_NOMEM;
		if (stop_scan(c, r))
			return final ? 0 : 1;
	}
	if (stop_tok)
		c->matched_id = t;
	if (!final)
		return 0;
	size_t k = tokenizer_detok_flush(&c->detok, c->piece);
	if (k && text_append(c, c->piece, k) < 0)
		return ERR_NOMEM;
	if (stop_scan(c, r))
		return 0;
	c->safe = c->len;
	switch (ev->finish) {
	case ENGINE_FINISH_STOP: c->finish = OPENAI_FINISH_STOP; break;
	case ENGINE_FINISH_LENGTH: c->finish = OPENAI_FINISH_LENGTH; break;
	case ENGINE_FINISH_ABORT: c->finish = OPENAI_FINISH_ABORT; break;
	default:
		c->finish = OPENAI_FINISH_ERROR;
		snprintf(c->message, sizeof(c->message), "%s", ev->message[0] ? ev->message : "engine error");
		break;
	}
	return 0;
}

const char *openai_finish_name(openai_finish f)
{
	switch (f) {
	case OPENAI_FINISH_STOP: return "stop";
	case OPENAI_FINISH_LENGTH: return "length";
	case OPENAI_FINISH_ABORT: return "abort";
	case OPENAI_FINISH_ERROR: return "error";
	default: return NULL;
	}
}

/* ---------------------------------------------------------------- rendering */

static json_object *token_bytes(const tokenizer *tok, int32_t id)
{
	size_t n = 0;
	const char *p = tokenizer_piece(tok, id, true, &n);
	json_object *a = json_object_new_array_ext((int)n);
	for (size_t i = 0; i < n; i++)
		json_object_array_add(a, json_object_new_int((unsigned char)p[i]));
	return a;
}

/* OpenAI chat: {"content":[{"token","logprob","bytes","top_logprobs"}]} for lps[from..to). */
static json_object *chat_logprobs(const openai_resp *rs, const openai_choice *c, int from, int to)
{
	json_object *content = json_object_new_array();
	char buf[1024];
	for (int i = from; i < to; i++) {
		const openai_lp *lp = &c->lps[i];
		json_object *o = json_object_new_object(), *top = json_object_new_array();
		openai_token_text(rs->tok, lp->id, buf, sizeof(buf));
		json_object_object_add(o, "token", jstr(buf));
		json_object_object_add(o, "logprob", jfloat(lp->logprob));
		json_object_object_add(o, "bytes", token_bytes(rs->tok, lp->id));
		for (int k = 0; k < lp->n_top && k < rs->req->top_logprobs; k++) {
			json_object *t = json_object_new_object();
			openai_token_text(rs->tok, lp->top[k].id, buf, sizeof(buf));
			json_object_object_add(t, "token", jstr(buf));
			json_object_object_add(t, "logprob", jfloat(lp->top[k].logprob));
			json_object_object_add(t, "bytes", token_bytes(rs->tok, lp->top[k].id));
			json_object_array_add(top, t);
		}
		json_object_object_add(o, "top_logprobs", top);
		json_object_array_add(content, o);
	}
	json_object *root = json_object_new_object();
	json_object_object_add(root, "content", content);
	return root;
}

/* Legacy completions: {"tokens","token_logprobs","top_logprobs","text_offset"}. */
static json_object *legacy_logprobs(const openai_resp *rs, const openai_choice *c, int from, int to, size_t *offset)
{
	json_object *tokens = json_object_new_array(), *lps = json_object_new_array(), *tops = json_object_new_array(),
		    *offs = json_object_new_array();
	char buf[1024];
	for (int i = from; i < to; i++) {
		const openai_lp *lp = &c->lps[i];
		size_t n = openai_token_text(rs->tok, lp->id, buf, sizeof(buf));
		json_object_array_add(tokens, jstr(buf));
		json_object_array_add(lps, jfloat(lp->logprob));
		json_object_array_add(offs, json_object_new_int64((int64_t)*offset));
		*offset += n;
		if (rs->req->top_logprobs > 0) {
			json_object *t = json_object_new_object();
			for (int k = 0; k < lp->n_top && k < rs->req->top_logprobs; k++) {
				openai_token_text(rs->tok, lp->top[k].id, buf, sizeof(buf));
				json_object_object_add(t, buf, jfloat(lp->top[k].logprob));
			}
			json_object_array_add(tops, t);
		} else {
			json_object_array_add(tops, NULL);
		}
	}
	json_object *root = json_object_new_object();
	json_object_object_add(root, "tokens", tokens);
	json_object_object_add(root, "token_logprobs", lps);
	json_object_object_add(root, "top_logprobs", tops);
	json_object_object_add(root, "text_offset", offs);
	return root;
}

static json_object *lp_tuple(const openai_resp *rs, float lp, int32_t id)
{
	json_object *a = json_object_new_array_ext(3);
	json_object_array_add(a, jfloat(lp));
	json_object_array_add(a, json_object_new_int(id));
	if (rs->req->return_text_in_logprobs) {
		char buf[1024];
		openai_token_text(rs->tok, id, buf, sizeof(buf));
		json_object_array_add(a, jstr(buf));
	} else {
		json_object_array_add(a, NULL);
	}
	return a;
}

static json_object *matched_stop(const openai_resp *rs, const openai_choice *c)
{
	if (c->matched_stop >= 0)
		return jstr_len(rs->req->stop[c->matched_stop], rs->req->stop_len[c->matched_stop]);
	if (c->matched_id >= 0)
		return json_object_new_int(c->matched_id);
	return NULL;
}

/* SGLang meta_info.finish_reason: {"type": ..., "matched"|"length"|"message": ...}. */
static json_object *sgl_finish(const openai_resp *rs, const openai_choice *c)
{
	if (c->finish == OPENAI_FINISH_NONE)
		return NULL;
	json_object *f = json_object_new_object();
	json_object_object_add(f, "type", jstr(openai_finish_name(c->finish)));
	if (c->finish == OPENAI_FINISH_STOP)
		json_object_object_add(f, "matched", matched_stop(rs, c));
	else if (c->finish == OPENAI_FINISH_LENGTH)
		json_object_object_add(f, "length", json_object_new_int(c->completion_tokens));
	else
		json_object_object_add(f, "message", jstr(c->finish == OPENAI_FINISH_ERROR ? c->message : "aborted"));
	return f;
}

/* PD timing of a decode response, or NULL. */
static json_object *pd_obj(const openai_resp *rs)
{
	if (!rs->has_pd)
		return NULL;
	json_object *o = json_object_new_object();
	json_object_object_add(o, "backend", jstr(rs->pd_backend ? rs->pd_backend : ""));
	json_object_object_add(o, "prefill_queue_time", jdouble(rs->pd_prefill_queue_s));
	json_object_object_add(o, "prefill_compute_time", jdouble(rs->pd_prefill_compute_s));
	json_object_object_add(o, "kv_transfer_time", jdouble(rs->pd_transfer_s));
	json_object_object_add(o, "kv_bytes", json_object_new_int64((int64_t)rs->pd_bytes));
	json_object_object_add(o, "decode_admission_wait", jdouble(rs->pd_admission_wait_s));
	return o;
}

static json_object *generate_obj(const openai_resp *rs, const openai_choice *c, size_t text_len, double e2e_s)
{
	json_object *o = json_object_new_object(), *ids = json_object_new_array_ext(c->n_ids),
		    *meta = json_object_new_object();
	json_object_object_add(o, "text", jstr_len(c->text, text_len));
	for (int i = 0; i < c->n_ids; i++)
		json_object_array_add(ids, json_object_new_int(c->ids[i]));
	json_object_object_add(o, "output_ids", ids);
	json_object_object_add(meta, "id", jstr(rs->id));
	json_object_object_add(meta, "finish_reason", sgl_finish(rs, c));
	json_object_object_add(meta, "prompt_tokens", json_object_new_int(c->prompt_tokens));
	json_object_object_add(meta, "completion_tokens", json_object_new_int(c->completion_tokens));
	json_object_object_add(meta, "cached_tokens", json_object_new_int(c->cached_tokens));
	if (rs->req->logprobs) {
		json_object *out = json_object_new_array(), *top = json_object_new_array();
		for (int i = 0; i < c->n_lps; i++) {
			json_object_array_add(out, lp_tuple(rs, c->lps[i].logprob, c->lps[i].id));
			if (rs->req->top_logprobs > 0) {
				json_object *t = json_object_new_array();
				for (int k = 0; k < c->lps[i].n_top && k < rs->req->top_logprobs; k++)
					json_object_array_add(t, lp_tuple(rs, c->lps[i].top[k].logprob, c->lps[i].top[k].id));
				json_object_array_add(top, t);
			}
		}
		json_object_object_add(meta, "input_token_logprobs", json_object_new_array());
		json_object_object_add(meta, "output_token_logprobs", out);
		if (rs->req->top_logprobs > 0)
			json_object_object_add(meta, "output_top_logprobs", top);
		else
			json_object_put(top);
	}
	json_object_object_add(meta, "e2e_latency", jdouble(e2e_s));
	if (rs->has_pd && c->finish != OPENAI_FINISH_NONE)
		json_object_object_add(meta, "pd", pd_obj(rs));
	json_object_object_add(o, "meta_info", meta);
	return o;
}

static json_object *usage_obj(const openai_choice *ch, int n, int per_prompt)
{
	int64_t prompt = 0, compl = 0, cached = 0;
	for (int i = 0; i < n; i++) {
		compl += ch[i].completion_tokens;
		if (per_prompt <= 1 || ch[i].index % per_prompt == 0) {
			prompt += ch[i].prompt_tokens;
			cached += ch[i].cached_tokens;
		}
	}
	json_object *u = json_object_new_object(), *d = json_object_new_object();
	json_object_object_add(u, "prompt_tokens", json_object_new_int64(prompt));
	json_object_object_add(u, "completion_tokens", json_object_new_int64(compl));
	json_object_object_add(u, "total_tokens", json_object_new_int64(prompt + compl));
	json_object_object_add(d, "cached_tokens", json_object_new_int64(cached));
	json_object_object_add(u, "prompt_tokens_details", d);
	return u;
}

static json_object *envelope(const openai_resp *rs, const char *object)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "id", jstr(rs->id));
	json_object_object_add(o, "object", jstr(object));
	json_object_object_add(o, "created", json_object_new_int64(rs->created));
	json_object_object_add(o, "model", jstr(rs->model));
	return o;
}

char *openai_render_response(const openai_resp *rs, openai_choice *ch, int n, double e2e_s, size_t *len)
{
	json_object *root;
	if (rs->req->api == OPENAI_API_GENERATE) {
		if (n == 1) {
			root = generate_obj(rs, &ch[0], ch[0].len, e2e_s);
		} else {
			root = json_object_new_array();
			for (int i = 0; i < n; i++)
				json_object_array_add(root, generate_obj(rs, &ch[i], ch[i].len, e2e_s));
		}
	} else {
		bool chat = rs->req->api == OPENAI_API_CHAT;
		root = envelope(rs, chat ? "chat.completion" : "text_completion");
		json_object *choices = json_object_new_array();
		for (int i = 0; i < n; i++) {
			const openai_choice *c = &ch[i];
			json_object *o = json_object_new_object();
			json_object_object_add(o, "index", json_object_new_int(c->index));
			if (chat) {
				json_object *m = json_object_new_object();
				json_object_object_add(m, "role", jstr("assistant"));
				json_object_object_add(m, "content", jstr_len(c->text, c->len));
				json_object_object_add(o, "message", m);
			} else if (c->echo) {
				char *t = alloc_bytes(c->echo_len + c->len + 1);
				if (t) {
					memcpy(t, c->echo, c->echo_len);
					memcpy(t + c->echo_len, c->text, c->len);
				}
				json_object_object_add(o, "text", jstr_len(t, t ? c->echo_len + c->len : 0));
				alloc_free(t);
			} else {
				json_object_object_add(o, "text", jstr_len(c->text, c->len));
			}
			json_object *lp = NULL;
			if (rs->req->logprobs) {
				size_t off = c->echo_len;
				lp = chat ? chat_logprobs(rs, c, 0, c->n_lps) : legacy_logprobs(rs, c, 0, c->n_lps, &off);
			}
			json_object_object_add(o, "logprobs", lp);
			json_object_object_add(o, "finish_reason", jstr(openai_finish_name(c->finish)));
			json_object_object_add(o, "matched_stop", matched_stop(rs, c));
			json_object_array_add(choices, o);
		}
		json_object_object_add(root, "choices", choices);
		json_object_object_add(root, "usage", usage_obj(ch, n, rs->req->n));
		if (rs->has_pd)
			json_object_object_add(root, "pdserve", pd_obj(rs));
	}
	char *out = dump(root, len);
	json_object_put(root);
	return out;
}

char *openai_render_chunk(const openai_resp *rs, openai_choice *c, double e2e_s, size_t *len)
{
	*len = 0;
	bool finishing = c->finish != OPENAI_FINISH_NONE && !c->finish_sent;
	size_t upto = c->finish != OPENAI_FINISH_NONE ? c->len : c->safe;
	bool new_text = upto > c->sent, new_lp = rs->req->logprobs && c->n_lps > c->lps_sent;
	bool first = !c->role_sent;
	if (rs->req->api == OPENAI_API_GENERATE) {
		/* SGLang streams the whole output so far in every chunk. */
		if (!new_text && !finishing && c->n_ids == c->lps_sent && !first)
			return NULL;
		json_object *o = generate_obj(rs, c, upto, e2e_s);
		char *out = sse_append(NULL, len, o);
		json_object_put(o);
		c->sent = upto;
		c->lps_sent = c->n_ids; /* here: ids already reported */
		c->role_sent = true;
		if (finishing)
			c->finish_sent = true;
		return out;
	}
	bool chat = rs->req->api == OPENAI_API_CHAT;
	bool echo_now = first && c->echo_len > 0;
	if (!new_text && !new_lp && !finishing && !(chat && first) && !echo_now)
		return NULL;
	char *out = NULL;
	if (new_text || new_lp || (chat && first) || echo_now) {
		json_object *root = envelope(rs, chat ? "chat.completion.chunk" : "text_completion");
		json_object *choices = json_object_new_array(), *o = json_object_new_object();
		json_object_object_add(o, "index", json_object_new_int(c->index));
		if (chat) {
			json_object *d = json_object_new_object();
			if (first)
				json_object_object_add(d, "role", jstr("assistant"));
			json_object_object_add(d, "content", jstr_len(c->text + c->sent, upto - c->sent));
			json_object_object_add(o, "delta", d);
		} else if (echo_now) {
			char *t = alloc_bytes(c->echo_len + (upto - c->sent) + 1);
			if (t) {
				memcpy(t, c->echo, c->echo_len);
				memcpy(t + c->echo_len, c->text + c->sent, upto - c->sent);
			}
			json_object_object_add(o, "text", jstr_len(t, t ? c->echo_len + upto - c->sent : 0));
			alloc_free(t);
		} else {
			json_object_object_add(o, "text", jstr_len(c->text + c->sent, upto - c->sent));
		}
		json_object *lp = NULL;
		if (new_lp) {
			size_t off = c->echo_len + c->sent;
			lp = chat ? chat_logprobs(rs, c, c->lps_sent, c->n_lps) :
				    legacy_logprobs(rs, c, c->lps_sent, c->n_lps, &off);
		}
		json_object_object_add(o, "logprobs", lp);
		json_object_object_add(o, "finish_reason", NULL);
		json_object_array_add(choices, o);
		json_object_object_add(root, "choices", choices);
		out = sse_append(out, len, root);
		json_object_put(root);
		c->sent = upto;
		c->lps_sent = c->n_lps;
		c->role_sent = true;
	}
	if (finishing) {
		json_object *root = envelope(rs, chat ? "chat.completion.chunk" : "text_completion");
		json_object *choices = json_object_new_array(), *o = json_object_new_object();
		json_object_object_add(o, "index", json_object_new_int(c->index));
		if (chat)
			json_object_object_add(o, "delta", json_object_new_object());
		else
			json_object_object_add(o, "text", jstr(""));
		json_object_object_add(o, "logprobs", NULL);
		json_object_object_add(o, "finish_reason", jstr(openai_finish_name(c->finish)));
		json_object_object_add(o, "matched_stop", matched_stop(rs, c));
		json_object_array_add(choices, o);
		json_object_object_add(root, "choices", choices);
		if (rs->has_pd)
			json_object_object_add(root, "pdserve", pd_obj(rs));
		out = sse_append(out, len, root);
		json_object_put(root);
		c->finish_sent = true;
		c->role_sent = true;
	}
	return out;
}

char *openai_render_usage_chunk(const openai_resp *rs, const openai_choice *ch, int n, size_t *len)
{
	*len = 0;
	json_object *root;
	if (rs->req->api == OPENAI_API_GENERATE)
		return NULL;
	root = envelope(rs, rs->req->api == OPENAI_API_CHAT ? "chat.completion.chunk" : "text_completion");
	json_object_object_add(root, "choices", json_object_new_array());
	json_object_object_add(root, "usage", usage_obj(ch, n, rs->req->n));
	char *out = sse_append(NULL, len, root);
	json_object_put(root);
	return out;
}
