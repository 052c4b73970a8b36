#!/usr/bin/env bash
# router_overhead.sh - what the router adds on loopback.
#
#   bench/router_overhead.sh [BIN]        (default build/pdserve)
#   N=400 DURATION=5 CONC=16 bench/router_overhead.sh
#
# Starts one prefill, one decode (stories260K or the synthesized model, one
# thread each) and a router in front of them, then:
#
# 1. TTFT: N streamed chat completions (4 tokens), alternating between
#    "router" (POST to the router) and "direct" (the client does the
#    router's job itself: the same body with bootstrap_host/port/room POSTed
#    to the prefill and the decode at once, TTFT read on the decode's
#    stream). TTFT = request sent -> first SSE event received, on a fresh
#    client connection each time in both paths. Reports median/p90 of both
#    and the median of the per-pair differences (the router's overhead; the
#    acceptance target is <= 1 ms).
# 2. Requests/s: CONC client threads, each with a kept-alive connection,
#    send tiny non-streamed completions (max_tokens 1) for DURATION seconds,
#    through the router and then direct (pairs), and the router's CPU time
#    per request (from /proc/PID/stat).
#
# The machine's other load shows up in both paths alike; run it on a quiet
# machine for numbers worth quoting.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-${PDSERVE_BIN:-$HERE/build/pdserve}}
N=${N:-300}
DURATION=${DURATION:-4}
CONC=${CONC:-16}
[ -x "$BIN" ] || { echo "router_overhead: build first ($BIN missing)" >&2; exit 2; }
T=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$T"
}
trap cleanup EXIT
MODEL=${PDSERVE_MODEL:-$HERE/../shared/models/stories260K.gguf}
if [ ! -r "$MODEL" ]; then
	MODEL=$T/synth.gguf
	"$BIN" model synth --out "$MODEL" >/dev/null 2>&1
fi
FREE_PORT_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/lib" && pwd)/free_port.py
free_port() { python3 "$FREE_PORT_PY"; } # below the ephemeral range
up() { # NAME PORT PID
	for _ in $(seq 400); do
		curl -sf "http://127.0.0.1:$2/health" >/dev/null 2>&1 && return 0
		kill -0 "$3" 2>/dev/null || { cat "$T/$1.err" >&2; exit 1; }
		sleep 0.05
	done
	echo "router_overhead: $1 not ready" >&2
	exit 1
}
P=$(free_port) D=$(free_port) R=$(free_port) BP=$(free_port)
"$BIN" server --model-path "$MODEL" --port "$P" --threads 1 --disaggregation-mode prefill \
	--disaggregation-bootstrap-port "$BP" --max-total-tokens 65536 --log-level warning 2>"$T/P.err" >/dev/null &
PIDS+=($!)
up prefill "$P" $!
"$BIN" server --model-path "$MODEL" --port "$D" --threads 1 --disaggregation-mode decode \
	--max-total-tokens 65536 --log-level warning 2>"$T/D.err" >/dev/null &
PIDS+=($!)
up decode "$D" $!
"$BIN" router --port "$R" --prefill "http://127.0.0.1:$P" "$BP" --decode "http://127.0.0.1:$D" \
	--log-level warning 2>"$T/R.err" >/dev/null &
RPID=$!
PIDS+=($RPID)
up router "$R" $RPID
echo "router_overhead: $(basename "$MODEL"), prefill :$P, decode :$D, router :$R (pid $RPID), $(nproc) cores"

python3 - "$P" "$D" "$R" "$BP" "$RPID" "$N" "$DURATION" "$CONC" <<'EOF'
import json, random, socket, statistics, sys, threading, time
P, D, R, BP, RPID, N, DUR, CONC = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                   int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8]))

def http_bytes(port, body):
    b = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, len(b))) + b

def drain_chunked_stream(s, got):
    while not got.endswith(b"0\r\n\r\n"):
        more = s.recv(65536)
        if not more:
            break
        got += more

def ttft_once(direct):
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 4,
            "temperature": 0, "stream": True}
    if direct:
        body.update(bootstrap_host="127.0.0.1", bootstrap_port=BP, bootstrap_room=random.getrandbits(63))
        sp = socket.create_connection(("127.0.0.1", P))
        sd = socket.create_connection(("127.0.0.1", D))
        for s in (sp, sd):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        sp.sendall(http_bytes(P, body))
        sd.sendall(http_bytes(D, body))
    else:
        sd = socket.create_connection(("127.0.0.1", R))
        sd.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        sd.sendall(http_bytes(R, body))
        sp = None
    got = b""
    while b"data: " not in got:
        more = sd.recv(65536)
        assert more, got
        got += more
    t = time.perf_counter() - t0
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    drain_chunked_stream(sd, got)
    sd.close()
    if sp:
        drain_chunked_stream(sp, b"")
        sp.close()
    return t

for _ in range(20):  # warm up both paths (connections, caches)
    ttft_once(True), ttft_once(False)
router, direct, diff = [], [], []
for i in range(N):
    order = (False, True) if i % 2 else (True, False)
    t = {d: ttft_once(d) for d in order}
    router.append(t[False])
    direct.append(t[True])
    diff.append(t[False] - t[True])
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))]
ms = lambda x: "%.3f" % (x * 1e3)
print("\nTTFT, %d streamed chat completions per path (ms)" % N)
print("  %-8s %8s %8s %8s" % ("path", "median", "p90", "min"))
for name, v in (("direct", direct), ("router", router)):
    print("  %-8s %8s %8s %8s" % (name, ms(statistics.median(v)), ms(q(v, 0.9)), ms(min(v))))
print("  router overhead: median of paired differences %s ms, difference of medians %s ms (target <= 1 ms)" %
      (ms(statistics.median(diff)), ms(statistics.median(router) - statistics.median(direct))))

def cpu_s(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    import os
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def rps(direct):
    stop = time.time() + DUR
    counts = [0] * CONC
    errors = []
    def client(k):
        conns = {}
        def conn(port):
            if port not in conns:
                s = socket.create_connection(("127.0.0.1", port))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[port] = [s, b""]
            return conns[port]
        def read_response(c):
            s, buf = c
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, rest = buf.split(b"\r\n\r\n", 1)
            n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
            while len(rest) < n:
                rest += s.recv(65536)
            c[1] = rest[n:]
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head[:100])
        while time.time() < stop:
            body = {"messages": [{"role": "user", "content": "hi %d" % k}], "max_tokens": 1, "temperature": 0}
            if direct:
                body.update(bootstrap_host="127.0.0.1", bootstrap_port=BP, bootstrap_room=random.getrandbits(63))
                cp, cd = conn(P), conn(D)
                cp[0].sendall(http_bytes(P, body))
                cd[0].sendall(http_bytes(D, body))
                read_response(cd)
                read_response(cp)
            else:
                c = conn(R)
                c[0].sendall(http_bytes(R, body))
                read_response(c)
            counts[k] += 1
    c0 = cpu_s(RPID)
    t0 = time.time()
    ths = [threading.Thread(target=client, args=(k,)) for k in range(CONC)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    el = time.time() - t0
    return sum(counts) / el, sum(counts), (cpu_s(RPID) - c0), errors

print("\nRequests/s, tiny non-streamed chat completions (max_tokens 1), %d clients, %.0f s per path" % (CONC, DUR))
rr, nr, cpu, er = rps(False)
rd, nd, _, ed = rps(True)
print("  direct (client pairs prefill+decode itself): %8.0f req/s (%d requests, %d errors)" % (rd, nd, len(ed)))
print("  through the router:                          %8.0f req/s (%d requests, %d errors)" % (rr, nr, len(er)))
print("  router CPU: %.1f us per request (%.2f s of CPU for %d requests; one event-loop thread)" %
      (cpu / max(nr, 1) * 1e6, cpu, nr))
EOF
