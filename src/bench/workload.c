/* workload.c - datasets, exact-length prompts, arrival times.
 *
 * Design. Everything that needs a tokenizer goes through two batched calls,
 * workload_encode and workload_decode, so the remote tokenizer costs one
 * HTTP round trip per batch of prompts rather than one per prompt, and the
 * local one is a plain loop. Exact-length prompts (workload_exact_texts)
 * are a fixed point search: text(ids) re-encodes to ids' of another length
 * when tokens merge or split at the cut; cutting or padding ids' and trying
 * again settles in one or two rounds for SentencePiece and byte-level BPE
 * vocabularies alike. The texts that reach the server are always valid
 * UTF-8 (invalid bytes become U+FFFD before anything is re-encoded), since
 * a JSON body must be.
 *
 * Invariants: every workload_req has a prompt; prompt_len >= 1 and
 * output_len >= 1; ids, when present, are the prompt's ids without special
 * tokens.
 *
 * Left out: caching generated datasets on disk (SGLang pickles the
 * generated-shared-prefix set; regenerating from the seed is cheap here).
 */
#include "bench/workload.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/log.h"
#include "bench/httpc.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

/* ---------------------------------------------------------------- random */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

void workload_rng_seed(workload_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t workload_rng_next(workload_rng *r)
{
	uint64_t *s = r->s;
	uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return out;
}

double workload_rng_uniform(workload_rng *r)
{
	return (double)(workload_rng_next(r) >> 11) * 0x1.0p-53;
}

int64_t workload_rng_int(workload_rng *r, int64_t lo, int64_t hi)
{
	uint64_t span = (uint64_t)(hi - lo) + 1; /* 0 means the full 2^64 range */
	if (span == 0)
		return (int64_t)workload_rng_next(r);
	/* rejection sampling: no modulo bias */
	uint64_t limit = UINT64_MAX - UINT64_MAX % span, x;
	do
		x = workload_rng_next(r);
	while (x >= limit);
	return lo + (int64_t)(x % span);
}

double workload_rng_exp(workload_rng *r, double rate)
{
	return -log1p(-workload_rng_uniform(r)) / rate;
}

void workload_rng_shuffle(workload_rng *r, void *base, size_t n, size_t size)
{
	unsigned char *b = base, tmp[64];
	CHECK(size <= sizeof(tmp));
	for (size_t i = n; i > 1; i--) { /* Fisher-Yates */
		size_t j = (size_t)workload_rng_int(r, 0, (int64_t)i - 1);
		if (j == i - 1)
			continue;
		memcpy(tmp, b + (i - 1) * size, size);
		memcpy(b + (i - 1) * size, b + j * size, size);
		memcpy(b + j * size, tmp, size);
	}
}

void workload_arrivals(workload_rng *r, double rate, size_t n, double *t)
{
	double at = 0;
	for (size_t i = 0; i < n; i++) {
		t[i] = at;
		if (isfinite(rate) && rate > 0)
			at += workload_rng_exp(r, rate);
	}
}

int workload_draw_len(workload_rng *r, int len, double ratio)
{
	int lo = (int)floor((double)len * ratio);
	if (lo < 1)
		lo = 1;
	if (lo > len)
		lo = len;
	return (int)workload_rng_int(r, lo, len);
}

/* ---------------------------------------------------------------- UTF-8 */

/* Copy s[0..n) to out (room for 3n + 1), each invalid byte as U+FFFD.
   Returns the output length; out is NUL-terminated. */
static size_t utf8_clean(const unsigned char *s, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		unsigned c = s[i];
		size_t k = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 :
					  (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
		bool ok = k > 0 && i + k <= n;
		for (size_t j = 1; ok && j < k; j++)
			ok = (s[i + j] & 0xC0) == 0x80;
		if (ok && k == 3)
			ok = !(c == 0xE0 && s[i + 1] < 0xA0) && !(c == 0xED && s[i + 1] > 0x9F);
		if (ok && k == 4)
			ok = !(c == 0xF0 && s[i + 1] < 0x90) && !(c == 0xF4 && s[i + 1] > 0x8F);
		if (ok && c != 0) {
			memcpy(out + o, s + i, k);
			o += k;
			i += k;
		} else {
			if (c != 0) { /* NUL is dropped: prompts are C strings */
				memcpy(out + o, "\xEF\xBF\xBD", 3);
				o += 3;
			}
			i++;
		}
	}
	out[o] = '\0';
	return o;
}

/* ---------------------------------------------------------------- tokenizer */

#define REMOTE_BATCH 128 /* prompts per /tokenize or /detokenize call */

struct workload_tokenizer {
	/* local */
	gguf *g;
	tokenizer *tok;
	int32_t *ordinary; /* [n_ordinary] NORMAL tokens: what random prompts are made of */
	int32_t n_ordinary;
	/* remote */
	char *base_url, *api_key;
	int32_t n_vocab;
};

workload_tokenizer *workload_tokenizer_open_gguf(const char *path, char err[ERR_LEN])
{
	workload_tokenizer *t = alloc_zeroed(1, sizeof(*t));
	if (!t) {
		err_set(err, ERR_NOMEM, "out of memory");
		return NULL;
	}
	if (!(t->g = gguf_open(path, err)) || !(t->tok = tokenizer_create(t->g, err)))
		goto fail;
	t->n_vocab = tokenizer_n_vocab(t->tok);
	if (!(t->ordinary = alloc_array((size_t)t->n_vocab, sizeof(int32_t)))) {
		err_set(err, ERR_NOMEM, "out of memory");
		goto fail;
	}
	for (int32_t id = 0; id < t->n_vocab; id++)
		if (tokenizer_token_attr(t->tok, id) & TOKENIZER_ATTR_NORMAL)
			t->ordinary[t->n_ordinary++] = id;
	if (t->n_ordinary == 0) {
		err_set(err, ERR_FORMAT, "%s: the vocabulary has no ordinary tokens to make prompts of", path);
		goto fail;
	}
	return t;
fail:
	workload_tokenizer_close(t);
	return NULL;
}

/* GET/POST base_url + path, 200 and a JSON body, or an error naming the url. */
static json_object *remote_call(const workload_tokenizer *t, const char *path, const char *body, char err[ERR_LEN])
{
	char url[1024];
	snprintf(url, sizeof(url), "%s%s", t->base_url, path);
	long status = 0;
	char *resp = NULL;
	size_t len = 0;
	if (httpc_fetch(body ? "POST" : "GET", url, body, body ? strlen(body) : 0, t->api_key, 600, &status, &resp, &len,
			err) < 0)
		return NULL;
	json_object *o = NULL;
	if (status != 200) {
		err_set(err, ERR_PROTO, "%s: HTTP %ld: %.160s", url, status, resp);
	} else if (!(o = json_tokener_parse(resp))) {
		err_set(err, ERR_PROTO, "%s: the response is not JSON", url);
	}
	alloc_free(resp);
	return o;
}

workload_tokenizer *workload_tokenizer_open_remote(const char *base_url, const char *api_key, char err[ERR_LEN])
{
	workload_tokenizer *t = alloc_zeroed(1, sizeof(*t));
	json_object *o = NULL, *v;
	if (!t || !(t->base_url = alloc_strdup(base_url)) || (api_key && !(t->api_key = alloc_strdup(api_key)))) {
		err_set(err, ERR_NOMEM, "out of memory");
		goto fail;
	}
	if (!(o = remote_call(t, "/get_model_info", NULL, err)))
		goto fail;
	if (!json_object_object_get_ex(o, "vocab_size", &v) || !json_object_is_type(v, json_type_int) ||
	    json_object_get_int64(v) < 2 || json_object_get_int64(v) > INT32_MAX) {
		err_set(err, ERR_PROTO, "%s/get_model_info: no usable vocab_size", base_url);
		goto fail;
	}
	t->n_vocab = (int32_t)json_object_get_int64(v);
	json_object_put(o);
	return t;
fail:
	json_object_put(o);
	workload_tokenizer_close(t);
	return NULL;
}

void workload_tokenizer_close(workload_tokenizer *t)
{
	if (!t)
		return;
	tokenizer_destroy(t->tok);
	gguf_close(t->g);
	alloc_free(t->ordinary);
	alloc_free(t->base_url);
	alloc_free(t->api_key);
	alloc_free(t);
}

int32_t workload_tokenizer_n_vocab(const workload_tokenizer *t)
{
	return t->n_vocab;
}

/* A random token to build prompts from: an ordinary token (local), or any
   id (remote: the server's detokenize drops control tokens, and the
   exact-length rounds repair what that changes). */
static int32_t random_token(const workload_tokenizer *t, workload_rng *r)
{
	if (t->tok)
		return t->ordinary[workload_rng_int(r, 0, t->n_ordinary - 1)];
	return (int32_t)workload_rng_int(r, 0, t->n_vocab - 1);
}

static void free_id_lists(int32_t **ids, size_t n)
{
	for (size_t i = 0; ids && i < n; i++) {
		alloc_free(ids[i]);
		ids[i] = NULL;
	}
}

static int remote_encode(workload_tokenizer *t, const char *const *texts, size_t n, bool add_special, int32_t **ids,
			 int *counts, char err[ERR_LEN])
{
	for (size_t b = 0; b < n; b += REMOTE_BATCH) {
		size_t m = n - b < REMOTE_BATCH ? n - b : REMOTE_BATCH;
		json_object *req = json_object_new_object(), *arr = json_object_new_array(), *resp, *tok, *cnt;
		for (size_t i = 0; i < m; i++)
			json_object_array_add(arr, json_object_new_string(texts[b + i]));
		json_object_object_add(req, "prompt", arr);
		json_object_object_add(req, "add_special_tokens", json_object_new_boolean(add_special));
		resp = remote_call(t, "/tokenize", json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN), err);
		json_object_put(req);
		if (!resp)
			return ERR_PROTO;
		if (!json_object_object_get_ex(resp, "tokens", &tok) || !json_object_is_type(tok, json_type_array) ||
		    json_object_array_length(tok) != m || !json_object_object_get_ex(resp, "count", &cnt) ||
		    !json_object_is_type(cnt, json_type_array) || json_object_array_length(cnt) != m) {
			json_object_put(resp);
			return err_set(err, ERR_PROTO, "%s/tokenize: expected tokens and count lists of %zu", t->base_url,
				       m);
		}
		for (size_t i = 0; i < m; i++) {
			json_object *l = json_object_array_get_idx(tok, i);
			size_t k = json_object_is_type(l, json_type_array) ? json_object_array_length(l) : 0;
			counts[b + i] = (int)k;
			if (!ids)
				continue;
			if (!(ids[b + i] = alloc_array(k ? k : 1, sizeof(int32_t)))) {
				json_object_put(resp);
				return err_set(err, ERR_NOMEM, "out of memory");
			}
			for (size_t j = 0; j < k; j++)
				ids[b + i][j] = (int32_t)json_object_get_int64(json_object_array_get_idx(l, j));
		}
		json_object_put(resp);
	}
	return 0;
}

int workload_encode(workload_tokenizer *t, const char *const *texts, size_t n, bool add_special, int32_t **ids,
		    int *counts, char err[ERR_LEN])
{
	for (size_t i = 0; ids && i < n; i++)
		ids[i] = NULL;
	int rc = 0;
	if (!t->tok) {
		rc = remote_encode(t, texts, n, add_special, ids, counts, err);
	} else {
		for (size_t i = 0; i < n && rc == 0; i++) {
			int32_t *v = NULL;
			size_t k = 0;
			if ((rc = tokenizer_encode(t->tok, texts[i], strlen(texts[i]), add_special, true, &v, &k)) < 0) {
				err_set(err, rc, "cannot tokenize prompt %zu", i);
				break;
			}
			counts[i] = (int)k;
			if (ids)
				ids[i] = v;
			else
				alloc_free(v);
		}
	}
	if (rc < 0)
		free_id_lists(ids, n);
	return rc;
}

static void free_texts(char **texts, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		alloc_free(texts[i]);
		texts[i] = NULL;
	}
}

static int remote_decode(workload_tokenizer *t, int32_t *const *ids, const int *lens, size_t n, char **texts,
			 char err[ERR_LEN])
{
	for (size_t b = 0; b < n; b += REMOTE_BATCH) {
		size_t m = n - b < REMOTE_BATCH ? n - b : REMOTE_BATCH;
		json_object *req = json_object_new_object(), *arr = json_object_new_array(), *resp, *txt;
		for (size_t i = 0; i < m; i++) {
			json_object *l = json_object_new_array_ext(lens[b + i]);
			for (int j = 0; j < lens[b + i]; j++)
				json_object_array_add(l, json_object_new_int(ids[b + i][j]));
			json_object_array_add(arr, l);
		}
		json_object_object_add(req, "tokens", arr);
		json_object_object_add(req, "skip_special_tokens", json_object_new_boolean(1));
		resp = remote_call(t, "/detokenize", json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN), err);
		json_object_put(req);
		if (!resp)
			return ERR_PROTO;
		if (!json_object_object_get_ex(resp, "text", &txt) || !json_object_is_type(txt, json_type_array) ||
		    json_object_array_length(txt) != m) {
			json_object_put(resp);
			return err_set(err, ERR_PROTO, "%s/detokenize: expected a text list of %zu", t->base_url, m);
		}
		for (size_t i = 0; i < m; i++) {
			json_object *s = json_object_array_get_idx(txt, i);
			const char *p = json_object_is_type(s, json_type_string) ? json_object_get_string(s) : "";
			size_t len = strlen(p);
			if (!(texts[b + i] = alloc_bytes(3 * len + 1))) {
				json_object_put(resp);
				return err_set(err, ERR_NOMEM, "out of memory");
			}
			utf8_clean((const unsigned char *)p, len, texts[b + i]);
		}
		json_object_put(resp);
	}
	return 0;
}

static int local_decode(workload_tokenizer *t, const int32_t *ids, int len, char **text, char err[ERR_LEN])
{
	int32_t *keep = alloc_array(len > 0 ? (size_t)len : 1, sizeof(int32_t));
	if (!keep)
		return err_set(err, ERR_NOMEM, "out of memory");
	size_t k = 0;
	for (int i = 0; i < len; i++) /* skip_special_tokens: control tokens leave before decoding */
		if (!(tokenizer_token_attr(t->tok, ids[i]) & TOKENIZER_ATTR_CONTROL))
			keep[k++] = ids[i];
	char *raw = NULL;
	size_t n = 0;
	int rc = tokenizer_decode(t->tok, keep, k, 0, &raw, &n, err);
	alloc_free(keep);
	if (rc < 0)
		return rc;
	if (!(*text = alloc_bytes(3 * n + 1))) {
		alloc_free(raw);
		return err_set(err, ERR_NOMEM, "out of memory");
	}
	utf8_clean((const unsigned char *)raw, n, *text);
	alloc_free(raw);
	return 0;
}

int workload_decode(workload_tokenizer *t, int32_t *const *ids, const int *lens, size_t n, char **texts,
		    char err[ERR_LEN])
{
	for (size_t i = 0; i < n; i++)
		texts[i] = NULL;
	int rc = 0;
	if (!t->tok) {
		rc = remote_decode(t, ids, lens, n, texts, err);
	} else {
		for (size_t i = 0; i < n && rc == 0; i++)
			rc = local_decode(t, ids[i], lens[i], &texts[i], err);
	}
	if (rc < 0)
		free_texts(texts, n);
	return rc;
}

/* ---------------------------------------------------------------- exact lengths */

int workload_exact_texts(workload_tokenizer *t, workload_rng *r, int32_t **ids, const int *want, size_t n,
			 int rounds, char **texts, int *got, int32_t **out_ids, char err[ERR_LEN])
{
	int rc = 0, unsettled = 0;
	size_t *pend = alloc_array(n ? n : 1, sizeof(size_t));
	int32_t **pids = alloc_array(n ? n : 1, sizeof(int32_t *)), **enc = alloc_array(n ? n : 1, sizeof(int32_t *));
	int *plen = alloc_array(n ? n : 1, sizeof(int)), *cnt = alloc_array(n ? n : 1, sizeof(int));
	char **ptxt = alloc_array(n ? n : 1, sizeof(char *));
	for (size_t i = 0; i < n; i++) {
		texts[i] = NULL;
		if (out_ids)
			out_ids[i] = NULL;
	}
	if (!pend || !pids || !enc || !plen || !cnt || !ptxt) {
		rc = err_set(err, ERR_NOMEM, "out of memory");
		goto fail;
	}
	size_t np = n;
	for (size_t i = 0; i < n; i++)
		pend[i] = i;
	for (int round = 0; round < rounds && np > 0; round++) {
		bool last = round == rounds - 1;
		for (size_t k = 0; k < np; k++) {
			pids[k] = ids[pend[k]];
			plen[k] = want[pend[k]];
		}
		if ((rc = workload_decode(t, pids, plen, np, ptxt, err)) < 0)
			goto fail;
		if ((rc = workload_encode(t, (const char *const *)ptxt, np, false, enc, cnt, err)) < 0) {
			free_texts(ptxt, np);
			goto fail;
		}
		size_t still = 0;
		for (size_t k = 0; k < np; k++) {
			size_t i = pend[k];
			int w = want[i], c = cnt[k];
			if (c == w || last) {
				texts[i] = ptxt[k];
				got[i] = c;
				unsettled += c != w;
				alloc_free(ids[i]);
				ids[i] = NULL;
				if (out_ids)
					out_ids[i] = enc[k];
				else
					alloc_free(enc[k]);
				continue;
			}
			alloc_free(ptxt[k]);
			/* cut or pad the re-encoded ids to the wanted length */
			int32_t *v = alloc_resize_array(enc[k], (size_t)w, sizeof(int32_t));
			if (!v) {
				for (size_t j = k; j < np; j++) {
					alloc_free(enc[j]);
					if (j > k)
						alloc_free(ptxt[j]);
				}
				rc = err_set(err, ERR_NOMEM, "out of memory");
				goto fail;
			}
			for (int j = c; j < w; j++)
				v[j] = random_token(t, r);
			alloc_free(ids[i]);
			ids[i] = v;
			pend[still++] = i;
		}
		np = still;
	}
	rc = unsettled;
fail:
	if (rc < 0) {
		free_texts(texts, n);
		free_id_lists(out_ids, n);
	}
	alloc_free(ptxt);
	alloc_free(cnt);
	alloc_free(plen);
	alloc_free(enc);
	alloc_free(pids);
	alloc_free(pend);
	return rc;
}

/* ---------------------------------------------------------------- ShareGPT */

void workload_free_strs(char **s, size_t n)
{
	for (size_t i = 0; s && i < n; i++)
		alloc_free(s[i]);
	alloc_free(s);
}

static const char *turn_text(json_object *turns, size_t i)
{
	json_object *t = json_object_array_get_idx(turns, i), *v;
	if (!json_object_is_type(t, json_type_object) || !json_object_object_get_ex(t, "value", &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

int workload_load_sharegpt(const char *path, char ***prompts, char ***completions, size_t *n, char err[ERR_LEN])
{
	*prompts = *completions = NULL;
	*n = 0;
	json_object *root = json_object_from_file(path);
	if (!root)
		return err_set(err, ERR_FORMAT, "%s: cannot read it as JSON (%s)", path, json_util_get_last_err());
	if (!json_object_is_type(root, json_type_array)) {
		json_object_put(root);
		return err_set(err, ERR_FORMAT, "%s: expected a JSON list of conversations", path);
	}
	size_t len = json_object_array_length(root), k = 0;
	char **p = alloc_zeroed(len ? len : 1, sizeof(char *)), **c = alloc_zeroed(len ? len : 1, sizeof(char *));
	if (!p || !c)
		goto oom;
	for (size_t i = 0; i < len; i++) {
		json_object *d = json_object_array_get_idx(root, i), *turns;
		if (!json_object_is_type(d, json_type_object))
			continue;
		if (!json_object_object_get_ex(d, "conversations", &turns) &&
		    !json_object_object_get_ex(d, "conversation", &turns))
			continue;
		if (!json_object_is_type(turns, json_type_array) || json_object_array_length(turns) < 2)
			continue;
		const char *a = turn_text(turns, 0), *b = turn_text(turns, 1);
		if (!a || !b)
			continue;
		if (!(p[k] = alloc_strdup(a)) || !(c[k] = alloc_strdup(b))) {
			k++;
			goto oom;
		}
		k++;
	}
	json_object_put(root);
	*prompts = p;
	*completions = c;
	*n = k;
	return 0;
oom:
	json_object_put(root);
	workload_free_strs(p, k);
	workload_free_strs(c, k);
	return err_set(err, ERR_NOMEM, "%s: out of memory", path);
}

/* ---------------------------------------------------------------- datasets */

void workload_free(workload *w)
{
	for (size_t i = 0; w->req && i < w->n; i++) {
		alloc_free(w->req[i].prompt);
		alloc_free(w->req[i].ids);
	}
	alloc_free(w->req);
	memset(w, 0, sizeof(*w));
}

/* How many special tokens encoding adds (BOS/EOS as the vocabulary asks). */
static int special_added(workload_tokenizer *t, int *added, char err[ERR_LEN])
{
	const char *probe[] = { "Hello" };
	int with = 0, without = 0, rc;
	if ((rc = workload_encode(t, probe, 1, true, NULL, &with, err)) < 0 ||
	    (rc = workload_encode(t, probe, 1, false, NULL, &without, err)) < 0)
		return rc;
	*added = with - without;
	return 0;
}

/* n exact-length random texts of lens[i] tokens; ids_out may be NULL. */
static int random_texts(workload_tokenizer *t, workload_rng *r, const int *lens, size_t n, char **texts, int *got,
			int32_t **ids_out, int *unsettled, char err[ERR_LEN])
{
	int32_t **ids = alloc_zeroed(n ? n : 1, sizeof(int32_t *));
	if (!ids)
		return err_set(err, ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		if (!(ids[i] = alloc_array((size_t)lens[i], sizeof(int32_t)))) {
			free_id_lists(ids, i);
			alloc_free(ids);
			return err_set(err, ERR_NOMEM, "out of memory");
		}
		for (int j = 0; j < lens[i]; j++)
			ids[i][j] = random_token(t, r);
	}
	int rc = workload_exact_texts(t, r, ids, lens, n, 8, texts, got, ids_out, err);
	free_id_lists(ids, n);
	alloc_free(ids);
	if (rc < 0)
		return rc;
	*unsettled += rc;
	return 0;
}

/* Source ids for random prompts from ShareGPT prompts, repeated or cut to
   lens[i] (SGLang's "random" source). */
static int sharegpt_source_ids(workload_tokenizer *t, workload_rng *r, const char *path, const int *lens, size_t n,
			       int32_t **ids, char err[ERR_LEN])
{
	char **p = NULL, **c = NULL;
	size_t m = 0;
	int rc = workload_load_sharegpt(path, &p, &c, &m, err);
	if (rc < 0)
		return rc;
	int32_t **enc = NULL;
	int *cnt = NULL;
	workload_rng_shuffle(r, p, m, sizeof(char *));
	size_t take = m < 4 * n + 16 ? m : 4 * n + 16; /* enough non-empty prompts, without tokenizing all */
	if (!(enc = alloc_zeroed(take ? take : 1, sizeof(int32_t *))) || !(cnt = alloc_zeroed(take ? take : 1, sizeof(int)))) {
		rc = err_set(err, ERR_NOMEM, "out of memory");
		goto done;
	}
	if ((rc = workload_encode(t, (const char *const *)p, take, false, enc, cnt, err)) < 0)
		goto done;
	size_t src = 0;
	for (size_t i = 0; i < n; i++) {
		while (src < take && cnt[src] == 0)
			src++;
		if (src == take) {
			rc = err_set(err, ERR_INVAL, "%s: fewer non-empty prompts than --num-prompts", path);
			goto done;
		}
		if (!(ids[i] = alloc_array((size_t)lens[i], sizeof(int32_t)))) {
			rc = err_set(err, ERR_NOMEM, "out of memory");
			goto done;
		}
		for (int j = 0; j < lens[i]; j++)
			ids[i][j] = enc[src][j % cnt[src]];
		src++;
	}
done:
	free_id_lists(enc, take);
	alloc_free(enc);
	alloc_free(cnt);
	workload_free_strs(p, m);
	workload_free_strs(c, m);
	return rc;
}

static int build_random(const workload_config *cfg, workload_tokenizer *t, workload_rng *r, workload *w,
			char err[ERR_LEN])
{
	size_t n = (size_t)cfg->num_prompts;
	int added = 0, rc;
	if ((rc = special_added(t, &added, err)) < 0)
		return rc;
	int *in = alloc_array(n ? n : 1, sizeof(int)), *got = alloc_array(n ? n : 1, sizeof(int));
	int32_t **src = alloc_zeroed(n ? n : 1, sizeof(int32_t *)), **fin = alloc_zeroed(n ? n : 1, sizeof(int32_t *));
	char **texts = alloc_zeroed(n ? n : 1, sizeof(char *));
	if (!in || !got || !src || !fin || !texts) {
		rc = err_set(err, ERR_NOMEM, "out of memory");
		goto done;
	}
	/* SGLang draws all input lengths, then all output lengths */
	for (size_t i = 0; i < n; i++)
		in[i] = workload_draw_len(r, cfg->random_input_len, cfg->random_range_ratio);
	for (size_t i = 0; i < n; i++)
		w->req[i].output_len = workload_draw_len(r, cfg->random_output_len, cfg->random_range_ratio);
	if (cfg->dataset_path && *cfg->dataset_path) {
		if ((rc = sharegpt_source_ids(t, r, cfg->dataset_path, in, n, src, err)) < 0)
			goto done;
		if ((rc = workload_exact_texts(t, r, src, in, n, 8, texts, got, fin, err)) < 0)
			goto done;
		w->unsettled += rc;
	} else if ((rc = random_texts(t, r, in, n, texts, got, fin, &w->unsettled, err)) < 0) {
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		w->req[i].prompt = texts[i];
		w->req[i].ids = fin[i];
		w->req[i].n_ids = got[i];
		w->req[i].prompt_len = got[i] + added;
		texts[i] = NULL;
		fin[i] = NULL;
	}
	rc = 0;
done:
	if (texts)
		free_texts(texts, n);
	free_id_lists(fin, n);
	free_id_lists(src, n);
	alloc_free(texts);
	alloc_free(fin);
	alloc_free(src);
	alloc_free(got);
	alloc_free(in);
	return rc;
}

#define ASSISTANT_SUFFIX "Assistant:"

/* SGLang: remove_suffix(prompt, "Assistant:") + suffix + "Assistant:". */
static char *with_suffix(const char *p, const char *suffix)
{
	size_t n = strlen(p), a = strlen(ASSISTANT_SUFFIX);
	if (n >= a && !memcmp(p + n - a, ASSISTANT_SUFFIX, a))
		n -= a;
	size_t s = strlen(suffix);
	char *o = alloc_bytes(n + s + a + 1);
	if (!o)
		return NULL;
	memcpy(o, p, n);
	memcpy(o + n, suffix, s);
	memcpy(o + n + s, ASSISTANT_SUFFIX, a + 1);
	return o;
}

static int build_sharegpt(const workload_config *cfg, workload_tokenizer *t, workload_rng *r, workload *w,
			  char err[ERR_LEN])
{
	if (!cfg->dataset_path || !*cfg->dataset_path)
		return err_set(err, ERR_INVAL,
			       "--dataset-name sharegpt needs --dataset-path FILE.json (pdserve does not download "
			       "ShareGPT; e.g. ShareGPT_V3_unfiltered_cleaned_split.json)");
	char **p = NULL, **c = NULL;
	size_t m = 0, k = 0, want = (size_t)cfg->num_prompts;
	int rc = workload_load_sharegpt(cfg->dataset_path, &p, &c, &m, err);
	if (rc < 0)
		return rc;
	size_t *order = alloc_array(m ? m : 1, sizeof(size_t));
	int *pc = alloc_array(256, sizeof(int)), *cc = alloc_array(256, sizeof(int));
	char **batch = alloc_zeroed(256, sizeof(char *));
	if (!order || !pc || !cc || !batch) {
		rc = err_set(err, ERR_NOMEM, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < m; i++)
		order[i] = i;
	workload_rng_shuffle(r, order, m, sizeof(size_t));
	for (size_t b = 0; b < m && k < want; b += 256) {
		size_t nb = m - b < 256 ? m - b : 256;
		for (size_t i = 0; i < nb; i++) {
			const char *src = p[order[b + i]];
			if (!(batch[i] = cfg->prompt_suffix && *cfg->prompt_suffix ? with_suffix(src, cfg->prompt_suffix) :
										    alloc_strdup(src))) {
				rc = err_set(err, ERR_NOMEM, "out of memory");
				goto done;
			}
		}
		const char *cs[256];
		for (size_t i = 0; i < nb; i++)
			cs[i] = c[order[b + i]];
		if ((rc = workload_encode(t, (const char *const *)batch, nb, true, NULL, pc, err)) < 0)
			goto done;
		if (!cfg->sharegpt_output_len && (rc = workload_encode(t, cs, nb, false, NULL, cc, err)) < 0)
			goto done;
		for (size_t i = 0; i < nb; i++) {
			int out = cfg->sharegpt_output_len ? cfg->sharegpt_output_len : cc[i];
			bool keep = k < want && pc[i] >= 2 && out >= 2 &&
				    !(cfg->sharegpt_context_len && pc[i] + out > cfg->sharegpt_context_len);
			if (keep) {
				w->req[k].prompt = batch[i];
				w->req[k].prompt_len = pc[i];
				w->req[k].output_len = out;
				batch[i] = NULL;
				k++;
			}
			alloc_free(batch[i]);
			batch[i] = NULL;
		}
	}
	if (k < want)
		LOGW("bench", "%s: only %zu of %zu conversations fit; running %zu requests", cfg->dataset_path, k, want, k);
	w->n = k;
	rc = 0;
done:
	for (size_t i = 0; batch && i < 256; i++)
		alloc_free(batch[i]);
	alloc_free(batch);
	alloc_free(cc);
	alloc_free(pc);
	alloc_free(order);
	workload_free_strs(p, m);
	workload_free_strs(c, m);
	return rc;
}

static int build_shared_prefix(const workload_config *cfg, workload_tokenizer *t, workload_rng *r, workload *w,
			       char err[ERR_LEN])
{
	size_t g = (size_t)cfg->gsp_num_groups, per = (size_t)cfg->gsp_prompts_per_group, n = g * per;
	int rc;
	int *lens = alloc_array(n ? n : 1, sizeof(int)), *got = alloc_array(n ? n : 1, sizeof(int));
	char **sys = alloc_zeroed(g ? g : 1, sizeof(char *)), **q = alloc_zeroed(n ? n : 1, sizeof(char *));
	if (!lens || !got || !sys || !q) {
		rc = err_set(err, ERR_NOMEM, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < g; i++)
		lens[i] = cfg->gsp_system_prompt_len;
	if ((rc = random_texts(t, r, lens, g, sys, got, NULL, &w->unsettled, err)) < 0)
		goto done;
	for (size_t i = 0; i < n; i++)
		lens[i] = cfg->gsp_question_len;
	if ((rc = random_texts(t, r, lens, n, q, got, NULL, &w->unsettled, err)) < 0)
		goto done;
	for (size_t i = 0; i < n; i++) {
		const char *s = sys[i / per];
		size_t a = strlen(s), b = strlen(q[i]);
		char *full = alloc_bytes(a + b + 3);
		if (!full) {
			rc = err_set(err, ERR_NOMEM, "out of memory");
			goto done;
		}
		memcpy(full, s, a);
		memcpy(full + a, "\n\n", 2);
		memcpy(full + a + 2, q[i], b + 1);
		w->req[i].prompt = full;
		w->req[i].output_len = cfg->gsp_output_len;
	}
	const char **texts = alloc_array(n ? n : 1, sizeof(char *));
	if (!texts) {
		rc = err_set(err, ERR_NOMEM, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < n; i++)
		texts[i] = w->req[i].prompt;
	rc = workload_encode(t, texts, n, true, NULL, got, err);
	alloc_free(texts);
	if (rc < 0)
		goto done;
	for (size_t i = 0; i < n; i++)
		w->req[i].prompt_len = got[i];
	workload_rng_shuffle(r, w->req, n, sizeof(workload_req));
done:
	if (sys)
		free_texts(sys, g);
	if (q)
		free_texts(q, n);
	alloc_free(q);
	alloc_free(sys);
	alloc_free(got);
	alloc_free(lens);
	return rc;
}

int workload_build(const workload_config *cfg, workload_tokenizer *t, workload *w, char err[ERR_LEN])
{
	memset(w, 0, sizeof(*w));
	size_t n;
	switch (cfg->kind) {
	case WORKLOAD_RANDOM:
		if (cfg->num_prompts < 1 || cfg->random_input_len < 1 || cfg->random_output_len < 1)
			return err_set(err, ERR_INVAL, "random: --num-prompts, --random-input-len and --random-output-len must be >= 1");
		n = (size_t)cfg->num_prompts;
		break;
	case WORKLOAD_SHAREGPT:
		if (cfg->num_prompts < 1)
			return err_set(err, ERR_INVAL, "sharegpt: --num-prompts must be >= 1");
		n = (size_t)cfg->num_prompts;
		break;
	case WORKLOAD_SHARED_PREFIX:
		if (cfg->gsp_num_groups < 1 || cfg->gsp_prompts_per_group < 1 || cfg->gsp_system_prompt_len < 1 ||
		    cfg->gsp_question_len < 1 || cfg->gsp_output_len < 1)
			return err_set(err, ERR_INVAL, "generated-shared-prefix: every --gsp-* value must be >= 1");
		if ((size_t)cfg->gsp_num_groups * (size_t)cfg->gsp_prompts_per_group > 10000000)
			return err_set(err, ERR_INVAL, "generated-shared-prefix: too many prompts");
		n = (size_t)cfg->gsp_num_groups * (size_t)cfg->gsp_prompts_per_group;
		break;
	default:
		return err_set(err, ERR_INVAL, "unknown dataset kind %d", (int)cfg->kind);
	}
	if (!(w->req = alloc_zeroed(n, sizeof(workload_req))))
		return err_set(err, ERR_NOMEM, "out of memory for %zu requests", n);
	w->n = n;
	workload_rng r;
	workload_rng_seed(&r, cfg->seed);
	int rc = cfg->kind == WORKLOAD_RANDOM	  ? build_random(cfg, t, &r, w, err) :
		 cfg->kind == WORKLOAD_SHAREGPT ? build_sharegpt(cfg, t, &r, w, err) :
						  build_shared_prefix(cfg, t, &r, w, err);
	if (rc < 0) {
		w->n = n; /* free every slot, filled or not */
		workload_free(w);
		return rc;
	}
	return 0;
}
