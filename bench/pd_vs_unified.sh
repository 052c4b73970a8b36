#!/usr/bin/env bash
# pd_vs_unified.sh - PD disaggregation vs unified serving on this machine,
# measured with `pdserve bench serving`; writes docs/BENCHMARKS.md and its
# PNGs (docs/bench/).
#
#   bench/pd_vs_unified.sh                 the whole study (under 20 minutes on 2 cores)
#   SCALE=0.25 bench/pd_vs_unified.sh      a quick smoke run (shorter runs; numbers noisy)
#
# Same total compute for every configuration (2 cores):
#   A       unified server, 2 threads, no chunked prefill (chunk >= the longest prompt)
#   B       unified server, 2 threads, chunked prefill (CHUNK tokens per step, Sarathi-style)
#   C-tcp   PD: prefill pinned to core 0 (1 thread), decode pinned to core 1
#           (1 thread), `pdserve router` in front; KV over tcp
#   C-shm   the same with the shm transfer backend
# The router and the load generator are not pinned (they float over both
# cores, taking a little from each); only C has a router, since a unified
# server needs none.
#
# Workloads (random token prompts of exact lengths, Poisson arrivals,
# ignore_eos so output lengths are as drawn):
#   mixed     steady decode-heavy chat (32-64 prompt tokens, 128-256 output
#             tokens) plus long prompts (1024-2048 tokens, 8-16 output) as a
#             second Poisson stream: two clients at once against one endpoint
#   profiles  short-in/long-out, long-in/short-out, balanced, one client each
#   sweep     balanced at several rates for A and C-tcp: SLO attainment vs
#             rate (DistServe's picture)
#
# Environment: PDSERVE_BIN (default build/pdserve), MODEL (default
# /tmp/models/syn110m-q8_0.gguf, made by ../shared/tools/make_synthetic_gguf.py
# when absent), DOC (default docs/BENCHMARKS.md), IMG (default docs/bench),
# RES (raw results: JSONL, logs, per-run plot data; default a new /tmp dir),
# SCALE (run length factor, default 1), CONFIGS (default "A B C-tcp C-shm"),
# MEASURED_COMMIT (the commit the binary was built from, when it is not this
# checkout's HEAD), QUIET_WAIT (default 60). Other processes' CPU use is
# sampled every 2 s: each run first waits (up to QUIET_WAIT s) for a lull,
# and every table shows the other load during each run, so on a shared
# machine the numbers come with what bent them.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PDSERVE_BIN:-$HERE/build/pdserve}
MODEL=${MODEL:-/tmp/models/syn110m-q8_0.gguf}
SHARED=${PDSERVE_SHARED:-$HERE/../shared}
DOC=${DOC:-$HERE/docs/BENCHMARKS.md}
IMG=${IMG:-$HERE/docs/bench}
RES=${RES:-$(mktemp -d /tmp/pd_vs_unified.XXXXXX)}
SCALE=${SCALE:-1}

# ---- knobs (calibrated for the 110M Q8_0 model on 2 cores; see docs/BENCHMARKS.md)
CTX=2560              # the model says 1024; RoPE has no trained limit and we need 2k prompts
POOL=32768            # KV tokens per server
CHUNK=256             # B's prefill chunk
NOCHUNK=4096          # A: one chunk holds any prompt here
MIX_SECONDS=75        # mixed workload length
CHAT_RATE=1.0         # chat requests/s in the mixed workload
LONG_RATE=0.1         # long-prompt requests/s in the mixed workload
PROFILE_SECONDS=30
SWEEP_SECONDS=30
SWEEP_RATES="0.5 2 3"  # plus 1: the balanced profile run
SLO_TTFT_MS=2000      # goodput SLO: interactive chat on a 2-core machine
SLO_TPOT_MS=60
BENCH_TIMEOUT=600
QUIET_WAIT=${QUIET_WAIT:-60} # per run, at most, for other processes to go quiet

[ -x "$BIN" ] || { echo "pd_vs_unified: $BIN missing (make first, or set PDSERVE_BIN)" >&2; exit 1; }
command -v python3 >/dev/null && command -v curl >/dev/null || { echo "pd_vs_unified: needs python3 and curl" >&2; exit 1; }
command -v taskset >/dev/null || { echo "pd_vs_unified: needs taskset (util-linux)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "pd_vs_unified: needs 2 cores" >&2; exit 1; }
if [ ! -r "$MODEL" ]; then
	mkdir -p "$(dirname "$MODEL")"
	python3 "$SHARED/tools/make_synthetic_gguf.py" "$MODEL" --preset 110m --type Q8_0
fi
mkdir -p "$RES/logs" "$RES/plots" "$IMG"
RESULTS=$RES/results.jsonl
: >"$RESULTS"
T0=$SECONDS
echo "pd_vs_unified: results in $RES"

# Other processes' CPU use during the study (the machine may be shared):
# every 2 s, the CPU time every process outside this study consumed.
python3 - "$BIN" "$RES/others.txt" "$$" <<'EOF' &
import os, sys, time
mine, out, me = sys.argv[1], sys.argv[2], sys.argv[3]
tick = os.sysconf("SC_CLK_TCK")
def sample():
    t = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        t[p] = (int(st[11]) + int(st[12]), cmd)
    return t
start, prev, others = time.time(), sample(), 0.0
while os.path.exists(f"/proc/{me}"):
    time.sleep(2)
    cur = sample()
    for p, (j, cmd) in cur.items():
        d = j - prev.get(p, (0, ""))[0] if p in prev else j
        if mine not in cmd and "pd_vs_unified" not in cmd and d > 0 and p != str(os.getpid()):
            others += d / tick
    prev = cur
    with open(out, "w") as f:
        f.write(f"{others:.1f} {time.time() - start:.1f}\n")
    with open(out + ".timeline", "a") as f:
        f.write(f"{time.time():.2f} {others:.2f}\n")
EOF
SAMPLER=$!

PIDS=()
stop_all() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
}
trap 'stop_all; kill $SAMPLER 2>/dev/null || true' EXIT

FREE_PORT_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/lib" && pwd)/free_port.py
free_port() { python3 "$FREE_PORT_PY"; } # below the ephemeral range

wait_healthy() { # URL NAME PID
	local deadline=$((SECONDS + 120))
	until curl -sf "$1/health" >/dev/null 2>&1; do
		kill -0 "$3" 2>/dev/null || { tail -20 "$RES/logs/$2.err" >&2; echo "pd_vs_unified: $2 died" >&2; exit 1; }
		[ "$SECONDS" -lt "$deadline" ] || { echo "pd_vs_unified: $2 not healthy in 120 s" >&2; exit 1; }
		sleep 0.2
	done
}

COMMON=(--model-path "$MODEL" --context-length "$CTX" --max-total-tokens "$POOL" --max-running-requests 64
	--log-level warning)

# start_config NAME: start it, set URL.
start_config() {
	local name=$1 p d r bp
	case $name in
	A | B)
		p=$(free_port)
		"$BIN" server "${COMMON[@]}" --port "$p" --threads 2 \
			--chunked-prefill-size "$([ "$name" = A ] && echo $NOCHUNK || echo $CHUNK)" \
			>"$RES/logs/$name.server.out" 2>"$RES/logs/$name.err" &
		PIDS+=($!)
		URL=http://127.0.0.1:$p
		wait_healthy "$URL" "$name" "$!"
		;;
	C-tcp | C-shm)
		local be=${name#C-}
		p=$(free_port) d=$(free_port) r=$(free_port) bp=$(free_port)
		taskset -c 0 "$BIN" server "${COMMON[@]}" --port "$p" --threads 1 --chunked-prefill-size "$NOCHUNK" \
			--disaggregation-mode prefill --disaggregation-transfer-backend "$be" \
			--disaggregation-bootstrap-port "$bp" >"$RES/logs/$name.prefill.out" 2>"$RES/logs/$name.err" &
		PIDS+=($!)
		wait_healthy "http://127.0.0.1:$p" "$name" "$!"
		taskset -c 1 "$BIN" server "${COMMON[@]}" --port "$d" --threads 1 --chunked-prefill-size "$NOCHUNK" \
			--disaggregation-mode decode --disaggregation-transfer-backend "$be" \
			>"$RES/logs/$name.decode.out" 2>>"$RES/logs/$name.err" &
		PIDS+=($!)
		wait_healthy "http://127.0.0.1:$d" "$name" "$!"
		"$BIN" router --port "$r" --prefill "http://127.0.0.1:$p" "$bp" --decode "http://127.0.0.1:$d" \
			--log-level warning >"$RES/logs/$name.router.out" 2>>"$RES/logs/$name.err" &
		PIDS+=($!)
		URL=http://127.0.0.1:$r
		wait_healthy "$URL" "$name" "$!"
		;;
	esac
	# one real generation through the whole path before measuring
	local deadline=$((SECONDS + 60))
	until curl -sf "$URL/generate" -d '{"text":"warm up","sampling_params":{"max_new_tokens":4}}' >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || { echo "pd_vs_unified: $name: no generation in 60 s" >&2; exit 1; }
		sleep 0.5
	done
}

# Wait (at most QUIET_WAIT s) until other processes have used under 0.2
# cores over the last ~6 s: on a shared machine, start each run in a lull.
wait_quiet() {
	local deadline=$((SECONDS + QUIET_WAIT)) load
	while :; do
		load=$( (tail -4 "$RES/others.txt.timeline" 2>/dev/null || true) |
			awk 'NR == 1 { t = $1; c = $2 } { T = $1; C = $2 } END { print (NR > 1 && T > t) ? (C - c) / (T - t) : 0 }')
		awk -v l="$load" 'BEGIN { exit !(l < 0.2) }' && return 0
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "  (other processes still use $load cores; going ahead)"
			return 0
		fi
		sleep 2
	done
}

# bench TAG ARGS...: one client run; its JSON line goes to $RESULTS.
bench() {
	local tag=$1 f=${1//\//_}
	shift
	local t0
	[ "${NO_WAIT:-0}" = 1 ] || wait_quiet
	t0=$(date +%s.%N)
	"$BIN" bench serving --base-url "$URL" --backend sglang --tokenizer "$MODEL" --dataset-name random \
		--disable-tqdm --warmup-requests 1 --flush-cache --timeout "$BENCH_TIMEOUT" --slo-ttft-ms "$SLO_TTFT_MS" \
		--slo-tpot-ms "$SLO_TPOT_MS" --output-file "$RESULTS" --tag "$tag" --plot "$RES/plots/$f" "$@" \
		>"$RES/logs/$f.txt" 2>&1 || { tail -30 "$RES/logs/$f.txt" >&2; echo "pd_vs_unified: run $tag failed" >&2; exit 1; }
	echo "$tag $t0 $(date +%s.%N)" >>"$RES/times.txt"
	grep -E "^(Successful|Failed) requests|^Output token throughput|^Median TTFT|^P99 TTFT|^Median TPOT|^P99 TPOT|^P99 ITL|^Max ITL" \
		"$RES/logs/$f.txt" | sed "s|^|  $tag: |"
}

n_for() { python3 -c "import math; print(max(4, math.ceil($1 * $2 * $SCALE)))"; } # rate seconds

run_config() {
	local c=$1
	echo "== $c ($((SECONDS - T0)) s)"
	start_config "$c"
	# mixed: the chat stream and the long-prompt stream at once
	bench "mixed/$c/chat" --random-input-len 64 --random-output-len 256 --random-range-ratio 0.5 \
		--request-rate "$CHAT_RATE" --num-prompts "$(n_for "$CHAT_RATE" $MIX_SECONDS)" --seed 11 &
	local chat=$!
	sleep 2 # the long stream starts once chats are decoding
	NO_WAIT=1 bench "mixed/$c/long" --random-input-len 2048 --random-output-len 16 --random-range-ratio 0.5 \
		--request-rate "$LONG_RATE" --num-prompts "$(n_for "$LONG_RATE" $MIX_SECONDS)" --seed 12 \
		--warmup-requests 0
	wait "$chat"
	# the three ratio profiles
	bench "profile/$c/short-in-long-out" --random-input-len 64 --random-output-len 256 --random-range-ratio 0.5 \
		--request-rate 1.2 --num-prompts "$(n_for 1.2 $PROFILE_SECONDS)" --seed 21
	bench "profile/$c/long-in-short-out" --random-input-len 1024 --random-output-len 16 --random-range-ratio 0.5 \
		--request-rate 1 --num-prompts "$(n_for 1 $PROFILE_SECONDS)" --seed 22
	bench "profile/$c/balanced" --random-input-len 512 --random-output-len 128 --random-range-ratio 0.5 \
		--request-rate 1 --num-prompts "$(n_for 1 $PROFILE_SECONDS)" --seed 23
	if [ "$c" = A ] || [ "$c" = C-tcp ]; then
		for r in $SWEEP_RATES; do
			bench "sweep/$c/$r" --random-input-len 512 --random-output-len 128 --random-range-ratio 0.5 \
				--request-rate "$r" --num-prompts "$(n_for "$r" $SWEEP_SECONDS)" --seed 31
		done
	fi
	stop_all
}

# capacity: what one and two threads buy on this machine, and whether two
# single-thread servers on separate cores slow each other down
capacity() {
	echo "== capacity ($((SECONDS - T0)) s)"
	local p q
	for th in 2 1; do
		p=$(free_port)
		taskset -c "$([ $th = 2 ] && echo 0,1 || echo 0)" "$BIN" server "${COMMON[@]}" --port "$p" --threads $th \
			--chunked-prefill-size $NOCHUNK >"$RES/logs/U$th.out" 2>"$RES/logs/U$th.err" &
		PIDS+=($!)
		URL=http://127.0.0.1:$p
		wait_healthy "$URL" "U$th" "$!"
		bench "capacity/U$th/prefill1024" --random-input-len 1024 --random-output-len 1 --random-range-ratio 1 \
			--num-prompts 3 --max-concurrency 1
		bench "capacity/U$th/decode1" --random-input-len 32 --random-output-len 128 --random-range-ratio 1 \
			--num-prompts 2 --max-concurrency 1
		bench "capacity/U$th/decode16" --random-input-len 32 --random-output-len 128 --random-range-ratio 1 \
			--num-prompts 16 --max-concurrency 16
		stop_all
	done
	p=$(free_port) q=$(free_port)
	taskset -c 0 "$BIN" server "${COMMON[@]}" --port "$p" --threads 1 --chunked-prefill-size $NOCHUNK \
		>"$RES/logs/U1a.out" 2>"$RES/logs/U1a.err" &
	PIDS+=($!)
	wait_healthy "http://127.0.0.1:$p" U1a "$!"
	taskset -c 1 "$BIN" server "${COMMON[@]}" --port "$q" --threads 1 --chunked-prefill-size $NOCHUNK \
		>"$RES/logs/U1b.out" 2>"$RES/logs/U1b.err" &
	PIDS+=($!)
	wait_healthy "http://127.0.0.1:$q" U1b "$!"
	URL=http://127.0.0.1:$p
	bench "capacity/U1+U1/prefill1024-core0" --random-input-len 1024 --random-output-len 1 --random-range-ratio 1 \
		--num-prompts 3 --max-concurrency 1 &
	local other=$!
	URL=http://127.0.0.1:$q
	bench "capacity/U1+U1/prefill1024-core1" --random-input-len 1024 --random-output-len 1 --random-range-ratio 1 \
		--num-prompts 3 --max-concurrency 1 --seed 2
	wait "$other"
	stop_all
}

capacity
for c in ${CONFIGS:-A B C-tcp C-shm}; do run_config "$c"; done
ELAPSED=$((SECONDS - T0))
echo "== report ($ELAPSED s)"

if [ -n "${MEASURED_COMMIT:-}" ]; then
	COMMIT=$MEASURED_COMMIT DIRTY=
else
	COMMIT=$(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo unknown)
	DIRTY=$(git -C "$HERE" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
fi
CPU=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
OTHERS=$(cat "$RES/others.txt" 2>/dev/null || echo "0 1")
python3 - "$RESULTS" "$RES" "$DOC" "$IMG" "$COMMIT$DIRTY" "$CPU" "$ELAPSED" "$SCALE" "$SLO_TTFT_MS" "$SLO_TPOT_MS" \
	"$CHUNK" "$NOCHUNK" "$CHAT_RATE" "$LONG_RATE" "$MIX_SECONDS" "$MODEL" "$OTHERS" <<'EOF'
import json, os, shutil, subprocess, sys
(results, res, doc, img, commit, cpu, elapsed, scale, slo_ttft, slo_tpot, chunk, nochunk,
 chat_rate, long_rate, mix_s, model, others) = sys.argv[1:]
others_cpu, others_wall = (float(x) for x in others.split())
timeline = []
if os.path.exists(os.path.join(res, "others.txt.timeline")):
    timeline = [tuple(map(float, l.split())) for l in open(os.path.join(res, "others.txt.timeline")) if l.strip()]
times = {}
if os.path.exists(os.path.join(res, "times.txt")):
    for l in open(os.path.join(res, "times.txt")):
        t, a, b = l.split()
        times[t] = (float(a), float(b))

def other_load(tag):
    """Cores other processes used while this run ran (from the 2 s samples)."""
    if tag not in times or len(timeline) < 2:
        return None
    a, b = times[tag]
    def cum(t):  # others' CPU-s at time t, interpolated
        prev = timeline[0]
        for cur in timeline:
            if cur[0] >= t:
                if cur[0] == prev[0]:
                    return cur[1]
                return prev[1] + (cur[1] - prev[1]) * (t - prev[0]) / (cur[0] - prev[0])
            prev = cur
        return timeline[-1][1]
    return (cum(b) - cum(a)) / (b - a) if b > a else None
runs = {}
for line in open(results):
    r = json.loads(line)
    runs[r["tag"]] = r
CONFIGS = ["A", "B", "C-tcp", "C-shm"]
NAMES = {"A": "A unified", "B": f"B unified + chunked prefill {chunk}", "C-tcp": "C PD tcp", "C-shm": "C PD shm"}

def f(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"

def row(tag, label):
    r = runs.get(tag)
    if not r:
        return f"| {label} | (missing) |" + " |" * 9
    return (f"| {label} | {r['completed']}/{r['num_prompts']} | {f(r['median_ttft_ms'], 0)} | {f(r['p99_ttft_ms'], 0)} | "
            f"{f(r['median_tpot_ms'])} | {f(r['p99_tpot_ms'])} | {f(r['p99_itl_ms'])} | {f(r['max_itl_ms'], 0)} | "
            f"{f(r['output_throughput'])} | {f(r['request_goodput'], 2)} ({f(100 * r['slo_attainment'], 0)}%) | {f(other_load(tag), 2)} |")

HEAD = ("| config | done | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | TPOT p99 (ms) | ITL p99 (ms) | ITL max (ms) "
        "| output tok/s | goodput req/s (attainment) | other load (cores) |\n|---|---|---|---|---|---|---|---|---|---|---|")

def table(prefix):
    return HEAD + "\n" + "\n".join(row(f"{prefix}/{c}" if "/" not in prefix else prefix.replace("CFG", c), NAMES[c])
                                   for c in CONFIGS)

def gp(script, name):
    path = os.path.join(img, name)
    if not shutil.which("gnuplot"):
        return False
    full = ("set terminal pngcairo size 900,540 noenhanced font ',10'\nset output '%s'\nset grid\n" % path) + script
    subprocess.run(["gnuplot"], input=full.encode(), check=True)
    return True

def dat(tag, f_):
    return os.path.join(res, "plots", tag.replace("/", "_"), f_)

pics = []
# TPOT and TTFT CDFs of the mixed workload's chat stream, all configs
cdf = "set key bottom right\nset ylabel 'fraction of requests'\nset yrange [0:1]\n"
for what, fname, label in [("tpot", "mixed_tpot_cdf.png", "TPOT (ms)"), ("ttft", "mixed_ttft_cdf.png", "TTFT (ms)")]:
    s = cdf + f"set title 'Mixed workload, chat stream: {label} CDF'\nset xlabel '{label}'\nset logscale x\nplot " + ", ".join(
        f"'{dat(f'mixed/{c}/chat', what + '.dat')}' using 1:2 with steps lw 2 title '{NAMES[c]}'" for c in CONFIGS
        if os.path.exists(dat(f'mixed/{c}/chat', what + '.dat')))
    if gp(s, fname):
        pics.append(fname)
# ITL over time of the chat stream, A vs C-tcp
for c in ["A", "B", "C-tcp"]:
    d = dat(f"mixed/{c}/chat", "itl.dat")
    if os.path.exists(d):
        s = (f"set title 'Mixed workload, {NAMES[c]}: chat inter-token latency over time'\n"
             "set xlabel 'time since the first chat request (s)'\nset ylabel 'ITL (ms)'\nset logscale y\n"
             f"plot '{d}' using 1:2:3 with points pt 7 ps 0.3 lc variable notitle")
        fname = f"mixed_itl_{c}.png"
        if gp(s, fname):
            pics.append(fname)
# attainment vs rate
sweep = {}
for tag, r in runs.items():
    if tag.startswith("sweep/"):
        _, c, rate = tag.split("/")
        sweep.setdefault(c, []).append((float(rate), r))
for c in list(sweep):  # the balanced profile is the same workload at its own rate
    r = runs.get(f"profile/{c}/balanced")
    if r:
        sweep[c].append((float(r["request_rate"]), r))
for c in sweep:
    sweep[c].sort(key=lambda x: x[0])
    with open(os.path.join(res, f"sweep_{c}.dat"), "w") as fh:
        for rate, r in sweep[c]:
            fh.write(f"{rate} {100 * r['slo_attainment']} {r['p99_tpot_ms']} {r['p99_ttft_ms']}\n")
if sweep:
    s = (f"set title 'Balanced profile: SLO attainment vs request rate (TTFT <= {slo_ttft} ms, TPOT <= {slo_tpot} ms)'\n"
         "set xlabel 'request rate (req/s)'\nset ylabel 'requests meeting both SLOs (%)'\nset yrange [0:105]\nset key bottom left\nplot " +
         ", ".join(f"'{os.path.join(res, f'sweep_{c}.dat')}' using 1:2 with linespoints lw 2 pt 7 title '{NAMES[c]}'" for c in sweep))
    if gp(s, "sweep_attainment.png"):
        pics.append("sweep_attainment.png")

def sweep_table():
    out = ["| rate (req/s) | " + " | ".join(f"{NAMES[c]}: attainment, TTFT p99, TPOT p99" for c in sorted(sweep)) + " |",
           "|---|" + "---|" * len(sweep)]
    rates = sorted({rate for c in sweep for rate, _ in sweep[c]})
    for rate in rates:
        cells = []
        for c in sorted(sweep):
            r = dict(sweep[c]).get(rate)
            cells.append("-" if r is None else
                         f"{100 * r['slo_attainment']:.0f}%, {r['p99_ttft_ms']:.0f} ms, {r['p99_tpot_ms']:.1f} ms "
                         f"(other load {f(other_load(r['tag']), 2)})")
        out.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return "\n".join(out)

rel_img = os.path.relpath(img, os.path.dirname(os.path.abspath(doc)))
def pic(name, alt):
    return f"![{alt}]({rel_img}/{name})\n" if name in pics else f"({name}: not drawn, gnuplot missing)\n"

def capacity_table():
    def g(tag, k):
        r = runs.get(tag)
        return None if not r else r[k]
    out = ["| server | prefill 1024 tokens: TTFT (ms) | prefill tok/s | decode, 1 stream: TPOT (ms) | decode, 16 streams: TPOT (ms), output tok/s | other load (cores) |",
           "|---|---|---|---|---|---|"]
    for u, label in [("U2", "unified, 2 threads (cores 0-1)"), ("U1", "unified, 1 thread (core 0)")]:
        t = g(f"capacity/{u}/prefill1024", "mean_ttft_ms")
        loads = [other_load(f"capacity/{u}/{k}") for k in ("prefill1024", "decode1", "decode16")]
        out.append(f"| {label} | {f(t, 0)} | {f(1024e3 / t if t else None, 0)} | {f(g(f'capacity/{u}/decode1', 'mean_tpot_ms'))} | "
                   f"{f(g(f'capacity/{u}/decode16', 'mean_tpot_ms'))}, {f(g(f'capacity/{u}/decode16', 'output_throughput'), 0)} | "
                   + " / ".join(f(x, 2) for x in loads) + " |")
    for k in ("core0", "core1"):
        t = g(f"capacity/U1+U1/prefill1024-{k}", "mean_ttft_ms")
        out.append(f"| two 1-thread servers at once: the one on {k} | {f(t, 0)} | {f(1024e3 / t if t else None, 0)} | | | "
                   f"{f(other_load(f'capacity/U1+U1/prefill1024-{k}'), 2)} |")
    return "\n".join(out)

summary_path = os.path.join(res, "summary.md")
with open(summary_path, "w") as out:
    out.write(f"<!-- generated by bench/pd_vs_unified.sh: commit {commit}, {cpu}, {elapsed} s, SCALE={scale} -->\n")
    out.write(f"Measured at commit {commit} on {os.cpu_count()} x {cpu}; the study took {elapsed} s (SCALE={scale}). "
              f"Other processes on the machine used {others_cpu / max(others_wall, 1):.2f} cores on average meanwhile "
              f"({others_cpu:.0f} CPU-s over {others_wall:.0f} s).\n\n")
    out.write("### Capacity of this machine\n\n" + capacity_table() + "\n\n")
    out.write("### Mixed: chat stream (decode-heavy)\n\n" + table("mixed/CFG/chat") + "\n\n")
    out.write("### Mixed: long-prompt stream\n\n" + table("mixed/CFG/long") + "\n\n")
    for p, title in [("short-in-long-out", "short in, long out (32-64 -> 128-256 tokens, 1.2 req/s)"),
                     ("long-in-short-out", "long in, short out (512-1024 -> 8-16 tokens, 1 req/s)"),
                     ("balanced", "balanced (256-512 -> 64-128 tokens, 1 req/s)")]:
        out.write(f"### Profile: {title}\n\n" + table(f"profile/CFG/{p}") + "\n\n")
    out.write("### Rate sweep (balanced)\n\n" + sweep_table() + "\n\n")
    for name, alt in [("mixed_tpot_cdf.png", "TPOT CDF"), ("mixed_ttft_cdf.png", "TTFT CDF"),
                      ("mixed_itl_A.png", "ITL over time, A"), ("mixed_itl_B.png", "ITL over time, B"),
                      ("mixed_itl_C-tcp.png", "ITL over time, C"), ("sweep_attainment.png", "attainment vs rate")]:
        out.write(pic(name, alt))
gen = open(summary_path).read()
BEGIN, END = "<!-- BEGIN generated by bench/pd_vs_unified.sh -->", "<!-- END generated by bench/pd_vs_unified.sh -->"
text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n\n"
block = f"{BEGIN}\n{gen}{END}\n"
if BEGIN in text and END in text:
    text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
else:
    text += "\n## PD vs unified: measured tables\n\n" + block
open(doc, "w").write(text)
print(gen)
print(f"pd_vs_unified: tables written into {doc} (between its markers), PNGs in {img}")
EOF
echo "pd_vs_unified: done in $((SECONDS - T0)) s"
