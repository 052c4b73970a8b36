#!/usr/bin/env bash
# netns.sh - PD across "hosts": prefill, decode and client in their own
# network namespaces with their own addresses, joined by a bridge that lives
# in a fourth namespace (no traffic touches the host's interfaces).
#
#   ns P  10.77.0.2   pdserve server --disaggregation-mode prefill
#   ns D  10.77.0.3   pdserve server --disaggregation-mode decode
#   ns C  10.77.0.4   the client (and a unified server as the reference)
#
# Checks greedy output equality PD vs unified over tcp and over ucx (UCX
# restricted to its tcp transport, so bytes cross the veth links), and that
# a dropped link fails the decode's request within the heartbeat window.
# Skips (exit 0) with a message where namespaces cannot be created. Always
# removes its namespaces, also on failure.
set -euo pipefail

BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${PDSERVE_SHARED:-$HERE/../shared}
command -v ip >/dev/null && command -v python3 >/dev/null && command -v curl >/dev/null ||
	{ echo "skip: netns.sh needs ip, python3 and curl"; exit 0; }
TAG=pd$$
NS_SW=${TAG}sw NS_P=${TAG}p NS_D=${TAG}d NS_C=${TAG}c
T=$(mktemp -d)
PIDS=()
cleanup() {
	exec 2>/dev/null
	for p in "${PIDS[@]}"; do kill -9 "$p" || true; done
	wait || true
	for n in $NS_P $NS_D $NS_C $NS_SW; do ip netns del "$n" || true; done
	rm -rf "$T"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	for f in "$T"/*.err; do [ -f "$f" ] && { echo "--- $f" >&2; tail -5 "$f" >&2; }; done
	exit 1
}

if ! ip netns add "$NS_SW" 2>/dev/null; then
	echo "skip: cannot create network namespaces here (needs root / CAP_SYS_ADMIN)"
	exit 0
fi
MODEL=$SHARED/models/stories260K.gguf
[ -r "$MODEL" ] || { MODEL=$T/synth.gguf; "$BIN" model synth --out "$MODEL" >/dev/null 2>&1; }

ip -n "$NS_SW" link add br0 type bridge
ip -n "$NS_SW" link set br0 up
i=2
for ns in $NS_P $NS_D $NS_C; do
	ip netns add "$ns"
	ip link add "v$ns" type veth peer name "b$ns"
	ip link set "v$ns" netns "$ns"
	ip link set "b$ns" netns "$NS_SW"
	ip -n "$NS_SW" link set "b$ns" master br0 up
	ip -n "$ns" addr add "10.77.0.$i/24" dev "v$ns"
	ip -n "$ns" link set "v$ns" up
	ip -n "$ns" link set lo up
	i=$((i + 1))
done
P_IP=10.77.0.2 D_IP=10.77.0.3 C_IP=10.77.0.4
ip netns exec "$NS_C" python3 -c "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(('$P_IP', 9))" || fail "no route from C to P"

export SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL=0.3 SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE=2

# srv NS NAME IP PORT ARGS...: a server in NS listening on IP:PORT, healthy within 20 s.
srv() {
	local ns=$1 name=$2 ip=$3 port=$4 deadline
	shift 4
	ip netns exec "$ns" "$BIN" server --model-path "$MODEL" --host "$ip" --port "$port" --max-total-tokens 4096 "$@" \
		>"$T/$name.out" 2>"$T/$name.err" &
	PIDS+=($!)
	eval "${name}_PID=$!"
	deadline=$((SECONDS + 20))
	until ip netns exec "$ns" curl -sf "http://$ip:$port/health" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || fail "$name not healthy"
		sleep 0.1
	done
}

srv "$NS_C" U "$C_IP" 30000
cat >"$T/check.py" <<'EOF'
import json, sys, threading, urllib.request
u, p, d, bport = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def post(url, body):
    r = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=30) as f:
            return f.status, json.loads(f.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
texts = ["Once upon a time", "The little girl named Lily loved to play outside in the park " * 6, "One day"]
for i, t in enumerate(texts):
    sp = {"max_new_tokens": 20, "temperature": 0}
    st, want = post(u, {"text": t, "sampling_params": sp})
    body = {"text": t, "sampling_params": sp, "bootstrap_host": p.split("//")[1].split(":")[0],
            "bootstrap_port": bport, "bootstrap_room": 4242 + i + bport}
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("p", post(p, body)))
    th.start()
    out["d"] = post(d, body)
    th.join()
    assert out["d"][0] == 200, out
    if out["d"][1]["output_ids"] != want["output_ids"]:
        sys.exit("FAIL: prompt %d: PD %s != unified %s" % (i, out["d"][1]["output_ids"], want["output_ids"]))
print("ok")
EOF

run_pair() { # BACKEND BOOTPORT PPORT DPORT [ENV...]
	local b=$1 bp=$2 pp=$3 dp=$4
	shift 4
	srv "$NS_P" P$b "$P_IP" "$pp" --disaggregation-mode prefill --disaggregation-transfer-backend "$b" \
		--disaggregation-bootstrap-port "$bp"
	srv "$NS_D" D$b "$D_IP" "$dp" --disaggregation-mode decode --disaggregation-transfer-backend "$b"
	ip netns exec "$NS_C" timeout 60 python3 "$T/check.py" "http://$C_IP:30000" "http://$P_IP:$pp" "http://$D_IP:$dp" "$bp" \
		>"$T/check.out" 2>&1 || { cat "$T/check.out" >&2; fail "$b across namespaces"; }
	echo "ok: PD across namespaces over $b == unified"
}

run_pair tcp 8998 30001 30002
if ldd "$BIN" 2>/dev/null | grep libucp >/dev/null; then # not grep -q: under pipefail its early exit can fail ldd
	UCX_TLS=tcp run_pair ucx 8999 30003 30004
else
	echo "skip: this build has no UCX"
fi

# a partition between P and D: take P's link down while the decode waits for KV
cat >"$T/part.py" <<'EOF'
import json, sys, time, urllib.request
d, p_ip, bport = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 8, "temperature": 0},
        "bootstrap_host": p_ip, "bootstrap_port": bport, "bootstrap_room": 999}
t0 = time.time()
r = urllib.request.Request(d + "/generate", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(r, timeout=30)
    sys.exit("FAIL: the request succeeded without its prefill half")
except urllib.error.HTTPError as e:
    msg = json.loads(e.read())["error"]["message"]
    print("%d %.2f %s" % (e.code, time.time() - t0, msg))
EOF
ip netns exec "$NS_C" python3 "$T/part.py" "http://$D_IP:30002" "$P_IP" 8998 >"$T/part.out" 2>&1 &
PART=$!
sleep 0.6
ip -n "$NS_P" link set "v$NS_P" down
wait $PART || { cat "$T/part.out" >&2; fail "partition case"; }
read -r code secs msg <"$T/part.out"
[ "$code" -ge 500 ] || fail "partition: status $code"
python3 -c "import sys; sys.exit(0 if float('$secs') < 3.0 else 1)" || fail "partition: failed after $secs s"
echo "ok: partition P|D: decode answered $code after ${secs}s ($msg)"
