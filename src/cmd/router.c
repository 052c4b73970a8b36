/* router.c - `pdserve router` (alias `launch_router`): flags and wiring of
 * the router (src/router/router.h).
 *
 * Flags use SGLang's router names (sglang_router.launch_router), so SGLang
 * command lines run unchanged. They take several shapes getopt cannot
 * express, so this file parses argv itself:
 *   --worker-urls URL [URL...]                    regular mode
 *   --prefill URL [BOOTSTRAP_PORT|none]           repeatable (PD mode)
 *   --decode URL                                  repeatable (PD mode)
 *   --pd-disaggregation --prefill-hosts URL[@PORT] [...] --decode-hosts URL [...]
 * Values may also be given as --flag=value. A --prefill without a port gets
 * 8998 (SGLang's default); a --prefill-hosts entry without @PORT takes the
 * prefill's port from its /get_server_info.
 *
 * --check-args runs the same parser and checks (worker URLs included),
 * prints the resolved configuration, one `key value` line each, and exits
 * without binding or contacting a worker (tests/e2e/deploy.sh checks the
 * deployment files with it).
 *
 * Exit status: 0 after a clean shutdown, 1 runtime error (bind), 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "cmd/cmd.h"
#include "cmd/common.h"
#include "router/router.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdserve router [options]   (alias: pdserve launch_router)\n"
		"PD mode:\n"
		"  --prefill URL [BOOTSTRAP_PORT|none]  a prefill server (repeatable; bootstrap port default 8998)\n"
		"  --decode URL                         a decode server (repeatable)\n"
		"  --pd-disaggregation --prefill-hosts URL[@PORT]... --decode-hosts URL...\n"
		"                                       the same; without @PORT the prefill's /get_server_info tells it\n"
		"Regular mode:\n"
		"  --worker-urls URL...                 unified servers\n"
		"Options:\n"
		"  --host H                             listen address (default 127.0.0.1)\n"
		"  --port N                             listen port (default 30000; 0 = any free port)\n"
		"  --policy P                           random | round_robin | power_of_two | cache_aware (default)\n"
		"  --prefill-policy P, --decode-policy P   per kind in PD mode (default: --policy)\n"
		"  --cache-threshold F                  cache_aware: prefix match rate to follow (default 0.3)\n"
		"  --balance-abs-threshold N            cache_aware: imbalance when max-min load > N (default 64)\n"
		"  --balance-rel-threshold F            ... and max > F x min (default 1.5)\n"
		"  --eviction-interval-secs N           cache_aware: trim trees every N s (default 120)\n"
		"  --max-tree-size N                    cache_aware: characters per worker tree (default 67108864)\n"
		"  --health-check-interval-secs S       between health checks of a worker (default 60)\n"
		"  --health-check-timeout-secs S        a check's deadline, also the connect timeout (default 5)\n"
		"  --health-failure-threshold N         failed checks before a worker leaves (default 3)\n"
		"  --health-success-threshold N         passed checks before it returns (default 2)\n"
		"  --health-check-endpoint PATH         (default /health)\n"
		"  --disable-health-check               workers take requests at once, never probed\n"
		"  --retry-max-retries N, --max-retries N   attempts after the first, only before any byte reached\n"
		"                                       the client (default 5)\n"
		"  --retry-initial-backoff-ms N         first backoff (default 50; also --retry-backoff-ms)\n"
		"  --retry-backoff-multiplier F         per retry (default 1.5)\n"
		"  --retry-max-backoff-ms N             (default 30000)\n"
		"  --retry-jitter-factor F              each backoff x (1 +- up to F) (default 0.2)\n"
		"  --disable-retries\n"
		"  --cb-failure-threshold N             request failures in a row that open a worker's breaker (default 10)\n"
		"  --cb-window-duration-secs S          failures further apart than S are not in a row (default 120)\n"
		"  --cb-success-threshold N             successes that close it again (default 3)\n"
		"  --cb-timeout-duration-secs S         open this long before a trial (default 60)\n"
		"  --disable-circuit-breaker\n"
		"  --max-concurrent-requests N          generation requests in flight at once, streams to their end;\n"
		"                                       the rest wait (default -1: no limit)\n"
		"  --queue-size N                       requests that may wait for a slot (default 100; 0: none);\n"
		"                                       beyond it: 429\n"
		"  --queue-timeout-secs S               longest wait for a slot, then 408 (default 60)\n"
		"  --rate-limit-tokens-per-second R     also admit at most R requests per second, in bursts of up to\n"
		"                                       --max-concurrent-requests (default: no rate limit)\n"
		"  --request-timeout-secs S             whole request (default 1800)\n"
		"  --shutdown-grace-period-secs S       on SIGTERM, let requests in flight finish for up to S s\n"
		"                                       (default 180; a second signal stops at once)\n"
		"  --max-payload-size BYTES             request body limit (default 536870912); larger gets 413\n"
		"  --max-header-size BYTES              request line + headers (default 65536); larger gets 431\n"
		"  --api-key KEY                        clients must send Bearer KEY; sent to workers too\n"
		"  --worker-api-key KEY                 sent to workers instead of --api-key (their --api-key)\n"
		"  --log-level debug|info|warning|error\n"
		"  --check-args                         parse and validate the flags and worker URLs, print the\n"
		"                                       resolved configuration, exit 0 (2 on a bad flag); binds nothing\n"
		"  --prometheus-port N, --prometheus-host H   a second listener for /metrics (default: none;\n"
		"                                       /metrics is on the main port anyway)\n"
		"  accepted and ignored (what they configure does not exist here; each logs a line):\n"
		"    --worker-startup-timeout-secs --worker-startup-check-interval --worker-load-check-interval\n"
		"    --dp-aware --log-dir --model-path --tokenizer-path --chat-template --mini-lb\n"
		"    --bucket-adjust-interval-secs --request-id-headers --prometheus-duration-buckets\n"
		"    --disable-tokenizer-autoload\n");
}

typedef enum { K_FLAG, K_ONE, K_MULTI, K_PREFILL } opt_kind;

enum {
	O_HOST, O_PORT, O_WORKERS, O_PD, O_PREFILL, O_DECODE, O_PHOSTS, O_DHOSTS, O_POLICY, O_PPOLICY, O_DPOLICY,
	O_CACHE_T, O_ABS_T, O_REL_T, O_EVICT, O_TREE, O_HC_IV, O_HC_TO, O_HC_FAIL, O_HC_OK, O_HC_EP, O_RETRIES,
	O_BACKOFF, O_MAXBACKOFF, O_NORETRY, O_CB_FAIL, O_CB_OK, O_CB_TO, O_NOCB, O_TIMEOUT, O_PAYLOAD, O_HEADER, O_KEY, O_WKEY, O_LOG,
	O_PROM_PORT, O_PROM_HOST, O_IGN_ONE, O_IGN_MULTI, O_IGN_FLAG, O_HELP, O_CHECK, O_BMULT, O_JITTER, O_CB_WIN,
	O_NOHC, O_MAXCONC, O_QSIZE, O_QTO, O_RATE, O_GRACE,
};

static const struct {
	const char *name;
	int id;
	opt_kind kind;
	const char *why; /* ignored flags: what they configure, and why it is not here */
} OPTS[] = {
	{ "host", O_HOST, K_ONE, NULL },
	{ "port", O_PORT, K_ONE, NULL },
	{ "worker-urls", O_WORKERS, K_MULTI, NULL },
	{ "pd-disaggregation", O_PD, K_FLAG, NULL },
	{ "prefill", O_PREFILL, K_PREFILL, NULL },
	{ "decode", O_DECODE, K_ONE, NULL },
	{ "prefill-hosts", O_PHOSTS, K_MULTI, NULL },
	{ "decode-hosts", O_DHOSTS, K_MULTI, NULL },
	{ "policy", O_POLICY, K_ONE, NULL },
	{ "prefill-policy", O_PPOLICY, K_ONE, NULL },
	{ "decode-policy", O_DPOLICY, K_ONE, NULL },
	{ "cache-threshold", O_CACHE_T, K_ONE, NULL },
	{ "balance-abs-threshold", O_ABS_T, K_ONE, NULL },
	{ "balance-rel-threshold", O_REL_T, K_ONE, NULL },
	{ "eviction-interval-secs", O_EVICT, K_ONE, NULL },
	{ "eviction-interval", O_EVICT, K_ONE, NULL },
	{ "max-tree-size", O_TREE, K_ONE, NULL },
	{ "health-check-interval-secs", O_HC_IV, K_ONE, NULL },
	{ "health-check-timeout-secs", O_HC_TO, K_ONE, NULL },
	{ "health-failure-threshold", O_HC_FAIL, K_ONE, NULL },
	{ "health-success-threshold", O_HC_OK, K_ONE, NULL },
	{ "health-check-endpoint", O_HC_EP, K_ONE, NULL },
	{ "max-retries", O_RETRIES, K_ONE, NULL },
	{ "retry-max-retries", O_RETRIES, K_ONE, NULL },
	{ "retry-backoff-multiplier", O_BMULT, K_ONE, NULL },
	{ "retry-jitter-factor", O_JITTER, K_ONE, NULL },
	{ "cb-window-duration-secs", O_CB_WIN, K_ONE, NULL },
	{ "disable-health-check", O_NOHC, K_FLAG, NULL },
	{ "max-concurrent-requests", O_MAXCONC, K_ONE, NULL },
	{ "queue-size", O_QSIZE, K_ONE, NULL },
	{ "queue-timeout-secs", O_QTO, K_ONE, NULL },
	{ "rate-limit-tokens-per-second", O_RATE, K_ONE, NULL },
	{ "shutdown-grace-period-secs", O_GRACE, K_ONE, NULL },
	{ "retry-backoff-ms", O_BACKOFF, K_ONE, NULL },
	{ "retry-initial-backoff-ms", O_BACKOFF, K_ONE, NULL },
	{ "retry-max-backoff-ms", O_MAXBACKOFF, K_ONE, NULL },
	{ "disable-retries", O_NORETRY, K_FLAG, NULL },
	{ "cb-failure-threshold", O_CB_FAIL, K_ONE, NULL },
	{ "cb-success-threshold", O_CB_OK, K_ONE, NULL },
	{ "cb-timeout-duration-secs", O_CB_TO, K_ONE, NULL },
	{ "disable-circuit-breaker", O_NOCB, K_FLAG, NULL },
	{ "request-timeout-secs", O_TIMEOUT, K_ONE, NULL },
	{ "max-payload-size", O_PAYLOAD, K_ONE, NULL },
	{ "max-header-size", O_HEADER, K_ONE, NULL },
	{ "api-key", O_KEY, K_ONE, NULL },
	{ "worker-api-key", O_WKEY, K_ONE, NULL },
	{ "log-level", O_LOG, K_ONE, NULL },
	{ "prometheus-port", O_PROM_PORT, K_ONE, NULL },
	{ "prometheus-host", O_PROM_HOST, K_ONE, NULL },
	{ "worker-startup-timeout-secs", O_IGN_ONE, K_ONE, "workers join when their health check passes" },
	{ "worker-startup-check-interval", O_IGN_ONE, K_ONE, "workers join when their health check passes" },
	{ "worker-load-check-interval", O_IGN_ONE, K_ONE, "loads are polled when a load-aware policy needs them" },
	{ "log-dir", O_IGN_ONE, K_ONE, "logs go to stderr" },
	{ "model-path", O_IGN_ONE, K_ONE, "the router forwards text; workers tokenize" },
	{ "tokenizer-path", O_IGN_ONE, K_ONE, "the router forwards text; workers tokenize" },
	{ "chat-template", O_IGN_ONE, K_ONE, "workers apply their chat template" },
	{ "bucket-adjust-interval-secs", O_IGN_ONE, K_ONE, "there is no bucket policy" },
	{ "request-id-headers", O_IGN_MULTI, K_MULTI, "request ids are the router's own" },
	{ "prometheus-duration-buckets", O_IGN_MULTI, K_MULTI, "the histograms have fixed buckets" },
	{ "dp-aware", O_IGN_FLAG, K_FLAG, "no DP-aware routing: a worker's --dp ranks share its port" },
	{ "mini-lb", O_IGN_FLAG, K_FLAG, "this router is the only one" },
	{ "disable-tokenizer-autoload", O_IGN_FLAG, K_FLAG, "the router loads no tokenizer" },
	{ "help", O_HELP, K_FLAG, NULL },
	{ "check-args", O_CHECK, K_FLAG, NULL },
};

typedef struct {
	worker_type type;
	const char *url;   /* points into argv, or into its own copy for URL@PORT */
	size_t url_len;
	int bootstrap;     /* port or ROUTER_BOOTSTRAP_* */
} wspec;

#define MAX_SPECS 256

typedef struct {
	router_config cfg;
	const char *policy, *ppolicy, *dpolicy;
	bool pd_flag;
	bool check_args;
	wspec w[MAX_SPECS];
	int n;
} rt_opts;

static int add_spec(rt_opts *o, worker_type t, const char *url, size_t len, int bootstrap)
{
	if (o->n >= MAX_SPECS) {
		fprintf(stderr, "pdserve router: more than %d workers on the command line\n", MAX_SPECS);
		return 2;
	}
	o->w[o->n++] = (wspec){ t, url, len, bootstrap };
	return 0;
}

static bool is_flag(const char *s)
{
	return s[0] == '-' && s[1] == '-';
}

static int set_policy(const char *flag, const char *v, balance_config *c)
{
	int p = balance_policy_parse(v);
	if (p < 0) {
		fprintf(stderr, "pdserve router: %s %s: use random, round_robin, power_of_two or cache_aware\n", flag, v);
		return 2;
	}
	c->policy = (balance_policy)p;
	return 0;
}

static int parse_args(int argc, char **argv, rt_opts *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h")) {
			usage(stdout);
			return 1;
		}
		if (!is_flag(a)) {
			fprintf(stderr, "pdserve router: unexpected argument '%s'\n", a);
			return 2;
		}
		char name[64];
		const char *eq = strchr(a, '=');
		size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
		if (nl >= sizeof(name)) {
			fprintf(stderr, "pdserve router: unknown flag '%s'\n", a);
			return 2;
		}
		memcpy(name, a + 2, nl);
		name[nl] = '\0';
		for (char *p = name; *p; p++)
			if (*p == '_')
				*p = '-'; /* --worker_urls works too */
		int k = -1;
		for (int j = 0; j < (int)(sizeof(OPTS) / sizeof(OPTS[0])); j++)
			if (!strcmp(name, OPTS[j].name))
				k = j;
		if (k < 0) {
			fprintf(stderr, "pdserve router: unknown flag '%s' (see --help)\n", a);
			return 2;
		}
		opt_kind kind = OPTS[k].kind;
		const char *v = NULL;
		if (kind == K_FLAG) {
			if (eq) {
				fprintf(stderr, "pdserve router: --%s takes no value\n", name);
				return 2;
			}
		} else if (eq) {
			v = eq + 1;
		} else if (i + 1 < argc && (!is_flag(argv[i + 1]) || kind == K_ONE)) {
			v = argv[++i];
		} else if (kind != K_MULTI) {
			fprintf(stderr, "pdserve router: --%s needs a value\n", name);
			return 2;
		}
		long n = 0;
		double d = 0;
		const char *bad = NULL;
		int rc = 0;
		router_config *c = &o->cfg;
		switch (OPTS[k].id) {
		case O_HOST: c->host = v; break;
		case O_PORT: if (cmd_parse_int(v, 0, 65535, &n)) bad = "--port"; c->port = (int)n; break;
		case O_WORKERS:
		case O_PHOSTS:
		case O_DHOSTS: {
			worker_type t = OPTS[k].id == O_WORKERS ? WORKER_REGULAR : OPTS[k].id == O_PHOSTS ? WORKER_PREFILL :
												 WORKER_DECODE;
			int count = 0;
			for (const char *x = v; x; x = !eq && i + 1 < argc && !is_flag(argv[i + 1]) ? argv[++i] : NULL) {
				size_t len = strlen(x);
				int port = ROUTER_BOOTSTRAP_NONE;
				if (t == WORKER_PREFILL) {
					char err[ERR_LEN];
					if (worker_split_bootstrap(x, &len, &port, err)) {
						fprintf(stderr, "pdserve router: --prefill-hosts: %s\n", err);
						return 2;
					}
					if (port == 0)
						port = ROUTER_BOOTSTRAP_DISCOVER;
				}
				if ((rc = add_spec(o, t, x, len, port)))
					return rc;
				count++;
				if (eq)
					break;
			}
			if (!count) {
				fprintf(stderr, "pdserve router: --%s needs at least one URL\n", name);
				return 2;
			}
			break;
		}
		case O_PD: o->pd_flag = true; break;
		case O_PREFILL: {
			int port = 8998; /* SGLang's default bootstrap port */
			if (i + 1 < argc && !is_flag(argv[i + 1])) {
				const char *p = argv[i + 1];
				if (!strcmp(p, "none") || !strcmp(p, "None")) {
					port = ROUTER_BOOTSTRAP_NONE;
					i++;
				} else if (cmd_parse_int(p, 1, 65535, &n) == 0) {
					port = (int)n;
					i++;
				} else if (!strstr(p, "://")) {
					fprintf(stderr, "pdserve router: --prefill %s %s: the bootstrap port must be 1..65535 "
							"or none\n", v, p);
					return 2;
				}
			}
			if ((rc = add_spec(o, WORKER_PREFILL, v, strlen(v), port)))
				return rc;
			break;
		}
		case O_DECODE:
			if ((rc = add_spec(o, WORKER_DECODE, v, strlen(v), ROUTER_BOOTSTRAP_NONE)))
				return rc;
			break;
		case O_POLICY: o->policy = v; break;
		case O_PPOLICY: o->ppolicy = v; break;
		case O_DPOLICY: o->dpolicy = v; break;
		case O_CACHE_T: if (cmd_parse_float(v, 0, 1, &d)) bad = "--cache-threshold"; c->policy.cache_threshold = d; break;
		case O_ABS_T:
			if (cmd_parse_int(v, 0, 1L << 30, &n)) bad = "--balance-abs-threshold";
			c->policy.balance_abs_threshold = (int)n;
			break;
		case O_REL_T:
			if (cmd_parse_float(v, 0, 1e9, &d)) bad = "--balance-rel-threshold";
			c->policy.balance_rel_threshold = d;
			break;
		case O_EVICT: if (cmd_parse_float(v, 0, 1e9, &d)) bad = "--eviction-interval-secs"; c->eviction_interval_s = d; break;
		case O_TREE:
			if (cmd_parse_int(v, 1, 1L << 40, &n)) bad = "--max-tree-size";
			c->policy.max_tree_size = (size_t)n;
			break;
		case O_HC_IV: if (cmd_parse_float(v, 0.01, 1e7, &d)) bad = "--health-check-interval-secs"; c->health_interval_s = d; break;
		case O_HC_TO: if (cmd_parse_float(v, 0.01, 1e7, &d)) bad = "--health-check-timeout-secs"; c->health_timeout_s = d; break;
		case O_HC_FAIL:
			if (cmd_parse_int(v, 1, 1 << 20, &n)) bad = "--health-failure-threshold";
			c->wpolicy.failure_threshold = (int)n;
			break;
		case O_HC_OK:
			if (cmd_parse_int(v, 1, 1 << 20, &n)) bad = "--health-success-threshold";
			c->wpolicy.success_threshold = (int)n;
			break;
		case O_HC_EP:
			if (v[0] != '/' || strpbrk(v, " \r\n")) bad = "--health-check-endpoint";
			c->health_endpoint = v;
			break;
		case O_RETRIES: if (cmd_parse_int(v, 0, 1000, &n)) bad = "--max-retries"; c->max_retries = (int)n; break;
		case O_BACKOFF: if (cmd_parse_int(v, 0, 1 << 24, &n)) bad = "--retry-backoff-ms"; c->retry_backoff_ms = (int)n; break;
		case O_MAXBACKOFF:
			if (cmd_parse_int(v, 0, 1 << 24, &n)) bad = "--retry-max-backoff-ms";
			c->retry_max_backoff_ms = (int)n;
			break;
		case O_NORETRY: c->max_retries = 0; break;
		case O_BMULT:
			if (cmd_parse_float(v, 1, 100, &d)) bad = "--retry-backoff-multiplier";
			c->retry_backoff_multiplier = d;
			break;
		case O_JITTER: if (cmd_parse_float(v, 0, 1, &d)) bad = "--retry-jitter-factor"; c->retry_jitter = d; break;
		case O_CB_WIN:
			if (cmd_parse_float(v, 0, 1e7, &d)) bad = "--cb-window-duration-secs";
			c->wpolicy.cb_window_s = d;
			break;
		case O_NOHC: c->health_check_disabled = true; break;
		case O_MAXCONC:
			if (cmd_parse_int(v, -1, 1 << 24, &n)) bad = "--max-concurrent-requests";
			c->max_concurrent = (int)n;
			break;
		case O_QSIZE: if (cmd_parse_int(v, 0, 1 << 24, &n)) bad = "--queue-size"; c->queue_size = (int)n; break;
		case O_QTO: if (cmd_parse_float(v, 0, 1e7, &d)) bad = "--queue-timeout-secs"; c->queue_timeout_s = d; break;
		case O_RATE:
			if (cmd_parse_float(v, 0, 1e9, &d)) bad = "--rate-limit-tokens-per-second";
			c->rate_limit_per_s = d;
			break;
		case O_GRACE:
			if (cmd_parse_float(v, 0, 1e7, &d)) bad = "--shutdown-grace-period-secs";
			c->shutdown_grace_s = d;
			break;
		case O_CB_FAIL:
			if (cmd_parse_int(v, 1, 1 << 20, &n)) bad = "--cb-failure-threshold";
			c->wpolicy.cb_failure_threshold = (int)n;
			break;
		case O_CB_OK:
			if (cmd_parse_int(v, 1, 1 << 20, &n)) bad = "--cb-success-threshold";
			c->wpolicy.cb_success_threshold = (int)n;
			break;
		case O_CB_TO: if (cmd_parse_float(v, 0, 1e7, &d)) bad = "--cb-timeout-duration-secs"; c->wpolicy.cb_timeout_s = d; break;
		case O_NOCB: c->wpolicy.cb_disabled = true; break;
		case O_TIMEOUT: if (cmd_parse_float(v, 0.001, 1e7, &d)) bad = "--request-timeout-secs"; c->request_timeout_s = d; break;
		case O_PAYLOAD: if (cmd_parse_int(v, 1024, 1L << 40, &n)) bad = "--max-payload-size"; c->max_payload = (size_t)n; break;
		case O_HEADER: if (cmd_parse_int(v, 1024, 1L << 24, &n)) bad = "--max-header-size"; c->max_header_size = (size_t)n; break;
		case O_KEY: c->api_key = v; break;
		case O_WKEY: c->worker_api_key = v; break;
		case O_LOG:
			if (log_level_parse(v) < 0)
				bad = "--log-level";
			else
				log_set_level(log_level_parse(v));
			break;
		case O_PROM_PORT: if (cmd_parse_int(v, 1, 65535, &n)) bad = "--prometheus-port"; c->prometheus_port = (int)n; break;
		case O_PROM_HOST: c->prometheus_host = v; break;
		case O_IGN_ONE: LOGI("router", "--%s %s: ignored (%s)", name, v, OPTS[k].why); break;
		case O_IGN_MULTI:
			while (v && !eq && i + 1 < argc && !is_flag(argv[i + 1]))
				i++;
			LOGI("router", "--%s: ignored (%s)", name, OPTS[k].why);
			break;
		case O_IGN_FLAG: LOGI("router", "--%s: ignored (%s)", name, OPTS[k].why); break;
		case O_HELP: usage(stdout); return 1;
		case O_CHECK: o->check_args = true; break;
		}
		if (bad) {
			fprintf(stderr, "pdserve router: bad value for %s: '%s'\n", bad, v ? v : "");
			return 2;
		}
	}
	return 0;
}

/* --check-args: what router_add_worker would refuse (a bad URL, a worker
   given twice: its messages), then the resolved configuration on stdout.
   Returns the exit status. */
static int check_resolved(const rt_opts *o)
{
	static worker_url u[MAX_SPECS];
	char err[ERR_LEN];
	for (int i = 0; i < o->n; i++) {
		char url[1024];
		snprintf(url, sizeof(url), "%.*s", (int)o->w[i].url_len, o->w[i].url);
		if (worker_url_parse(url, &u[i], err)) {
			fprintf(stderr, "pdserve router: %s\n", err);
			return 2;
		}
		for (int j = 0; j < i; j++)
			if (!strcmp(u[i].url, u[j].url)) {
				fprintf(stderr, "pdserve router: %s is already registered\n", u[i].url);
				return 2;
			}
	}
	const router_config *c = &o->cfg;
	printf("command router\n");
	printf("host %s\n", c->host ? c->host : "127.0.0.1");
	printf("port %d\n", c->port);
	printf("mode %s\n", c->pd ? "pd" : "regular");
	if (c->pd) {
		printf("prefill_policy %s\n", balance_policy_name(c->prefill_policy.policy));
		printf("decode_policy %s\n", balance_policy_name(c->decode_policy.policy));
	} else {
		printf("policy %s\n", balance_policy_name(c->policy.policy));
	}
	for (int i = 0; i < o->n; i++) {
		int b = o->w[i].bootstrap;
		if (o->w[i].type != WORKER_PREFILL)
			printf("worker %s %s\n", worker_type_name(o->w[i].type), u[i].url);
		else if (b == ROUTER_BOOTSTRAP_NONE)
			printf("worker prefill %s bootstrap none\n", u[i].url);
		else if (b == ROUTER_BOOTSTRAP_DISCOVER)
			printf("worker prefill %s bootstrap (from its /get_server_info)\n", u[i].url);
		else
			printf("worker prefill %s bootstrap %d\n", u[i].url, b);
	}
	printf("health_check_endpoint %s\n", c->health_endpoint ? c->health_endpoint : "/health");
	printf("health_check_interval_secs %g\n", c->health_interval_s);
	printf("health_check_timeout_secs %g\n", c->health_timeout_s);
	printf("health_failure_threshold %d\n", c->wpolicy.failure_threshold);
	printf("health_success_threshold %d\n", c->wpolicy.success_threshold);
	printf("health_checks %s\n", c->health_check_disabled ? "disabled" : "enabled");
	printf("max_retries %d\n", c->max_retries);
	printf("retry_backoff_ms %d x%g up to %d, jitter %g\n", c->retry_backoff_ms, c->retry_backoff_multiplier,
	       c->retry_max_backoff_ms, c->retry_jitter);
	printf("circuit_breaker %s\n", c->wpolicy.cb_disabled ? "disabled" : "enabled");
	if (c->max_concurrent > 0) {
		printf("max_concurrent_requests %d\n", c->max_concurrent);
		printf("queue_size %d\n", c->queue_size);
		printf("queue_timeout_secs %g\n", c->queue_timeout_s);
		if (c->rate_limit_per_s > 0)
			printf("rate_limit_tokens_per_second %g\n", c->rate_limit_per_s);
	} else {
		printf("max_concurrent_requests none\n");
	}
	printf("shutdown_grace_period_secs %g\n", c->shutdown_grace_s);
	printf("request_timeout_secs %g\n", c->request_timeout_s);
	printf("max_payload_size %zu\n", c->max_payload);
	printf("api_key_set %s\n", c->api_key && *c->api_key ? "true" : "false");
	if (c->prometheus_port)
		printf("prometheus %s:%d\n", c->prometheus_host ? c->prometheus_host : c->host ? c->host : "127.0.0.1",
		       c->prometheus_port);
	return 0;
}

int cmd_router(int argc, char **argv)
{
	rt_opts o;
	memset(&o, 0, sizeof(o));
	o.cfg = router_config_default();
	int rc = parse_args(argc, argv, &o);
	if (rc)
		return rc == 1 ? 0 : rc;
	/* the policy knobs apply to every kind; the kinds' policies default to --policy */
	balance_config base = o.cfg.policy;
	if (o.policy && set_policy("--policy", o.policy, &base))
		return 2;
	o.cfg.policy = o.cfg.prefill_policy = o.cfg.decode_policy = base;
	if (o.ppolicy && set_policy("--prefill-policy", o.ppolicy, &o.cfg.prefill_policy))
		return 2;
	if (o.dpolicy && set_policy("--decode-policy", o.dpolicy, &o.cfg.decode_policy))
		return 2;
	int n_pd = 0, n_reg = 0;
	for (int i = 0; i < o.n; i++) {
		if (o.w[i].type == WORKER_REGULAR)
			n_reg++;
		else
			n_pd++;
	}
	if (n_reg && (n_pd || o.pd_flag)) {
		fprintf(stderr, "pdserve router: --worker-urls is regular mode; PD mode takes --prefill/--decode "
				"(or --prefill-hosts/--decode-hosts)\n");
		return 2;
	}
	o.cfg.pd = o.pd_flag || n_pd > 0;
	if (o.check_args)
		return check_resolved(&o);
	if (!cmd_host_is_loopback(o.cfg.host ? o.cfg.host : "127.0.0.1"))
		LOGW("router", "--host %s: reachable from other machines (the operator's choice; default 127.0.0.1, "
		     "see docs/SECURITY.md)%s", o.cfg.host, o.cfg.api_key && *o.cfg.api_key ? "" : "; no --api-key set");
	char err[ERR_LEN];
	router *r = router_create(&o.cfg, err);
	if (!r) {
		fprintf(stderr, "pdserve router: %s\n", err);
		return 1;
	}
	for (int i = 0; i < o.n; i++) {
		char url[1024];
		snprintf(url, sizeof(url), "%.*s", (int)o.w[i].url_len, o.w[i].url);
		if (router_add_worker(r, o.w[i].type, url, o.w[i].bootstrap, err)) {
			fprintf(stderr, "pdserve router: %s\n", err);
			router_destroy(r);
			return 2;
		}
	}
	if (!o.n)
		LOGW("router", "no workers yet: add them with POST /workers");
	/* one line on stdout that scripts can wait for */
	printf("pdserve router ready on http://%s:%d\n", o.cfg.host ? o.cfg.host : "127.0.0.1", router_port(r));
	fflush(stdout);
	rc = router_run(r);
	router_destroy(r);
	LOGI("router", "stopped");
	return rc < 0 ? 1 : 0;
}
