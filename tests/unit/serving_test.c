/* serving_test.c - the per-response state machine of `pdserve bench
 * serving`, fed raw response bytes as a server sends them: TTFT at the first
 * text chunk, ITLs between text chunks (a /generate chunk with k new tokens
 * spreads over k gaps), counts from usage / meta_info (a usage chunk with
 * no choices), role-only chat chunks, bytes split anywhere, non-streamed
 * bodies, HTTP errors, error events, broken chunks and timeouts; plus the
 * backend names. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "bench/serving.h"

#define NEAR(got, want) cr_assert(fabs((got) - (want)) < 1e-9, "%s = %.12g, want %.12g", #got, (double)(got), (double)(want))

typedef struct {
	double t;
	const char *bytes;
} piece;

/* Feed pieces (each at its time), then the end at t_end. split > 0 feeds
   every piece `split` bytes at a time. */
static void feed(serving_resp *r, const piece *p, size_t n, long status, double t_end, size_t split)
{
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(p[i].bytes);
		if (!split) {
			serving_resp_data(r, p[i].t, status, p[i].bytes, len);
			continue;
		}
		for (size_t o = 0; o < len; o += split)
			serving_resp_data(r, p[i].t, status, p[i].bytes + o, len - o < split ? len - o : split);
	}
	serving_resp_done(r, t_end, 0, status, "", 10);
}

static const piece GENERATE[] = {
	{ 0.10, "data: {\"text\":\" a\",\"meta_info\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n" },
	{ 0.15, "data: {\"text\":\" a time\",\"meta_info\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n" },
	/* two tokens in one chunk: two gaps of 0.05 */
	{ 0.25, "data: {\"text\":\" a time, there\",\"meta_info\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n" },
	/* no new token: no ITL, and the next gap runs from 0.25 */
	{ 0.27, "data: {\"text\":\" a time, there\",\"meta_info\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n" },
	{ 0.30, "data: {\"text\":\" a time, there was\",\"meta_info\":{\"prompt_tokens\":3,\"completion_tokens\":5,"
		"\"finish_reason\":{\"type\":\"length\"}}}\n\n" },
	{ 0.31, "data: [DONE]\n\n" },
};

Test(serving, generate_stream)
{
	for (size_t split = 0; split < 40; split += 7) {
		serving_resp r;
		serving_resp_init(&r, SERVING_API_GENERATE, true);
		feed(&r, GENERATE, sizeof(GENERATE) / sizeof(GENERATE[0]), 200, 0.32, split);
		cr_assert(r.success, "split %zu: %s", split, r.error);
		NEAR(r.ttft_s, 0.10);
		NEAR(r.latency_s, 0.31); /* the last line, [DONE] included */
		cr_assert_eq(r.n_itl, 4, "split %zu: %zu ITLs", split, r.n_itl);
		NEAR(r.itl[0], 0.05);
		NEAR(r.itl[1], 0.05);
		NEAR(r.itl[2], 0.05);
		NEAR(r.itl[3], 0.05);
		cr_assert_eq(r.output_tokens, 5);
		cr_assert_eq(r.prompt_tokens, 3);
		cr_assert_str_eq(r.text, " a time, there was");
		serving_resp_fini(&r);
	}
}

static const piece COMPLETIONS[] = {
	{ 0.2, "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\" a\",\"finish_reason\":null}]}\n\n" },
	{ 0.3, "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\" time\",\"finish_reason\":null}]}\n\n" },
	{ 0.35, "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\",\",\"finish_reason\":null}]}\n\n" },
	{ 0.36, "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n" },
	{ 0.37, "data: {\"object\":\"text_completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,"
		"\"total_tokens\":10}}\n\n" },
	{ 0.38, "data: [DONE]\n\n" },
};

Test(serving, completions_stream_with_usage_chunk)
{
	for (size_t split = 0; split < 30; split += 3) {
		serving_resp r;
		serving_resp_init(&r, SERVING_API_COMPLETIONS, true);
		feed(&r, COMPLETIONS, sizeof(COMPLETIONS) / sizeof(COMPLETIONS[0]), 200, 0.4, split);
		cr_assert(r.success, "%s", r.error);
		NEAR(r.ttft_s, 0.2);
		cr_assert_eq(r.n_itl, 2, "empty-text chunks are not tokens");
		NEAR(r.itl[0], 0.1);
		NEAR(r.itl[1], 0.05);
		NEAR(r.latency_s, 0.38);
		cr_assert_eq(r.output_tokens, 3);
		cr_assert_eq(r.prompt_tokens, 7);
		cr_assert_str_eq(r.text, " a time,");
		serving_resp_fini(&r);
	}
}

Test(serving, chat_stream)
{
	static const piece P[] = {
		{ 0.05, "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n" },
		{ 0.10, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n" },
		{ 0.12, ": keep-alive comment\n\n" },
		{ 0.30, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"}}]}\n\n" },
		{ 0.31, "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n" },
		{ 0.32, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":42,\"completion_tokens\":2}}\n\n" },
		{ 0.33, "data: [DONE]" }, /* no final newline */
	};
	serving_resp r;
	serving_resp_init(&r, SERVING_API_CHAT, true);
	feed(&r, P, sizeof(P) / sizeof(P[0]), 200, 0.5, 0);
	cr_assert(r.success, "%s", r.error);
	NEAR(r.ttft_s, 0.10);
	cr_assert_eq(r.n_itl, 1);
	NEAR(r.itl[0], 0.20);
	NEAR(r.latency_s, 0.5); /* the unterminated last line is read at the end */
	cr_assert_eq(r.output_tokens, 2);
	cr_assert_eq(r.prompt_tokens, 42);
	cr_assert_str_eq(r.text, "Hi there");
	serving_resp_fini(&r);
}

Test(serving, non_streamed_bodies)
{
	struct {
		serving_api api;
		const char *body;
		const char *text;
		int out, in;
	} T[] = {
		{ SERVING_API_GENERATE, "{\"text\":\"abc\",\"meta_info\":{\"prompt_tokens\":4,\"completion_tokens\":9}}", "abc", 9, 4 },
		{ SERVING_API_COMPLETIONS,
		  "{\"choices\":[{\"text\":\"xy\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}", "xy", 2, 5 },
		{ SERVING_API_CHAT,
		  "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"ok\"}}],\"usage\":{\"prompt_tokens\":6,"
		  "\"completion_tokens\":1}}", "ok", 1, 6 },
	};
	for (size_t i = 0; i < sizeof(T) / sizeof(T[0]); i++) {
		serving_resp r;
		serving_resp_init(&r, T[i].api, false);
		size_t n = strlen(T[i].body);
		serving_resp_data(&r, 0.1, 200, T[i].body, n / 2);
		serving_resp_data(&r, 0.2, 200, T[i].body + n / 2, n - n / 2);
		serving_resp_done(&r, 0.25, 0, 200, "", 10);
		cr_assert(r.success, "%zu: %s", i, r.error);
		NEAR(r.ttft_s, 0.25);
		NEAR(r.latency_s, 0.25);
		cr_assert_eq(r.n_itl, 0);
		cr_assert_str_eq(r.text, T[i].text);
		cr_assert_eq(r.output_tokens, T[i].out);
		cr_assert_eq(r.prompt_tokens, T[i].in);
		serving_resp_fini(&r);
	}
}

Test(serving, failures_keep_their_cause)
{
	serving_resp r;
	const char *e400 = "{\"error\":{\"message\":\"prompt too long\",\"type\":\"invalid_request_error\"}}";
	serving_resp_init(&r, SERVING_API_COMPLETIONS, true);
	serving_resp_data(&r, 0.01, 400, e400, strlen(e400));
	serving_resp_done(&r, 0.02, 0, 400, "", 10);
	cr_assert(!r.success);
	cr_assert_str_eq(r.error, "HTTP 400: prompt too long");
	serving_resp_fini(&r);

	serving_resp_init(&r, SERVING_API_GENERATE, true);
	serving_resp_data(&r, 0.01, 503, "Service Unavailable", 19);
	serving_resp_done(&r, 0.02, 0, 503, "", 10);
	cr_assert_str_eq(r.error, "HTTP 503: Service Unavailable");
	serving_resp_fini(&r);

	/* an error event in the stream, after some text */
	static const piece P[] = {
		{ 0.1, "data: {\"choices\":[{\"text\":\"a\"}]}\n\n" },
		{ 0.2, "data: {\"error\":{\"message\":\"engine failed\",\"code\":500}}\n\n" },
		{ 0.3, "data: [DONE]\n\n" },
	};
	serving_resp_init(&r, SERVING_API_COMPLETIONS, true);
	feed(&r, P, 3, 200, 0.3, 0);
	cr_assert(!r.success);
	cr_assert_str_eq(r.error, "error in stream: engine failed");
	serving_resp_fini(&r);

	serving_resp_init(&r, SERVING_API_CHAT, true);
	serving_resp_data(&r, 0.1, 200, "data: {\"choices\": [\n", 20);
	serving_resp_done(&r, 0.2, 0, 200, "", 10);
	cr_assert(!r.success);
	cr_assert(strstr(r.error, "not JSON"), "%s", r.error);
	serving_resp_fini(&r);

	serving_resp_init(&r, SERVING_API_CHAT, true);
	serving_resp_done(&r, 5, ERR_TIMEOUT, 0, "Timeout was reached", 5);
	cr_assert(!r.success);
	cr_assert(r.timeout);
	cr_assert_str_eq(r.error, "timeout: no complete response within 5 s");
	serving_resp_fini(&r);

	serving_resp_init(&r, SERVING_API_CHAT, true);
	serving_resp_done(&r, 0.001, ERR_IO, 0, "Couldn't connect to server", 5);
	cr_assert(!r.success && !r.timeout);
	cr_assert_str_eq(r.error, "connection: Couldn't connect to server");
	serving_resp_fini(&r);

	serving_resp_init(&r, SERVING_API_GENERATE, false);
	serving_resp_data(&r, 0.1, 200, "not json", 8);
	serving_resp_done(&r, 0.2, 0, 200, "", 10);
	cr_assert(!r.success);
	serving_resp_fini(&r);
}

Test(serving, backend_names)
{
	cr_assert_eq(serving_api_of("sglang"), SERVING_API_GENERATE);
	cr_assert_eq(serving_api_of("sglang-native"), SERVING_API_GENERATE);
	cr_assert_eq(serving_api_of("openai"), SERVING_API_COMPLETIONS);
	cr_assert_eq(serving_api_of("sglang-oai"), SERVING_API_COMPLETIONS);
	cr_assert_eq(serving_api_of("vllm"), SERVING_API_COMPLETIONS);
	cr_assert_eq(serving_api_of("openai-chat"), SERVING_API_CHAT);
	cr_assert_eq(serving_api_of("vllm-chat"), SERVING_API_CHAT);
	cr_assert_eq(serving_api_of("trt"), -1);
	cr_assert_eq(serving_api_of(NULL), -1);
}
