/* bench_serving.c - `pdserve bench serving` (alias `pdserve bench_serving`):
 * the serving load generator. Flags and wiring only; the tool is
 * src/bench/serving.c.
 *
 * Flags are SGLang's bench_serving names (python -m sglang.bench_serving),
 * so its command lines run unchanged; like Python's argparse, getopt_long
 * accepts unambiguous prefixes (--random-input for --random-input-len).
 * pdserve additions: --slo-ttft-ms/--slo-tpot-ms/--slo-e2e-ms (goodput),
 * --plot DIR, --timeout, --api-key, --ignore-eos.
 * Accepted and ignored (logged): --profile, --apply-chat-template (use the
 * chat backend: the server applies its template), --pd-separated (a router
 * in front hides PD from the client).
 *
 * Exit status: 0 when the run completed (failed requests are reported, not
 * fatal), 1 on a runtime error (server unreachable, warmup or every request
 * failed, unwritable output), 2 on bad usage.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/log.h"
#include "bench/httpc.h"
#include "bench/serving.h"
#include "cmd/cmd.h"
#include "cmd/common.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdserve bench serving [options]   (alias: pdserve bench_serving)\n"
		"SGLang bench_serving's load generator: sends a workload to an OpenAI-compatible or SGLang server\n"
		"and reports TTFT, TPOT, ITL, E2E latency, throughput, concurrency and goodput.\n"
		"\ntarget:\n"
		"  --backend B                 sglang|sglang-native (/generate), openai|sglang-oai|vllm|lmdeploy\n"
		"                              (/v1/completions), openai-chat|sglang-oai-chat|vllm-chat|lmdeploy-chat\n"
		"                              (/v1/chat/completions) (default sglang)\n"
		"  --base-url URL              server URL (default http://HOST:PORT)\n"
		"  --host H, --port N          (default 127.0.0.1, port 30000; vllm 8000, lmdeploy 23333)\n"
		"  --model NAME                model name for the OpenAI APIs (default: the first of /v1/models)\n"
		"  --tokenizer FILE.gguf       tokenize locally (default: --model when it names a .gguf file,\n"
		"                              else the server's /tokenize and /detokenize)\n"
		"  --api-key KEY               Authorization: Bearer KEY (default $OPENAI_API_KEY)\n"
		"\nworkload:\n"
		"  --dataset-name D            sharegpt|random|generated-shared-prefix (default sharegpt)\n"
		"  --dataset-path FILE         ShareGPT JSON (sharegpt; for random: the source text, optional)\n"
		"  --num-prompts N             requests (default 1000)\n"
		"  --random-input-len N        random: prompt tokens (default 1024)\n"
		"  --random-output-len N       random: output tokens (default 1024)\n"
		"  --random-range-ratio R      random: lengths uniform in [max(floor(L*R),1), L] (default 0.0)\n"
		"  --sharegpt-output-len N     sharegpt: fixed output length (default: the reply's)\n"
		"  --sharegpt-context-len N    sharegpt: drop pairs longer than N tokens\n"
		"  --prompt-suffix S           sharegpt: appended to each prompt before \"Assistant:\"\n"
		"  --gsp-num-groups N, --gsp-prompts-per-group N, --gsp-system-prompt-len N,\n"
		"  --gsp-question-len N, --gsp-output-len N   generated-shared-prefix (64, 16, 2048, 128, 256)\n"
		"  --seed N                    (default 1)\n"
		"\nload:\n"
		"  --request-rate R            requests/s, Poisson arrivals; inf = all at once (default inf)\n"
		"  --max-concurrency N         at most N requests in flight (default: no limit)\n"
		"  --warmup-requests N         sent first, not measured (default 1)\n"
		"  --flush-cache               POST /flush_cache before the measured run\n"
		"  --disable-ignore-eos        let requests stop at EOS (default: ignore_eos, exact lengths)\n"
		"  --ignore-eos                ignore EOS (the default; for command lines that say so)\n"
		"  --disable-stream            non-streaming requests (TTFT = E2E latency)\n"
		"  --tokenize-prompt           send token ids instead of text (random dataset; not chat)\n"
		"  --return-logprob            ask /generate for logprobs\n"
		"  --extra-request-body JSON   merged into every request body\n"
		"  --timeout S                 per-request timeout in seconds (default 21600)\n"
		"\nreport:\n"
		"  --slo-ttft-ms X, --slo-tpot-ms X, --slo-e2e-ms X   goodput: requests meeting every given SLO\n"
		"  --output-file FILE          append one JSON line with every metric and per-request arrays\n"
		"  --output-details            add the generated texts to that line\n"
		"  --plot DIR                  TTFT/TPOT CDFs, ITL over time, throughput over time (PNG via gnuplot)\n"
		"  --tag S                     recorded in the JSON line\n"
		"  --disable-tqdm              no progress bar\n"
		"  --log-level debug|info|warning|error\n"
		"  accepted and ignored: --profile --pd-separated --apply-chat-template\n");
}

enum {
	O_BACKEND = 256, O_BASE, O_HOST, O_PORT, O_DS, O_DSPATH, O_MODEL, O_TOK, O_N, O_SGOUT, O_SGCTX, O_RIN, O_ROUT,
	O_RRATIO, O_RATE, O_MAXC, O_OUT, O_DETAILS, O_NOTQDM, O_NOSTREAM, O_LOGPROB, O_SEED, O_NOEOS, O_EOS, O_EXTRA,
	O_SUFFIX, O_FLUSH, O_WARM, O_TOKP, O_GG, O_GP, O_GS, O_GQ, O_GO, O_TAG, O_SLO_TTFT, O_SLO_TPOT, O_SLO_E2E,
	O_TIMEOUT, O_PLOT, O_KEY, O_LOG, O_IGN, O_LORA,
};

int cmd_bench_serving(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "backend", required_argument, 0, O_BACKEND },
		{ "base-url", required_argument, 0, O_BASE },
		{ "host", required_argument, 0, O_HOST },
		{ "port", required_argument, 0, O_PORT },
		{ "dataset-name", required_argument, 0, O_DS },
		{ "dataset-path", required_argument, 0, O_DSPATH },
		{ "model", required_argument, 0, O_MODEL },
		{ "served-model-name", required_argument, 0, O_MODEL },
		{ "tokenizer", required_argument, 0, O_TOK },
		{ "num-prompts", required_argument, 0, O_N },
		{ "sharegpt-output-len", required_argument, 0, O_SGOUT },
		{ "sharegpt-context-len", required_argument, 0, O_SGCTX },
		{ "random-input-len", required_argument, 0, O_RIN },
		{ "random-output-len", required_argument, 0, O_ROUT },
		{ "random-range-ratio", required_argument, 0, O_RRATIO },
		{ "request-rate", required_argument, 0, O_RATE },
		{ "max-concurrency", required_argument, 0, O_MAXC },
		{ "output-file", required_argument, 0, O_OUT },
		{ "output-details", no_argument, 0, O_DETAILS },
		{ "disable-tqdm", no_argument, 0, O_NOTQDM },
		{ "disable-stream", no_argument, 0, O_NOSTREAM },
		{ "return-logprob", no_argument, 0, O_LOGPROB },
		{ "seed", required_argument, 0, O_SEED },
		{ "disable-ignore-eos", no_argument, 0, O_NOEOS },
		{ "ignore-eos", no_argument, 0, O_EOS },
		{ "extra-request-body", required_argument, 0, O_EXTRA },
		{ "prompt-suffix", required_argument, 0, O_SUFFIX },
		{ "flush-cache", no_argument, 0, O_FLUSH },
		{ "warmup-requests", required_argument, 0, O_WARM },
		{ "tokenize-prompt", no_argument, 0, O_TOKP },
		{ "gsp-num-groups", required_argument, 0, O_GG },
		{ "gsp-prompts-per-group", required_argument, 0, O_GP },
		{ "gsp-system-prompt-len", required_argument, 0, O_GS },
		{ "gsp-question-len", required_argument, 0, O_GQ },
		{ "gsp-output-len", required_argument, 0, O_GO },
		{ "tag", required_argument, 0, O_TAG },
		{ "slo-ttft-ms", required_argument, 0, O_SLO_TTFT },
		{ "slo-tpot-ms", required_argument, 0, O_SLO_TPOT },
		{ "slo-e2e-ms", required_argument, 0, O_SLO_E2E },
		{ "timeout", required_argument, 0, O_TIMEOUT },
		{ "plot", required_argument, 0, O_PLOT },
		{ "api-key", required_argument, 0, O_KEY },
		{ "log-level", required_argument, 0, O_LOG },
		{ "profile", no_argument, 0, O_IGN },
		{ "pd-separated", no_argument, 0, O_IGN },
		{ "apply-chat-template", no_argument, 0, O_IGN },
		{ "lora-name", required_argument, 0, O_LORA },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	serving_config c = {
		.backend = "sglang",
		.dataset_name = "sharegpt",
		.data = {
			.kind = WORKLOAD_SHAREGPT,
			.num_prompts = 1000,
			.random_input_len = 1024,
			.random_output_len = 1024,
			.random_range_ratio = 0.0,
			.gsp_num_groups = 64,
			.gsp_prompts_per_group = 16,
			.gsp_system_prompt_len = 2048,
			.gsp_question_len = 128,
			.gsp_output_len = 256,
			.seed = 1,
		},
		.request_rate = INFINITY,
		.warmup_requests = 1,
		.ignore_eos = true,
		.stream = true,
		.timeout_s = 21600,
	};
	const char *base = NULL, *host = "127.0.0.1";
	long port = -1, v;
	double d;
	int ch, idx = 0;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
		const char *bad = NULL;
		switch (ch) {
		case O_BACKEND: c.backend = optarg; if (serving_api_of(optarg) < 0) bad = "--backend"; break;
		case O_BASE: base = optarg; break;
		case O_HOST: host = optarg; break;
		case O_PORT: if (cmd_parse_int(optarg, 1, 65535, &port)) bad = "--port"; break;
		case O_DS:
			c.dataset_name = optarg;
			if (!strcmp(optarg, "random"))
				c.data.kind = WORKLOAD_RANDOM;
			else if (!strcmp(optarg, "sharegpt"))
				c.data.kind = WORKLOAD_SHAREGPT;
			else if (!strcmp(optarg, "generated-shared-prefix"))
				c.data.kind = WORKLOAD_SHARED_PREFIX;
			else
				bad = "--dataset-name (sharegpt, random, generated-shared-prefix)";
			break;
		case O_DSPATH: c.data.dataset_path = optarg; break;
		case O_MODEL: c.model = optarg; break;
		case O_TOK: c.tokenizer = optarg; break;
		case O_N: if (cmd_parse_int(optarg, 1, 10000000, &v)) bad = "--num-prompts"; c.data.num_prompts = (int)v; break;
		case O_SGOUT: if (cmd_parse_int(optarg, 4, 1 << 24, &v)) bad = "--sharegpt-output-len (>= 4)"; c.data.sharegpt_output_len = (int)v; break;
		case O_SGCTX: if (cmd_parse_int(optarg, 1, 1 << 24, &v)) bad = "--sharegpt-context-len"; c.data.sharegpt_context_len = (int)v; break;
		case O_RIN: if (cmd_parse_int(optarg, 1, 1 << 24, &v)) bad = "--random-input-len"; c.data.random_input_len = (int)v; break;
		case O_ROUT: if (cmd_parse_int(optarg, 1, 1 << 24, &v)) bad = "--random-output-len"; c.data.random_output_len = (int)v; break;
		case O_RRATIO: if (cmd_parse_float(optarg, 0, 1, &c.data.random_range_ratio)) bad = "--random-range-ratio"; break;
		case O_RATE:
			if (!strcmp(optarg, "inf") || !strcmp(optarg, "Infinity"))
				c.request_rate = INFINITY;
			else if (cmd_parse_float(optarg, 1e-6, 1e9, &c.request_rate))
				bad = "--request-rate (a positive number or inf)";
			break;
		case O_MAXC: if (cmd_parse_int(optarg, 1, 1 << 20, &v)) bad = "--max-concurrency"; c.max_concurrency = (int)v; break;
		case O_OUT: c.output_file = optarg; break;
		case O_DETAILS: c.output_details = true; break;
		case O_NOTQDM: c.disable_tqdm = true; break;
		case O_NOSTREAM: c.stream = false; break;
		case O_LOGPROB: c.return_logprob = true; break;
		case O_SEED: if (cmd_parse_int(optarg, 0, __LONG_MAX__, &v)) bad = "--seed"; c.data.seed = (uint64_t)v; break;
		case O_NOEOS: c.ignore_eos = false; break;
		case O_EOS: c.ignore_eos = true; break;
		case O_EXTRA: c.extra_request_body = optarg; break;
		case O_SUFFIX: c.data.prompt_suffix = optarg; break;
		case O_FLUSH: c.flush_cache = true; break;
		case O_WARM: if (cmd_parse_int(optarg, 0, 100000, &v)) bad = "--warmup-requests"; c.warmup_requests = (int)v; break;
		case O_TOKP: c.tokenize_prompt = true; break;
		case O_GG: if (cmd_parse_int(optarg, 1, 1 << 20, &v)) bad = "--gsp-num-groups"; c.data.gsp_num_groups = (int)v; break;
		case O_GP: if (cmd_parse_int(optarg, 1, 1 << 20, &v)) bad = "--gsp-prompts-per-group"; c.data.gsp_prompts_per_group = (int)v; break;
		case O_GS: if (cmd_parse_int(optarg, 1, 1 << 24, &v)) bad = "--gsp-system-prompt-len"; c.data.gsp_system_prompt_len = (int)v; break;
		case O_GQ: if (cmd_parse_int(optarg, 1, 1 << 24, &v)) bad = "--gsp-question-len"; c.data.gsp_question_len = (int)v; break;
		case O_GO: if (cmd_parse_int(optarg, 1, 1 << 24, &v)) bad = "--gsp-output-len"; c.data.gsp_output_len = (int)v; break;
		case O_TAG: c.tag = optarg; break;
		case O_SLO_TTFT: if (cmd_parse_float(optarg, 1e-9, 1e12, &d)) bad = "--slo-ttft-ms"; c.slo.ttft_ms = d; break;
		case O_SLO_TPOT: if (cmd_parse_float(optarg, 1e-9, 1e12, &d)) bad = "--slo-tpot-ms"; c.slo.tpot_ms = d; break;
		case O_SLO_E2E: if (cmd_parse_float(optarg, 1e-9, 1e12, &d)) bad = "--slo-e2e-ms"; c.slo.e2e_ms = d; break;
		case O_TIMEOUT: if (cmd_parse_float(optarg, 0.001, 1e9, &c.timeout_s)) bad = "--timeout"; break;
		case O_PLOT: c.plot_dir = optarg; break;
		case O_KEY: c.api_key = optarg; break;
		case O_LOG:
			if (log_level_parse(optarg) < 0)
				bad = "--log-level";
			else
				log_set_level(log_level_parse(optarg));
			break;
		case O_IGN: LOGI("bench", "--%s: ignored here", opts[idx].name); break;
		case O_LORA: fprintf(stderr, "pdserve bench serving: --lora-name: pdserve serves no LoRA adapters\n"); return 2;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (bad) {
			fprintf(stderr, "pdserve bench serving: bad value for %s: '%s'\n", bad, optarg);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pdserve bench serving: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	c.api = (serving_api)serving_api_of(c.backend);
	char url[1024];
	if (base) {
		size_t n = strlen(base);
		while (n && base[n - 1] == '/')
			n--;
		snprintf(url, sizeof(url), "%.*s", (int)n, base);
	} else {
		if (port < 0)
			port = !strncmp(c.backend, "vllm", 4) ? 8000 : !strncmp(c.backend, "lmdeploy", 8) ? 23333 : 30000;
		snprintf(url, sizeof(url), "http://%s:%ld", host, port);
	}
	c.base_url = url;

	/* one socket per request in flight: raise the open-file limit as
	   bench_serving does (set_ulimit) */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65535 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max < 65535 ? rl.rlim_max : 65535;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (httpc_global_init() < 0) {
		fprintf(stderr, "pdserve bench serving: cannot initialise libcurl\n");
		return 1;
	}
	char err[ERR_LEN] = "";
	int rc = serving_run(&c, err);
	httpc_global_fini();
	if (rc < 0) {
		fprintf(stderr, "pdserve bench serving: %s\n", err);
		return 1;
	}
	return 0;
}
