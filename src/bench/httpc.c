/* httpc.c - libcurl easy + multi behind a small interface.
 *
 * Design. Each started request is an easy handle with a `transfer` as its
 * private pointer (CURLOPT_PRIVATE): the callbacks, the user pointer and
 * the header list. httpc_poll runs curl_multi_perform, waits with
 * curl_multi_poll, performs again, then drains curl_multi_info_read and
 * fires on_done for each finished transfer before freeing it. Body bytes
 * go straight from curl's write callback to on_data, so the caller's
 * timestamps are taken when the bytes are handed over.
 *
 * Invariant: a transfer is freed only after its on_done ran (or by
 * httpc_destroy, which fires nothing).
 *
 * Left out: HTTP/2, connection reuse across requests (deliberate, see
 * httpc.h), proxies (CURLOPT_NOPROXY "*": the benchmark talks to the
 * server directly even when http_proxy is set).
 */
#include "bench/httpc.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <string.h>

#include "base/alloc.h"

int httpc_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : ERR_IO;
}

void httpc_global_fini(void)
{
	curl_global_cleanup();
}

static struct curl_slist *headers_for(const char *api_key)
{
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	struct curl_slist *t = h ? curl_slist_append(h, "Expect:") : NULL;
	if (!t) {
		curl_slist_free_all(h);
		return NULL;
	}
	h = t;
	if (api_key && *api_key) {
		char line[512];
		snprintf(line, sizeof(line), "Authorization: Bearer %s", api_key);
		if (!(t = curl_slist_append(h, line))) {
			curl_slist_free_all(h);
			return NULL;
		}
		h = t;
	}
	return h;
}

static void common_opts(CURL *c, const char *url, struct curl_slist *hdr, double timeout_s)
{
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	if (timeout_s > 0)
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1000.0 + 0.5));
}

/* ---------------------------------------------------------------- blocking */

typedef struct {
	char *p;
	size_t len, cap;
	bool oom;
} grow;

static size_t grow_write(char *p, size_t size, size_t nmemb, void *user)
{
	grow *g = user;
	size_t n = size * nmemb;
	if (g->len + n + 1 > g->cap) {
		size_t cap = g->cap ? g->cap : 4096;
		while (cap < g->len + n + 1)
			cap *= 2;
		char *q = alloc_resize(g->p, cap);
		if (!q) {
			g->oom = true;
			return 0; /* curl aborts the transfer */
		}
		g->p = q;
		g->cap = cap;
	}
	memcpy(g->p + g->len, p, n);
	g->len += n;
	g->p[g->len] = '\0';
	return n;
}

int httpc_fetch(const char *method, const char *url, const char *body, size_t body_len, const char *api_key,
		double timeout_s, long *status, char **resp, size_t *resp_len, char err[ERR_LEN])
{
	*status = 0;
	*resp = NULL;
	*resp_len = 0;
	grow g = { 0 };
	int rc = 0;
	CURL *c = curl_easy_init();
	struct curl_slist *hdr = headers_for(api_key);
	if (!c || !hdr) {
		rc = err_set(err, ERR_NOMEM, "%s %s: out of memory", method, url);
		goto fail;
	}
	common_opts(c, url, hdr, timeout_s);
	if (!strcmp(method, "POST")) {
		curl_easy_setopt(c, CURLOPT_POST, 1L);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
	}
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, grow_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &g);
	CURLcode cc = curl_easy_perform(c);
	if (g.oom) {
		rc = err_set(err, ERR_NOMEM, "%s %s: out of memory for the response", method, url);
		goto fail;
	}
	if (cc != CURLE_OK) {
		rc = err_set(err, cc == CURLE_OPERATION_TIMEDOUT ? ERR_TIMEOUT : ERR_IO, "%s %s: %s", method, url,
			     curl_easy_strerror(cc));
		goto fail;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	if (!g.p && !(g.p = alloc_strdup(""))) {
		rc = err_set(err, ERR_NOMEM, "%s %s: out of memory", method, url);
		goto fail;
	}
	*resp = g.p;
	*resp_len = g.len;
	g.p = NULL;
fail:
	alloc_free(g.p);
	curl_slist_free_all(hdr);
	if (c)
		curl_easy_cleanup(c);
	return rc;
}

/* ---------------------------------------------------------------- multi */

typedef struct transfer {
	CURL *easy;
	struct curl_slist *hdr;
	const httpc_callbacks *cb;
	void *user;
	long status;
	struct transfer *prev, *next; /* live list, for httpc_destroy */
} transfer;

struct httpc {
	CURLM *multi;
	transfer *live;
};

httpc *httpc_create(char err[ERR_LEN])
{
	httpc *h = alloc_zeroed(1, sizeof(*h));
	if (!h || !(h->multi = curl_multi_init())) {
		alloc_free(h);
		err_set(err, ERR_NOMEM, "curl_multi_init failed");
		return NULL;
	}
	return h;
}

static void transfer_free(httpc *h, transfer *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		h->live = t->next;
	if (t->next)
		t->next->prev = t->prev;
	curl_multi_remove_handle(h->multi, t->easy);
	curl_easy_cleanup(t->easy);
	curl_slist_free_all(t->hdr);
	alloc_free(t);
}

void httpc_destroy(httpc *h)
{
	if (!h)
		return;
	while (h->live)
		transfer_free(h, h->live);
	curl_multi_cleanup(h->multi);
	alloc_free(h);
}

static size_t stream_write(char *p, size_t size, size_t nmemb, void *user)
{
	transfer *t = user;
	size_t n = size * nmemb;
	if (!t->status)
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
	t->cb->on_data(t->user, t->status, p, n);
	return n;
}

int httpc_start(httpc *h, const char *url, const char *body, size_t len, const char *api_key, double timeout_s,
		const httpc_callbacks *cb, void *user, char err[ERR_LEN])
{
	transfer *t = alloc_zeroed(1, sizeof(*t));
	if (!t)
		return err_set(err, ERR_NOMEM, "out of memory");
	t->cb = cb;
	t->user = user;
	if (!(t->easy = curl_easy_init()) || !(t->hdr = headers_for(api_key))) {
		if (t->easy)
			curl_easy_cleanup(t->easy);
		alloc_free(t);
		return err_set(err, ERR_NOMEM, "out of memory");
	}
	CURL *c = t->easy;
	common_opts(c, url, t->hdr, timeout_s);
	curl_easy_setopt(c, CURLOPT_POST, 1L);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	curl_easy_setopt(c, CURLOPT_COPYPOSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, stream_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(c, CURLOPT_PRIVATE, t);
	curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
	CURLMcode mc = curl_multi_add_handle(h->multi, c);
	if (mc != CURLM_OK) {
		curl_easy_cleanup(c);
		curl_slist_free_all(t->hdr);
		alloc_free(t);
		return err_set(err, ERR_IO, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
	}
	t->next = h->live;
	if (h->live)
		h->live->prev = t;
	h->live = t;
	/* start connecting now, not at the next poll: the caller's clock is
	   already running for this request */
	int running;
	curl_multi_perform(h->multi, &running);
	return 0;
}

static void drain(httpc *h)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(h->multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		transfer *t = NULL;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
		CURLcode cc = m->data.result;
		long status = 0;
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
		int rc = cc == CURLE_OK ? 0 : cc == CURLE_OPERATION_TIMEDOUT ? ERR_TIMEOUT : ERR_IO;
		t->cb->on_done(t->user, rc, status, cc == CURLE_OK ? "" : curl_easy_strerror(cc));
		transfer_free(h, t);
	}
}

int httpc_poll(httpc *h, int timeout_ms)
{
	int running = 0;
	if (curl_multi_perform(h->multi, &running) != CURLM_OK)
		return ERR_IO;
	drain(h);
	/* curl_multi_poll waits out the timeout even with nothing to watch, so
	   an idle caller sleeps here instead of spinning */
	if (curl_multi_poll(h->multi, NULL, 0, timeout_ms < 0 ? 0 : timeout_ms, NULL) != CURLM_OK)
		return ERR_IO;
	if (curl_multi_perform(h->multi, &running) != CURLM_OK)
		return ERR_IO;
	drain(h);
	return running;
}
