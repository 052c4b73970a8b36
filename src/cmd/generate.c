/* generate.c - `pdserve generate`: one prompt in, its continuation out.
 *
 * Wiring only: resolve the model, tokenize the prompt the way llama.cpp's
 * CLI does (BOS when the vocabulary asks for it, special-token text parsed
 * unless --no-parse-special), prefill it in chunks, then sample one token at
 * a time until -n tokens or an end-of-generation token. The continuation goes
 * to stdout as it is produced (whole UTF-8 characters only); timings go to
 * stderr. --dump-logits writes float32 rows [positions][n_vocab], one per
 * token fed to the model (prompt and generated), the layout of the golden
 * logits files.
 */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/threadpool.h"
#include "cmd/cmd.h"
#include "cmd/common.h"
#include "engine/kvcache.h"
#include "engine/sampler.h"
#include "kernels/kernels.h"
#include "model/llama.h"
#include "model/tokenizer.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdserve generate [--model-path M] [--prompt P] [-n N] [options]\n"
		"  --model-path, -m M       GGUF model (default: $PDSERVE_MODEL, ../shared stories260K, or a synthesized one)\n"
		"  --prompt, -p P           prompt text (default \"Once upon a time\")\n"
		"  -n, --n-predict N        tokens to generate (default 64)\n"
		"  --temperature, --temp T  0 = greedy (default 0)\n"
		"  --top-k K  --top-p P  --min-p P  --seed S\n"
		"  --repeat-penalty R  --repeat-last-n N  --frequency-penalty F  --presence-penalty P\n"
		"  --ignore-eos             do not stop at end-of-generation tokens\n"
		"  --threads, -t N          worker threads (default: all cores)\n"
		"  --kv-cache-dtype D       f16 (default, like llama.cpp), bf16 or f32\n"
		"  --context-length N       context size (default: prompt + n, at most the model's)\n"
		"  --batch-size N           prefill chunk (default 512)\n"
		"  --dump-logits FILE       float32 [positions][n_vocab] for every token fed\n"
		"  --no-parse-special       treat special-token text in the prompt as plain text\n"
		"  --ids                    print generated token ids (space separated) instead of text\n"
		"  --log-level L            debug, info, warning, error\n");
}

typedef struct {
	const char *model;
	const char *prompt;
	long n_predict;
	long threads;
	long n_ctx;
	long batch;
	int kv_dtype;
	const char *dump;
	int parse_special;
	int ignore_eos;
	int print_ids;
	sampler_params sp;
} gen_opts;

enum {
	OPT_TEMP = 256, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_SEED, OPT_REP, OPT_REPN, OPT_FREQ, OPT_PRES,
	OPT_KV, OPT_CTX, OPT_BATCH, OPT_DUMP, OPT_NOSPECIAL, OPT_IGNORE_EOS, OPT_LOG, OPT_IDS,
};

static int parse_args(int argc, char **argv, gen_opts *o)
{
	static const struct option opts[] = {
		{ "model-path", required_argument, 0, 'm' }, { "model", required_argument, 0, 'm' },
		{ "prompt", required_argument, 0, 'p' },     { "n-predict", required_argument, 0, 'n' },
		{ "threads", required_argument, 0, 't' },    { "temperature", required_argument, 0, OPT_TEMP },
		{ "temp", required_argument, 0, OPT_TEMP },   { "top-k", required_argument, 0, OPT_TOPK },
		{ "top-p", required_argument, 0, OPT_TOPP },  { "min-p", required_argument, 0, OPT_MINP },
		{ "seed", required_argument, 0, OPT_SEED },   { "repeat-penalty", required_argument, 0, OPT_REP },
		{ "repeat-last-n", required_argument, 0, OPT_REPN },
		{ "frequency-penalty", required_argument, 0, OPT_FREQ },
		{ "presence-penalty", required_argument, 0, OPT_PRES },
		{ "kv-cache-dtype", required_argument, 0, OPT_KV },
		{ "context-length", required_argument, 0, OPT_CTX },
		{ "batch-size", required_argument, 0, OPT_BATCH },
		{ "dump-logits", required_argument, 0, OPT_DUMP },
		{ "no-parse-special", no_argument, 0, OPT_NOSPECIAL },
		{ "ignore-eos", no_argument, 0, OPT_IGNORE_EOS },
		{ "log-level", required_argument, 0, OPT_LOG },
		{ "ids", no_argument, 0, OPT_IDS },
		{ "help", no_argument, 0, 'h' },              { 0, 0, 0, 0 },
	};
	long l;
	double d;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:p:n:t:h", opts, NULL)) != -1) {
		const char *bad = NULL;
		switch (c) {
		case 'm': o->model = optarg; break;
		case 'p': o->prompt = optarg; break;
		case 'n': if (cmd_parse_int(optarg, 0, 1 << 24, &o->n_predict)) bad = "-n"; break;
		case 't': if (cmd_parse_int(optarg, 1, 1024, &o->threads)) bad = "--threads"; break;
		case OPT_TEMP: if (cmd_parse_float(optarg, 0, 100, &d)) bad = "--temperature"; o->sp.temperature = (float)d; break;
		case OPT_TOPK: if (cmd_parse_int(optarg, -1, 1 << 24, &l)) bad = "--top-k"; o->sp.top_k = (int32_t)l; break;
		case OPT_TOPP: if (cmd_parse_float(optarg, 0, 1, &d)) bad = "--top-p"; o->sp.top_p = (float)d; break;
		case OPT_MINP: if (cmd_parse_float(optarg, 0, 1, &d)) bad = "--min-p"; o->sp.min_p = (float)d; break;
		case OPT_SEED: if (cmd_parse_int(optarg, 0, LONG_MAX, &l)) bad = "--seed"; o->sp.seed = (uint64_t)l; o->sp.has_seed = true; break;
		case OPT_REP: if (cmd_parse_float(optarg, 0, 100, &d)) bad = "--repeat-penalty"; o->sp.repetition_penalty = (float)d; break;
		case OPT_REPN: if (cmd_parse_int(optarg, -1, SAMPLER_MAX_LAST_N, &l)) bad = "--repeat-last-n"; o->sp.penalty_last_n = (int32_t)l; break;
		case OPT_FREQ: if (cmd_parse_float(optarg, -2, 2, &d)) bad = "--frequency-penalty"; o->sp.frequency_penalty = (float)d; break;
		case OPT_PRES: if (cmd_parse_float(optarg, -2, 2, &d)) bad = "--presence-penalty"; o->sp.presence_penalty = (float)d; break;
		case OPT_KV: if ((o->kv_dtype = cmd_kv_dtype(optarg)) < 0) bad = "--kv-cache-dtype"; break;
		case OPT_CTX: if (cmd_parse_int(optarg, 1, 1 << 24, &o->n_ctx)) bad = "--context-length"; break;
		case OPT_BATCH: if (cmd_parse_int(optarg, 1, 1 << 16, &o->batch)) bad = "--batch-size"; break;
		case OPT_DUMP: o->dump = optarg; break;
		case OPT_NOSPECIAL: o->parse_special = 0; break;
		case OPT_IGNORE_EOS: o->ignore_eos = 1; break;
		case OPT_IDS: o->print_ids = 1; break;
		case OPT_LOG:
			if (log_level_parse(optarg) < 0)
				bad = "--log-level";
			else
				log_set_level(log_level_parse(optarg));
			break;
		case 'h': usage(stdout); return 1;
		default: usage(stderr); return 2;
		}
		if (bad) {
			fprintf(stderr, "pdserve generate: bad value for %s: '%s'\n", bad, optarg);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pdserve generate: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	return 0;
}

/* One forward over ids[from..to) of the single sequence; logits rows for
   every token when all_logits, else for the last one only. */
static int feed(llama_ctx *lc, const llama_kv *kv, const int32_t *pages, int n_pages, const int32_t *ids,
		int from, int to, int all_logits, float *logits, int32_t *pos, int32_t *seq, uint8_t *want,
		char *err)
{
	int n = to - from;
	for (int i = 0; i < n; i++) {
		pos[i] = from + i;
		seq[i] = 0;
		want[i] = all_logits || i == n - 1;
	}
	const int32_t *pt[1] = { pages };
	llama_batch b = { .n_tokens = n, .token = ids + from, .pos = pos, .seq = seq, .want_logits = want,
			  .pages = pt, .n_pages = &n_pages, .n_seqs = 1 };
	return llama_forward(lc, kv, &b, logits, err);
}

int cmd_generate(int argc, char **argv)
{
	gen_opts o = { .prompt = "Once upon a time", .n_predict = 64, .batch = 512, .kv_dtype = QTYPE_F16,
		       .parse_special = 1 };
	o.sp = sampler_params_default();
	o.sp.temperature = 0;
	int rc = parse_args(argc, argv, &o);
	if (rc)
		return rc == 1 ? 0 : rc;

	char err[ERR_LEN], path[4096];
	int status = 1;
	llama_model *m = NULL;
	tokenizer *tok = NULL;
	threadpool *tp = NULL;
	llama_ctx *lc = NULL;
	kvcache *kc = NULL;
	sampler *smp = NULL;
	int32_t *ids = NULL, *pages = NULL, *pos = NULL, *seq = NULL;
	uint8_t *want = NULL;
	float *logits = NULL;
	FILE *dump = NULL;
	char *piece = NULL;

	kern_init();
	if (cmd_model_path(o.model, path, sizeof(path), err) < 0)
		goto fail;
	if (!(m = llama_model_load(path, err)))
		goto fail;
	const llama_hparams *hp = llama_model_hparams(m);
	if (!(tok = tokenizer_create(llama_model_gguf(m), err)))
		goto fail;
	if (tokenizer_n_vocab(tok) > hp->n_vocab) {
		err_set(err, ERR_FORMAT, "%s: tokenizer has %d tokens but the model only %d", path,
			tokenizer_n_vocab(tok), hp->n_vocab);
		goto fail;
	}

	size_t n_prompt;
	if (tokenizer_encode(tok, o.prompt, strlen(o.prompt), true, o.parse_special, &ids, &n_prompt) < 0) {
		err_set(err, ERR_NOMEM, "out of memory tokenizing the prompt");
		goto fail;
	}
	if (n_prompt == 0) {
		err_set(err, ERR_INVAL, "the prompt is empty and the model adds no BOS token");
		goto fail;
	}
	long n_ctx = o.n_ctx ? o.n_ctx : (long)n_prompt + o.n_predict;
	if (!o.n_ctx && n_ctx > hp->n_ctx_train)
		n_ctx = hp->n_ctx_train;
	if ((long)n_prompt + o.n_predict > n_ctx) {
		err_set(err, ERR_INVAL, "prompt (%zu tokens) + -n %ld exceeds the context length %ld", n_prompt,
			o.n_predict, n_ctx);
		goto fail;
	}
	int32_t *grown = alloc_resize_array(ids, n_prompt + (size_t)o.n_predict + 1, sizeof(int32_t));
	if (!grown)
		goto nomem;
	ids = grown;

	if (!(tp = threadpool_create(o.threads ? (int)o.threads : threadpool_ncpu(), err)))
		goto fail;
	int max_tokens = (int)(o.batch < (long)n_prompt ? o.batch : (long)n_prompt);
	llama_ctx_config cc = { .max_tokens = max_tokens, .n_ctx = (int)n_ctx, .tp = tp };
	if (!(lc = llama_ctx_create(m, &cc, err)))
		goto fail;
	kvcache_config kcfg = { .dtype = o.kv_dtype, .page_size = 16, .n_pages = (int)((n_ctx + 15) / 16) };
	if (!(kc = kvcache_create(hp, &kcfg, err)))
		goto fail;
	pages = alloc_array((size_t)kcfg.n_pages, sizeof(int32_t));
	pos = alloc_array((size_t)max_tokens, sizeof(int32_t));
	seq = alloc_array((size_t)max_tokens, sizeof(int32_t));
	want = alloc_array((size_t)max_tokens, 1);
	logits = alloc_array((size_t)max_tokens * (size_t)hp->n_vocab, sizeof(float));
	piece = alloc_bytes(tokenizer_detok_cap(tok));
	if (!pages || !pos || !seq || !want || !logits || !piece)
		goto nomem;
	kvcache_alloc(kc, kcfg.n_pages, pages);
	if (o.dump && !(dump = fopen(o.dump, "wb"))) {
		err_set(err, ERR_IO, "cannot write %s", o.dump);
		goto fail;
	}

	size_t n_eog;
	const int32_t *eog = tokenizer_eog_ids(tok, &n_eog);
	if (!o.ignore_eos) {
		o.sp.eog_ids = eog;
		o.sp.n_eog_ids = (int32_t)n_eog;
	}
	if (!(smp = sampler_create(&o.sp, hp->n_vocab, err)))
		goto fail;
	sampler_accept_prompt(smp, ids, (int)n_prompt);
	LOGI("generate", "%s: %s, %d layers, %d prompt tokens, kv %s, %d threads, kernels %s", path,
	     hp->arch_name, hp->n_layer, (int)n_prompt, qtype_name(o.kv_dtype), threadpool_size(tp), kern.name);

	/* prefill */
	int64_t t0 = clock_now_ns();
	const float *last = NULL;
	for (int from = 0; from < (int)n_prompt; from += max_tokens) {
		int to = from + max_tokens < (int)n_prompt ? from + max_tokens : (int)n_prompt;
		if (feed(lc, kvcache_view(kc), pages, kcfg.n_pages, ids, from, to, dump != NULL, logits, pos, seq,
			 want, err) < 0)
			goto fail;
		int rows = dump ? to - from : 1;
		if (dump && fwrite(logits, sizeof(float) * hp->n_vocab, (size_t)rows, dump) != (size_t)rows) {
			err_set(err, ERR_IO, "write %s failed", o.dump);
			goto fail;
		}
		last = logits + (size_t)(rows - 1) * hp->n_vocab;
	}
	int64_t t1 = clock_now_ns();

	/* decode */
	tokenizer_detok d;
	tokenizer_detok_init(&d, tok, 0);
	int n_out = 0;
	while (n_out < o.n_predict) {
		sampler_out so;
		if (sampler_sample(smp, last, &so) < 0) {
			err_set(err, ERR_INVAL, "sampling failed at step %d (no finite logits)", n_out);
			goto fail;
		}
		if (!o.ignore_eos && tokenizer_is_eog(tok, so.id))
			break;
		sampler_accept(smp, so.id);
		if (o.print_ids) {
			printf("%s%d", n_out ? " " : "", so.id);
		} else {
			size_t k = tokenizer_detok_push(&d, so.id, piece);
			fwrite(piece, 1, k, stdout);
		}
		fflush(stdout);
		int p = (int)n_prompt + n_out++;
		ids[p] = so.id;
		if (n_out == o.n_predict)
			break; /* the last token is not fed: its logits would never be used */
		if (feed(lc, kvcache_view(kc), pages, kcfg.n_pages, ids, p, p + 1, 1, logits, pos, seq, want, err) < 0)
			goto fail;
		if (dump && fwrite(logits, sizeof(float) * hp->n_vocab, 1, dump) != 1) {
			err_set(err, ERR_IO, "write %s failed", o.dump);
			goto fail;
		}
		last = logits;
	}
	size_t k = tokenizer_detok_flush(&d, piece);
	fwrite(piece, 1, k, stdout);
	printf("\n");
	int64_t t2 = clock_now_ns();
	double pp_s = (double)(t1 - t0) * 1e-9, tg_s = (double)(t2 - t1) * 1e-9;
	LOGI("generate", "prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens in %.3f s (%.1f tok/s)",
	     (int)n_prompt, pp_s, pp_s > 0 ? n_prompt / pp_s : 0, n_out, tg_s, tg_s > 0 ? n_out / tg_s : 0);
	status = 0;
	goto out;

nomem:
	err_set(err, ERR_NOMEM, "out of memory");
fail:
	fprintf(stderr, "pdserve generate: %s\n", err);
out:
	if (dump && fclose(dump) != 0 && status == 0) {
		fprintf(stderr, "pdserve generate: write %s failed\n", o.dump);
		status = 1;
	}
	alloc_free(piece);
	alloc_free(logits);
	alloc_free(want);
	alloc_free(seq);
	alloc_free(pos);
	alloc_free(pages);
	alloc_free(ids);
	sampler_destroy(smp);
	kvcache_destroy(kc);
	llama_ctx_destroy(lc);
	threadpool_destroy(tp);
	tokenizer_destroy(tok);
	llama_model_destroy(m);
	return status;
}
