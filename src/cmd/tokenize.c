/* tokenize.c - `pdserve tokenize` and `pdserve detokenize`: flags and wiring.
 *
 *   pdserve tokenize --model-path M [--add-special] [--parse-special] [--text T]
 *       Prints the ids of T (or of stdin, byte for byte, when --text is
 *       absent) on one line, separated by spaces. Without flags: no BOS/EOS,
 *       and special-token texts are plain text.
 *   pdserve detokenize --model-path M [--special] [--remove-special] [-n] [IDS...]
 *       Prints the text of the ids (from the arguments, else whitespace-
 *       separated on stdin), as llama_detokenize does, then a newline unless -n.
 *
 * Works on vocab-only GGUFs. Exit status: 0 ok, 1 runtime error (file,
 * vocabulary), 2 usage.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "cmd/cmd.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

static void usage_tokenize(FILE *f)
{
	fprintf(f, "usage: pdserve tokenize --model-path M [--add-special] [--parse-special] [--text T]\n"
		   "  prints the token ids of T (default: all of stdin, byte for byte)\n"
		   "  --add-special    add BOS/EOS as the vocabulary asks\n"
		   "  --parse-special  turn special-token texts (e.g. <|im_start|>) into their ids\n");
}

static void usage_detokenize(FILE *f)
{
	fprintf(f, "usage: pdserve detokenize --model-path M [--special] [--remove-special] [-n] [IDS...]\n"
		   "  prints the text of the ids (default: ids read from stdin)\n"
		   "  --special         render control tokens as their text\n"
		   "  --remove-special  drop a leading BOS / trailing EOS the vocabulary adds\n"
		   "  -n                no newline after the text\n");
}

/* Open path and build its tokenizer; prints the error and returns NULL. */
static tokenizer *open_tokenizer(const char *cmd, const char *path, gguf **g)
{
	char err[ERR_LEN] = "";
	*g = gguf_open(path, err);
	if (!*g) {
		fprintf(stderr, "pdserve %s: %s\n", cmd, err);
		return NULL;
	}
	tokenizer *t = tokenizer_create(*g, err);
	if (!t) {
		fprintf(stderr, "pdserve %s: %s: %s\n", cmd, path, err);
		gguf_close(*g);
		*g = NULL;
	}
	return t;
}

/* All of stdin; NUL-terminated (*len excludes the NUL, which the text may
   also contain). NULL on a read error or out of memory. */
static char *read_stdin(size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = alloc_bytes(cap);
	while (buf) {
		if (n == cap - 1) {
			char *b = alloc_resize(buf, cap * 2);
			if (!b)
				break;
			buf = b;
			cap *= 2;
		}
		size_t k = fread(buf + n, 1, cap - 1 - n, stdin);
		n += k;
		if (k == 0) {
			if (ferror(stdin))
				break;
			buf[n] = 0;
			*len = n;
			return buf;
		}
	}
	alloc_free(buf);
	return NULL;
}

int cmd_tokenize(int argc, char **argv)
{
	const char *model = NULL, *text = NULL;
	bool add_special = false, parse_special = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage_tokenize(stdout);
			return 0;
		} else if (!strcmp(a, "--model-path") && i + 1 < argc) {
			model = argv[++i];
		} else if (!strcmp(a, "--text") && i + 1 < argc) {
			text = argv[++i];
		} else if (!strcmp(a, "--add-special")) {
			add_special = true;
		} else if (!strcmp(a, "--parse-special")) {
			parse_special = true;
		} else {
			fprintf(stderr, "pdserve tokenize: unexpected argument '%s'\n", a);
			usage_tokenize(stderr);
			return 2;
		}
	}
	if (!model) {
		fprintf(stderr, "pdserve tokenize: --model-path is required\n");
		usage_tokenize(stderr);
		return 2;
	}

	gguf *g;
	tokenizer *t = open_tokenizer("tokenize", model, &g);
	if (!t)
		return 1;
	int status = 1;
	char *owned = NULL;
	size_t len;
	if (text) {
		len = strlen(text);
	} else {
		owned = read_stdin(&len);
		if (!owned) {
			fprintf(stderr, "pdserve tokenize: reading stdin: %s\n", errno ? strerror(errno) : "out of memory");
			goto out;
		}
		text = owned;
	}
	int32_t *ids;
	size_t n;
	int rc = tokenizer_encode(t, text, len, add_special, parse_special, &ids, &n);
	if (rc) {
		fprintf(stderr, "pdserve tokenize: %s\n",
			rc == ERR_INVAL ? "input too long" : "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		printf(i ? " %d" : "%d", ids[i]);
	printf("\n");
	alloc_free(ids);
	status = fflush(stdout) == 0 ? 0 : 1;
out:
	alloc_free(owned);
	tokenizer_destroy(t);
	gguf_close(g);
	return status;
}

/* Parse whitespace-separated ids from s into *ids (grown as needed). */
static int parse_ids(const char *s, int32_t **ids, size_t *n, size_t *cap)
{
	for (;;) {
		while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == ',')
			s++;
		if (!*s)
			return 0;
		char *end;
		errno = 0;
		long v = strtol(s, &end, 10);
		if (end == s || errno || v < INT32_MIN || v > INT32_MAX)
			return -1;
		if (*n == *cap) {
			size_t c = *cap ? *cap * 2 : 64;
			int32_t *p = alloc_resize_array(*ids, c, sizeof(*p));
			if (!p)
				return -2;
			*ids = p;
			*cap = c;
		}
		(*ids)[(*n)++] = (int32_t)v;
		s = end;
	}
}

int cmd_detokenize(int argc, char **argv)
{
	const char *model = NULL;
	unsigned flags = 0;
	bool newline = true;
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	int first_id = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage_detokenize(stdout);
			return 0;
		} else if (!strcmp(a, "--model-path") && i + 1 < argc) {
			model = argv[++i];
		} else if (!strcmp(a, "--special")) {
			flags |= TOKENIZER_DECODE_SPECIAL;
		} else if (!strcmp(a, "--remove-special")) {
			flags |= TOKENIZER_DECODE_REMOVE_SPECIAL;
		} else if (!strcmp(a, "-n")) {
			newline = false;
		} else if (a[0] == '-' && !(a[1] >= '0' && a[1] <= '9')) {
			fprintf(stderr, "pdserve detokenize: unexpected argument '%s'\n", a);
			usage_detokenize(stderr);
			return 2;
		} else {
			if (!first_id)
				first_id = i;
			int rc = parse_ids(a, &ids, &n, &cap);
			if (rc) {
				fprintf(stderr, "pdserve detokenize: %s '%s'\n", rc == -1 ? "not a token id:" : "out of memory at",
					a);
				alloc_free(ids);
				return rc == -1 ? 2 : 1;
			}
		}
	}
	if (!model) {
		fprintf(stderr, "pdserve detokenize: --model-path is required\n");
		usage_detokenize(stderr);
		alloc_free(ids);
		return 2;
	}
	if (!first_id) {
		size_t len;
		char *in = read_stdin(&len);
		if (!in) {
			fprintf(stderr, "pdserve detokenize: reading stdin failed\n");
			return 1;
		}
		int rc = memchr(in, 0, len) ? -1 : parse_ids(in, &ids, &n, &cap);
		alloc_free(in);
		if (rc) {
			fprintf(stderr, "pdserve detokenize: stdin is not a list of token ids\n");
			alloc_free(ids);
			return 2;
		}
	}

	gguf *g;
	tokenizer *t = open_tokenizer("detokenize", model, &g);
	if (!t) {
		alloc_free(ids);
		return 1;
	}
	int status = 1;
	char err[ERR_LEN] = "", *text;
	size_t len;
	if (tokenizer_decode(t, ids, n, flags, &text, &len, err)) {
		fprintf(stderr, "pdserve detokenize: %s\n", err);
	} else {
		fwrite(text, 1, len, stdout);
		if (newline)
			putchar('\n');
		alloc_free(text);
		status = fflush(stdout) == 0 ? 0 : 1;
	}
	tokenizer_destroy(t);
	gguf_close(g);
	alloc_free(ids);
	return status;
}
