/* server.c - `pdserve server` (alias `launch_server`): the OpenAI-compatible
 * HTTP server over one engine. Flags and wiring only.
 *
 * Flags use SGLang's launch_server names so SGLang command lines run
 * unchanged. Flags that mean nothing on this CPU build (--trust-remote-code,
 * --disable-cuda-graph, --dtype, ...) are accepted and logged as ignored.
 * Not yet: --tp/--dp > 1 and --nnodes > 1 (refused with a clear message,
 * exit 2); --dist-init-addr / --nnodes 1 / --node-rank 0 are logged and
 * ignored so the seed's multi-node command lines run (docs/DEPLOY.md).
 *
 * Wiring order: the KV transfer layer when in a PD role (the prefill binds
 * its bootstrap port), then bind the HTTP socket (a taken port fails in
 * milliseconds, before the model loads), create the engine with the
 * server's wake-up as its notify callback and the transfer layer's hooks,
 * attach, serve until SIGINT/SIGTERM, then stop the transfer thread,
 * destroy the engine (no events after that), the transfer layer and the
 * server.
 *
 * KV pool size: --max-total-tokens if given, else --mem-fraction-static
 * (default 0.5) of (MemAvailable - model weights); see engine.h.
 *
 * --check-args runs the same parser and checks, prints the resolved
 * configuration (one `key value` line each) and exits, starting nothing:
 * no model lookup, no socket, no transfer layer. What it cannot know from
 * the command line alone is left to the real start: whether the model file
 * and a --chat-template file exist on this host, whether the ports are
 * free, whether UCX sees the --disaggregation-ib-device. Deployment files
 * are checked with it (tests/e2e/deploy.sh).
 *
 * Exit status: 0 after a clean shutdown, 1 runtime error (model, bind),
 * 2 usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/log.h"
#include "cmd/cmd.h"
#include "cmd/common.h"
#include "disagg/xfer.h"
#include "engine/engine.h"
#include "kernels/kernels.h"
#include "model/chat_template.h"
#include "model/gguf.h"
#include "server/http.h"
#include "server/openai.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdserve server --model-path M [options]   (alias: pdserve launch_server)\n"
		"  --model-path, --model M        GGUF model (default: $PDSERVE_MODEL, ../shared stories260K, or synthesized)\n"
		"  --host H                       listen address (default 127.0.0.1)\n"
		"  --port N                       listen port (default 30000)\n"
		"  --served-model-name NAME       model name in responses (default: the model path)\n"
		"  --threads N                    worker threads (default: all cores)\n"
		"  --context-length N             context length (default: the model's)\n"
		"  --page-size N                  tokens per KV page (default 16)\n"
		"  --mem-fraction-static F        KV pool = F x (MemAvailable - weights) (default 0.5)\n"
		"  --max-total-tokens N           KV pool size in tokens (overrides --mem-fraction-static)\n"
		"  --max-running-requests N       concurrent running requests (default 64)\n"
		"  --max-queued-requests N        waiting requests before 503 (default 1024)\n"
		"  --max-prefill-tokens N         prefill tokens in one step (default 16384)\n"
		"  --chunked-prefill-size N       prefill chunk per step (default 512)\n"
		"  --schedule-policy fcfs|lpm     admission order (default fcfs)\n"
		"  --disable-radix-cache          no prefix cache\n"
		"  --kv-cache-dtype auto|f16|bf16|f32\n"
		"  --chat-template NAME|FILE      template family name or a Jinja file (default: from the GGUF)\n"
		"  --api-key KEY                  require Authorization: Bearer KEY\n"
		"  --max-body-size BYTES          largest request body (default 33554432); larger gets 413\n"
		"  --max-header-size BYTES        request line + headers (default 65536); larger gets 431\n"
		"  --max-prompt-tokens N          prompt tokens per request (default: the context length); more: 400\n"
		"  --max-tokens-limit N           largest max_tokens a request may ask for (default: the context); more: 400\n"
		"  --max-n N                      choices per prompt, 1..64 (default 64); more: 400\n"
		"  --max-stop-strings N           stop strings per request, 1..32 (default 32); more: 400\n"
		"  --idle-timeout-secs S          close connections idle this long (default 60; 0 = never)\n"
		"  --log-level debug|info|warning|error\n"
		"  --tp N, --dp N                 only 1 for now\n"
		"  --dist-init-addr HOST:PORT, --nnodes N, --node-rank R   multi-node tensor parallel:\n"
		"                                 only --nnodes 1 for now (then logged and ignored)\n"
		"  --disaggregation-mode null|prefill|decode   PD disaggregation role (default null: unified)\n"
		"  --disaggregation-transfer-backend tcp|shm|ucx|fake   KV transfer (default tcp; mooncake/nixl = ucx)\n"
		"  --disaggregation-bootstrap-port N   prefill: bootstrap service port (default 8998)\n"
		"  --disaggregation-ib-device DEV      RDMA devices (UCX backend; ignored by tcp/shm)\n"
		"  --num-reserved-decode-tokens N      decode: KV reserved beyond the prompt (default 512)\n"
		"  --check-args                   parse and validate the flags, print the resolved configuration,\n"
		"                                 exit 0 (2 on a bad flag); starts nothing, loads no model\n"
		"  --disaggregation-secret S           cluster secret: bootstrap/transfer peers must prove it\n"
		"                                      (default $PDSERVE_DISAGGREGATION_SECRET; docs/SECURITY.md)\n"
		"  accepted and ignored (GPU, multi-node and tuning knobs; each logs a line):\n"
		"    --trust-remote-code --disable-cuda-graph --dtype --enable-metrics --log-requests\n"
		"    --skip-server-warmup --random-seed --device --base-gpu-id --attention-backend --sampling-backend\n"
		"    --cuda-graph-max-bs --tokenizer-path --tokenizer-mode --watchdog-timeout --decode-log-interval\n"
		"    --stream-interval --load-balance-method --schedule-conservativeness --torch-compile-max-bs\n"
		"    --moe-dense-tp-size --disaggregation-decode-tp --disaggregation-decode-dp\n"
		"    --disaggregation-prefill-pp --crash-dump-folder --file-storage-path --mm-attention-backend\n"
		"    --grammar-backend --model-impl --load-format --revision --download-dir --enable-dp-attention\n"
		"    --enable-dp-lm-head --disable-custom-all-reduce --prefill-round-robin-balance\n"
		"    --enable-hierarchical-cache --enable-mixed-chunk --enable-two-batch-overlap --enable-cache-report\n"
		"    --show-time-cost --enable-tokenizer-batch-encode\n"
		"  refused with the reason: --reasoning-parser --tool-call-parser --speculative-algorithm\n"
		"    --quantization --json-model-override-args --preferred-sampling-params --is-embedding\n"
		"    --skip-tokenizer-init --allow-auto-truncate\n");
}

typedef struct {
	const char *model, *host, *served, *chat_template, *api_key, *policy, *disagg, *kv, *log_level;
	const char *backend, *ib_device, *dist_init_addr, *secret;
	long bootstrap_port, reserved_decode, nnodes, node_rank;
	int dist_flags; /* how many of --dist-init-addr/--nnodes/--node-rank were given */
	long port, threads, ctx, page, max_total, max_running, max_queued, max_prefill, chunk, tp, dp, body;
	long header, max_prompt, max_new, max_n, max_stop, idle;
	double mem_frac;
	int disable_radix;
	int check_args;
	xfer_backend backend_id; /* backend, resolved by parse_args */
} srv_opts;

enum {
	O_MODEL = 256, O_HOST, O_PORT, O_SERVED, O_THREADS, O_CTX, O_PAGE, O_MEMF, O_MAXTOT, O_MAXRUN, O_MAXQ,
	O_MAXPRE, O_CHUNK, O_POLICY, O_NORADIX, O_KV, O_TMPL, O_KEY, O_BODY, O_LOG, O_TP, O_DP, O_DISAGG,
	O_IGN_ARG, O_IGN_FLAG, O_BACKEND, O_BOOTPORT, O_IBDEV, O_RESERVED, O_DIST, O_NNODES, O_NODERANK, O_CHECK,
	O_SECRET, O_HEADER, O_MAXPROMPT, O_MAXNEW, O_MAXN, O_MAXSTOP, O_IDLE, O_UNSUP_ARG, O_UNSUP_FLAG,
};

/* SGLang flags for features pdserve does not have, whose absence would
   change what a client gets: refused (exit 2) with the reason, instead of
   getopt's "unrecognized option", so the operator learns what to drop. */
static const struct {
	const char *name, *why;
} UNSUPPORTED[] = {
	{ "reasoning-parser", "no reasoning_content split: the model's text is returned as it is" },
	{ "tool-call-parser", "no tool-call parsing: tool calls stay in the message text" },
	{ "speculative-algorithm", "no speculative decoding" },
	{ "is-embedding", "no embedding endpoint: this server generates text" },
	{ "skip-tokenizer-init", "the server always tokenizes (input_ids are accepted on /generate anyway)" },
	{ "quantization", "weights run in the GGUF file's own types; quantize the file instead (llama-quantize)" },
	{ "json-model-override-args", "the model's hyperparameters come from the GGUF file" },
	{ "preferred-sampling-params", "no server-side sampling defaults: send them per request" },
	{ "allow-auto-truncate", "prompts over the context length are refused with a 400, never truncated" },
};

static const char *unsupported_why(const char *name)
{
	for (size_t i = 0; i < sizeof(UNSUPPORTED) / sizeof(UNSUPPORTED[0]); i++)
		if (!strcmp(name, UNSUPPORTED[i].name))
			return UNSUPPORTED[i].why;
	return "not supported";
}

static int parse_args(int argc, char **argv, srv_opts *o)
{
	static const struct option opts[] = {
		{ "model-path", required_argument, 0, O_MODEL },
		{ "model", required_argument, 0, O_MODEL },
		{ "host", required_argument, 0, O_HOST },
		{ "port", required_argument, 0, O_PORT },
		{ "served-model-name", required_argument, 0, O_SERVED },
		{ "threads", required_argument, 0, O_THREADS },
		{ "context-length", required_argument, 0, O_CTX },
		{ "page-size", required_argument, 0, O_PAGE },
		{ "mem-fraction-static", required_argument, 0, O_MEMF },
		{ "max-total-tokens", required_argument, 0, O_MAXTOT },
		{ "max-running-requests", required_argument, 0, O_MAXRUN },
		{ "max-queued-requests", required_argument, 0, O_MAXQ },
		{ "max-prefill-tokens", required_argument, 0, O_MAXPRE },
		{ "chunked-prefill-size", required_argument, 0, O_CHUNK },
		{ "schedule-policy", required_argument, 0, O_POLICY },
		{ "disable-radix-cache", no_argument, 0, O_NORADIX },
		{ "kv-cache-dtype", required_argument, 0, O_KV },
		{ "chat-template", required_argument, 0, O_TMPL },
		{ "api-key", required_argument, 0, O_KEY },
		{ "max-body-size", required_argument, 0, O_BODY },
		{ "max-header-size", required_argument, 0, O_HEADER },
		{ "max-prompt-tokens", required_argument, 0, O_MAXPROMPT },
		{ "max-tokens-limit", required_argument, 0, O_MAXNEW },
		{ "max-n", required_argument, 0, O_MAXN },
		{ "max-stop-strings", required_argument, 0, O_MAXSTOP },
		{ "idle-timeout-secs", required_argument, 0, O_IDLE },
		{ "log-level", required_argument, 0, O_LOG },
		{ "tp", required_argument, 0, O_TP },
		{ "tp-size", required_argument, 0, O_TP },
		{ "tensor-parallel-size", required_argument, 0, O_TP },
		{ "dp", required_argument, 0, O_DP },
		{ "dp-size", required_argument, 0, O_DP },
		{ "data-parallel-size", required_argument, 0, O_DP },
		{ "disaggregation-mode", required_argument, 0, O_DISAGG },
		{ "disaggregation-transfer-backend", required_argument, 0, O_BACKEND },
		{ "disaggregation-bootstrap-port", required_argument, 0, O_BOOTPORT },
		{ "disaggregation-ib-device", required_argument, 0, O_IBDEV },
		{ "num-reserved-decode-tokens", required_argument, 0, O_RESERVED },
		{ "disaggregation-secret", required_argument, 0, O_SECRET },
		{ "dist-init-addr", required_argument, 0, O_DIST },
		{ "nnodes", required_argument, 0, O_NNODES },
		{ "node-rank", required_argument, 0, O_NODERANK },
		{ "check-args", no_argument, 0, O_CHECK },
		/* no meaning here: accepted so SGLang command lines run, logged */
		{ "dtype", required_argument, 0, O_IGN_ARG },
		{ "random-seed", required_argument, 0, O_IGN_ARG },
		{ "device", required_argument, 0, O_IGN_ARG },
		{ "base-gpu-id", required_argument, 0, O_IGN_ARG },
		{ "attention-backend", required_argument, 0, O_IGN_ARG },
		{ "sampling-backend", required_argument, 0, O_IGN_ARG },
		{ "cuda-graph-max-bs", required_argument, 0, O_IGN_ARG },
		{ "tokenizer-path", required_argument, 0, O_IGN_ARG },
		{ "tokenizer-mode", required_argument, 0, O_IGN_ARG },
		{ "trust-remote-code", no_argument, 0, O_IGN_FLAG },
		{ "disable-cuda-graph", no_argument, 0, O_IGN_FLAG },
		{ "enable-metrics", no_argument, 0, O_IGN_FLAG },
		{ "log-requests", no_argument, 0, O_IGN_FLAG },
		{ "skip-server-warmup", no_argument, 0, O_IGN_FLAG },
		{ "enable-torch-compile", no_argument, 0, O_IGN_FLAG },
		{ "disable-overlap-schedule", no_argument, 0, O_IGN_FLAG },
		{ "watchdog-timeout", required_argument, 0, O_IGN_ARG },
		{ "decode-log-interval", required_argument, 0, O_IGN_ARG },
		{ "stream-interval", required_argument, 0, O_IGN_ARG },
		{ "load-balance-method", required_argument, 0, O_IGN_ARG },
		{ "schedule-conservativeness", required_argument, 0, O_IGN_ARG },
		{ "torch-compile-max-bs", required_argument, 0, O_IGN_ARG },
		{ "moe-dense-tp-size", required_argument, 0, O_IGN_ARG },
		{ "disaggregation-decode-tp", required_argument, 0, O_IGN_ARG },
		{ "disaggregation-decode-dp", required_argument, 0, O_IGN_ARG },
		{ "disaggregation-prefill-pp", required_argument, 0, O_IGN_ARG },
		{ "crash-dump-folder", required_argument, 0, O_IGN_ARG },
		{ "file-storage-path", required_argument, 0, O_IGN_ARG },
		{ "mm-attention-backend", required_argument, 0, O_IGN_ARG },
		{ "grammar-backend", required_argument, 0, O_IGN_ARG },
		{ "model-impl", required_argument, 0, O_IGN_ARG },
		{ "load-format", required_argument, 0, O_IGN_ARG },
		{ "revision", required_argument, 0, O_IGN_ARG },
		{ "download-dir", required_argument, 0, O_IGN_ARG },
		{ "enable-dp-attention", no_argument, 0, O_IGN_FLAG },
		{ "enable-dp-lm-head", no_argument, 0, O_IGN_FLAG },
		{ "disable-custom-all-reduce", no_argument, 0, O_IGN_FLAG },
		{ "prefill-round-robin-balance", no_argument, 0, O_IGN_FLAG },
		{ "enable-hierarchical-cache", no_argument, 0, O_IGN_FLAG },
		{ "enable-mixed-chunk", no_argument, 0, O_IGN_FLAG },
		{ "enable-two-batch-overlap", no_argument, 0, O_IGN_FLAG },
		{ "enable-cache-report", no_argument, 0, O_IGN_FLAG },
		{ "show-time-cost", no_argument, 0, O_IGN_FLAG },
		{ "enable-tokenizer-batch-encode", no_argument, 0, O_IGN_FLAG },
		/* features that would change answers: refused with the reason */
		{ "reasoning-parser", required_argument, 0, O_UNSUP_ARG },
		{ "tool-call-parser", required_argument, 0, O_UNSUP_ARG },
		{ "speculative-algorithm", required_argument, 0, O_UNSUP_ARG },
		{ "quantization", required_argument, 0, O_UNSUP_ARG },
		{ "json-model-override-args", required_argument, 0, O_UNSUP_ARG },
		{ "preferred-sampling-params", required_argument, 0, O_UNSUP_ARG },
		{ "is-embedding", no_argument, 0, O_UNSUP_FLAG },
		{ "skip-tokenizer-init", no_argument, 0, O_UNSUP_FLAG },
		{ "allow-auto-truncate", no_argument, 0, O_UNSUP_FLAG },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int c, idx = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
		const char *bad = NULL;
		const char *name = opts[idx].name;
		switch (c) {
		case O_MODEL: o->model = optarg; break;
		case O_HOST: o->host = optarg; break;
		case O_PORT: if (cmd_parse_int(optarg, 0, 65535, &o->port)) bad = "--port"; break;
		case O_SERVED: o->served = optarg; break;
		case O_THREADS: if (cmd_parse_int(optarg, 1, 1024, &o->threads)) bad = "--threads"; break;
		case O_CTX: if (cmd_parse_int(optarg, 1, 1 << 24, &o->ctx)) bad = "--context-length"; break;
		case O_PAGE: if (cmd_parse_int(optarg, 1, 4096, &o->page)) bad = "--page-size"; break;
		case O_MEMF: if (cmd_parse_float(optarg, 0.001, 1, &o->mem_frac)) bad = "--mem-fraction-static"; break;
		case O_MAXTOT: if (cmd_parse_int(optarg, 1, 1L << 40, &o->max_total)) bad = "--max-total-tokens"; break;
		case O_MAXRUN: if (cmd_parse_int(optarg, 1, 1 << 16, &o->max_running)) bad = "--max-running-requests"; break;
		case O_MAXQ: if (cmd_parse_int(optarg, 1, 1 << 24, &o->max_queued)) bad = "--max-queued-requests"; break;
		case O_MAXPRE: if (cmd_parse_int(optarg, 1, 1 << 24, &o->max_prefill)) bad = "--max-prefill-tokens"; break;
		case O_CHUNK:
			if (cmd_parse_int(optarg, -1, 1 << 24, &o->chunk) || o->chunk == 0)
				bad = "--chunked-prefill-size";
			break;
		case O_POLICY:
			if (strcmp(optarg, "fcfs") && strcmp(optarg, "lpm"))
				bad = "--schedule-policy";
			o->policy = optarg;
			break;
		case O_NORADIX: o->disable_radix = 1; break;
		case O_KV: if (cmd_kv_dtype(optarg) < 0) bad = "--kv-cache-dtype"; o->kv = optarg; break;
		case O_TMPL: o->chat_template = optarg; break;
		case O_KEY: o->api_key = optarg; break;
		case O_BODY: if (cmd_parse_int(optarg, 1024, 1L << 34, &o->body)) bad = "--max-body-size"; break;
		case O_HEADER: if (cmd_parse_int(optarg, 1024, 1L << 24, &o->header)) bad = "--max-header-size"; break;
		case O_MAXPROMPT: if (cmd_parse_int(optarg, 1, 1 << 24, &o->max_prompt)) bad = "--max-prompt-tokens"; break;
		case O_MAXNEW: if (cmd_parse_int(optarg, 1, 1 << 24, &o->max_new)) bad = "--max-tokens-limit"; break;
		case O_MAXN: if (cmd_parse_int(optarg, 1, OPENAI_MAX_N, &o->max_n)) bad = "--max-n"; break;
		case O_MAXSTOP: if (cmd_parse_int(optarg, 1, OPENAI_MAX_STOP, &o->max_stop)) bad = "--max-stop-strings"; break;
		case O_IDLE: if (cmd_parse_int(optarg, 0, 1L << 24, &o->idle)) bad = "--idle-timeout-secs"; break;
		case O_LOG:
			if (log_level_parse(optarg) < 0)
				bad = "--log-level";
			else
				log_set_level(log_level_parse(optarg));
			o->log_level = optarg;
			break;
		case O_TP: if (cmd_parse_int(optarg, 1, 1 << 16, &o->tp)) bad = "--tp"; break;
		case O_DP: if (cmd_parse_int(optarg, 1, 1 << 16, &o->dp)) bad = "--dp"; break;
		case O_DISAGG:
			if (strcmp(optarg, "null") && strcmp(optarg, "prefill") && strcmp(optarg, "decode"))
				bad = "--disaggregation-mode";
			o->disagg = optarg;
			break;
		case O_BACKEND: o->backend = optarg; break;
		case O_BOOTPORT: if (cmd_parse_int(optarg, 1, 65535, &o->bootstrap_port)) bad = "--disaggregation-bootstrap-port"; break;
		case O_IBDEV: o->ib_device = optarg; break;
		case O_SECRET: o->secret = optarg; break;
		case O_RESERVED: if (cmd_parse_int(optarg, 0, 1 << 20, &o->reserved_decode)) bad = "--num-reserved-decode-tokens"; break;
		case O_DIST: o->dist_init_addr = optarg; o->dist_flags++; break;
		case O_NNODES: if (cmd_parse_int(optarg, 1, 1 << 16, &o->nnodes)) bad = "--nnodes"; o->dist_flags++; break;
		case O_NODERANK: if (cmd_parse_int(optarg, 0, 1 << 16, &o->node_rank)) bad = "--node-rank"; o->dist_flags++; break;
		case O_CHECK: o->check_args = 1; break;
		case O_IGN_ARG: LOGI("server", "--%s %s: ignored (no meaning in this CPU build)", name, optarg); break;
		case O_IGN_FLAG: LOGI("server", "--%s: ignored (no meaning in this CPU build)", name); break;
		case O_UNSUP_ARG:
		case O_UNSUP_FLAG:
			fprintf(stderr, "pdserve server: --%s is not supported: %s\n", name, unsupported_why(name));
			return 2;
		case 'h': usage(stdout); return 1;
		default: usage(stderr); return 2;
		}
		if (bad) {
			fprintf(stderr, "pdserve server: bad value for %s: '%s'\n", bad, optarg);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pdserve server: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (o->tp > 1 || o->dp > 1) {
		fprintf(stderr, "pdserve server: --tp/--dp > 1 is not supported yet (one engine per process for now)\n");
		return 2;
	}
	if (o->nnodes > 1) {
		fprintf(stderr, "pdserve server: --nnodes %ld: multi-node tensor parallel is not supported yet "
			"(run one server per node; PD disaggregation across nodes needs no --nnodes, see docs/DEPLOY.md)\n",
			o->nnodes);
		return 2;
	}
	if (o->node_rank >= o->nnodes) {
		fprintf(stderr, "pdserve server: --node-rank %ld: must be below --nnodes %ld\n", o->node_rank, o->nnodes);
		return 2;
	}
	if (o->dist_flags)
		LOGI("server", "--dist-init-addr %s --nnodes %ld --node-rank %ld: one node, nothing to initialize (ignored)",
		     o->dist_init_addr ? o->dist_init_addr : "-", o->nnodes, o->node_rank);
	xfer_backend b;
	char err[ERR_LEN];
	if (xfer_backend_parse(o->backend, &b, err) < 0) {
		fprintf(stderr, "pdserve server: %s\n", err);
		return 2;
	}
	o->backend_id = b;
	if (o->ib_device && b != XFER_UCX)
		LOGI("server", "--disaggregation-ib-device %s: ignored by the %s backend (it selects RDMA devices for UCX)",
		     o->ib_device, o->backend);
	return 0;
}

/* The chat template family: --chat-template (a name, else a Jinja file),
   else the GGUF's tokenizer.chat_template; unknown -> ChatML with a warning. */
static int chat_family(const char *flag, const char *model_path, chat_tmpl_family *out)
{
	bool known = true;
	if (flag) {
		if (chat_template_from_name(flag, out) == 0) {
			LOGI("server", "chat template: %s (--chat-template)", chat_template_name(*out));
			return 0;
		}
		FILE *f = fopen(flag, "rb");
		if (!f) {
			fprintf(stderr, "pdserve server: --chat-template %s: neither a template name nor a readable file\n",
				flag);
			return -1;
		}
		char *text = alloc_bytes(1 << 20);
		size_t n = text ? fread(text, 1, 1 << 20, f) : 0;
		fclose(f);
		*out = chat_template_detect(text, n, &known);
		alloc_free(text);
		if (!known)
			LOGW("server", "--chat-template %s: not a template family we render; falling back to ChatML", flag);
		else
			LOGI("server", "chat template: %s (from %s)", chat_template_name(*out), flag);
		return 0;
	}
	char err[ERR_LEN];
	gguf *g = gguf_open(model_path, err);
	gguf_str t = { NULL, 0 };
	if (g)
		gguf_get_str(g, "tokenizer.chat_template", &t, NULL);
	*out = chat_template_detect(t.p, t.p ? (size_t)t.n : 0, &known);
	if (!known)
		LOGW("server", "%s: %s; falling back to ChatML for /v1/chat/completions", model_path,
		     t.p ? "tokenizer.chat_template is not a family we render" : "no tokenizer.chat_template");
	else
		LOGI("server", "chat template: %s (detected from the GGUF)", chat_template_name(*out));
	gguf_close(g);
	return 0;
}

/* --check-args: the configuration parse_args resolved, defaults filled in,
   one `key value` line each on stdout. Nothing is opened or bound. */
static void print_resolved(const srv_opts *o)
{
	xfer_backend b = o->backend_id;
	const char *env_model = getenv("PDSERVE_MODEL");
	chat_tmpl_family fam;
	printf("command server\n");
	printf("model_path %s\n", o->model ? o->model : env_model && *env_model ? env_model : "(default, resolved at start)");
	printf("host %s\n", o->host);
	printf("port %ld\n", o->port);
	printf("served_model_name %s\n", o->served ? o->served : "(the model path)");
	printf("threads %ld\n", o->threads); /* 0: all cores */
	printf("context_length %ld\n", o->ctx); /* 0: the model's */
	printf("page_size %ld\n", o->page ? o->page : 16);
	if (o->max_total)
		printf("max_total_tokens %ld\n", o->max_total);
	else
		printf("mem_fraction_static %g\n", o->mem_frac ? o->mem_frac : 0.5);
	printf("max_running_requests %ld\n", o->max_running ? o->max_running : 64);
	printf("max_queued_requests %ld\n", o->max_queued ? o->max_queued : 1024);
	printf("max_prefill_tokens %ld\n", o->max_prefill ? o->max_prefill : 16384);
	printf("chunked_prefill_size %ld\n", o->chunk ? o->chunk : 512);
	printf("schedule_policy %s\n", o->policy);
	printf("disable_radix_cache %s\n", o->disable_radix ? "true" : "false");
	printf("kv_cache_dtype %s\n", o->kv);
	if (!o->chat_template)
		printf("chat_template (from the GGUF)\n");
	else if (chat_template_from_name(o->chat_template, &fam) == 0)
		printf("chat_template %s\n", chat_template_name(fam));
	else
		printf("chat_template file %s (read at start)\n", o->chat_template);
	printf("api_key_set %s\n", o->api_key && *o->api_key ? "true" : "false");
	printf("max_body_size %ld\n", o->body);
	printf("log_level %s\n", o->log_level);
	printf("disaggregation_mode %s\n", o->disagg);
	if (strcmp(o->disagg, "null")) {
		printf("disaggregation_transfer_backend %s\n", xfer_backend_name(b));
		if (!strcmp(o->disagg, "prefill"))
			printf("disaggregation_bootstrap_port %ld\n", o->bootstrap_port);
		else
			printf("num_reserved_decode_tokens %ld\n", o->reserved_decode);
		if (o->ib_device)
			printf("disaggregation_ib_device %s%s\n", o->ib_device,
			       b == XFER_UCX ? "" : " (ignored by this backend)");
	}
}

int cmd_server(int argc, char **argv)
{
	srv_opts o = { .host = "127.0.0.1", .port = 30000, .policy = "fcfs", .disagg = "null", .kv = "auto",
		       .log_level = "info", .tp = 1, .dp = 1, .body = 32L << 20, .backend = "tcp",
		       .bootstrap_port = 8998, .reserved_decode = 512, .nnodes = 1, .header = 64L << 10,
		       .max_n = OPENAI_MAX_N, .max_stop = OPENAI_MAX_STOP, .idle = 60 };
	o.secret = getenv("PDSERVE_DISAGGREGATION_SECRET");
	int rc = parse_args(argc, argv, &o);
	if (rc)
		return rc == 1 ? 0 : rc;
	if (o.check_args) {
		print_resolved(&o);
		return 0;
	}

	char err[ERR_LEN], path[4096];
	if (cmd_model_path(o.model, path, sizeof(path), err) < 0) {
		fprintf(stderr, "pdserve server: %s\n", err);
		return 1;
	}
	chat_tmpl_family fam;
	if (chat_family(o.chat_template, path, &fam) < 0)
		return 2;
	if (!cmd_host_is_loopback(o.host))
		LOGW("server", "--host %s: HTTP%s reachable from other machines (the operator's choice; "
		     "default 127.0.0.1, see docs/SECURITY.md)%s", o.host,
		     strcmp(o.disagg, "null") && !strcmp(o.disagg, "prefill") ? " and the bootstrap port are" : " is",
		     o.api_key && *o.api_key ? "" : "; no --api-key set");

	/* what /get_server_info shows (the API key is never echoed) */
	char port_s[16], ctx_s[16], page_s[16], memf_s[32], tot_s[24], run_s[16], pre_s[16], chunk_s[16], thr_s[16],
		body_s[24], q_s[16], hdr_s[24], mprompt_s[16], mnew_s[16], maxn_s[16], maxstop_s[16], idle_s[24];
	snprintf(hdr_s, sizeof(hdr_s), "%ld", o.header);
	snprintf(mprompt_s, sizeof(mprompt_s), "%ld", o.max_prompt);
	snprintf(mnew_s, sizeof(mnew_s), "%ld", o.max_new);
	snprintf(maxn_s, sizeof(maxn_s), "%ld", o.max_n);
	snprintf(maxstop_s, sizeof(maxstop_s), "%ld", o.max_stop);
	snprintf(idle_s, sizeof(idle_s), "%ld", o.idle);
	snprintf(port_s, sizeof(port_s), "%ld", o.port);
	snprintf(ctx_s, sizeof(ctx_s), "%ld", o.ctx);
	snprintf(page_s, sizeof(page_s), "%ld", o.page ? o.page : 16);
	snprintf(memf_s, sizeof(memf_s), "%g", o.mem_frac ? o.mem_frac : 0.5);
	snprintf(tot_s, sizeof(tot_s), "%ld", o.max_total);
	snprintf(run_s, sizeof(run_s), "%ld", o.max_running ? o.max_running : 64);
	snprintf(pre_s, sizeof(pre_s), "%ld", o.max_prefill ? o.max_prefill : 16384);
	snprintf(chunk_s, sizeof(chunk_s), "%ld", o.chunk ? o.chunk : 512);
	snprintf(thr_s, sizeof(thr_s), "%ld", o.threads);
	snprintf(body_s, sizeof(body_s), "%ld", o.body);
	snprintf(q_s, sizeof(q_s), "%ld", o.max_queued ? o.max_queued : 1024);
	const char *served = o.served ? o.served : path;
	http_arg args[] = {
		{ "model_path", path, false },
		{ "served_model_name", served, false },
		{ "host", o.host, false },
		{ "port", port_s, true },
		{ "context_length", o.ctx ? ctx_s : "null", true },
		{ "page_size", page_s, true },
		{ "mem_fraction_static", memf_s, true },
		{ "max_total_tokens", o.max_total ? tot_s : "null", true },
		{ "max_running_requests", run_s, true },
		{ "max_queued_requests", q_s, true },
		{ "max_prefill_tokens", pre_s, true },
		{ "chunked_prefill_size", chunk_s, true },
		{ "schedule_policy", o.policy, false },
		{ "disable_radix_cache", o.disable_radix ? "true" : "false", true },
		{ "kv_cache_dtype", o.kv, false },
		{ "chat_template", chat_template_name(fam), false },
		{ "api_key_set", o.api_key && *o.api_key ? "true" : "false", true },
		{ "max_body_size", body_s, true },
		{ "max_header_size", hdr_s, true },
		{ "max_prompt_tokens", o.max_prompt ? mprompt_s : "null", true },
		{ "max_tokens_limit", o.max_new ? mnew_s : "null", true },
		{ "max_n", maxn_s, true },
		{ "max_stop_strings", maxstop_s, true },
		{ "idle_timeout_secs", idle_s, true },
		{ "log_level", o.log_level, false },
		{ "threads", o.threads ? thr_s : "null", true },
		{ "tp_size", "1", true },
		{ "dp_size", "1", true },
		{ "disaggregation_mode", o.disagg, false },
		{ "disaggregation_transfer_backend", o.backend, false },
		{ "disaggregation_secret_set", o.secret && *o.secret ? "true" : "false", true },
	};
	http_config hc = {
		.host = o.host,
		.port = (int)o.port,
		.served_model_name = served,
		.model_path = path,
		.api_key = o.api_key,
		.max_body_size = (size_t)o.body,
		.max_header_size = (size_t)o.header,
		.idle_timeout_s = o.idle ? (int)o.idle : -1,
		.max_prompt_tokens = (int)o.max_prompt,
		.max_new_tokens = (int)o.max_new,
		.max_n = (int)o.max_n,
		.max_stop = (int)o.max_stop,
		.chat_family = fam,
		.args = args,
		.n_args = (int)(sizeof(args) / sizeof(args[0])),
	};
	/* PD disaggregation: the transfer layer first (the engine's hooks need it) */
	xfer *xf = NULL;
	xfer_backend backend = XFER_TCP;
	xfer_backend_parse(o.backend, &backend, err);
	if (strcmp(o.disagg, "null")) {
		xfer_config xc = { .role = !strcmp(o.disagg, "prefill") ? XFER_PREFILL : XFER_DECODE,
				   .backend = backend,
				   .host = o.host,
				   .bootstrap_port = (int)o.bootstrap_port,
				   .ib_devices = o.ib_device,
				   .secret = o.secret };
		xf = xfer_create(&xc, err);
		if (!xf) {
			fprintf(stderr, "pdserve server: %s\n", err);
			return 1;
		}
		if (o.secret && *o.secret)
			LOGI("server", "disaggregation secret set: %s peers must prove it", xc.role == XFER_PREFILL ? "decode" : "prefill");
		hc.xf = xf;
		hc.pd_role = xc.role;
		hc.pd_backend = backend;
		hc.num_reserved_decode_tokens = (int)o.reserved_decode;
	}
	http_server *s = http_server_create(&hc, err);
	if (!s) {
		fprintf(stderr, "pdserve server: %s\n", err);
		xfer_destroy(xf);
		return 1;
	}

	kern_init();
	engine_config ec = engine_config_default();
	ec.model_path = path;
	ec.n_threads = (int)o.threads;
	ec.kv_dtype = cmd_kv_dtype(o.kv);
	if (o.page)
		ec.page_size = (int)o.page;
	ec.context_length = (int)o.ctx;
	ec.max_total_tokens = o.max_total;
	if (o.mem_frac)
		ec.mem_fraction_static = o.mem_frac;
	if (o.max_running)
		ec.max_running = (int)o.max_running;
	if (o.max_queued)
		ec.max_queued = (int)o.max_queued;
	if (o.max_prefill)
		ec.max_prefill_tokens = (int)o.max_prefill;
	if (o.chunk > 0)
		ec.chunked_prefill_size = (int)o.chunk;
	else if (o.chunk < 0) /* SGLang: -1 disables chunking; here a chunk as large as a step allows */
		ec.chunked_prefill_size = ec.max_prefill_tokens;
	ec.policy = !strcmp(o.policy, "lpm") ? ENGINE_POLICY_LPM : ENGINE_POLICY_FCFS;
	ec.disable_radix_cache = o.disable_radix;
	ec.notify = http_server_notify;
	ec.notify_arg = s;
	if (xf) {
		ec.kv_export = xfer_on_export;
		ec.kv_import = xfer_on_import;
		ec.kv_import_cancel = xfer_on_import_cancel;
		ec.pd_arg = xf;
		ec.kv_shared = backend == XFER_SHM && !strcmp(o.disagg, "decode");
		if (backend == XFER_UCX && !strcmp(o.disagg, "decode")) {
			ec.kv_alloc = xfer_kv_alloc; /* the pool is UCX memory, one-sided for the prefill */
			ec.kv_release = xfer_kv_release;
		}
	}
	engine *e = engine_create(&ec, err);
	if (!e) {
		fprintf(stderr, "pdserve server: %s\n", err);
		http_server_destroy(s);
		xfer_destroy(xf);
		return 1;
	}
	if (xf)
		xfer_attach(xf, e);
	http_server_attach(s, e);
	engine_stats st;
	engine_get_stats(e, &st);
	LOGI("server", "%s: context %d, KV pool %lld tokens (%d pages of %d, %.1f MiB)", path,
	     engine_context_length(e), (long long)st.max_total_tokens, st.pages_total, st.page_size,
	     (double)st.kv_bytes / (1 << 20));
	/* one line on stdout that scripts can wait for */
	printf("pdserve server ready on http://%s:%d\n", o.host, http_server_port(s));
	fflush(stdout);
	rc = http_server_run(s);
	xfer_stop(xf); /* no engine calls from the transfer thread after this */
	engine_destroy(e);
	xfer_destroy(xf);
	http_server_destroy(s);
	LOGI("server", "stopped");
	return rc < 0 ? 1 : 0;
}
