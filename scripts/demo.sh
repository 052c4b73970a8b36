#!/usr/bin/env bash
# demo.sh - the main job: prefill + decode servers and a router on loopback,
# one chat completion streamed through them, the stack left running.
#
#   scripts/demo.sh            1 prefill : 1 decode   (make demo)
#   DECODES=3 scripts/demo.sh  1 prefill : 3 decodes  (make demo-1p3d)
#   scripts/demo.sh stop       stop a running demo    (make demo-stop)
#
# Builds first (installing the Debian dependencies if they are missing).
# The model is the servers' default (--model-path resolution of `pdserve
# server`: $PDSERVE_MODEL, ../shared/models/stories260K.gguf, else the
# synthesized one); the prefill resolves it and the others are given the same
# path. Each server runs with one thread, pinned to its own core when there
# are enough. Ports are free ones on 127.0.0.1; state and logs live in
# $BUILD/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DECODES=${DECODES:-1}
STATE=$BUILD/demo
BIN=$BUILD/pdserve

stop_demo() {
	[ -f "$STATE/pids" ] || return 0
	local n=0
	while read -r pid name; do
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null && n=$((n + 1))
		fi
	done <"$STATE/pids"
	rm -f "$STATE/pids"
	[ "$n" -gt 0 ] && echo "demo: stopped $n processes"
	return 0
}

if [ "${1:-}" = stop ]; then
	stop_demo
	exit 0
fi

T0=$(date +%s.%N)
elapsed() { python3 -c "import sys; print('%.1f' % ($(date +%s.%N) - $T0))"; }

# 1. build (dependencies first: install-deps.sh installs only what is missing
# and says so in one line when nothing is)
if command -v dpkg-query >/dev/null; then
	scripts/install-deps.sh | sed 's/^/demo: /'
fi
echo "demo: building $BIN"
make --no-print-directory -s -j"$(nproc)" BUILD="$BUILD" "$BIN"

# 2. a fresh stack
stop_demo
mkdir -p "$STATE"
: >"$STATE/pids"
FREE_PORT_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/lib" && pwd)/free_port.py
free_port() { python3 "$FREE_PORT_PY"; } # below the ephemeral range
NCPU=$(nproc)
core=0
# next_pin: PIN = the taskset prefix giving the next server its own core, while cores last
PIN=()
next_pin() {
	PIN=()
	if command -v taskset >/dev/null && [ "$NCPU" -ge 2 ] && [ "$core" -lt "$NCPU" ]; then
		PIN=(taskset -c "$core")
		core=$((core + 1))
	fi
}
launch() { # NAME CMD...: background, detached from this shell, logged
	local name=$1
	shift
	setsid nohup "$@" >"$STATE/$name.log" 2>&1 </dev/null &
	echo "$! $name" >>"$STATE/pids"
	eval "${name}_PID=$!"
}
wait_ok() { # NAME URL PID [SECONDS]
	local deadline=$((SECONDS + ${4:-30}))
	until curl -sf "$2" >/dev/null 2>&1; do
		if ! kill -0 "$3" 2>/dev/null; then
			echo "demo: $1 exited; its log ($STATE/$1.log):" >&2
			tail -20 "$STATE/$1.log" >&2
			stop_demo
			exit 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "demo: $1 not ready; its log ($STATE/$1.log):" >&2
			tail -20 "$STATE/$1.log" >&2
			stop_demo
			exit 1
		fi
		sleep 0.05
	done
}

P_PORT=$(free_port)
BOOT=$(free_port)
R_PORT=$(free_port)
next_pin
launch prefill "${PIN[@]}" "$BIN" server --disaggregation-mode prefill --port "$P_PORT" \
	--disaggregation-bootstrap-port "$BOOT" --threads 1 --max-total-tokens 16384 ${PDSERVE_MODEL:+--model-path "$PDSERVE_MODEL"}
wait_ok prefill "http://127.0.0.1:$P_PORT/health" "$prefill_PID"
MODEL=$(curl -s "http://127.0.0.1:$P_PORT/get_model_info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_path"])')
DEC_ARGS=()
for i in $(seq 1 "$DECODES"); do
	port=$(free_port)
	next_pin
	launch "decode$i" "${PIN[@]}" "$BIN" server --disaggregation-mode decode --port "$port" --model-path "$MODEL" \
		--threads 1 --max-total-tokens 16384
	DEC_ARGS+=(--decode "http://127.0.0.1:$port")
	eval "D${i}_PORT=$port"
done
launch router "$BIN" router --port "$R_PORT" --prefill "http://127.0.0.1:$P_PORT" "$BOOT" "${DEC_ARGS[@]}" \
	--health-check-interval-secs 5
wait_ok router "http://127.0.0.1:$R_PORT/health" "$router_PID"
echo "demo: model $MODEL"
echo "demo: prefill http://127.0.0.1:$P_PORT (bootstrap $BOOT), $DECODES decode$([ "$DECODES" -gt 1 ] && echo s), router http://127.0.0.1:$R_PORT - ready after $(elapsed) s"

# 3. one chat completion, printed as it streams
PROMPT=${DEMO_PROMPT:-"Tell me a story about a little dog who finds a red ball."}
echo
echo "user> $PROMPT"
printf "assistant> "
python3 - "$R_PORT" "$PROMPT" <<'EOF'
import json, sys, time, urllib.request
port, prompt = int(sys.argv[1]), sys.argv[2]
body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "max_tokens": 160,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
req = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % port, data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
t0 = time.time()
first = None
usage = None
with urllib.request.urlopen(req, timeout=60) as r:
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if "error" in ev:
            sys.exit("\ndemo: error: %s" % ev["error"]["message"])
        usage = ev.get("usage") or usage
        for c in ev.get("choices", []):
            text = c["delta"].get("content") or ""
            if text and first is None:
                first = time.time() - t0
            sys.stdout.write(text)
            sys.stdout.flush()
dt = time.time() - t0
n = usage["completion_tokens"] if usage else 0
print("\n\ndemo: %d tokens in %.2f s (first token after %.0f ms) through the router" % (n, dt, (first or 0) * 1e3))
EOF

# 4. leave it running
cat <<EOF

The stack keeps running (logs in $STATE/). Try:
  curl -N http://127.0.0.1:$R_PORT/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":64,"stream":true}'
  curl http://127.0.0.1:$R_PORT/workers
Stop it with:  make demo-stop   (or: scripts/demo.sh stop)
demo: done in $(elapsed) s
EOF
