#!/usr/bin/env bash
# limits.sh - configurable request limits on a real server (127.0.0.1):
# each limit exceeded gets its status (413 body, 431 headers, 400 prompt /
# max_tokens / n / stop, 503 + Retry-After queue full) with an OpenAI error
# object, one log line, and pdserve:requests_rejected_total{reason} going up
# by exactly one per refusal; the server keeps serving after each. Beyond
# twice the body limit (plain or chunked) libevent cuts the request off and
# answers 413 itself: counted as reason "read_limit"; headers beyond twice
# theirs and malformed HTTP get libevent's 400: "malformed_http". Also: an
# idle connection is closed after --idle-timeout-secs while a request that
# waits longer than that for its answer is not, and the defaults (no limit
# flags) accept what the small limits refuse. A router's --max-payload-size /
# --max-header-size answer 413 / 431 the same way, counted in
# pdserve:router_requests_rejected_total.
set -euo pipefail
START=$SECONDS

source "$(dirname "$0")/../lib/common.sh"

# start NAME ARGS...: a server on a free port, healthy; sets NAME_PORT and NAME_PID.
start() {
	local name=$1 port pid deadline
	shift
	port=$(free_port)
	"$BIN" server --model-path "$MODEL" --port "$port" --max-total-tokens 8192 --threads 1 "$@" \
		>"$T/$name.out" 2>"$T/$name.err" &
	pid=$!
	PIDS+=("$pid")
	deadline=$((SECONDS + 20))
	until curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || { cat "$T/$name.err" >&2; fail "$name exited"; }
		[ "$SECONDS" -lt "$deadline" ] || fail "$name not healthy in 20 s"
		sleep 0.05
	done
	eval "${name}_PORT=$port ${name}_PID=$pid"
}

export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=3
start L --max-body-size 4096 --max-header-size 2048 --max-prompt-tokens 60 --max-tokens-limit 50 --max-n 2 \
	--max-stop-strings 2 --max-running-requests 1 --max-queued-requests 2 --idle-timeout-secs 1
start DEF
# a router with small size limits in front of the default server
RT_PORT=$(free_port)
"$BIN" router --port "$RT_PORT" --worker-urls "http://127.0.0.1:$DEF_PORT" --max-payload-size 4096 \
	--max-header-size 2048 --health-check-interval-secs 0.3 >"$T/RT.out" 2>"$T/RT.err" &
PIDS+=("$!")
deadline=$((SECONDS + 20))
until curl -sf "http://127.0.0.1:$RT_PORT/health" >/dev/null 2>&1; do
	[ "$SECONDS" -lt "$deadline" ] || { cat "$T/RT.err" >&2; fail "router not healthy in 20 s"; }
	sleep 0.05
done
P_BOOT=$(free_port)
start P --disaggregation-mode prefill --disaggregation-bootstrap-port "$P_BOOT"
start D --disaggregation-mode decode --idle-timeout-secs 1

cat >"$T/limits.py" <<'EOF'
import http.client, json, re, socket, sys, threading, time

L, DEF, D, P_BOOT, RT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])

def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)

def call(port, path, body=None, headers=None, method=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request(method or ("POST" if data is not None else "GET"), path, body=data, headers=h)
    r = c.getresponse()
    out = r.read()
    c.close()
    return r.status, dict(r.getheaders()), out

def rejected(port):
    st, _, out = call(port, "/metrics")
    if st != 200:
        fail(f"/metrics: {st}")
    got = {}
    for line in out.decode().splitlines():
        m = re.match(r'pdserve:(?:router_)?requests_rejected_total\{(?:.*,)?reason="([a-z_]+)"\} (\d+)', line)
        if m:
            got[m.group(1)] = int(m.group(2))
    if not got:
        fail("no pdserve:requests_rejected_total in /metrics")
    return got

def good(port=L):
    st, _, out = call(port, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})
    if st != 200 or json.loads(out)["usage"]["completion_tokens"] < 1:
        fail(f"a good request after a refusal: {st} {out[:200]}")

def one_more(port, before, reason, what):
    """exactly one more refusal counted, under reason; the server still serves"""
    after = rejected(port)
    for k in after:
        want = before.get(k, 0) + (1 if k == reason else 0)
        if after[k] != want:
            fail(f"{what}: counter {k} went {before.get(k)} -> {after[k]}, want {want}")
    good(port)

def expect(reason, status, path, body, headers=None, port=L, words=None):
    before = rejected(port)
    st, h, out = call(port, path, body, headers)
    if st != status:
        fail(f"{reason}: status {st}, want {status}: {out[:300]}")
    try:
        err = json.loads(out)["error"]
    except Exception:
        fail(f"{reason}: not an OpenAI error object: {out[:300]}")
    for k in ("message", "type", "param", "code"):
        if k not in err:
            fail(f"{reason}: error object without {k}: {err}")
    if words and words not in err["message"]:
        fail(f"{reason}: message {err['message']!r} does not say {words!r}")
    one_more(port, before, reason, reason)
    return h, err

long_prompt = "Once upon a time there was a little girl who lived in a village near the forest. " * 8
expect("body_size", 413, "/v1/completions", b'{"prompt": "' + b"a" * 6000 + b'"}', words="--max-body-size")
expect("header_size", 431, "/v1/completions", {"prompt": "x", "max_tokens": 1}, {"X-Big": "b" * 3000},
       words="--max-header-size")
_, e = expect("prompt_tokens", 400, "/v1/completions", {"prompt": long_prompt, "max_tokens": 4},
              words="--max-prompt-tokens")
if e["param"] != "prompt":
    fail(f"prompt_tokens: param {e['param']}")
_, e = expect("max_tokens", 400, "/v1/chat/completions",
              {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 51}, words="--max-tokens-limit")
if e["param"] != "max_tokens":
    fail(f"max_tokens: param {e['param']}")
expect("max_tokens", 400, "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 51}})
expect("n", 400, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "n": 3}, words="--max-n")
expect("n", 400, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "n": 65})
expect("stop", 400, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "stop": ["a", "b", "c"]},
       words="--max-stop-strings")

# the router's own size limits, in front of a server that would accept
expect("body_size", 413, "/v1/completions", b'{"prompt": "' + b"a" * 6000 + b'"}', port=RT, words="--max-payload-size")
expect("header_size", 431, "/v1/completions", {"prompt": "x", "max_tokens": 1}, {"X-Big": "b" * 3000}, port=RT,
       words="--max-header-size")

# beyond twice a size limit libevent cuts the request off while reading it
# and answers 413 itself (its HTML page); still logged and counted
def expect_cut(port, body, headers=None, chunked=False, status=413, reason="read_limit"):
    before = rejected(port)
    head = "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if chunked:
        msg = (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
        for i in range(0, len(body), 1000):
            msg += b"%x\r\n" % len(body[i:i + 1000]) + body[i:i + 1000] + b"\r\n"
        msg += b"0\r\n\r\n"
    else:
        msg = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(msg)
        first = s.recv(64)
    except (BrokenPipeError, ConnectionResetError):
        # a chunked body has no length to drain: libevent answers and
        # closes, and the unread rest may reset the connection first
        first = b"HTTP/1.1 %d (reset)" % status if chunked else b"reset"
    s.close()
    if not first.startswith(b"HTTP/1.1 %d " % status):
        fail(f"a request over twice a limit (chunked={chunked}): {first!r}, want a {status}")
    one_more(port, before, reason, f"{reason} (chunked={chunked}, port {port})")

huge = b'{"prompt": "' + b"a" * 20000 + b'"}'
expect_cut(L, huge)
expect_cut(L, huge, chunked=True)
expect_cut(L, b'{"prompt": "x"}', {"X-Big": "b" * 5000}, status=400, reason="malformed_http")
expect_cut(RT, huge)
expect_cut(RT, b'{"prompt": "x"}', {"X-Big": "b" * 5000}, status=400, reason="malformed_http")
expect_cut(L, b"", {"Content-Length": "zz"}, status=400, reason="malformed_http")

# at the limits: accepted
st, _, out = call(L, "/v1/completions", {"prompt": "hi", "max_tokens": 50, "n": 2, "stop": ["x", "y"]})
if st != 200:
    fail(f"a request at every limit: {st} {out[:300]}")
# chat without max_tokens: the default stays within --max-tokens-limit
st, _, out = call(L, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                                              "ignore_eos": True})
if st != 200 or json.loads(out)["usage"]["completion_tokens"] > 50:
    fail(f"default max_tokens under --max-tokens-limit: {st} {out[:300]}")

# the defaults accept what the small limits refused
for body in ({"prompt": long_prompt, "max_tokens": 51, "n": 3, "stop": ["a", "b", "c"]},):
    st, _, out = call(DEF, "/v1/completions", body, {"X-Big": "b" * 3000})
    if st != 200:
        fail(f"default limits refused: {st} {out[:300]}")

# queue full: 1 running + 2 queued; a burst gets 503 + Retry-After, each counted
before = rejected(L)
res = []
lock = threading.Lock()
go = threading.Barrier(24)
def burst():
    go.wait()
    try:
        st, h, out = call(L, "/v1/completions", {"prompt": "Once", "max_tokens": 50, "ignore_eos": True})
    except Exception as ex:
        st, h, out = -1, {}, str(ex).encode()
    with lock:
        res.append((st, h, out))
ts = [threading.Thread(target=burst) for _ in range(24)]
for t in ts:
    t.start()
for t in ts:
    t.join()
n503 = [r for r in res if r[0] == 503]
if len([r for r in res if r[0] not in (200, 503)]):
    fail(f"burst: unexpected answers {[r[0] for r in res]}")
if not n503:
    fail(f"burst of 24 with 1 running + 2 queued: no 503 ({[r[0] for r in res]})")
for st, h, out in n503:
    if h.get("Retry-After") != "1" or json.loads(out)["error"]["type"] != "service_unavailable_error":
        fail(f"503 without Retry-After / error object: {h} {out[:200]}")
after = rejected(L)
if after["queue_full"] - before["queue_full"] != len(n503):
    fail(f"queue_full counter +{after['queue_full'] - before['queue_full']}, {len(n503)} answers were 503")
good()

# idle connection: closed after --idle-timeout-secs 1
s = socket.create_connection(("127.0.0.1", L))
s.settimeout(10)
t0 = time.time()
if s.recv(1) != b"" or not (0.8 < time.time() - t0 < 5):
    fail(f"idle connection not closed after 1 s ({time.time() - t0:.1f} s)")
# a request waiting longer than that (a decode waiting ~3 s for a prefill that
# never gets its half) is not idle: it gets its answer
if True:
    t0 = time.time()
    st, _, out = call(D, "/generate", {"text": "hi", "bootstrap_host": "127.0.0.1",
                                       "bootstrap_port": int(P_BOOT), "bootstrap_room": 7})
    if st < 400 or time.time() - t0 < 2 or b"bootstrap timeout" not in out:
        fail(f"long wait under --idle-timeout-secs 1: {st} after {time.time() - t0:.1f} s: {out[:200]}")
print(f"ok: 7 limits refused with status + counter (2 on the router), 4 cut off by libevent counted (1 chunked), {len(n503)}/24 of a burst got 503 + Retry-After, "
      "idle connections closed, long waits kept")
EOF
python3 "$T/limits.py" "$L_PORT" "$DEF_PORT" "$D_PORT" "$P_BOOT" "$RT_PORT" || fail "limits checks"
# one log line per refusal, naming the limit
for w in "--max-body-size" "--max-header-size" "--max-prompt-tokens" "--max-tokens-limit" "--max-n" "--max-stop-strings" "overloaded"; do
	grep -q -- "$w" "$T/L.err" || fail "no log line for $w"
done
kill -0 "$L_PID" || fail "server died"
echo "limits.sh: ok ($((SECONDS - START)) s)"
