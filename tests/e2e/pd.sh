#!/usr/bin/env bash
# pd.sh - prefill/decode disaggregation end to end: real prefill, decode and
# unified servers on 127.0.0.1, requests sent to both halves the way the
# router does (same body, bootstrap_host/port/room added).
#
# - 20 prompts of varied length (one over several prefill chunks, one repeated
#   to hit the prefill's prefix cache): greedy PD output_ids == unified, over
#   tcp, shm and ucx (the decode named "mooncake"), one at a time and 8 in flight;
# - a prefill killed while a room waits: the decode answers 5xx within the
#   heartbeat window, frees the pages, and works with the restarted prefill;
# - a decode killed: the prefill fails that room at once;
# - a client leaving the decode mid-stream: both sides' pages come back;
# - handshake mismatch (page size) is named; missing bootstrap fields: 400.
set -euo pipefail
START=$SECONDS

source "$(dirname "$0")/../lib/common.sh"

# start NAME ARGS...: a server on a free port, healthy; sets NAME_PORT and NAME_PID.
start() {
	local name=$1 port pid deadline
	shift
	port=$(free_port)
	${WRAP:-} "$BIN" server --model-path "$MODEL" --port "$port" --max-total-tokens 8192 "$@" \
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

export SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL=0.3 SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE=2
export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=20 SGLANG_DISAGGREGATION_WAITING_TIMEOUT=20

BP=$(free_port)
BS=$(free_port)
start U
start P --disaggregation-mode prefill --disaggregation-bootstrap-port "$BP" --chunked-prefill-size 32
start D --disaggregation-mode decode
start PS --disaggregation-mode prefill --disaggregation-transfer-backend shm --disaggregation-bootstrap-port "$BS"
start DS --disaggregation-mode decode --disaggregation-transfer-backend shm
BU=$(free_port)
start PU --disaggregation-mode prefill --disaggregation-transfer-backend ucx --disaggregation-bootstrap-port "$BU"
start DU --disaggregation-mode decode --disaggregation-transfer-backend mooncake

cat >"$T/pd.py" <<'EOF'
import json, os, random, sys, threading, time, urllib.request, urllib.error

def quiet(fn):
    def run():
        try:
            fn()
        except Exception:
            pass  # the other half of a request we are breaking on purpose
    return run

def post(port, path, body, timeout=60):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")

def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        return json.loads(r.read())

def pages_back(port, what):
    for _ in range(200):
        st = get(port, "/get_server_info")["engine_stats"]
        if st["running"] == 0 and st["waiting"] == 0 and st.get("importing", 0) == 0 and \
           st["pages_free"] + st["pages_cached"] == st["pages_total"]:
            return
        time.sleep(0.05)
    sys.exit("FAIL: %s: pages not back: %s" % (what, st))

def pd(p_port, d_port, boot_port, text, max_new=24, room=None, results=None, key=None):
    room = room if room is not None else random.getrandbits(63)
    body = {"text": text, "sampling_params": {"max_new_tokens": max_new, "temperature": 0},
            "bootstrap_host": "127.0.0.1", "bootstrap_port": boot_port, "bootstrap_room": room}
    out = {}
    def one(port, k):
        out[k] = post(port, "/generate", body)
    tp = threading.Thread(target=one, args=(p_port, "p"))
    tp.start()
    one(d_port, "d")
    tp.join()
    if results is not None:
        results[key] = out
    return out

words = "once upon a time there was a little girl named lily she loved to play outside in the park".split()
random.seed(5)
prompts = []
for i in range(20):
    n = [1, 3, 8, 15, 30, 60, 90, 140][i % 8] + i
    prompts.append(" ".join(random.choice(words) for _ in range(n)))
prompts[7] = " ".join(words * 12)      # long: several prefill chunks of 32
prompts[19] = prompts[7]               # again: the prefill's prefix cache

ports = json.loads(sys.argv[1])
want = {}
for i, t in enumerate(prompts):
    st, r = post(ports["U"], "/generate", {"text": t, "sampling_params": {"max_new_tokens": 24, "temperature": 0}})
    assert st == 200, r
    want[i] = r["output_ids"]

for name, (pp, dp, bp) in (("tcp", (ports["P"], ports["D"], ports["BP"])), ("shm", (ports["PS"], ports["DS"], ports["BS"])),
                           ("ucx", (ports["PU"], ports["DU"], ports["BU"]))):
    for i, t in enumerate(prompts):
        o = pd(pp, dp, bp, t)
        assert o["d"][0] == 200 and o["p"][0] == 200, (name, i, o)
        if o["d"][1]["output_ids"] != want[i]:
            sys.exit("FAIL: %s prompt %d: PD %s != unified %s" % (name, i, o["d"][1]["output_ids"], want[i]))
        assert o["p"][1]["output_ids"] == want[i][:1], (name, i, o["p"])
        if i == 19:
            cached = o["p"][1]["meta_info"]["cached_tokens"]
            assert cached > 0, ("prefix cache not hit on the prefill", o["p"])
            assert o["d"][1]["meta_info"]["cached_tokens"] == cached
        if i == 7:
            pdinfo = o["d"][1]["meta_info"]["pd"]
            assert pdinfo["backend"] == name and pdinfo["kv_bytes"] > 0, pdinfo
    # 8 in flight
    res = {}
    ths = [threading.Thread(target=pd, args=(pp, dp, bp, prompts[i]), kwargs={"results": res, "key": i})
           for i in range(8)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    for i in range(8):
        assert res[i]["d"][1]["output_ids"] == want[i], (name, "in flight", i)
    pages_back(pp, name + " prefill")
    pages_back(dp, name + " decode")
    print("ok: %s: 20 prompts and 8 in flight, PD == unified; pages back on both sides" % name)

# missing bootstrap fields
st, r = post(ports["D"], "/generate", {"text": "hi"})
assert st == 400 and "bootstrap" in r["error"]["message"], r
st, r = post(ports["P"], "/v1/completions", {"prompt": "hi", "max_tokens": 3})
assert st == 400, r
print("ok: requests without bootstrap fields get 400")
EOF
echo "servers up after $((SECONDS - START)) s"
python3 "$T/pd.py" "{\"U\":$U_PORT,\"P\":$P_PORT,\"D\":$D_PORT,\"BP\":$BP,\"PS\":$PS_PORT,\"DS\":$DS_PORT,\"BS\":$BS,\"PU\":$PU_PORT,\"DU\":$DU_PORT,\"BU\":$BU}"

# ---- failures (tcp)
cat >"$T/fail.py" <<'EOF'
import json, os, signal, socket, subprocess, sys, threading, time, urllib.request, urllib.error
exec(open(sys.argv[1]).read().split("words = ")[0])  # post/get/pages_back/pd from pd.py
ports = json.loads(sys.argv[2])
step = sys.argv[3]
body = lambda room, port, n=24: {"text": "once upon a time", "sampling_params": {"max_new_tokens": n, "temperature": 0},
                                 "bootstrap_host": "127.0.0.1", "bootstrap_port": port, "bootstrap_room": room}
if step == "prefill-dies":
    # the decode's half only: it reserves pages and waits for KV; then the prefill is killed
    out = {}
    t0 = time.time()
    th = threading.Thread(target=lambda: out.setdefault("d", post(ports["D"], "/generate", body(111, ports["BP"]))))
    th.start()
    time.sleep(0.5)
    os.kill(ports["P_PID"], signal.SIGKILL)
    th.join()
    el = time.time() - t0 - 0.5
    st, r = out["d"]
    assert st == 502, (st, r)  # the other half failed: a gateway error, not the decode's own
    assert "prefill" in r["error"]["message"], r
    assert el < 2.5, "decode took %.1f s to fail the room" % el
    pages_back(ports["D"], "decode after the prefill died")
    print("ok: prefill killed: decode answered %d in %.2f s (%s); pages back" % (st, el, r["error"]["message"]))
elif step == "after-restart":
    o = pd(ports["P"], ports["D"], ports["BP"], "once upon a time")
    assert o["d"][0] == 200 and o["d"][1]["output_ids"], o
    print("ok: restarted prefill serves the same decode (no decode restart)")
elif step == "decode-dies":
    out = {}
    th = threading.Thread(target=quiet(lambda: out.setdefault("d", post(ports["D"], "/generate", body(222, ports["BP"])))))
    th.start()
    time.sleep(0.5)  # the decode has reserved pages and sent ROOM_DEST
    os.kill(ports["D_PID"], signal.SIGKILL)
    time.sleep(0.3)
    t0 = time.time()
    st, r = post(ports["P"], "/generate", body(222, ports["BP"]))
    el = time.time() - t0
    assert st >= 500 and "decode" in r["error"]["message"], (st, r)
    assert el < 2, "prefill took %.1f s" % el
    pages_back(ports["P"], "prefill after the decode died")
    print("ok: decode killed: prefill failed the room at once (%.2f s: %s)" % (el, r["error"]["message"]))
elif step == "client-leaves":
    # stream from the decode, read a little, hang up
    b = body(333, ports["BP"], n=400)
    b["stream"] = True
    b["sampling_params"]["ignore_eos"] = True
    threading.Thread(target=quiet(lambda: post(ports["P"], "/generate", b))).start()
    s = socket.create_connection(("127.0.0.1", ports["D"]))
    data = json.dumps(b).encode()
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    got = b""
    while got.count(b"data:") < 3:
        got += s.recv(4096)
    s.close()
    pages_back(ports["D"], "decode after the client left")
    pages_back(ports["P"], "prefill after the client left")
    print("ok: client left mid-stream: pages back on both sides")
elif step == "pidns":
    # a decode in its own PID namespace (a container without pid: host): a
    # pid from the prefill would name another process there, so shm is
    # refused by name and ucx works by the cross-host rules
    st, r = post(ports["DSN"], "/generate", body(555, ports["BS"]))
    assert st >= 500 and "one PID namespace" in r["error"]["message"], (st, r)
    pages_back(ports["DSN"], "decode after the shm refusal")
    o = pd(ports["PU"], ports["DUN"], ports["BU"], "once upon a time")
    st, u = post(ports["U"], "/generate", {"text": "once upon a time", "sampling_params": {"max_new_tokens": 24, "temperature": 0}})
    assert o["d"][0] == 200 and o["d"][1]["output_ids"] == u["output_ids"], (o, u)
    print("ok: decode in its own PID namespace: shm refused by name (%s); ucx PD == unified" % r["error"]["message"][:60])
elif step == "mismatch":
    # the decode half alone: the prefill never hears of a room whose decode it refused
    st, r = post(ports["D32"], "/generate", body(444, ports["BP"]))
    assert st >= 500 and "page size: prefill 16, decode 32" in r["error"]["message"], (st, r)
    print("ok: handshake mismatch named: %s" % r["error"]["message"])
EOF
J() { echo "{\"U\":$U_PORT,\"P\":$P_PORT,\"P_PID\":$P_PID,\"D\":$D_PORT,\"D_PID\":$D_PID,\"BP\":$BP${1:-}}"; }
python3 "$T/fail.py" "$T/pd.py" "$(J)" client-leaves
start D32 --disaggregation-mode decode --page-size 32
python3 "$T/fail.py" "$T/pd.py" "$(J ",\"D32\":$D32_PORT")" mismatch
if unshare --pid --fork --kill-child true 2>/dev/null; then
	WRAP="unshare --pid --fork --kill-child" start DSN --disaggregation-mode decode --disaggregation-transfer-backend shm
	WRAP="unshare --pid --fork --kill-child" start DUN --disaggregation-mode decode --disaggregation-transfer-backend ucx
	python3 "$T/fail.py" "$T/pd.py" "$(J ",\"DSN\":$DSN_PORT,\"DUN\":$DUN_PORT,\"BS\":$BS,\"PU\":$PU_PORT,\"BU\":$BU")" pidns
else
	echo "skip: PID namespaces (unshare --pid needs root)"
fi
python3 "$T/fail.py" "$T/pd.py" "$(J)" prefill-dies
start P --disaggregation-mode prefill --disaggregation-bootstrap-port "$BP" --chunked-prefill-size 32
python3 "$T/fail.py" "$T/pd.py" "$(J)" after-restart
python3 "$T/fail.py" "$T/pd.py" "$(J)" decode-dies
echo "ok: pd.sh ($((SECONDS - START)) s)"
