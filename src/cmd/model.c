/* model.c - `pdserve model info FILE` and `pdserve model synth [...]`.
 *
 * info prints what a GGUF holds: format, architecture, hyperparameters,
 * tokenizer, and tensor bytes by type. It reads the `<arch>.*` keys
 * directly, so it describes any architecture, including ones pdserve cannot
 * run; a missing key prints as "-". A file the reader refuses prints its one
 * sentence and exits 1.
 *
 * synth writes the seeded random Llama model of model/synth.h, by default
 * to synth_default_path(), and prints the path it wrote on stdout.
 *
 * Exit status: 0 done, 1 bad file or failed write, 2 usage.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cmd/cmd.h"
#include "kernels/qtypes.h"
#include "model/gguf.h"
#include "model/synth.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdserve model info FILE\n"
		"       pdserve model synth [--out PATH] [--seed N] [--preset %s]\n"
		"                           [--type F32|F16|BF16|Q8_0|Q4_0] [--tied]\n"
		"\n"
		"info   describe a GGUF file: architecture, hyperparameters, tokenizer, tensors\n"
		"synth  write a small random-weight Llama GGUF with a real tokenizer (same bytes\n"
		"       for the same flags); default --out is $XDG_CACHE_HOME/pdserve/synth-llama.gguf\n",
		synth_preset_names());
}

/* ---------------------------------------------------------------- info */

static void row(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void row(const char *label, const char *fmt, ...)
{
	va_list ap;
	printf("%-20s ", label);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static const char *human(double bytes, char *buf, size_t n)
{
	static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int u = 0;
	while (bytes >= 1024 && u < 4)
		bytes /= 1024, u++;
	snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
	return buf;
}

static const char *count_str(double v, char *buf, size_t n)
{
	static const char *sfx[] = { "", "K", "M", "B", "T" };
	int u = 0;
	while (v >= 1000 && u < 4)
		v /= 1000, u++;
	snprintf(buf, n, u ? "%.2f%s" : "%.0f%s", v, sfx[u]);
	return buf;
}

/* `<arch>.<suffix>` as text: integer, float, or "-" when absent. */
static const char *arch_key(const gguf *g, const char *arch, const char *suffix, char *buf, size_t n)
{
	char key[160];
	snprintf(key, sizeof(key), "%s.%s", arch, suffix);
	int64_t i = gguf_find_key(g, key);
	if (i < 0)
		return "-";
	switch (gguf_kv_type(g, i)) {
	case GGUF_TYPE_FLOAT32:
	case GGUF_TYPE_FLOAT64: {
		double v = gguf_kv_number(g, i);
		/* whole numbers in full (rope base 1000000, not 1e+06) */
		snprintf(buf, n, v == (double)(int64_t)v && fabs(v) < 1e15 ? "%.0f" : "%g", v);
		return buf;
	}
	case GGUF_TYPE_STRING: {
		gguf_str s = gguf_kv_str(g, i);
		snprintf(buf, n, "%.*s", (int)(s.n > 100 ? 100 : s.n), s.p);
		return buf;
	}
	case GGUF_TYPE_ARRAY:
		snprintf(buf, n, "(per layer)");
		return buf;
	default:
		snprintf(buf, n, "%.0f", gguf_kv_number(g, i));
		return buf;
	}
}

static int arch_u32(const gguf *g, const char *arch, const char *suffix, uint32_t *out)
{
	char key[160];
	snprintf(key, sizeof(key), "%s.%s", arch, suffix);
	return gguf_get_u32(g, key, out, NULL);
}

/* llama.cpp's rope type per architecture (llama_model_rope_type); the GGUF
   does not store it. */
static const char *rope_type(const char *arch)
{
	static const char *const neox[] = {
		"qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "phi2", "phi3", "phimoe",
		"gemma", "gemma2", "gemma3", "gemma3n", "stablelm", "starcoder2", "falcon", "gptneox",
		"olmo2", "olmoe", "openelm", "nemotron", "exaone", "minicpm3", "orion", "codeshell",
		"bitnet", "dbrx", "grok", "plamo", "bert", "nomic-bert",
	};
	static const char *const norm[] = {
		"llama", "llama4", "deci", "baichuan", "internlm2", "minicpm", "xverse", "command-r",
		"cohere2", "olmo", "arctic", "deepseek", "deepseek2", "chatglm", "granite", "granitemoe",
		"chameleon", "smollm3", "mistral3",
	};
	for (size_t i = 0; i < sizeof(neox) / sizeof(neox[0]); i++)
		if (!strcmp(arch, neox[i]))
			return "neox";
	for (size_t i = 0; i < sizeof(norm) / sizeof(norm[0]); i++)
		if (!strcmp(arch, norm[i]))
			return "norm";
	return "?";
}

static const char *str_key(const gguf *g, const char *key, char *buf, size_t n)
{
	gguf_str s;
	if (gguf_get_str(g, key, &s, NULL))
		return "-";
	snprintf(buf, n, "%.*s", (int)(s.n > 100 ? 100 : s.n), s.p);
	return buf;
}

static const char *int_key(const gguf *g, const char *key, char *buf, size_t n)
{
	int64_t v;
	if (gguf_get_i64(g, key, &v, NULL))
		return "-";
	snprintf(buf, n, "%lld", (long long)v);
	return buf;
}

typedef struct {
	int type;
	int64_t count;
	uint64_t bytes;
} type_total;

static int by_bytes(const void *a, const void *b)
{
	const type_total *x = a, *y = b;
	if (x->bytes != y->bytes)
		return x->bytes < y->bytes ? 1 : -1;
	return x->type - y->type;
}

static int model_info(const char *path)
{
	char err[ERR_LEN], b1[128], b2[64];
	gguf *g = gguf_open(path, err);
	if (!g) {
		fprintf(stderr, "pdserve model info: %s\n", err);
		return 1;
	}
	gguf_str s;
	char arch[64] = "-";
	if (!gguf_get_str(g, "general.architecture", &s, NULL))
		snprintf(arch, sizeof(arch), "%.*s", (int)(s.n > 63 ? 63 : s.n), s.p);

	row("file", "%s", path);
	row("file size", "%zu bytes (%s)", gguf_file_size(g), human((double)gguf_file_size(g), b1, sizeof(b1)));
	row("gguf version", "%u", gguf_version(g));
	row("alignment", "%zu", gguf_alignment(g));
	row("metadata keys", "%lld", (long long)gguf_n_kv(g));
	row("architecture", "%s", arch);
	row("name", "%s", str_key(g, "general.name", b1, sizeof(b1)));
	row("file type", "%s", int_key(g, "general.file_type", b1, sizeof(b1)));

	row("context length", "%s", arch_key(g, arch, "context_length", b1, sizeof(b1)));
	row("embedding length", "%s", arch_key(g, arch, "embedding_length", b1, sizeof(b1)));
	row("layers", "%s", arch_key(g, arch, "block_count", b1, sizeof(b1)));
	row("heads", "%s", arch_key(g, arch, "attention.head_count", b1, sizeof(b1)));
	row("kv heads", "%s", arch_key(g, arch, "attention.head_count_kv", b1, sizeof(b1)));
	uint32_t n_embd, n_head, kl;
	if (!arch_u32(g, arch, "attention.key_length", &kl))
		row("head dim", "%u", kl);
	else if (!arch_u32(g, arch, "embedding_length", &n_embd) && !arch_u32(g, arch, "attention.head_count", &n_head) &&
		 n_head)
		row("head dim", "%u", n_embd / n_head);
	else
		row("head dim", "-");
	row("ffn length", "%s", arch_key(g, arch, "feed_forward_length", b1, sizeof(b1)));
	row("rope base", "%s", arch_key(g, arch, "rope.freq_base", b1, sizeof(b1)));
	row("rope dims", "%s", arch_key(g, arch, "rope.dimension_count", b1, sizeof(b1)));
	row("rope type", "%s", rope_type(arch));
	const char *scaling = arch_key(g, arch, "rope.scaling.type", b1, sizeof(b1));
	if (!strcmp(scaling, "-") && gguf_find_tensor(g, "rope_freqs.weight"))
		scaling = "llama3 (rope_freqs.weight)";
	const char *factor = arch_key(g, arch, "rope.scaling.factor", b2, sizeof(b2));
	if (!strcmp(scaling, "-") || !strcmp(scaling, "none"))
		row("rope scaling", "none");
	else if (strcmp(factor, "-"))
		row("rope scaling", "%s, factor %s", scaling, factor);
	else
		row("rope scaling", "%s", scaling);
	row("rms eps", "%s", arch_key(g, arch, "attention.layer_norm_rms_epsilon", b1, sizeof(b1)));

	gguf_arr toks;
	const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
	if (!gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, NULL))
		row("vocab size", "%llu", (unsigned long long)toks.n);
	else if (strcmp(arch_key(g, arch, "vocab_size", b1, sizeof(b1)), "-"))
		row("vocab size", "%s", b1);
	else if (emb && emb->n_dims >= 2)
		row("vocab size", "%lld", (long long)emb->ne[1]);
	else
		row("vocab size", "-");
	row("tokenizer", "%s", str_key(g, "tokenizer.ggml.model", b1, sizeof(b1)));
	row("pre-tokenizer", "%s", str_key(g, "tokenizer.ggml.pre", b1, sizeof(b1)));
	row("bos id", "%s", int_key(g, "tokenizer.ggml.bos_token_id", b1, sizeof(b1)));
	row("eos id", "%s", int_key(g, "tokenizer.ggml.eos_token_id", b1, sizeof(b1)));
	if (!gguf_get_str(g, "tokenizer.chat_template", &s, NULL))
		row("chat template", "present (%llu bytes)", (unsigned long long)s.n);
	else
		row("chat template", "none");

	/* tensors by type, largest share first */
	type_total tot[QTYPE_COUNT];
	int n_types = 0;
	uint64_t all_bytes = 0;
	double params = 0;
	for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor *t = gguf_tensor_at(g, i);
		int k = 0;
		while (k < n_types && tot[k].type != t->type)
			k++;
		if (k == n_types)
			tot[n_types++] = (type_total){ t->type, 0, 0 };
		tot[k].count++;
		tot[k].bytes += t->nbytes;
		all_bytes += t->nbytes;
		params += (double)gguf_tensor_nelements(t);
	}
	qsort(tot, (size_t)n_types, sizeof(tot[0]), by_bytes);
	row("tensors", "%lld", (long long)gguf_n_tensors(g));
	row("parameters", "%.0f (%s)", params, count_str(params, b1, sizeof(b1)));
	row("tensor bytes", "%llu (%s)", (unsigned long long)all_bytes, human((double)all_bytes, b1, sizeof(b1)));
	if (n_types) {
		printf("  %-8s %7s %14s %7s\n", "type", "count", "bytes", "share");
		for (int k = 0; k < n_types; k++)
			printf("  %-8s %7lld %14llu %6.1f%%\n", qtype_name(tot[k].type), (long long)tot[k].count,
			       (unsigned long long)tot[k].bytes,
			       all_bytes ? 100.0 * (double)tot[k].bytes / (double)all_bytes : 0.0);
	}
	gguf_close(g);
	return 0;
}

/* ---------------------------------------------------------------- synth */

static int parse_type(const char *name)
{
	static const int types[] = { QTYPE_F32, QTYPE_F16, QTYPE_BF16, QTYPE_Q8_0, QTYPE_Q4_0 };
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (!strcasecmp(name, qtype_name(types[i])))
			return types[i];
	return -1;
}

static int model_synth(int argc, char **argv)
{
	const char *out = NULL, *preset = "tiny", *type = NULL, *seed = NULL;
	int tied = 0;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char **dst = !strcmp(a, "--out") ? &out : !strcmp(a, "--preset") ? &preset
				 : !strcmp(a, "--type") ? &type : !strcmp(a, "--seed") ? &seed : NULL;
		if (dst) {
			if (i + 1 >= argc) {
				fprintf(stderr, "pdserve model synth: %s needs a value\n", a);
				return 2;
			}
			*dst = argv[++i];
		} else if (!strcmp(a, "--tied")) {
			tied = 1;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "pdserve model synth: unknown argument '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}

	synth_config cfg;
	if (synth_preset(preset, &cfg)) {
		fprintf(stderr, "pdserve model synth: unknown preset '%s' (have %s)\n", preset, synth_preset_names());
		return 2;
	}
	if (seed) {
		char *end;
		cfg.seed = strtoull(seed, &end, 0);
		if (!*seed || *end || *seed == '-') {
			fprintf(stderr, "pdserve model synth: --seed '%s' is not a number\n", seed);
			return 2;
		}
	}
	if (type && (cfg.type = parse_type(type)) < 0) {
		fprintf(stderr, "pdserve model synth: --type '%s': want F32, F16, BF16, Q8_0 or Q4_0\n", type);
		return 2;
	}
	cfg.tied = tied;

	char path[4096], err[ERR_LEN];
	if (!out) {
		int rc = synth_default_path(path, sizeof(path));
		if (rc) {
			fprintf(stderr, "pdserve model synth: %s\n",
				rc == ERR_NOTFOUND ? "neither XDG_CACHE_HOME nor HOME is set; pass --out"
						   : "default path too long; pass --out");
			return 2;
		}
		out = path;
	}
	if (synth_write(&cfg, out, err)) {
		fprintf(stderr, "pdserve model synth: %s\n", err);
		return 1;
	}
	printf("%s\n", out);
	return 0;
}

int cmd_model(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (!strcmp(argv[1], "info")) {
		if (argc == 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
			usage(stdout);
			return 0;
		}
		if (argc != 3) {
			usage(stderr);
			return 2;
		}
		return model_info(argv[2]);
	}
	if (!strcmp(argv[1], "synth"))
		return model_synth(argc, argv);
	fprintf(stderr, "pdserve model: unknown verb '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
