/* http.h - the HTTP server of `pdserve server`: routes, replies, streaming,
 * and the pump that carries engine events to HTTP responses.
 *
 * The only module that includes libevent. One event loop thread (the one
 * calling http_server_run) does all HTTP work: it parses requests, submits
 * them to the engine, drains engine events and writes replies. The engine's
 * scheduler thread only ever calls http_server_notify(), which wakes the
 * loop (event_active on a user event) and returns.
 *
 * Endpoints (docs/API.md has the fields):
 *   POST /v1/completions  /v1/chat/completions  /generate
 *   GET  /v1/models  /health  /health_generate  /get_model_info
 *        /get_server_info  /metrics
 *   POST /flush_cache  /tokenize  /detokenize  /apply-template  /abort_request
 *
 * Typical wiring (src/cmd/server.c):
 *
 *   s = http_server_create(&hcfg, err);          binds the socket
 *   ecfg.notify = http_server_notify; ecfg.notify_arg = s;
 *   e = engine_create(&ecfg, err);
 *   http_server_attach(s, e);
 *   http_server_run(s);                           until SIGINT / SIGTERM
 *   engine_destroy(e);                            no events after this
 *   http_server_destroy(s);
 *
 * Ownership: the config's strings and args are borrowed and must outlive the
 * server; the engine is borrowed (attach before run, destroy it before the
 * server).
 */
#ifndef PDSERVE_SERVER_HTTP_H
#define PDSERVE_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"
#include "disagg/xfer.h"
#include "engine/engine.h"
#include "model/chat_template.h"

/* One server argument shown by /get_server_info. */
typedef struct {
	const char *key;
	const char *value;
	bool literal; /* value is a JSON number, true/false or null: printed as is */
} http_arg;

typedef struct {
	const char *host;              /* NULL = "127.0.0.1" */
	int port;                      /* 0 = an ephemeral port (http_server_port) */
	const char *served_model_name; /* "model" in responses, /v1/models */
	const char *model_path;
	const char *api_key;           /* NULL or "" = no auth; else Bearer on every route but /health*, /metrics */
	size_t max_body_size;          /* bytes; 0 = 32 MiB; larger bodies get 413 */
	size_t max_header_size;        /* request line + headers, bytes; 0 = 64 KiB; larger get 431 */
	int idle_timeout_s;            /* a connection idle (no request, or its peer not reading) this
					  long is closed; 0 = 60, < 0 = never */
	/* per-request limits (0 = only the context length and the parser's caps): 400 beyond */
	int max_prompt_tokens;         /* --max-prompt-tokens */
	int max_new_tokens;            /* --max-tokens-limit */
	int max_n;                     /* --max-n */
	int max_stop;                  /* --max-stop-strings */
	chat_tmpl_family chat_family;  /* for /v1/chat/completions and /apply-template */
	const http_arg *args;          /* [n_args] */
	int n_args;
	/* PD disaggregation: NULL xfer = unified. Prefill: generation requests
	   need bootstrap_room and answer one token; decode: they need
	   bootstrap_host/port/room and get their KV from that prefill. */
	xfer *xf;                      /* borrowed */
	xfer_role pd_role;
	xfer_backend pd_backend;
	int num_reserved_decode_tokens; /* decode: room reserved with the prompt (default 512) */
} http_config;

typedef struct http_server http_server;

/* Set up the loop and bind host:port. NULL with one sentence in err (a bad
   host, the port in use, out of memory). */
http_server *http_server_create(const http_config *cfg, char err[ERR_LEN]);

/* The engine (borrowed). Before http_server_run; until then every route that
   needs it answers 503. */
void http_server_attach(http_server *s, engine *e);

/* engine_config.notify: wakes the loop to drain engine_poll(). Any thread;
   never blocks. arg is the http_server. */
void http_server_notify(void *arg);

/* The bound port (the ephemeral one when cfg.port was 0). */
int http_server_port(const http_server *s);

/* Serve until SIGINT/SIGTERM or http_server_stop. 0, or ERR_IO. */
int http_server_run(http_server *s);

/* Make http_server_run return. Any thread. */
void http_server_stop(http_server *s);

/* Free everything: open replies are dropped, live engine requests are not
   aborted (destroy the engine first). NULL is fine. */
void http_server_destroy(http_server *s);

#endif
