#!/usr/bin/env bash
# security.sh - API keys and the cluster secret, end to end on 127.0.0.1:
# - a server with --api-key: 401 without / with a wrong key, 200 with it;
#   /health and /metrics stay open;
# - a router with --api-key RK --worker-api-key WK in front of PD workers
#   that need WK: clients need RK (WK alone is refused), the router gets
#   through to the workers, and the PD output equals the unified output;
#   a router with only --api-key forwards that same key;
# - PD with matching secrets (one from the flag, one from
#   $PDSERVE_DISAGGREGATION_SECRET) works; a decode with another secret, and
#   one with none, are refused: the request fails naming "disaggregation
#   secret rejected by" the prefill, the prefill logs the refused peer, and
#   every KV page is back on both sides.
set -euo pipefail
START=$SECONDS

source "$(dirname "$0")/../lib/common.sh"

wait_health() {
	local name=$1 port=$2 pid=$3 deadline=$((SECONDS + 20))
	until curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || { cat "$T/$name.err" >&2; fail "$name exited"; }
		[ "$SECONDS" -lt "$deadline" ] || fail "$name not healthy in 20 s"
		sleep 0.05
	done
}
# server NAME ARGS...: sets NAME_PORT, NAME_PID
server() {
	local name=$1 port pid
	shift
	port=$(free_port)
	"$BIN" server --model-path "$MODEL" --port "$port" --max-total-tokens 8192 --threads 1 "$@" \
		>"$T/$name.out" 2>"$T/$name.err" &
	pid=$!
	PIDS+=("$pid")
	wait_health "$name" "$port" "$pid"
	eval "${name}_PORT=$port ${name}_PID=$pid"
}
router() {
	local name=$1 port pid
	shift
	port=$(free_port)
	"$BIN" router --port "$port" --health-check-interval-secs 0.3 --health-check-timeout-secs 1 \
		--health-failure-threshold 2 --health-success-threshold 1 "$@" >"$T/$name.out" 2>"$T/$name.err" &
	pid=$!
	PIDS+=("$pid")
	wait_health "$name" "$port" "$pid"
	eval "${name}_PORT=$port ${name}_PID=$pid"
}

export SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL=0.3 SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE=2
export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=4 SGLANG_DISAGGREGATION_WAITING_TIMEOUT=10
WK=worker-key-1 RK=router-key-2 SECRET=cluster-secret-3
BP=$(free_port)
server U --api-key "$WK"
PDSERVE_DISAGGREGATION_SECRET=$SECRET server P --api-key "$WK" --disaggregation-mode prefill \
	--disaggregation-bootstrap-port "$BP"
server D --api-key "$WK" --disaggregation-mode decode --disaggregation-secret "$SECRET"
server DX --api-key "$WK" --disaggregation-mode decode --disaggregation-secret "not-$SECRET"
server DN --api-key "$WK" --disaggregation-mode decode
grep -q "disaggregation secret set" "$T/P.err" || fail "prefill: the secret from the environment was not taken"
router R --api-key "$RK" --worker-api-key "$WK" --prefill "http://127.0.0.1:$P_PORT" "$BP" \
	--decode "http://127.0.0.1:$D_PORT"
router R0 --api-key "$WK" --worker-urls "http://127.0.0.1:$U_PORT"

cat >"$T/sec.py" <<'EOF'
import json, random, sys, threading, time, urllib.request, urllib.error

ports = json.loads(sys.argv[1])
WK, RK = sys.argv[2], sys.argv[3]

def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)

def call(port, path, body=None, key=None, timeout=60):
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)
    except urllib.error.HTTPError as e:
        raw = e.read() or b"{}"
        return e.code, (json.loads(raw) if raw[:1] == b"{" else raw)

def gen(port, text, key, extra=None):
    body = {"text": text, "sampling_params": {"max_new_tokens": 16, "temperature": 0}}
    body.update(extra or {})
    return call(port, "/generate", body, key)

def pages_back(port, what):
    for _ in range(200):
        st, info = call(port, "/get_server_info", key=WK)
        s = info["engine_stats"]
        if s["running"] == 0 and s["waiting"] == 0 and s.get("importing", 0) == 0 and \
           s["pages_free"] + s["pages_cached"] == s["pages_total"]:
            return
        time.sleep(0.05)
    fail("%s: pages not back: %s" % (what, s))

# server --api-key
U = ports["U"]
for key, want in ((None, 401), ("wrong", 401), (WK, 200)):
    st, r = gen(U, "hello", key)
    if st != want:
        fail(f"server with --api-key, key {key}: {st}, want {want}: {r}")
    if want == 401 and r["error"]["type"] != "authentication_error":
        fail(f"401 body: {r}")
for path in ("/health", "/metrics"):
    if call(U, path)[0] != 200:
        fail(f"{path} needs no key")

prompts = ["once upon a time", "the little dog ran to the park and", "lily loved to play " * 5]
want = {t: gen(U, t, WK)[1]["output_ids"] for t in prompts}

# router --api-key RK --worker-api-key WK, PD workers that need WK; secrets match
R = ports["R"]
for t in prompts:
    st, r = gen(R, t, RK)
    if st != 200 or r["output_ids"] != want[t]:
        fail(f"PD behind the router with matching secrets: {st} {r}")
for key in (None, WK):
    st, r = gen(R, "hi", key)
    if st != 401:
        fail(f"router --api-key: client key {key}: {st}, want 401")
st, r = gen(ports["R0"], prompts[0], WK)
if st != 200 or r["output_ids"] != want[prompts[0]]:
    fail(f"router with only --api-key forwards it: {st} {r}")
pages_back(ports["P"], "prefill")
pages_back(ports["D"], "decode")
print("ok: api keys on server and router (--worker-api-key), PD with matching secrets == unified")

# refused decodes: another secret, none
def pd(dport, room):
    body = {"text": "once upon a time", "sampling_params": {"max_new_tokens": 8, "temperature": 0},
            "bootstrap_host": "127.0.0.1", "bootstrap_port": ports["BP"], "bootstrap_room": room}
    out = {}
    tp = threading.Thread(target=lambda: out.__setitem__("p", call(ports["P"], "/generate", body, WK)))
    tp.start()
    out["d"] = call(dport, "/generate", body, WK)
    tp.join()
    return out

for name, why in (("DX", "another secret?"), ("DN", "this decode has none")):
    o = pd(ports[name], random.getrandbits(62))
    st, r = o["d"]
    msg = r.get("error", {}).get("message", "") if isinstance(r, dict) else ""
    if st < 500 or "disaggregation secret rejected by 127.0.0.1:%d" % ports["BP"] not in msg or why not in msg:
        fail(f"{name}: decode answer {st} {r}")
    if o["p"][0] < 400:
        fail(f"{name}: the prefill half succeeded: {o['p']}")
    pages_back(ports[name], name)
    pages_back(ports["P"], "prefill after " + name)
    print(f"ok: {name}: refused ({msg[:90]}...), pages back on both sides")
EOF
python3 "$T/sec.py" "{\"U\":$U_PORT,\"P\":$P_PORT,\"D\":$D_PORT,\"DX\":$DX_PORT,\"DN\":$DN_PORT,\"BP\":$BP,\"R\":$R_PORT,\"R0\":$R0_PORT}" \
	"$WK" "$RK" || fail "security checks"
n=$(grep -c "refused decode 127.0.0.1:[0-9]*: disaggregation secret" "$T/P.err" || true)
[ "$n" -ge 2 ] || { cat "$T/P.err" >&2; fail "prefill: $n refusal log lines naming the peer, want 2"; }
grep -q "$SECRET" "$T"/*.err "$T"/*.out && fail "the secret appears in a log"
echo "security.sh: ok ($((SECONDS - START)) s)"
