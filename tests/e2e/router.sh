#!/usr/bin/env bash
# router.sh - `pdserve router` end to end: real unified, prefill and decode
# servers and routers on 127.0.0.1 (free ports), stories260K (or the
# synthesized model when ../shared is absent).
#
# - 1P1D and 1P3D: greedy chat completions (stream and not), completions and
#   /generate through the router equal a unified server's; the SSE stream is
#   parsed the way the OpenAI SDKs do (data: lines, chat.completion.chunk,
#   role first, finish_reason, [DONE]); regular mode (--worker-urls) too;
#   --pd-disaggregation --prefill-hosts URL (port from /get_server_info) and
#   URL@PORT forms;
# - policies over 3 decodes: round_robin exactly in turn; random reaches all;
#   power_of_two avoids a SIGSTOPped decode; cache_aware sends repeated-prefix
#   requests to the same one of 2 prefills (and the prefill's cache hits);
# - a decode killed under load: its streams end with an SSE error event and
#   [DONE], the others finish, new requests succeed, it returns after restart;
# - client disconnects (streaming, and non-streaming with the decode
#   stopped) cancel both sides: page counters back to baseline, aborts counted;
# - the only prefill killed: 503 naming it, then recovery after restart;
# - admin: /health, /v1/models, /get_server_info, /metrics, /flush_cache,
#   /health_generate, GET/POST/DELETE /workers, 404, 401 with --api-key.
set -euo pipefail
START=$SECONDS

source "$(dirname "$0")/../lib/common.sh"

wait_health() { # NAME PORT PID
	local deadline=$((SECONDS + 20))
	until curl -sf "http://127.0.0.1:$2/health" >/dev/null 2>&1; do
		kill -0 "$3" 2>/dev/null || { cat "$T/$1.err" >&2; fail "$1 exited"; }
		[ "$SECONDS" -lt "$deadline" ] || { tail -20 "$T/$1.err" >&2; fail "$1 not healthy in 20 s"; }
		sleep 0.05
	done
}

# server NAME [PORT] ARGS...: a server, healthy; sets NAME_PORT and NAME_PID.
server() {
	local name=$1 port=$2 pid
	shift 2
	[ -n "$port" ] || port=$(free_port)
	"$BIN" server --model-path "$MODEL" --port "$port" --max-total-tokens 8192 --threads 1 "$@" \
		>"$T/$name.out" 2>"$T/$name.err" &
	pid=$!
	PIDS+=("$pid")
	wait_health "$name" "$port" "$pid"
	eval "${name}_PORT=$port ${name}_PID=$pid"
}

# router NAME ARGS...: a router on a free port whose /health passes.
router() {
	local name=$1 port pid
	shift
	port=$(free_port)
	"$BIN" router --port "$port" --health-check-interval-secs 0.3 --health-check-timeout-secs 1 \
		--health-failure-threshold 2 --health-success-threshold 1 --retry-backoff-ms 5 "$@" \
		>"$T/$name.out" 2>"$T/$name.err" &
	pid=$!
	PIDS+=("$pid")
	wait_health "$name" "$port" "$pid"
	eval "${name}_PORT=$port ${name}_PID=$pid"
	ROUTERS+=("$name:$pid")
}
ROUTERS=()

export SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL=0.3 SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE=2
export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=20 SGLANG_DISAGGREGATION_WAITING_TIMEOUT=20

BP=$(free_port)
BP2=$(free_port)
server U ""
server P "" --disaggregation-mode prefill --disaggregation-bootstrap-port "$BP"
server P2 "" --disaggregation-mode prefill --disaggregation-bootstrap-port "$BP2"
server D1 "" --disaggregation-mode decode
server D2 "" --disaggregation-mode decode
server D3 "" --disaggregation-mode decode
P_URL=http://127.0.0.1:$P_PORT
P2_URL=http://127.0.0.1:$P2_PORT
D1_URL=http://127.0.0.1:$D1_PORT
D2_URL=http://127.0.0.1:$D2_PORT
D3_URL=http://127.0.0.1:$D3_PORT

router R1 --prefill "$P_URL" "$BP" --decode "$D1_URL"
router R3 --prefill "$P_URL" "$BP" --decode "$D1_URL" --decode "$D2_URL" --decode "$D3_URL" \
	--decode-policy round_robin
router RH --pd-disaggregation --prefill-hosts "$P_URL" --decode-hosts "$D2_URL"
router RA --pd-disaggregation --prefill-hosts "$P_URL@$BP" --decode-hosts "$D3_URL" --policy random
router RREG --worker-urls "http://127.0.0.1:$U_PORT" --policy round_robin
router RRAND --prefill "$P_URL" "$BP" --decode "$D1_URL" --decode "$D2_URL" --decode "$D3_URL" --decode-policy random
router RP2 --prefill "$P_URL" "$BP" --decode "$D1_URL" --decode "$D2_URL" --decode "$D3_URL" \
	--decode-policy power_of_two --health-check-interval-secs 60
router RCA --prefill "$P_URL" "$BP" --prefill "$P2_URL" "$BP2" --decode "$D1_URL" --decode "$D2_URL" \
	--decode "$D3_URL" --prefill-policy cache_aware --decode-policy round_robin
KEY=sk-test-$$
router RKEY --worker-urls "http://127.0.0.1:$U_PORT" --api-key "$KEY"
echo "servers and routers up after $((SECONDS - START)) s"

cat >"$T/lib.py" <<'EOF'
import http.client, json, os, signal, socket, subprocess, sys, threading, time, urllib.parse

P = json.loads(os.environ["PORTS"])

def request(port, path, body=None, method=None, headers=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    c.request(method or ("POST" if body is not None else "GET"), path, body=data, headers=h)
    r = c.getresponse()
    raw = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, raw

def jreq(port, path, body=None, **kw):
    st, h, raw = request(port, path, body, **kw)
    try:
        return st, h, json.loads(raw)
    except ValueError:
        return st, h, raw.decode(errors="replace")

def sse_events(raw):
    """Parse an SSE body strictly, as the OpenAI SDKs do: events separated by
    a blank line, each 'data: <json>', the last 'data: [DONE]'."""
    text = raw.decode()
    assert text.endswith("\n\n"), "stream does not end with a blank line: %r" % text[-80:]
    events = text[:-2].split("\n\n")
    assert events[-1] == "data: [DONE]", "last event is not [DONE]: %r" % events[-1]
    out = []
    for e in events[:-1]:
        assert e.startswith("data: ") and "\n" not in e, "bad SSE event %r" % e[:120]
        out.append(json.loads(e[6:]))
    return out

def chat_body(text, n=24, stream=False, **extra):
    b = {"model": "x", "messages": [{"role": "user", "content": text}], "max_tokens": n, "temperature": 0,
         "stream": stream}
    b.update(extra)
    return b

def chat(port, text, n=24, stream=False, **extra):
    st, h, raw = request(port, "/v1/chat/completions", chat_body(text, n, stream, **extra))
    assert st == 200, (port, st, raw[:300])
    if not stream:
        o = json.loads(raw)
        assert o["object"] == "chat.completion", o
        return o["choices"][0]["message"]["content"], o["choices"][0]["finish_reason"], h
    ev = sse_events(raw)
    assert ev[0]["choices"][0]["delta"].get("role") == "assistant", ev[0]
    text_out, finish = "", None
    for e in ev:
        assert e["object"] == "chat.completion.chunk", e
        for c in e["choices"]:
            text_out += c["delta"].get("content") or ""
            finish = c.get("finish_reason") or finish
    return text_out, finish, h

def stats(port):
    return jreq(port, "/get_server_info")[2]["engine_stats"]

def pages_back(port, what):
    for _ in range(200):
        st = stats(port)
        if st["running"] == 0 and st["waiting"] == 0 and st.get("importing", 0) == 0 and \
           st["pages_free"] + st["pages_cached"] == st["pages_total"]:
            return st
        time.sleep(0.05)
    sys.exit("FAIL: %s: pages not back: %s" % (what, st))

def aborts(port):
    return stats(port)["requests_finished"]["abort"]

def workers(port):
    return {w["url"]: w for w in jreq(port, "/workers")[2]["workers"]}

def wait_worker(port, url, healthy, what, secs=10):
    t = time.time()
    while time.time() - t < secs:
        w = workers(port).get(url)
        if w and w["routable"] == healthy:
            return time.time() - t
        time.sleep(0.05)
    sys.exit("FAIL: %s: %s never became %s: %s" % (what, url, "routable" if healthy else "unroutable", workers(port).get(url)))

def wait_all(*ports):
    """every worker of these routers routable (after another step stopped one)"""
    for port in ports:
        for url in workers(port):
            wait_worker(port, url, True, "settling")

PROMPTS = ["Tell me a story.", "Once upon a time", "What is the color of the sky?", "hi",
           "Lily and Ben went to the park to play with a big red ball and a small dog.",
           "Write a long story about a cat named Tom who " + "loved to jump " * 20]
EOF

cat >"$T/equal.py" <<'EOF'
import os; exec(open(os.environ["LIB"]).read())
want = {}
for t in PROMPTS:
    want[t] = chat(P["U"], t)[:2]
    assert want[t] == chat(P["U"], t, stream=True)[:2], "unified: stream != non-stream"
for name in ("R1", "R3", "RH", "RA"):
    for t in PROMPTS:
        for stream in (False, True):
            got = chat(P[name], t, stream=stream)
            if got[:2] != want[t]:
                sys.exit("FAIL: %s stream=%s %r: router %r != unified %r" % (name, stream, t, got[:2], want[t]))
            assert got[2].get("x-pdserve-decode") and got[2].get("x-pdserve-prefill"), got[2]
    print("ok: %s: %d chat prompts, stream and not, equal to unified" % (name, len(PROMPTS)))
# regular mode
for t in PROMPTS[:3]:
    for stream in (False, True):
        got = chat(P["RREG"], t, stream=stream)
        assert got[:2] == want[t], ("regular", t, got, want[t])
        assert got[2].get("x-pdserve-worker"), got[2]
print("ok: regular mode (--worker-urls) equal to unified")
# completions and /generate
body = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}
st, _, u = jreq(P["U"], "/v1/completions", body)
st2, _, r = jreq(P["R3"], "/v1/completions", body)
assert st == st2 == 200 and u["choices"][0]["text"] == r["choices"][0]["text"], (u, r)
g = {"text": "The little bird", "sampling_params": {"max_new_tokens": 20, "temperature": 0}}
st, _, u = jreq(P["U"], "/generate", g)
st2, _, r = jreq(P["R1"], "/generate", g)
assert st == st2 == 200 and u["output_ids"] == r["output_ids"], (u, r)
gs = dict(g, stream=True)
st, _, raw = request(P["R1"], "/generate", gs)
ev = sse_events(raw)
assert st == 200 and ev[-1]["text"] == u["text"], ev[-1]
# client-sent bootstrap fields are replaced by the router's
st, _, r = jreq(P["R1"], "/generate", dict(g, bootstrap_host="10.9.9.9", bootstrap_port=1, bootstrap_room=5))
assert st == 200 and r["output_ids"] == u["output_ids"], r
print("ok: /v1/completions and /generate (stream and not) equal to unified; client bootstrap fields replaced")
EOF

cat >"$T/policies.py" <<'EOF'
import os; exec(open(os.environ["LIB"]).read())
D = [P["D1_URL"], P["D2_URL"], P["D3_URL"]]
# round robin: in turn, exactly
seq = [chat(P["R3"], "hi", n=2)[2]["x-pdserve-decode"] for _ in range(9)]
assert all(seq[i] == seq[i % 3] for i in range(9)) and len(set(seq[:3])) == 3, seq
print("ok: round_robin over 3 decodes: %s" % " ".join(u.rsplit(":", 1)[1] for u in seq))
# random: all three used
cnt = {}
for _ in range(30):
    d = chat(P["RRAND"], "hi", n=2)[2]["x-pdserve-decode"]
    cnt[d] = cnt.get(d, 0) + 1
assert len(cnt) == 3, cnt
print("ok: random over 3 decodes: %s" % sorted(cnt.values()))
# power_of_two: a stopped decode gets at most the one request that found it idle
os.kill(P["D1_PID"], signal.SIGSTOP)
res, ths = [], []
try:
    for i in range(12):
        def one():
            # the one parked on the stopped decode may fail: the prefill drops
            # a decode silent past the heartbeat window
            st, h, raw = request(P["RP2"], "/v1/chat/completions", chat_body("hi", 2))
            d = h.get("x-pdserve-decode")
            assert st == 200 or d == P["D1_URL"], (st, d, raw[:200])
            res.append(d)
        th = threading.Thread(target=one)
        th.start()
        ths.append(th)
        th.join(1.0)  # returns at once unless the request sits on the stopped decode
finally:
    os.kill(P["D1_PID"], signal.SIGCONT)
for th in ths:
    th.join(20)
cnt = {d: res.count(d) for d in D}
assert len(res) == 12 and cnt[P["D1_URL"]] <= 1, cnt
print("ok: power_of_two with D1 stopped: %s (D1 got %d of 12)" % (sorted(cnt.values()), cnt[P["D1_URL"]]))
# cache_aware on 2 prefills: each shared prefix sticks to one prefill
A = "You are a helpful assistant who tells short stories about animals in the forest, always kind and happy. "
B = "Answer every question about the ocean with a fact about fish, whales, waves or sand, in one sentence. "
where = {"A": [], "B": []}
cached = []
for i in range(4):
    for k, sysmsg in (("A", A), ("B", B)):
        body = {"messages": [{"role": "system", "content": sysmsg}, {"role": "user", "content": "question %d" % i}],
                "max_tokens": 2, "temperature": 0}
        st, h, o = jreq(P["RCA"], "/v1/chat/completions", body)
        assert st == 200, o
        where[k].append(h["x-pdserve-prefill"])
        if i:
            cached.append(o["usage"]["prompt_tokens_details"]["cached_tokens"])
assert len(set(where["A"])) == 1 and len(set(where["B"])) == 1, where
assert where["A"][0] != where["B"][0], ("both prefixes on one prefill while the other was empty", where)
assert all(c > 0 for c in cached), ("prefill prefix cache not hit", cached)
print("ok: cache_aware: prefix A -> %s x4, prefix B -> %s x4; prefill cache hits %s" %
      (where["A"][0].rsplit(":", 1)[1], where["B"][0].rsplit(":", 1)[1], cached))
EOF

cat >"$T/admin.py" <<'EOF'
import os; exec(open(os.environ["LIB"]).read())
r = P["R3"]
wait_all(r, P["R1"])
st, _, o = jreq(r, "/v1/models")
assert st == 200 and o["object"] == "list" and o["data"], o
st, _, o = jreq(r, "/get_server_info")
assert st == 200 and o["router"]["mode"] == "pd" and len(o["decode"]) == 3 and len(o["prefill"]) == 1, o
assert o["prefill"][0]["disaggregation_bootstrap_port"] == P["BP"], o["prefill"]
st, _, o = jreq(P["RH"], "/workers")
assert o["workers"][0]["bootstrap_port"] == P["BP"], ("bootstrap port not discovered", o)
st, h, raw = request(r, "/metrics")
text = raw.decode()
for m in ("sgl_router_requests_total", "sgl_router_worker_load", "pdserve:router_time_to_first_token_seconds_count",
          "sgl_router_processed_requests_total", "sgl_router_retries_total"):
    assert m in text, m
st, _, raw = request(r, "/flush_cache", b"", method="POST")
assert st == 200, raw
st, _, raw = request(r, "/health_generate")
assert st == 200, raw
st, _, o = jreq(r, "/nope")
assert st == 404 and "error" in o, o
st, _, o = jreq(r, "/v1/chat/completions", b"{not json")
assert st == 400 and "malformed JSON" in o["error"]["message"], o
# membership: remove D3, requests avoid it, add it back
st, _, o = jreq(r, "/workers?url=" + urllib.parse.quote(P["D3_URL"]), method="DELETE")
assert st == 200, o
seen = {chat(r, "hi", n=2)[2]["x-pdserve-decode"] for _ in range(6)}
assert P["D3_URL"] not in seen and len(seen) == 2, seen
st, _, o = jreq(r, "/workers", {"url": P["D3_URL"], "worker_type": "decode"})
assert st == 200, o
st, _, o = jreq(r, "/workers", {"url": P["D3_URL"], "worker_type": "decode"})
assert st == 409, o
st, _, o = jreq(r, "/workers", {"url": "http://127.0.0.1:1", "worker_type": "regular"})
assert st == 400, o
wait_worker(r, P["D3_URL"], True, "re-added D3")
seen = {chat(r, "hi", n=2)[2]["x-pdserve-decode"] for _ in range(6)}
assert P["D3_URL"] in seen, seen
# api key
st, _, o = jreq(P["RKEY"], "/v1/chat/completions", chat_body("hi", 2))
assert st == 401, o
st, _, o = jreq(P["RKEY"], "/v1/chat/completions", chat_body("hi", 2), headers={"Authorization": "Bearer " + P["KEY"]})
assert st == 200, o
assert request(P["RKEY"], "/health")[0] == 200
print("ok: admin routes: models, server info (bootstrap port discovered), metrics, flush_cache, health_generate, "
      "404/400, DELETE/POST /workers, api key")
EOF

cat >"$T/cancel.py" <<'EOF'
import os; exec(open(os.environ["LIB"]).read())
r = P["R1"]
wait_all(r)
base_p, base_d = pages_back(P["P"], "prefill baseline"), pages_back(P["D1"], "decode baseline")
ab_d, ab_p = aborts(P["D1"]), aborts(P["P"])
body = json.dumps(chat_body("Tell me a very long story.", 400, True, ignore_eos=True)).encode()
def raw_post(port, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return s
# 1. streaming: read a few events, hang up
s = raw_post(r, body)
got = b""
while got.count(b"data:") < 3:
    more = s.recv(4096)
    assert more, "stream ended early: %r" % got[-300:]
    got += more
assert got.startswith(b"HTTP/1.1 200"), got[:300]
s.close()
pages_back(P["D1"], "decode after a streaming client left")
pages_back(P["P"], "prefill after a streaming client left")
assert aborts(P["D1"]) > ab_d, "decode did not abort"
print("ok: streaming client left after 3 events: decode aborted, pages back on both sides")
# 2. non-streaming, the decode stopped so the request is surely in flight on both sides
ab_p = aborts(P["P"])
os.kill(P["D1_PID"], signal.SIGSTOP)
try:
    s = raw_post(r, json.dumps(chat_body("Tell me a very long story.", 400, False, ignore_eos=True)).encode())
    time.sleep(0.4)  # the prefill holds the room, waiting for the stopped decode
    s.close()
    time.sleep(0.3)
finally:
    os.kill(P["D1_PID"], signal.SIGCONT)
pages_back(P["D1"], "decode after a waiting client left")
pages_back(P["P"], "prefill after a waiting client left")
assert aborts(P["P"]) > ab_p, "prefill did not abort"
print("ok: non-streaming client left while the decode was stopped: prefill aborted, pages back on both sides")
wait_all(r)
# 3. many at once, all hang up at different points
socks = [raw_post(r, body) for _ in range(6)]
time.sleep(0.05)
for i, s in enumerate(socks):
    if i % 2:
        s.recv(100)
    s.close()
pages_back(P["D1"], "decode after 6 clients left")
pages_back(P["P"], "prefill after 6 clients left")
m = request(r, "/metrics")[2].decode()
n = [l for l in m.splitlines() if l.startswith("pdserve:router_client_disconnects_total")][0].split()[-1]
assert int(n) >= 8, m
print("ok: 6 clients leaving at once: pages back on both sides (%s disconnects counted)" % n)
EOF

cat >"$T/killdec.py" <<'EOF'
import os; exec(open(os.environ["LIB"]).read())
r = P["RK"]
results = {}
def stream(i):
    c = http.client.HTTPConnection("127.0.0.1", r, timeout=30)
    c.request("POST", "/v1/chat/completions", json.dumps(chat_body("Tell me a long story %d." % i, 400, True,
                                                                     ignore_eos=True)))
    resp = c.getresponse()
    dec = resp.getheader("X-Pdserve-Decode")
    raw = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            break
        raw += chunk
        results[i] = (resp.status, dec, raw, False)
    results[i] = (resp.status, dec, raw, True)
ths = [threading.Thread(target=stream, args=(i,)) for i in range(9)]
[t.start() for t in ths]
t0 = time.time()
while time.time() - t0 < 10 and not (len(results) == 9 and all(v[2].count(b"data:") >= 3 for v in results.values())):
    time.sleep(0.002)
os.kill(P["D2_PID"], signal.SIGKILL)
[t.join(20) for t in ths]
failed = ok = 0
for i, (st, dec, raw, done) in results.items():
    assert done, "stream %d did not end" % i
    ev = sse_events(raw)  # well-formed either way, ends with [DONE]
    err = [e for e in ev if "error" in e]
    if dec == P["D2_URL"]:
        assert err and "decode" in err[0]["error"]["message"], (i, ev[-2:])
        failed += 1
    else:
        assert not err and ev[-1]["choices"][0]["finish_reason"] == "length", (i, dec, ev[-1])
        ok += 1
assert failed == 3 and ok == 6, (failed, ok)
print("ok: decode killed under load: its 3 streams ended with an SSE error event and [DONE], 6 others finished")
for i in range(9):
    o = chat(r, "hi %d" % i, n=4)
    assert o[2]["x-pdserve-decode"] != P["D2_URL"], o
print("ok: 9 new requests after the kill all succeeded on the other decodes")
EOF

cat >"$T/killdec2.py" <<'EOF'
import os; exec(open(os.environ["LIB"]).read())
r = P["RK"]
el = wait_worker(r, P["D2_URL"], True, "restarted D2")
seen = [chat(r, "hi", n=2)[2]["x-pdserve-decode"] for _ in range(6)]
assert seen.count(P["D2_URL"]) == 2, seen
print("ok: restarted decode back in the pool after %.2f s and served its share" % el)
EOF

cat >"$T/killpre.py" <<'EOF'
import os; exec(open(os.environ["LIB"]).read())
r = P["R1"]
step = sys.argv[1]
if step == "dead":
    for stream in (False, True):
        st, _, o = jreq(r, "/v1/chat/completions", chat_body("hi", 4, stream))
        assert st == 503 and "no healthy prefill worker" in o["error"]["message"] and P["P_URL"] in o["error"]["message"], (st, o)
    print("ok: only prefill killed: 503 %r" % o["error"]["message"])
    wait_worker(r, P["P_URL"], False, "killed prefill")
    st, _, o = jreq(r, "/v1/chat/completions", chat_body("hi", 4))
    assert st == 503 and "no healthy prefill worker" in o["error"]["message"], o
    st, _, o = jreq(r, "/health")
    assert st == 503 and "prefill" in o["error"]["message"], o
else:
    el = wait_worker(r, P["P_URL"], True, "restarted prefill")
    got = chat(r, PROMPTS[0])
    want = chat(P["U"], PROMPTS[0])
    assert got[:2] == want[:2], (got, want)
    print("ok: restarted prefill back after %.2f s; output equal to unified again" % el)
EOF

ports() {
	cat <<JSON
{"U":$U_PORT,"P":$P_PORT,"P_PID":$P_PID,"P2":$P2_PORT,"D1":$D1_PORT,"D1_PID":$D1_PID,"D2":$D2_PORT,"D2_PID":$D2_PID,
 "D3":$D3_PORT,"BP":$BP,"P_URL":"$P_URL","D1_URL":"$D1_URL","D2_URL":"$D2_URL","D3_URL":"$D3_URL",
 "R1":$R1_PORT,"R3":$R3_PORT,"RH":$RH_PORT,"RA":$RA_PORT,"RREG":$RREG_PORT,"RRAND":$RRAND_PORT,"RP2":$RP2_PORT,
 "RCA":$RCA_PORT,"RKEY":$RKEY_PORT,"KEY":"$KEY","RK":${RK_PORT:-0}}
JSON
}
run() { PORTS=$(ports) LIB=$T/lib.py python3 "$T/$1" "${@:2}" || fail "$1 $*"; }

run equal.py
# The official OpenAI SDK (Node), when installed in $OPENAI_NODE_DIR
# (default ~/.cache/pdserve/openai-node: `npm install --prefix DIR openai@4`),
# parses the router's answers, streamed and not, to the same text.
SDK=${OPENAI_NODE_DIR:-$HOME/.cache/pdserve/openai-node}
if command -v node >/dev/null && [ -d "$SDK/node_modules/openai" ]; then
	cat >"$SDK/router_check.mjs" <<EOF2
import OpenAI from "openai";
const c = new OpenAI({ baseURL: "http://127.0.0.1:$R1_PORT/v1", apiKey: "none" });
const msgs = [{ role: "user", content: "Tell me a story." }];
const r = await c.chat.completions.create({ model: "m", messages: msgs, max_tokens: 24, temperature: 0 });
const s = await c.chat.completions.create({ model: "m", messages: msgs, max_tokens: 24, temperature: 0, stream: true,
                                            stream_options: { include_usage: true } });
let text = "", usage = null;
for await (const ch of s) { for (const x of ch.choices) text += x.delta.content ?? ""; usage = ch.usage ?? usage; }
if (text !== r.choices[0].message.content || !usage || usage.completion_tokens !== r.usage.completion_tokens)
  { console.error("FAIL: SDK stream", JSON.stringify(text), "!= non-stream", JSON.stringify(r.choices[0].message.content)); process.exit(1); }
console.log("ok: the official OpenAI SDK (Node) parses the router's chat answers, streamed and not");
EOF2
	(cd "$SDK" && node router_check.mjs) || fail "OpenAI SDK check"
else
	echo "skip: OpenAI Node SDK check (install it with: npm install --prefix $SDK openai@4)"
fi
run policies.py
run admin.py
run cancel.py
router RK --prefill "$P_URL" "$BP" --decode "$D1_URL" --decode "$D2_URL" --decode "$D3_URL" \
	--decode-policy round_robin --cb-timeout-duration-secs 0.5
run killdec.py
wait "$D2_PID" 2>/dev/null || true
server D2 "$D2_PORT" --disaggregation-mode decode
run killdec2.py
kill -9 "$P_PID"
wait "$P_PID" 2>/dev/null || true
run killpre.py dead
server P "$P_PORT" --disaggregation-mode prefill --disaggregation-bootstrap-port "$BP"
run killpre.py back
# routers shut down cleanly on SIGTERM (under ASan: no leak, no error)
for rp in "${ROUTERS[@]}"; do kill -TERM "${rp#*:}"; done
for rp in "${ROUTERS[@]}"; do
	wait "${rp#*:}" || fail "router ${rp%%:*} exited with $? on SIGTERM"
done
grep -H "ERROR: .*Sanitizer\|runtime error" "$T"/R*.err && fail "sanitizer report in a router log"
echo "ok: router.sh ($((SECONDS - START)) s)"
