#!/usr/bin/env bash
# server.sh - `pdserve server` end to end: real server processes on 127.0.0.1.
#
# Each server gets a port found by binding port 0 here (a child cannot be
# handed a bound socket), retried when another process takes it first; we
# poll /health against a deadline and kill every child on exit.
#
# On stories260K (or, without ../shared, the model `pdserve model synth`
# writes), checked over HTTP with python3's standard library:
# - greedy /v1/completions text == `pdserve generate`; /generate output_ids
#   == `pdserve generate --ids`;
# - streamed == non-streamed text (completions, chat, generate);
# - 16 concurrent streaming requests each == the same request alone;
# - a repeated long prompt reports cached_tokens > 0 and the same output;
# - clients killed mid-stream free their pages (pages_used back to 0);
# - every bad input gets its status (400, 404, 405, 413) while a good
#   streaming request completes; a full queue gets 503;
# - --api-key (401), the launch_server alias, ignored SGLang flags, --tp 2
#   and --nnodes 2 refused with "not ... yet" (--nnodes 1 logged), mooncake
#   (= ucx) with a missing --disaggregation-ib-device named at start-up;
# - /metrics names, and SIGTERM exits 0.
set -euo pipefail

source "$(dirname "$0")/../lib/common.sh"

# start NAME ARGS...: start a server, wait for /health; sets NAME_PORT, NAME_PID.
start() {
	local name=$1 try pid port deadline
	shift
	for try in 1 2 3 4 5; do
		port=$(free_port)
		"$BIN" "${CMD:-server}" --model-path "$MODEL" --port "$port" "$@" >"$T/$name.out" 2>"$T/$name.err" &
		pid=$!
		PIDS+=("$pid")
		deadline=$((SECONDS + 20))
		while ! curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
			if ! kill -0 "$pid" 2>/dev/null; then
				grep -q "cannot listen" "$T/$name.err" && continue 2 # port taken meanwhile: another
				cat "$T/$name.err" >&2
				fail "$name exited before it was healthy"
			fi
			[ "$SECONDS" -lt "$deadline" ] || fail "$name not healthy within 20 s"
			sleep 0.05
		done
		eval "${name}_PORT=$port ${name}_PID=$pid"
		return 0
	done
	fail "$name: no free port after 5 tries"
}

# ---- flags refused or ignored (no server needed)
rc=0
"$BIN" server --model-path "$MODEL" --tp 2 >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 2 ] && grep -q "not supported yet" "$T/err" || fail "--tp 2: exit $rc: $(cat "$T/err")"
rc=0
"$BIN" server --model-path "$MODEL" --nnodes 2 --node-rank 1 --dist-init-addr 127.0.0.1:5000 >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 2 ] && grep -q "multi-node tensor parallel is not supported yet" "$T/err" || fail "--nnodes 2: exit $rc: $(cat "$T/err")"
rc=0
"$BIN" server --model-path "$MODEL" --nnodes 1 --node-rank 1 >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 2 ] && grep -q "must be below --nnodes" "$T/err" || fail "--node-rank 1 of 1: exit $rc: $(cat "$T/err")"
# mooncake selects the ucx backend: a named IB device UCX does not see fails at start-up
# with what UCX sees (built without UCX: the backend is refused, exit 2)
rc=0
"$BIN" server --model-path "$MODEL" --disaggregation-mode prefill --disaggregation-transfer-backend mooncake \
	--disaggregation-ib-device mlx5_9 --disaggregation-bootstrap-port 1 >/dev/null 2>"$T/err" || rc=$?
{ [ "$rc" = 1 ] && grep -q "mlx5_9: UCX sees no such device" "$T/err"; } ||
	{ [ "$rc" = 2 ] && grep -q "available: tcp, shm, fake" "$T/err"; } || fail "mooncake backend: exit $rc: $(cat "$T/err")"
rc=0
"$BIN" server --model-path "$MODEL" --port 99999 >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 2 ] || fail "--port 99999: exit $rc"
echo "ok: --tp 2 and --nnodes 2 refused (not yet), a missing IB device named, bad flags exit 2"

start main --disaggregation-mode null --max-body-size 1048576 --served-model-name stories
CMD=launch_server start keyed --api-key sekret --trust-remote-code --disable-cuda-graph --dtype auto --tp 1
start tiny --max-running-requests 1 --max-queued-requests 1 --dist-init-addr 127.0.0.1:5000 --nnodes 1 --node-rank 0
grep -q -- "--trust-remote-code: ignored" "$T/keyed.err" || fail "ignored flag not logged"
grep -q -- "--nnodes 1 --node-rank 0: one node" "$T/tiny.err" || fail "--nnodes 1 not logged"

cat >"$T/check.py" <<'EOF'
import http.client, json, os, socket, subprocess, sys, threading, time

BIN, MODEL = os.environ["BIN"], os.environ["MODEL"]
MAIN, KEYED, TINY = (int(os.environ[k]) for k in ("MAIN", "KEYED", "TINY"))

def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)

def call(port, method, path, body=None, headers=None, raw=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    c.request(method, path, body=data, headers=headers or {})
    r = c.getresponse()
    out = r.read()
    c.close()
    return r.status, out

def post(port, path, body, **kw):
    st, out = call(port, "POST", path, body, **kw)
    return st, (json.loads(out) if out.startswith(b"{") else out)

def stream(port, path, body):
    """Events of an SSE reply, [DONE] checked last."""
    st, out = call(port, "POST", path, body)
    if st != 200:
        fail(f"{path} stream: {st} {out[:200]}")
    events = [e[len("data: "):] for e in out.decode().split("\n\n") if e]
    if events[-1] != "[DONE]":
        fail(f"{path}: stream does not end with [DONE]: {events[-1]}")
    return [json.loads(e) for e in events[:-1]]

def stream_text(port, path, body):
    text = ""
    for ev in stream(port, path, body):
        if "error" in ev:
            fail(f"{path}: error in stream: {ev}")
        if path == "/generate":
            text = ev["text"]
        elif ev["choices"]:
            c = ev["choices"][0]
            text += (c["delta"].get("content") or "") if "delta" in c else c["text"]
    return text

def complete(prompt, n, port=MAIN, **extra):
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, **extra}
    st, r = post(port, "/v1/completions", body)
    if st != 200:
        fail(f"completion {prompt!r}: {st} {r}")
    return r

def stats(port=MAIN):
    st, out = call(port, "GET", "/get_server_info")
    return json.loads(out)["engine_stats"]

PROMPTS = ["Once upon a time", "The little dog", "Tom and Sue went to the park.", "One day, a big bird",
           "She was very happy because", "Lily saw a", "The sun was hot and", "Ben had a red ball.",
           "In the garden there", "Mom said", "The cat", "A girl named Amy", "He ran to the tree",
           "It was a rainy day.", "The boy wanted", "They all"]

# ---- greedy over HTTP == pdserve generate
for p in PROMPTS[:4]:
    want = subprocess.run([BIN, "generate", "--model-path", MODEL, "--prompt", p, "-n", "48"],
                          capture_output=True, check=True).stdout.decode()
    if want.endswith("\n"):
        want = want[:-1]
    got = complete(p, 48)["choices"][0]["text"]
    if got != want:
        fail(f"greedy {p!r}: HTTP {got!r} != generate {want!r}")
    ids = subprocess.run([BIN, "generate", "--model-path", MODEL, "--prompt", p, "-n", "48", "--ids"],
                         capture_output=True, check=True).stdout.decode().split()
    st, r = post(MAIN, "/generate", {"text": p, "sampling_params": {"max_new_tokens": 48, "temperature": 0}})
    if st != 200 or [str(i) for i in r["output_ids"]] != ids:
        fail(f"/generate ids {p!r}: {r} != {ids}")
print("ok: greedy completions and /generate ids equal pdserve generate")

# ---- stream == non-stream
for path, body, key in (
        ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}, "text"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell me a story"}],
                                  "max_tokens": 64, "temperature": 0}, "chat"),
        ("/generate", {"text": "The little dog", "sampling_params": {"max_new_tokens": 64, "temperature": 0,
                                                                   "stop": ["park"]}}, "gen")):
    st, r = post(MAIN, path, body)
    if st != 200:
        fail(f"{path}: {st} {r}")
    whole = r["text"] if key == "gen" else (r["choices"][0]["message"]["content"] if key == "chat"
                                            else r["choices"][0]["text"])
    streamed = stream_text(MAIN, path, {**body, "stream": True})
    if streamed != whole:
        fail(f"{path}: streamed {streamed!r} != {whole!r}")
# stop strings are cut in both
r = complete("Once upon a time", 64, stop=["Lily"])
if "Lily" in r["choices"][0]["text"] or r["choices"][0]["finish_reason"] != "stop":
    fail(f"stop string: {r}")
if stream_text(MAIN, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0,
                                         "stop": ["Lily"], "stream": True}) != r["choices"][0]["text"]:
    fail("stream with a stop string differs")
print("ok: streamed == non-streamed (completions, chat, generate), stop strings cut")

# ---- 16 concurrent streams, each == alone
alone = [complete(p, 40)["choices"][0]["text"] for p in PROMPTS]
got = [None] * 16
def worker(i):
    got[i] = stream_text(MAIN, "/v1/completions", {"prompt": PROMPTS[i], "max_tokens": 40, "temperature": 0,
                                                   "stream": True})
ts = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
[t.start() for t in ts]
[t.join() for t in ts]
for i in range(16):
    if got[i] != alone[i]:
        fail(f"concurrent #{i} {PROMPTS[i]!r}: {got[i]!r} != alone {alone[i]!r}")
print("ok: 16 concurrent streams each equal their solo run")

# ---- prefix cache
call(MAIN, "POST", "/flush_cache")
long = " ".join(PROMPTS) * 2
a = complete(long, 20)
b = complete(long, 20)
if a["choices"][0]["text"] != b["choices"][0]["text"]:
    fail("cached prompt changed the output")
cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
if not (a["usage"]["prompt_tokens"] > 100 and cached > 0):
    fail(f"repeated long prompt: cached_tokens {cached}, usage {b['usage']}")
st, r = post(MAIN, "/generate", {"text": long, "sampling_params": {"max_new_tokens": 4}})
if r["meta_info"]["cached_tokens"] <= 0:
    fail(f"/generate meta_info.cached_tokens: {r['meta_info']}")
print(f"ok: repeated {a['usage']['prompt_tokens']}-token prompt: cached_tokens {cached}, same output")

# ---- killed clients free their pages
base = stats()
socks = []
for i in range(8):
    s = socket.create_connection(("127.0.0.1", MAIN))
    body = json.dumps({"prompt": PROMPTS[i], "max_tokens": 400, "ignore_eos": True, "stream": i % 2 == 0}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    socks.append(s)
deadline = time.time() + 10
while stats()["running"] < 8:
    if time.time() > deadline:
        fail(f"8 requests never ran together: {stats()}")
    time.sleep(0.01)
mid = stats()
if mid["pages_used"] <= base["pages_used"]:
    fail(f"running requests hold no pages? {mid}")
for s in socks:
    s.close()
deadline = time.time() + 10
while True:
    now = stats()
    if now["pages_used"] == base["pages_used"] and now["running"] == 0 and now["waiting"] == 0:
        break
    if time.time() > deadline:
        fail(f"pages not back to baseline after clients left: {now} (baseline {base})")
    time.sleep(0.02)
if now["pages_free"] + now["pages_cached"] != now["pages_total"]:
    fail(f"page accounting: {now}")
print(f"ok: 8 killed clients freed their pages (used {mid['pages_used']} -> {now['pages_used']})")

# ---- bad input while a good request streams
good = {}
def good_worker():
    good["text"] = stream_text(MAIN, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 300,
                                                         "ignore_eos": True, "temperature": 0, "stream": True})
t = threading.Thread(target=good_worker)
t.start()
bad = [
    ("POST", "/v1/completions", b'{"prompt": "x", ', 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": "ten"}', 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "temperature": [1]}', 400),
    ("POST", "/v1/chat/completions", b'{"model": "stories"}', 400),
    ("POST", "/v1/completions", b'{"max_tokens": 5}', 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 100000}', 400),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}', 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "n": 0}', 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "n": 1000}', 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "top_p": 5}', 400),
    ("POST", "/generate", b'{"text": "x", "input_ids": [1]}', 400),
    ("POST", "/v1/completions", b'{"prompt": "' + b"a" * (1 << 20) + b'"}', 413),
    ("GET", "/v1/nothing", None, 404),
    ("GET", "/v1/completions", None, 405),
    ("PUT", "/generate", b"{}", 405),
]
for method, path, body, want in bad:
    st, out = call(MAIN, method, path, raw=body)
    if st != want:
        fail(f"{method} {path} {body[:60] if body else ''}: {st}, want {want}: {out[:200]}")
    if want != 413:
        err = json.loads(out)["error"]
        if not err["message"] or "type" not in err or "param" not in err or "code" not in err:
            fail(f"error object: {err}")
t.join()
if len(good.get("text", "")) < 200:
    fail(f"the good request did not complete: {good}")
if subprocess.run(["kill", "-0", os.environ["MAIN_PID"]]).returncode != 0:
    fail("server died")
print(f"ok: {len(bad)} bad inputs answered 400/404/405/413 while a good stream completed")

# ---- overload -> 503
st, r = post(TINY, "/v1/completions", {"prompt": "Once", "n": 16, "max_tokens": 100, "ignore_eos": True})
if st != 503 or "overloaded" not in r["error"]["message"]:
    fail(f"full queue: {st} {r}")
print("ok: a full queue answers 503:", r["error"]["message"])

# ---- API key, launch_server alias
for hdr, want in (({}, 401), ({"Authorization": "Bearer nope"}, 401), ({"Authorization": "Bearer sekret"}, 200)):
    st, r = post(KEYED, "/v1/completions", {"prompt": "Once", "max_tokens": 2}, headers=hdr)
    if st != want:
        fail(f"api key {hdr}: {st}, want {want}")
if call(KEYED, "GET", "/health")[0] != 200 or call(KEYED, "GET", "/metrics")[0] != 200:
    fail("/health and /metrics need no key")
print("ok: --api-key: 401 without or with a wrong key; /health and /metrics open")

# ---- info and metrics
st, out = call(MAIN, "GET", "/v1/models")
if json.loads(out)["data"][0]["id"] != "stories":
    fail(f"/v1/models: {out}")
info = json.loads(call(MAIN, "GET", "/get_server_info")[1])
if info["disaggregation_mode"] != "null" or "kv_bytes" not in info["engine_stats"]:
    fail(f"/get_server_info: {info}")
if call(MAIN, "GET", "/health_generate")[0] != 200:
    fail("/health_generate")
st, out = call(MAIN, "GET", "/metrics")
text = out.decode()
for name in ("sglang:prompt_tokens_total", "sglang:generation_tokens_total", "sglang:num_running_reqs",
             "sglang:num_queue_reqs", "sglang:time_to_first_token_seconds_bucket",
             "sglang:time_per_output_token_seconds_count", "sglang:inter_token_latency_seconds_sum",
             "sglang:e2e_request_latency_seconds_count", "sglang:token_usage", "sglang:cache_hit_rate",
             "sglang:cached_tokens_total", "pdserve:kv_pages_free", "pdserve:kv_pages_used",
             'pdserve:http_requests_total{model_name="stories",route="/v1/completions",code="400"}'):
    if name not in text:
        fail(f"/metrics lacks {name}")
print("ok: /v1/models, /get_server_info, /health_generate, /metrics")
EOF

BIN=$BIN MODEL=$MODEL MAIN=$main_PORT MAIN_PID=$main_PID KEYED=$keyed_PORT TINY=$tiny_PORT python3 "$T/check.py"

# ---- SIGTERM: clean exit 0
kill -TERM "$main_PID"
deadline=$((SECONDS + 10))
while kill -0 "$main_PID" 2>/dev/null; do
	[ "$SECONDS" -lt "$deadline" ] || fail "server ignored SIGTERM"
	sleep 0.05
done
rc=0
wait "$main_PID" || rc=$?
[ "$rc" = 0 ] || fail "server exit status $rc after SIGTERM"
grep -q "signal 15" "$T/main.err" || fail "shutdown not logged"
if grep -E " E (http|engine|server):" "$T/main.err" >&2; then fail "errors logged by the main server"; fi
echo "ok: SIGTERM exits 0"
