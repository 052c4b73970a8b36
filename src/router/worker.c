/* worker.c - a worker's health and circuit-breaker state machines, and
 * worker URL parsing (diagrams in worker.h).
 *
 * Why two machines: health probes say whether the process answers at all
 * (a killed worker leaves the pool after a few probe intervals and comes
 * back after a restart), while the breaker reacts to what real requests
 * see between probes (a worker that accepts connections but fails every
 * request stops getting traffic at once, and is tried again after a
 * timeout). SGLang's router has the same pair with the same flag names.
 *
 * Invariants: streaks are never negative; ok_streak and fail_streak are not
 * both non-zero; the breaker's opened time is meaningful only while OPEN.
 */
#include "router/worker.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *worker_type_name(worker_type t)
{
	switch (t) {
	case WORKER_REGULAR: return "regular";
	case WORKER_PREFILL: return "prefill";
	case WORKER_DECODE: return "decode";
	}
	return "?";
}

int worker_type_parse(const char *s)
{
	if (!s)
		return -1;
	if (!strcmp(s, "regular"))
		return WORKER_REGULAR;
	if (!strcmp(s, "prefill"))
		return WORKER_PREFILL;
	if (!strcmp(s, "decode"))
		return WORKER_DECODE;
	return -1;
}

const char *worker_health_name(worker_health h)
{
	switch (h) {
	case WORKER_PENDING: return "pending";
	case WORKER_HEALTHY: return "healthy";
	case WORKER_UNHEALTHY: return "unhealthy";
	}
	return "?";
}

const char *worker_cb_name(worker_cb c)
{
	switch (c) {
	case WORKER_CB_CLOSED: return "closed";
	case WORKER_CB_OPEN: return "open";
	case WORKER_CB_HALF_OPEN: return "half_open";
	}
	return "?";
}

void worker_state_init(worker_state *s)
{
	memset(s, 0, sizeof(*s));
	s->health = WORKER_PENDING;
	s->cb = WORKER_CB_CLOSED;
}

static int at_least_1(int v)
{
	return v < 1 ? 1 : v;
}

bool worker_state_probe(worker_state *s, const worker_policy *p, bool ok)
{
	worker_health before = s->health;
	if (ok) {
		s->fail_streak = 0;
		s->ok_streak++;
		if (s->health == WORKER_PENDING ||
		    (s->health == WORKER_UNHEALTHY && s->ok_streak >= at_least_1(p->success_threshold)))
			s->health = WORKER_HEALTHY;
		if (before == WORKER_UNHEALTHY && s->health == WORKER_HEALTHY) {
			s->cb = WORKER_CB_CLOSED;
			s->cb_fail_streak = s->cb_ok_streak = 0;
		}
	} else {
		s->ok_streak = 0;
		s->fail_streak++;
		if (s->health == WORKER_HEALTHY && s->fail_streak >= at_least_1(p->failure_threshold))
			s->health = WORKER_UNHEALTHY;
	}
	return s->health != before;
}

bool worker_state_request(worker_state *s, const worker_policy *p, bool ok, int64_t now_ns)
{
	if (p->cb_disabled)
		return false;
	worker_cb before = s->cb;
	if (ok) {
		s->cb_fail_streak = 0;
		s->cb_ok_streak++;
		if (s->cb == WORKER_CB_HALF_OPEN && s->cb_ok_streak >= at_least_1(p->cb_success_threshold))
			s->cb = WORKER_CB_CLOSED;
	} else {
		s->cb_ok_streak = 0;
		/* a streak whose last failure is older than the window starts over */
		if (p->cb_window_s > 0 && s->cb_fail_streak && (double)(now_ns - s->cb_last_fail_ns) * 1e-9 > p->cb_window_s)
			s->cb_fail_streak = 0;
		s->cb_fail_streak++;
		s->cb_last_fail_ns = now_ns;
		if (s->cb == WORKER_CB_HALF_OPEN ||
		    (s->cb == WORKER_CB_CLOSED && s->cb_fail_streak >= at_least_1(p->cb_failure_threshold))) {
			s->cb = WORKER_CB_OPEN;
			s->cb_opened_ns = now_ns;
		}
	}
	return s->cb != before;
}

bool worker_state_routable(worker_state *s, const worker_policy *p, int64_t now_ns)
{
	if (s->health != WORKER_HEALTHY)
		return false;
	if (p->cb_disabled)
		return true;
	if (s->cb == WORKER_CB_OPEN) {
		if ((double)(now_ns - s->cb_opened_ns) * 1e-9 < p->cb_timeout_s)
			return false;
		s->cb = WORKER_CB_HALF_OPEN;
		s->cb_ok_streak = 0;
	}
	return true;
}

/* host characters we accept: names, IPv4, IPv6 inside brackets */
static bool host_ok(const char *h, size_t n, bool v6)
{
	if (!n)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)h[i];
		if (!(isalnum(c) || c == '.' || c == '-' || c == '_' || (v6 && (c == ':' || c == '%'))))
			return false;
	}
	return true;
}

int worker_url_parse(const char *s, worker_url *out, char err[ERR_LEN])
{
	memset(out, 0, sizeof(*out));
	if (!s || !*s)
		return err_set(err, ERR_INVAL, "worker URL: empty");
	const char *p = s;
	if (!strncmp(p, "http://", 7))
		p += 7;
	else if (strstr(p, "://"))
		return err_set(err, ERR_INVAL, "worker URL %.200s: only http:// is supported", s);
	const char *host = p, *hend;
	bool v6 = false;
	if (*p == '[') {
		v6 = true;
		host = ++p;
		hend = strchr(p, ']');
		if (!hend)
			return err_set(err, ERR_INVAL, "worker URL %.200s: unclosed '['", s);
		p = hend + 1;
	} else {
		while (*p && *p != ':' && *p != '/')
			p++;
		hend = p;
	}
	size_t hn = (size_t)(hend - host);
	if (!host_ok(host, hn, v6) || hn >= sizeof(out->host))
		return err_set(err, ERR_INVAL, "worker URL %.200s: bad host", s);
	memcpy(out->host, host, hn);
	out->port = 80;
	if (*p == ':') {
		p++;
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p || v < 1 || v > 65535)
			return err_set(err, ERR_INVAL, "worker URL %.200s: bad port", s);
		out->port = (int)v;
		p = end;
	}
	if (*p == '/')
		p++;
	if (*p)
		return err_set(err, ERR_INVAL, "worker URL %.200s: unexpected '%.50s' (give http://host:port)", s, p);
	snprintf(out->url, sizeof(out->url), v6 ? "http://[%s]:%d" : "http://%s:%d", out->host, out->port);
	return 0;
}

int worker_split_bootstrap(const char *s, size_t *url_len, int *port, char err[ERR_LEN])
{
	const char *at = strrchr(s, '@');
	*url_len = strlen(s);
	*port = 0;
	if (!at)
		return 0;
	char *end;
	long v = strtol(at + 1, &end, 10);
	if (end == at + 1 || *end || v < 1 || v > 65535)
		return err_set(err, ERR_INVAL, "%.200s: bad bootstrap port after '@'", s);
	*url_len = (size_t)(at - s);
	*port = (int)v;
	return 0;
}
