/* openai_test.c - server/openai: request parsing and validation (every error
 * the issue names, with its status and param), prompt tokenization and
 * context checks, output assembly (stop strings held back and cut, UTF-8
 * split across tokens, stop tokens left out), and the exact shapes of
 * responses, SSE chunks, usage, logprobs and error objects.
 *
 * Uses the stories260K vocabulary when ../shared is here, else the one
 * `pdserve model synth` writes (same SPM layout: <unk>, <s>, </s>, 256 byte
 * tokens, then pieces).
 */
#include <criterion/criterion.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "model/gguf.h"
#include "model/synth.h"
#include "model/tokenizer.h"
#include "server/openai.h"
#include "testutil.h"

/* ---- fixtures ------------------------------------------------------------ */

static gguf *g_gguf;
static tokenizer *g_tok;

static const tokenizer *tok(void)
{
	if (g_tok)
		return g_tok;
	char err[ERR_LEN], path[256];
	const char *p = test_shared("models/stories260K.gguf");
	if (!p) {
		snprintf(path, sizeof(path), "/tmp/pdserve-openai-test-%d.gguf", (int)getpid());
		synth_config cfg;
		synth_preset("tiny", &cfg);
		cr_assert(synth_write(&cfg, path, err) == 0, "synth_write: %s", err);
		p = path;
	}
	g_gguf = gguf_open(p, err);
	cr_assert(g_gguf, "gguf_open: %s", err);
	g_tok = tokenizer_create(g_gguf, err);
	cr_assert(g_tok, "tokenizer_create: %s", err);
	if (p == path)
		unlink(path);
	return g_tok;
}

static void fini(void)
{
	tokenizer_destroy(g_tok);
	gguf_close(g_gguf);
	g_tok = NULL;
	g_gguf = NULL;
}

static openai_model model(int ctx)
{
	openai_model m = { .tok = tok(), .n_vocab = tokenizer_n_vocab(tok()), .context_length = ctx,
			   .chat_family = CHAT_TMPL_CHATML };
	return m;
}

static void parse_ok(openai_api api, const char *json, openai_request *r)
{
	openai_error e = { 0 };
	int rc = openai_parse(api, json, strlen(json), r, &e);
	cr_assert(rc == 0, "parse %s: %d %s", json, e.status, e.message);
}

/* The body must fail with status and param ("" = null). */
static void parse_bad(openai_api api, const char *json, int status, const char *param)
{
	openai_request r;
	openai_error e = { 0 };
	int rc = openai_parse(api, json, strlen(json), &r, &e);
	cr_assert(rc == ERR_INVAL, "parse %s: want an error, got success", json);
	cr_assert(e.status == status, "parse %s: status %d, want %d (%s)", json, e.status, status, e.message);
	cr_assert(!strcmp(e.param, param), "parse %s: param '%s', want '%s' (%s)", json, e.param, param, e.message);
	cr_assert(e.message[0], "parse %s: empty message", json);
}

static json_object *jparse(const char *s)
{
	json_object *o = json_tokener_parse(s);
	cr_assert(o, "not JSON: %s", s);
	return o;
}

static json_object *jget(json_object *o, const char *path)
{
	/* "a.b.0.c": object keys and array indices */
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok(buf, "."); k; k = strtok(NULL, ".")) {
		if (json_object_is_type(o, json_type_array)) {
			o = json_object_array_get_idx(o, (size_t)atoi(k));
		} else {
			json_object *v = NULL;
			cr_assert(json_object_object_get_ex(o, k, &v), "no key %s in %s", k,
				  json_object_to_json_string(o));
			o = v;
		}
	}
	return o;
}

static const char *jgets(json_object *o, const char *path)
{
	json_object *v = jget(o, path);
	cr_assert(v && json_object_is_type(v, json_type_string), "%s is not a string", path);
	return json_object_get_string(v);
}

static int64_t jgeti(json_object *o, const char *path)
{
	json_object *v = jget(o, path);
	cr_assert(v && json_object_is_type(v, json_type_int), "%s is not an int", path);
	return json_object_get_int64(v);
}

/* ---- malformed bodies ------------------------------------------------------ */

Test(openai_parse, malformed_json_is_400_without_param)
{
	const char *bodies[] = {
		"", "{", "{\"prompt\": \"x\"", "{\"prompt\": \"x\"} junk", "{\"prompt\": \"x\",}", "[1, 2]", "\"text\"",
		"42", "null", "{prompt: 1}", "{\"prompt\": \"\xff\xfe\"}", "{\"prompt\": 'x'}",
	};
	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
		parse_bad(OPENAI_API_COMPLETIONS, bodies[i], 400, "");
	/* a NUL inside the body */
	openai_request r;
	openai_error e;
	cr_assert(openai_parse(OPENAI_API_COMPLETIONS, "{\"prompt\":\"a\"}\0{}", 17, &r, &e) == ERR_INVAL);
	cr_assert(e.status == 400);
}

Test(openai_parse, wrong_types_name_the_param)
{
	static const struct {
		openai_api api;
		const char *body;
		const char *param;
	} cases[] = {
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":true}", "top_p" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_k\":1.5}", "top_k" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_k\":-2}", "top_k" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"min_p\":[]}", "min_p" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":\"10\"}", "max_tokens" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":-1}", "max_tokens" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":1e300}", "max_tokens" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":\"2\"}", "n" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":1.5}", "n" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stream\":1}", "stream" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":5}", "stop" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":[\"a\",1]}", "stop" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":[]}", "logit_bias" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", "logit_bias" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":\"x\"}}", "logit_bias" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":200}}", "logit_bias" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"seed\":\"x\"}", "seed" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"seed\":1.5}", "seed" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stream_options\":1}", "stream_options" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":\"y\"}}",
		  "stream_options.include_usage" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"echo\":\"no\"}", "echo" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"logprobs\":21}", "logprobs" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop_token_ids\":[-1]}", "stop_token_ids" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop_token_ids\":\"2\"}", "stop_token_ids" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"min_tokens\":-1}", "min_tokens" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"frequency_penalty\":\"x\"}", "frequency_penalty" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"ignore_eos\":0}", "ignore_eos" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"model\":5}", "model" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"suffix\":\"y\"}", "suffix" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"best_of\":2}", "best_of" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":5}", "prompt" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":{}}", "prompt" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":[]}", "prompt" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":[1,\"a\"]}", "prompt" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":[[1],[]]}", "prompt" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":[1,-2]}", "prompt" },
		{ OPENAI_API_COMPLETIONS, "{\"prompt\":[99999999999]}", "prompt" },
		{ OPENAI_API_CHAT, "{\"messages\":\"hi\"}", "messages" },
		{ OPENAI_API_CHAT, "{\"messages\":[1]}", "messages" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", "messages" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
		  "messages" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":\"yes\"}",
		  "logprobs" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}",
		  "top_logprobs" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":21,"
				   "\"logprobs\":true}", "top_logprobs" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":"
				   "\"function\"}]}", "tools" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":"
				   "{\"type\":\"json_object\"}}", "response_format" },
		{ OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
				   "\"max_completion_tokens\":\"5\"}", "max_completion_tokens" },
		{ OPENAI_API_GENERATE, "{\"text\":5}", "text" },
		{ OPENAI_API_GENERATE, "{\"text\":[\"a\",\"b\"]}", "text" },
		{ OPENAI_API_GENERATE, "{\"input_ids\":\"x\"}", "input_ids" },
		{ OPENAI_API_GENERATE, "{\"input_ids\":[[1],[2]]}", "input_ids" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"sampling_params\":5}", "sampling_params" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"sampling_params\":{\"max_new_tokens\":\"x\"}}",
		  "sampling_params.max_new_tokens" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"sampling_params\":{\"temperature\":\"x\"}}",
		  "sampling_params.temperature" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"sampling_params\":{\"n\":2}}", "sampling_params.n" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"rid\":5}", "rid" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"rid\":\"\"}", "rid" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"return_logprob\":\"x\"}", "return_logprob" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"top_logprobs_num\":100}", "top_logprobs_num" },
		{ OPENAI_API_GENERATE, "{\"text\":\"a\",\"stream\":\"x\"}", "stream" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		parse_bad(cases[i].api, cases[i].body, 400, cases[i].param);
}

Test(openai_parse, missing_prompt_or_messages)
{
	parse_bad(OPENAI_API_COMPLETIONS, "{}", 400, "prompt");
	parse_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":null}", 400, "prompt");
	parse_bad(OPENAI_API_CHAT, "{\"model\":\"m\"}", 400, "messages");
	parse_bad(OPENAI_API_CHAT, "{\"messages\":[]}", 400, "messages");
	parse_bad(OPENAI_API_GENERATE, "{}", 400, "text");
	parse_bad(OPENAI_API_GENERATE, "{\"text\":\"a\",\"input_ids\":[1]}", 400, "input_ids");
}

/* Configured limits: 400 with the flag named and e.limit set to the counter's
   reason; at the limit: accepted; 0 = no limit. */
Test(openai_check, configured_limits, .fini = fini)
{
	openai_model m = model(1000);
	m.max_n = 2;
	m.max_stop = 1;
	m.max_prompt_tokens = 20;
	m.max_new_tokens = 50;
	openai_request r;
	openai_error e = { 0 };
	int out;
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":3,\"best_of\":3}", &r);
	cr_assert(openai_check(&r, &m, &e) == ERR_INVAL && e.status == 400 && !strcmp(e.param, "n"));
	cr_assert(e.limit && !strcmp(e.limit, "n") && strstr(e.message, "--max-n"), "%s", e.message);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_GENERATE, "{\"text\":\"x\",\"sampling_params\":{\"stop\":[\"a\",\"b\"]}}", &r);
	cr_assert(openai_check(&r, &m, &e) == ERR_INVAL && !strcmp(e.param, "sampling_params.stop"), "%s", e.param);
	cr_assert(e.limit && !strcmp(e.limit, "stop"));
	openai_request_fini(&r);
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":2,\"stop\":\"a\",\"max_tokens\":50}", &r);
	cr_assert(openai_check(&r, &m, &e) == 0, "%s", e.message);
	cr_assert(openai_max_new_tokens(&r, &m, 20, &out, &e) == 0 && out == 50, "%s", e.message);
	cr_assert(openai_max_new_tokens(&r, &m, 21, &out, &e) == ERR_INVAL && !strcmp(e.limit, "prompt_tokens"));
	cr_assert(!strcmp(e.code, "prompt_too_long") && strstr(e.message, "--max-prompt-tokens"), "%s", e.message);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":51}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 5, &out, &e) == ERR_INVAL && !strcmp(e.limit, "max_tokens"));
	cr_assert(!strcmp(e.param, "max_tokens") && strstr(e.message, "--max-tokens-limit"), "%s", e.message);
	openai_request_fini(&r);
	/* no max_tokens: the default (chat: the rest of the context) stays within the limit */
	parse_ok(OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 5, &out, &e) == 0 && out == 50);
	openai_request_fini(&r);
	/* context overflow counts as the prompt_tokens / max_tokens limits too */
	m = model(16);
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":10}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 16, &out, &e) == ERR_INVAL && !strcmp(e.limit, "prompt_tokens"));
	cr_assert(openai_max_new_tokens(&r, &m, 8, &out, &e) == ERR_INVAL && !strcmp(e.limit, "max_tokens"));
	cr_assert(openai_check(&r, &m, &e) == 0 && openai_max_new_tokens(&r, &m, 6, &out, &e) == 0);
	openai_request_fini(&r);
	/* the parser's hard caps carry the reason as well */
	const char *j = "{\"prompt\":\"x\",\"n\":65}";
	cr_assert(openai_parse(OPENAI_API_COMPLETIONS, j, strlen(j), &r, &e) == ERR_INVAL);
	cr_assert(e.limit && !strcmp(e.limit, "n"));
}

Test(openai_parse, n_out_of_range)
{
	parse_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":0}", 400, "n");
	parse_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":65}", 400, "n");
	parse_bad(OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":-3}", 400, "n");
	parse_bad(OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":100000000000}", 400, "n");
	openai_request r;
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":64,\"best_of\":64}", &r);
	cr_assert(r.n == 64);
	openai_request_fini(&r);
}

Test(openai_parse, fields_map_to_the_request)
{
	openai_request r;
	parse_ok(OPENAI_API_COMPLETIONS,
		 "{\"model\":\"m1\",\"prompt\":\"hello\",\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,"
		 "\"top_k\":40,\"min_p\":0.05,\"seed\":-1,\"stop\":[\"a\",\"\",\"bc\"],\"stop_token_ids\":[5,6],"
		 "\"frequency_penalty\":0.25,\"presence_penalty\":-0.5,\"repetition_penalty\":1.1,\"n\":3,"
		 "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"logprobs\":2,\"echo\":true,"
		 "\"ignore_eos\":true,\"logit_bias\":{\"17\":-100,\"3\":2.5},\"min_tokens\":2,\"user\":\"u\","
		 "\"skip_special_tokens\":false,\"temperature_unknown_field\":1}",
		 &r);
	cr_assert(!strcmp(r.model, "m1"));
	cr_assert(r.n_prompts == 1 && r.prompts[0].len == 5 && !memcmp(r.prompts[0].text, "hello", 5));
	cr_assert(r.max_tokens == 7 && r.n == 3 && r.stream && r.include_usage && r.echo && r.ignore_eos);
	cr_assert(r.sampling.temperature == 0.5f && r.sampling.top_p == 0.9f && r.sampling.top_k == 40);
	cr_assert(r.sampling.min_p == 0.05f && r.sampling.frequency_penalty == 0.25f);
	cr_assert(r.sampling.presence_penalty == -0.5f && r.sampling.repetition_penalty == 1.1f);
	cr_assert(r.sampling.has_seed && r.sampling.seed == UINT64_MAX);
	cr_assert(r.n_stop == 2 && !strcmp(r.stop[0], "a") && !strcmp(r.stop[1], "bc"), "empty stop strings dropped");
	cr_assert(r.n_stop_ids == 2 && r.stop_ids[1] == 6);
	cr_assert(r.logprobs && r.top_logprobs == 2 && r.sampling.logprobs && r.sampling.top_logprobs == 2);
	cr_assert(r.sampling.n_logit_bias == 2 && r.sampling.min_tokens == 2 && !r.skip_special_tokens);
	openai_request_fini(&r);

	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":[[1,2],[3]]}", &r);
	cr_assert(r.n_prompts == 2 && r.prompts[0].n_ids == 2 && r.prompts[1].ids[0] == 3 && r.max_tokens == -1);
	cr_assert(r.sampling.temperature == 1.0f, "OpenAI's default temperature is 1");
	openai_request_fini(&r);
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":[\"a\",\"bb\"],\"stop\":\"x\",\"temperature\":null}", &r);
	cr_assert(r.n_prompts == 2 && r.prompts[1].len == 2 && r.n_stop == 1);
	openai_request_fini(&r);
}

Test(openai_parse, chat_fields)
{
	openai_request r;
	parse_ok(OPENAI_API_CHAT,
		 "{\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
		 "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
		 "{\"role\":\"assistant\",\"content\":null}],\"max_completion_tokens\":9,\"max_tokens\":3,"
		 "\"logprobs\":true,\"top_logprobs\":4,\"chat_template_kwargs\":{\"enable_thinking\":false},"
		 "\"tools\":[]}",
		 &r);
	cr_assert(r.n_messages == 3);
	cr_assert(!strcmp(r.messages[0].role, "system"), "developer is system");
	cr_assert(!strcmp(r.messages[1].content, "a\nb"), "parts joined: %s", r.messages[1].content);
	cr_assert(!strcmp(r.messages[2].content, ""));
	cr_assert(r.max_tokens == 9, "max_completion_tokens wins");
	cr_assert(r.logprobs && r.top_logprobs == 4 && r.disable_thinking && r.add_generation_prompt);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":3}", &r);
	cr_assert(r.max_tokens == 3);
	openai_request_fini(&r);
}

Test(openai_parse, generate_fields)
{
	openai_request r;
	parse_ok(OPENAI_API_GENERATE,
		 "{\"text\":\"hi\",\"rid\":\"req-1\",\"stream\":true,\"return_logprob\":true,\"top_logprobs_num\":3,"
		 "\"return_text_in_logprobs\":true,\"sampling_params\":{\"max_new_tokens\":5,\"min_new_tokens\":1,"
		 "\"temperature\":0,\"top_k\":1,\"stop\":\"x\",\"stop_token_ids\":[2],\"ignore_eos\":true,"
		 "\"sampling_seed\":42}}",
		 &r);
	cr_assert(!strcmp(r.rid, "req-1") && r.stream && r.logprobs && r.top_logprobs == 3);
	cr_assert(r.return_text_in_logprobs && r.max_tokens == 5 && r.min_tokens == 1 && r.sampling.temperature == 0);
	cr_assert(r.n_stop == 1 && r.n_stop_ids == 1 && r.ignore_eos && r.sampling.has_seed && r.sampling.seed == 42);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_GENERATE, "{\"input_ids\":[1,2,3]}", &r);
	cr_assert(r.prompts[0].n_ids == 3 && !r.prompts[0].text && !r.logprobs);
	openai_request_fini(&r);
}

Test(openai_parse, failed_allocations_are_reported_not_crashed)
{
	const char *body = "{\"prompt\":[[1,2],[3]],\"stop\":[\"a\",\"b\"],\"stop_token_ids\":[1],"
			   "\"logit_bias\":{\"1\":1}}";
	for (long n = 0;; n++) {
		openai_request r;
		openai_error e;
		alloc_fail_after(n);
		int rc = openai_parse(OPENAI_API_COMPLETIONS, body, strlen(body), &r, &e);
		alloc_fail_after(-1);
		if (rc == 0) {
			openai_request_fini(&r);
			cr_assert(n > 3, "parse must allocate");
			break;
		}
		cr_assert(e.status == 500, "failure %ld: %d %s", n, e.status, e.message);
	}
}

/* ---- checks that need the model ------------------------------------------ */

static void check_bad(openai_api api, const char *json, const char *param)
{
	openai_request r;
	openai_error e = { 0 };
	openai_model m = model(512);
	parse_ok(api, json, &r);
	int rc = openai_check(&r, &m, &e);
	openai_request_fini(&r);
	cr_assert(rc == ERR_INVAL && e.status == 400, "%s: want 400", json);
	cr_assert(!strcmp(e.param, param), "%s: param '%s' want '%s' (%s)", json, e.param, param, e.message);
}

Test(openai_check, sampling_ranges, .fini = fini)
{
	check_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":1.5}", "top_p");
	check_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":-1}", "temperature");
	check_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"presence_penalty\":3}", "presence_penalty");
	check_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"repetition_penalty\":0}", "repetition_penalty");
	check_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"99999\":1}}", "logit_bias");
	check_bad(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop_token_ids\":[99999]}", "stop_token_ids");
	check_bad(OPENAI_API_GENERATE, "{\"text\":\"x\",\"sampling_params\":{\"min_p\":2}}", "sampling_params.min_p");
	openai_request r;
	openai_error e;
	openai_model m = model(512);
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":0.5,\"top_k\":5,\"logit_bias\":{\"3\":1}}", &r);
	cr_assert(openai_check(&r, &m, &e) == 0, "%s", e.message);
	openai_request_fini(&r);
}

Test(openai_check, context_length, .fini = fini)
{
	openai_model m = model(16);
	openai_request r;
	openai_error e;
	int out;
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":[1,2,3,4,5,6,7,8,9,10],\"max_tokens\":7}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 10, &out, &e) == ERR_INVAL);
	cr_assert(e.status == 400 && !strcmp(e.param, "max_tokens") && !strcmp(e.code, "context_length_exceeded"));
	cr_assert(strstr(e.message, "maximum context length is 16 tokens"), "%s", e.message);
	cr_assert(openai_max_new_tokens(&r, &m, 16, &out, &e) == ERR_INVAL && !strcmp(e.param, "prompt"));
	openai_request_fini(&r);

	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":[1,2,3,4,5,6,7,8,9,10],\"max_tokens\":6}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 10, &out, &e) == 0 && out == 6);
	openai_request_fini(&r);
	/* defaults: completions 16, generate 128, chat the rest; all clipped to the context */
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\"}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 4, &out, &e) == 0 && out == 12);
	openai_request_fini(&r);
	m.context_length = 1000;
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\"}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 4, &out, &e) == 0 && out == 16);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_GENERATE, "{\"text\":\"x\"}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 4, &out, &e) == 0 && out == 128);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 40, &out, &e) == 0 && out == 960);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_GENERATE, "{\"text\":\"x\",\"sampling_params\":{\"max_new_tokens\":2000}}", &r);
	cr_assert(openai_max_new_tokens(&r, &m, 4, &out, &e) == ERR_INVAL);
	cr_assert(!strcmp(e.param, "sampling_params.max_new_tokens"));
	openai_request_fini(&r);
}

Test(openai_prompt, tokenization_matches_llama_cpp_server, .fini = fini)
{
	openai_model m = model(512);
	openai_request r;
	openai_error e;
	int32_t *ids, *want;
	int n;
	size_t nw;
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"Once upon a time</s>\"}", &r);
	cr_assert(openai_prompt_ids(&r, 0, &m, &ids, &n, &e) == 0, "%s", e.message);
	const char *t = "Once upon a time</s>";
	cr_assert(tokenizer_encode(tok(), t, strlen(t), true, true, &want, &nw) == 0);
	cr_assert(n == (int)nw && !memcmp(ids, want, nw * sizeof(int32_t)));
	cr_assert(ids[0] == tokenizer_bos(tok()), "BOS added");
	cr_assert(ids[n - 1] == tokenizer_eos(tok()), "special text parsed");
	alloc_free(ids);
	alloc_free(want);
	openai_request_fini(&r);

	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":[5,6,100000]}", &r);
	cr_assert(openai_prompt_ids(&r, 0, &m, &ids, &n, &e) == ERR_INVAL && e.status == 400);
	cr_assert(!strcmp(e.param, "prompt") && strstr(e.message, "outside the vocabulary"), "%s", e.message);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_GENERATE, "{\"input_ids\":[]}", &r);
	cr_assert(openai_prompt_ids(&r, 0, &m, &ids, &n, &e) == ERR_INVAL && e.status == 400);
	cr_assert(!strcmp(e.param, "input_ids"), "%s", e.param);
	openai_request_fini(&r);
	parse_ok(OPENAI_API_GENERATE, "{\"input_ids\":[1,7,9]}", &r);
	cr_assert(openai_prompt_ids(&r, 0, &m, &ids, &n, &e) == 0 && n == 3 && ids[2] == 9, "ids copied as given");
	alloc_free(ids);
	openai_request_fini(&r);
}

Test(openai_prompt, chat_renders_and_strips_bos_text, .fini = fini)
{
	openai_model m = model(512);
	openai_request r;
	openai_error e;
	char *p;
	size_t len;
	parse_ok(OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r);
	cr_assert(openai_render_chat(&r, &m, &p, &len, &e) == 0);
	cr_assert(!strcmp(p, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), "%s", p);
	alloc_free(p);
	/* Llama 3 writes bos_token itself; the tokenizer adds BOS too: one BOS, not two */
	m.chat_family = CHAT_TMPL_LLAMA3;
	cr_assert(openai_render_chat(&r, &m, &p, &len, &e) == 0);
	size_t bl;
	const char *bos = tokenizer_token_text(tok(), tokenizer_bos(tok()), &bl);
	cr_assert(len > bl && !memcmp(p, bos, bl), "rendered with the bos text: %s", p);
	alloc_free(p);
	int32_t *ids;
	int n;
	cr_assert(openai_prompt_ids(&r, 0, &m, &ids, &n, &e) == 0);
	cr_assert(ids[0] == tokenizer_bos(tok()) && ids[1] != tokenizer_bos(tok()), "one BOS");
	alloc_free(ids);
	openai_request_fini(&r);
	/* the template's own refusal is a 400 */
	m.chat_family = CHAT_TMPL_GEMMA;
	parse_ok(OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\","
				  "\"content\":\"b\"}]}", &r);
	cr_assert(openai_prompt_ids(&r, 0, &m, &ids, &n, &e) == ERR_INVAL && e.status == 400);
	cr_assert(!strcmp(e.param, "messages") && strstr(e.message, "alternate"), "%s", e.message);
	openai_request_fini(&r);
}

Test(openai_prompt, engine_request_per_choice)
{
	openai_request r;
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"seed\":10,\"n\":2,\"stop_token_ids\":[7],"
					 "\"ignore_eos\":true,\"temperature\":0.7}", &r);
	int32_t ids[2] = { 1, 5 };
	engine_request a, b;
	openai_engine_request(&r, 0, ids, 2, 9, &a);
	openai_engine_request(&r, 1, ids, 2, 9, &b);
	cr_assert(a.sampling.seed == 10 && b.sampling.seed == 11, "distinct seeds per choice");
	cr_assert(a.prompt == ids && a.n_prompt == 2 && a.max_new_tokens == 9 && a.ignore_eos);
	cr_assert(a.n_stop_ids == 1 && a.stop_ids[0] == 7 && a.sampling.temperature == 0.7f);
	openai_request_fini(&r);
}

/* ---- output assembly ------------------------------------------------------- */

static engine_event ev_tok(int32_t t, engine_finish f, int n)
{
	engine_event ev;
	memset(&ev, 0, sizeof(ev));
	ev.token = t;
	ev.finish = f;
	ev.prompt_tokens = 3;
	ev.cached_tokens = 1;
	ev.completion_tokens = n;
	ev.logprob = -0.5f;
	ev.n_top = 2;
	ev.top[0].id = t >= 0 ? t : 0;
	ev.top[0].logprob = -0.5f;
	ev.top[1].id = 4;
	ev.top[1].logprob = -INFINITY;
	return ev;
}

/* Text of every "data:" event's delta (chat), text (completions), or the
   last cumulative text (generate), appended to acc. Returns the number of
   events; *finish gets the last finish_reason seen. */
static int sse_collect(const char *sse, size_t len, openai_api api, char *acc, char *finish)
{
	int n = 0;
	const char *p = sse, *end = sse + len;
	while (p < end) {
		cr_assert(!strncmp(p, "data: ", 6), "SSE event must start with 'data: ': %.40s", p);
		const char *nl = strstr(p, "\n\n");
		cr_assert(nl, "SSE event must end with a blank line");
		char *js = strndup(p + 6, (size_t)(nl - p - 6));
		json_object *o = jparse(js);
		if (api == OPENAI_API_GENERATE) {
			strcpy(acc, jgets(o, "text"));
			json_object *f = jget(o, "meta_info.finish_reason");
			if (f)
				strcpy(finish, jgets(f, "type"));
		} else {
			json_object *c = jget(o, "choices.0");
			if (c) {
				json_object *d = api == OPENAI_API_CHAT ? jget(c, "delta") : NULL, *t = NULL;
				if (d)
					json_object_object_get_ex(d, "content", &t);
				else
					json_object_object_get_ex(c, "text", &t);
				if (t)
					strcat(acc, json_object_get_string(t));
				json_object *f = jget(c, "finish_reason");
				if (f)
					strcpy(finish, json_object_get_string(f));
			}
		}
		json_object_put(o);
		free(js);
		p = nl + 2;
		n++;
	}
	return n;
}

typedef struct {
	openai_request r;
	openai_resp rs;
	openai_choice c;
	char streamed[8192];
	char finish[32];
	int chunks;
} run_t;

static void run_open(run_t *x, openai_api api, const char *json)
{
	memset(x, 0, sizeof(*x));
	parse_ok(api, json, &x->r);
	cr_assert(openai_choice_init(&x->c, tok(), x->r.skip_special_tokens, 0, 0) == 0);
	x->rs = (openai_resp){ .req = &x->r, .tok = tok(), .id = "cmpl-test", .created = 1700000000, .model = "m" };
}

/* Feed one event, stream what became final; returns choice_event's rc. */
static int run_event(run_t *x, const engine_event *ev)
{
	int rc = openai_choice_event(&x->c, &x->r, tok(), ev);
	size_t len;
	char *chunk = openai_render_chunk(&x->rs, &x->c, 0.5, &len);
	if (chunk) {
		x->chunks += sse_collect(chunk, len, x->r.api, x->streamed, x->finish);
		cr_assert(memmem(chunk, len, "\n\n", 2), "framing");
	}
	alloc_free(chunk);
	return rc;
}

static void run_close(run_t *x)
{
	openai_choice_fini(&x->c);
	openai_request_fini(&x->r);
}

/* The ids of text without BOS. */
static int32_t *ids_of(const char *text, size_t *n)
{
	int32_t *ids;
	cr_assert(tokenizer_encode(tok(), text, strlen(text), false, false, &ids, n) == 0);
	return ids;
}

Test(openai_choice, stop_string_is_cut_and_never_streamed, .fini = fini)
{
	const char *text = "Once upon a time, there was a little girl named Lily.";
	size_t n;
	int32_t *ids = ids_of(text, &n);
	run_t x;
	run_open(&x, OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":[\"Lily\",\"girl named\"]}");
	int stopped_at = -1;
	for (size_t i = 0; i < n; i++) {
		engine_event ev = ev_tok(ids[i], i + 1 == n ? ENGINE_FINISH_LENGTH : ENGINE_FINISH_NONE, (int)i + 1);
		int rc = run_event(&x, &ev);
		cr_assert(!strstr(x.streamed, "girl named") && !strstr(x.streamed, "Lily"), "stop text streamed");
		if (rc == 1) {
			stopped_at = (int)i;
			break;
		}
	}
	cr_assert(stopped_at >= 0 && stopped_at < (int)n - 1, "the stop string ended it");
	cr_assert(x.c.finish == OPENAI_FINISH_STOP && x.c.matched_stop == 1);
	/* the engine goes on until the abort lands: later events are ignored */
	engine_event late = ev_tok(ids[n - 1], ENGINE_FINISH_ABORT, 99);
	cr_assert(run_event(&x, &late) == 0);
	cr_assert(x.c.finish == OPENAI_FINISH_STOP && x.c.completion_tokens == stopped_at + 1);
	/* the decoded text has SPM's leading space; compare from the prefix */
	cr_assert(strstr(text, x.c.text) || strstr(x.c.text, "Once upon a time, there was a little "), "%s", x.c.text);
	cr_assert(!strcmp(x.streamed, x.c.text), "streamed '%s' != final '%s'", x.streamed, x.c.text);
	cr_assert(!strcmp(x.finish, "stop"));
	size_t len;
	char *body = openai_render_response(&x.rs, &x.c, 1, 0.5, &len);
	json_object *o = jparse(body);
	cr_assert(!strcmp(jgets(o, "choices.0.text"), x.c.text));
	cr_assert(!strcmp(jgets(o, "choices.0.matched_stop"), "girl named"));
	json_object_put(o);
	alloc_free(body);
	alloc_free(ids);
	run_close(&x);
}

Test(openai_choice, possible_stop_prefix_is_held_back, .fini = fini)
{
	size_t n;
	int32_t *ids = ids_of(", there was a", &n);
	run_t x;
	run_open(&x, OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":\"there wax\"}");
	char seen[64][256];
	for (size_t i = 0; i < n; i++) {
		engine_event ev = ev_tok(ids[i], i + 1 == n ? ENGINE_FINISH_LENGTH : ENGINE_FINISH_NONE, (int)i + 1);
		run_event(&x, &ev);
		snprintf(seen[i], sizeof(seen[i]), "%.255s", x.streamed);
	}
	/* while the text ends in "there wa", that part is not sent */
	for (size_t i = 0; i < n; i++) {
		const char *tail = strstr(seen[i], "there");
		if (tail)
			cr_assert(strstr(seen[i], "there was"), "held-back prefix leaked: '%s'", seen[i]);
	}
	cr_assert(x.c.finish == OPENAI_FINISH_LENGTH && !strcmp(x.streamed, x.c.text), "'%s' vs '%s'", x.streamed,
		  x.c.text);
	cr_assert(strstr(x.c.text, "there was a"));
	/* a prefix still held at the end is released */
	run_t y;
	size_t m;
	int32_t *ids2 = ids_of(", there wa", &m);
	run_open(&y, OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":\"there wax\"}");
	for (size_t i = 0; i < m; i++) {
		engine_event ev = ev_tok(ids2[i], i + 1 == m ? ENGINE_FINISH_LENGTH : ENGINE_FINISH_NONE, (int)i + 1);
		run_event(&y, &ev);
	}
	cr_assert(strstr(y.streamed, "there wa") && !strcmp(y.streamed, y.c.text));
	alloc_free(ids);
	alloc_free(ids2);
	run_close(&x);
	run_close(&y);
}

static int32_t byte_tok(unsigned b)
{
	char name[8];
	snprintf(name, sizeof(name), "<0x%02X>", b);
	int32_t id = tokenizer_find(tok(), name, strlen(name));
	cr_assert(id >= 0, "no byte token %s", name);
	return id;
}

Test(openai_choice, utf8_split_across_tokens_never_splits_a_chunk, .fini = fini)
{
	run_t x;
	run_open(&x, OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
	engine_event a = ev_tok(byte_tok(0xC3), ENGINE_FINISH_NONE, 1);
	run_event(&x, &a);
	cr_assert(x.c.len == 0 && !strcmp(x.streamed, ""), "half a character must wait");
	cr_assert(x.chunks == 1, "the role chunk goes out at once");
	engine_event b = ev_tok(byte_tok(0xA9), ENGINE_FINISH_NONE, 2);
	run_event(&x, &b);
	cr_assert(!strcmp(x.streamed, "\xC3\xA9"), "got '%s'", x.streamed);
	/* an invalid sequence becomes U+FFFD; a dangling lead byte at the end too */
	engine_event c = ev_tok(byte_tok(0xC3), ENGINE_FINISH_NONE, 3);
	run_event(&x, &c);
	engine_event d = ev_tok(byte_tok('a'), ENGINE_FINISH_NONE, 4);
	run_event(&x, &d);
	engine_event f = ev_tok(byte_tok(0xE2), ENGINE_FINISH_LENGTH, 5);
	run_event(&x, &f);
	cr_assert(!strcmp(x.c.text, "\xC3\xA9\xEF\xBF\xBD" "a\xEF\xBF\xBD"), "got '%s'", x.c.text);
	cr_assert(!strcmp(x.streamed, x.c.text) && !strcmp(x.finish, "length"));
	run_close(&x);
}

Test(openai_choice, eos_and_stop_token_ids_are_not_output, .fini = fini)
{
	size_t n;
	int32_t *ids = ids_of("Lily", &n); /* SPM: one dummy-prefix space */
	run_t x;
	run_open(&x, OPENAI_API_GENERATE, "{\"text\":\"x\"}");
	for (size_t i = 0; i < n; i++) {
		engine_event ev = ev_tok(ids[i], ENGINE_FINISH_NONE, (int)i + 1);
		run_event(&x, &ev);
	}
	engine_event eos = ev_tok(tokenizer_eos(tok()), ENGINE_FINISH_STOP, (int)n + 1);
	run_event(&x, &eos);
	cr_assert(x.c.n_ids == (int)n && x.c.completion_tokens == (int)n + 1, "EOS counted, not kept");
	cr_assert(!strcmp(x.c.text, " Lily") && x.c.matched_id == tokenizer_eos(tok()), "'%s'", x.c.text);
	size_t len;
	char *body = openai_render_response(&x.rs, &x.c, 1, 0.25, &len);
	json_object *o = jparse(body);
	cr_assert(!strcmp(jgets(o, "text"), " Lily"));
	cr_assert(json_object_array_length(jget(o, "output_ids")) == n);
	cr_assert(!strcmp(jgets(o, "meta_info.finish_reason.type"), "stop"));
	cr_assert(jgeti(o, "meta_info.finish_reason.matched") == tokenizer_eos(tok()));
	cr_assert(jgeti(o, "meta_info.prompt_tokens") == 3 && jgeti(o, "meta_info.cached_tokens") == 1);
	cr_assert(jgeti(o, "meta_info.completion_tokens") == (int64_t)n + 1);
	cr_assert(!strcmp(jgets(o, "meta_info.id"), "cmpl-test"));
	cr_assert(json_object_is_type(jget(o, "meta_info.e2e_latency"), json_type_double));
	cr_assert(!strcmp(x.streamed, " Lily") && !strcmp(x.finish, "stop"), "cumulative stream text");
	json_object_put(o);
	alloc_free(body);
	run_close(&x);

	/* a stop_token_ids token (a normal piece) is left out too */
	run_open(&x, OPENAI_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop_token_ids\":[300]}");
	engine_event a = ev_tok(ids[0], ENGINE_FINISH_NONE, 1);
	run_event(&x, &a);
	engine_event s = ev_tok(300, ENGINE_FINISH_STOP, 2);
	run_event(&x, &s);
	body = openai_render_response(&x.rs, &x.c, 1, 0.25, &len);
	o = jparse(body);
	cr_assert(jgeti(o, "choices.0.matched_stop") == 300 && !strcmp(jgets(o, "choices.0.finish_reason"), "stop"));
	json_object_put(o);
	alloc_free(body);
	run_close(&x);
	alloc_free(ids);
}

/* ---- response shapes --------------------------------------------------------- */

Test(openai_render, completion_with_n_echo_logprobs_usage, .fini = fini)
{
	openai_request r;
	parse_ok(OPENAI_API_COMPLETIONS, "{\"prompt\":\"Hi\",\"n\":2,\"echo\":true,\"logprobs\":2}", &r);
	openai_choice ch[2];
	size_t n;
	int32_t *ids = ids_of(" there", &n);
	for (int i = 0; i < 2; i++) {
		cr_assert(openai_choice_init(&ch[i], tok(), true, i, 0) == 0);
		cr_assert(openai_choice_set_echo(&ch[i], tok(), &r.prompts[0]) == 0);
		for (size_t k = 0; k < n; k++) {
			engine_event ev = ev_tok(ids[k], k + 1 == n ? ENGINE_FINISH_LENGTH : ENGINE_FINISH_NONE, (int)k + 1);
			ev.cached_tokens = i; /* siblings share the prompt: counted once */
			openai_choice_event(&ch[i], &r, tok(), &ev);
		}
	}
	openai_resp rs = { .req = &r, .tok = tok(), .id = "cmpl-1", .created = 1700000000, .model = "m" };
	size_t len;
	char *body = openai_render_response(&rs, ch, 2, 1.0, &len);
	cr_assert(len == strlen(body));
	json_object *o = jparse(body);
	cr_assert(!strcmp(jgets(o, "id"), "cmpl-1") && !strcmp(jgets(o, "object"), "text_completion"));
	cr_assert(jgeti(o, "created") == 1700000000 && !strcmp(jgets(o, "model"), "m"));
	cr_assert(json_object_array_length(jget(o, "choices")) == 2 && jgeti(o, "choices.1.index") == 1);
	char want[64];
	snprintf(want, sizeof(want), "Hi%s", ch[0].text);
	cr_assert(!strcmp(jgets(o, "choices.0.text"), want), "echo: %s", jgets(o, "choices.0.text"));
	cr_assert(!strcmp(jgets(o, "choices.0.finish_reason"), "length"));
	json_object *lp = jget(o, "choices.0.logprobs");
	cr_assert(json_object_array_length(jget(lp, "tokens")) == n);
	cr_assert(json_object_array_length(jget(lp, "token_logprobs")) == n);
	cr_assert(json_object_array_length(jget(lp, "text_offset")) == n && jgeti(lp, "text_offset.0") == 2);
	cr_assert(json_object_object_length(jget(lp, "top_logprobs.0")) == 2);
	cr_assert(json_object_get_double(jget(lp, "token_logprobs.0")) == -0.5);
	cr_assert(jgeti(o, "usage.prompt_tokens") == 3, "prompt counted once for n=2");
	cr_assert(jgeti(o, "usage.completion_tokens") == 2 * (int64_t)n);
	cr_assert(jgeti(o, "usage.total_tokens") == 3 + 2 * (int64_t)n);
	cr_assert(jgeti(o, "usage.prompt_tokens_details.cached_tokens") == 0);
	cr_assert(!strstr(body, "inf") && !strstr(body, "nan"), "no infinities in JSON: %s", body);
	cr_assert(strstr(body, "-9999"), "-inf logprob is -9999");
	json_object_put(o);
	alloc_free(body);
	for (int i = 0; i < 2; i++)
		openai_choice_fini(&ch[i]);
	alloc_free(ids);
	openai_request_fini(&r);
}

Test(openai_render, chat_response_and_stream_chunks, .fini = fini)
{
	run_t x;
	run_open(&x, OPENAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,"
				      "\"top_logprobs\":1,\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
	x.rs.id = "chatcmpl-9";
	size_t n;
	int32_t *ids = ids_of(" there was", &n);
	size_t len;
	/* first chunk: role + content, then deltas, then a finish chunk with delta {} */
	for (size_t k = 0; k < n; k++) {
		engine_event ev = ev_tok(ids[k], k + 1 == n ? ENGINE_FINISH_LENGTH : ENGINE_FINISH_NONE, (int)k + 1);
		openai_choice_event(&x.c, &x.r, tok(), &ev);
		char *chunk = openai_render_chunk(&x.rs, &x.c, 0.1, &len);
		cr_assert(chunk);
		char *js = strndup(chunk + 6, (size_t)(strstr(chunk, "\n\n") - chunk - 6));
		json_object *o = jparse(js);
		cr_assert(!strcmp(jgets(o, "object"), "chat.completion.chunk") && !strcmp(jgets(o, "id"), "chatcmpl-9"));
		json_object *role = NULL;
		json_object_object_get_ex(jget(o, "choices.0.delta"), "role", &role);
		cr_assert((k == 0) == (role != NULL), "role only in the first chunk");
		cr_assert(json_object_array_length(jget(o, "choices.0.logprobs.content")) == 1);
		cr_assert(json_object_array_length(jget(o, "choices.0.logprobs.content.0.top_logprobs")) == 1);
		cr_assert(json_object_is_type(jget(o, "choices.0.logprobs.content.0.bytes"), json_type_array));
		cr_assert(jget(o, "choices.0.finish_reason") == NULL);
		json_object_put(o);
		free(js);
		if (k + 1 == n) { /* the last one carries the finish chunk too */
			const char *second = strstr(chunk, "\n\ndata: ");
			cr_assert(second, "finish chunk: %s", chunk);
			json_object *f = jparse(second + 8);
			cr_assert(!strcmp(jgets(f, "choices.0.finish_reason"), "length"));
			cr_assert(json_object_object_length(jget(f, "choices.0.delta")) == 0);
			json_object_put(f);
		}
		alloc_free(chunk);
	}
	cr_assert(openai_render_chunk(&x.rs, &x.c, 0.1, &len) == NULL && len == 0, "nothing left");
	char *u = openai_render_usage_chunk(&x.rs, &x.c, 1, &len);
	json_object *o = jparse(u + 6);
	cr_assert(json_object_array_length(jget(o, "choices")) == 0 && jgeti(o, "usage.completion_tokens") == (int)n);
	json_object_put(o);
	alloc_free(u);
	char *body = openai_render_response(&x.rs, &x.c, 1, 0.1, &len);
	o = jparse(body);
	cr_assert(!strcmp(jgets(o, "object"), "chat.completion"));
	cr_assert(!strcmp(jgets(o, "choices.0.message.role"), "assistant"));
	cr_assert(!strcmp(jgets(o, "choices.0.message.content"), x.c.text));
	cr_assert(json_object_array_length(jget(o, "choices.0.logprobs.content")) == n);
	json_object_put(o);
	alloc_free(body);
	alloc_free(ids);
	run_close(&x);
}

Test(openai_render, generate_logprobs_meta_info, .fini = fini)
{
	run_t x;
	run_open(&x, OPENAI_API_GENERATE, "{\"text\":\"x\",\"return_logprob\":true,\"top_logprobs_num\":2,"
					  "\"return_text_in_logprobs\":true}");
	engine_event a = ev_tok(byte_tok('a'), ENGINE_FINISH_NONE, 1);
	openai_choice_event(&x.c, &x.r, tok(), &a);
	engine_event b = ev_tok(byte_tok('b'), ENGINE_FINISH_LENGTH, 2);
	openai_choice_event(&x.c, &x.r, tok(), &b);
	size_t len;
	char *body = openai_render_response(&x.rs, &x.c, 1, 0.1, &len);
	json_object *o = jparse(body);
	json_object *t = jget(o, "meta_info.output_token_logprobs");
	cr_assert(json_object_array_length(t) == 2);
	cr_assert(json_object_get_double(jget(t, "0.0")) == -0.5 && jgeti(t, "0.1") == byte_tok('a'));
	cr_assert(!strcmp(jgets(t, "1.2"), "b"));
	cr_assert(json_object_array_length(jget(o, "meta_info.output_top_logprobs.0")) == 2);
	cr_assert(!strcmp(jgets(o, "meta_info.finish_reason.type"), "length"));
	cr_assert(jgeti(o, "meta_info.finish_reason.length") == 2);
	json_object_put(o);
	alloc_free(body);
	run_close(&x);
}

Test(openai_render, errors)
{
	openai_error e;
	cr_assert(openai_error_set(&e, 400, "top_p", "top_p: %g is outside (0, 1]", 1.5) == ERR_INVAL);
	size_t len;
	char *s = openai_error_json(&e, &len);
	json_object *o = jparse(s);
	cr_assert(!strcmp(jgets(o, "error.message"), "top_p: 1.5 is outside (0, 1]"));
	cr_assert(!strcmp(jgets(o, "error.type"), "invalid_request_error"));
	cr_assert(!strcmp(jgets(o, "error.param"), "top_p"));
	cr_assert(json_object_object_length(jget(o, "error")) == 4);
	json_object_put(o);
	alloc_free(s);
	openai_error_set(&e, 503, NULL, "busy");
	e.code = "overloaded";
	s = openai_error_json(&e, &len);
	o = jparse(s);
	cr_assert(jget(o, "error.param") == NULL && !strcmp(jgets(o, "error.code"), "overloaded"));
	cr_assert(!strcmp(jgets(o, "error.type"), "service_unavailable_error"));
	json_object_put(o);
	alloc_free(s);
	openai_error_set(&e, 401, NULL, "key");
	cr_assert(!strcmp(e.type, "authentication_error"));
	openai_error_set(&e, 413, NULL, "big");
	cr_assert(!strcmp(e.type, "invalid_request_error"));
	s = openai_render_error_chunk(&e, &len);
	cr_assert(!strncmp(s, "data: {\"error\":", 15) && !strcmp(s + len - 2, "\n\n"));
	alloc_free(s);
}

Test(openai_utf8, sanitize_replaces_maximal_invalid_subparts)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "abc", "abc" },
		{ "\xC3\xA9", "\xC3\xA9" },
		{ "\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80" },
		{ "\xC3", "\xEF\xBF\xBD" },
		{ "\xE2\x82", "\xEF\xBF\xBD" },                  /* one maximal subpart */
		{ "\xE2\x82x", "\xEF\xBF\xBDx" },
		{ "\xFF\xFE", "\xEF\xBF\xBD\xEF\xBF\xBD" },
		{ "\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" }, /* surrogate: ED then 2 bad */
		{ "\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD" },      /* overlong */
		{ "\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char out[64];
		size_t n = openai_utf8_sanitize(cases[i].in, strlen(cases[i].in), out);
		out[n] = '\0';
		cr_assert(!strcmp(out, cases[i].out), "case %zu", i);
	}
}
