#!/usr/bin/env bash
# bench/vs_llamacpp.sh - pdserve vs llama.cpp on the same GGUF files, interleaved.
#
#   bench/vs_llamacpp.sh [-t THREADS] [-r ROUNDS] [-p 512] [-n 128] [--batches 1,4,16,64] MODEL.gguf...
#
# For every model, ROUNDS rounds (default 5), each one run of
#   pdserve bench engine -m MODEL -t THREADS -p P -n N -r 1 --json
# followed by one run of llama.cpp on the same file and thread count:
#   $LLAMA_BENCH -m MODEL -t THREADS -p P -n N -r 1 -o json   if LLAMA_BENCH names a llama-bench
#   otherwise ../shared/tools/llamacpp_ref.mjs --bench (node-llama-cpp's prebuilt CPU build;
#   NODE_PATH defaults to /tmp/ref-llama/node_modules; reliable at 1 thread only, its JS thread
#   competes for a core).
# Prints the medians (pp tok/s, tg tok/s, pdserve's batched decode and the weights' read
# bandwidth measured in the same pdserve run) and the ratios pdserve / llama.cpp (the median of
# the per-round ratios, each round's two runs being back to back), one table per
# model, and a JSON line per model at the end. Interleaving means both see the same machine
# load; on a shared machine compare ratios, not absolute numbers.
#
# PDSERVE (default: build/pdserve next to this script's checkout) picks the binary.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PDSERVE="${PDSERVE:-$here/build/pdserve}"
REF_TOOL="${REF_TOOL:-$here/../shared/tools/llamacpp_ref.mjs}"
export NODE_PATH="${NODE_PATH:-/tmp/ref-llama/node_modules}"
threads=1 rounds=5 pp=512 tg=128 batches=1,4,16,64
models=()
while [ $# -gt 0 ]; do
	case "$1" in
	-t) threads="$2"; shift 2 ;;
	-r) rounds="$2"; shift 2 ;;
	-p) pp="$2"; shift 2 ;;
	-n) tg="$2"; shift 2 ;;
	--batches) batches="$2"; shift 2 ;;
	-h|--help) sed -n '2,20p' "$0"; exit 0 ;;
	*) models+=("$1"); shift ;;
	esac
done
[ ${#models[@]} -gt 0 ] || { echo "usage: $0 [-t T] [-r R] [-p P] [-n N] MODEL..." >&2; exit 2; }
[ -x "$PDSERVE" ] || { echo "no pdserve binary at $PDSERVE (set PDSERVE=)" >&2; exit 2; }
if [ -z "${LLAMA_BENCH:-}" ] && [ "$threads" != 1 ]; then
	echo "note: llama.cpp numbers come from node-llama-cpp, whose timings at $threads threads are unreliable" >&2
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

for m in "${models[@]}"; do
	: > "$tmp/ours"
	: > "$tmp/ref"
	for r in $(seq "$rounds"); do
		"$PDSERVE" bench engine -m "$m" -t "$threads" -p "$pp" -n "$tg" -r 1 --batches "$batches" --json \
			2>/dev/null | tail -1 >> "$tmp/ours"
		if [ -n "${LLAMA_BENCH:-}" ]; then
			"$LLAMA_BENCH" -m "$m" -t "$threads" -p "$pp" -n "$tg" -r 1 -o jsonl 2>/dev/null >> "$tmp/ref"
		else
			node "$REF_TOOL" --model "$m" --bench --pp "$pp" --tg "$tg" --threads "$threads" --reps 1 \
				2>/dev/null | tail -1 >> "$tmp/ref"
		fi
		echo "  round $r/$rounds done ($(basename "$m"))" >&2
	done
	python3 - "$m" "$threads" "$pp" "$tg" "$tmp/ours" "$tmp/ref" <<'PY'
import json, statistics, sys
model, threads, pp, tg, ours_f, ref_f = sys.argv[1:]
ours = [json.loads(l) for l in open(ours_f) if l.strip().startswith('{')]
refs = [json.loads(l) for l in open(ref_f) if l.strip().startswith('{')]
med = lambda xs: statistics.median(xs) if xs else float('nan')
o_pp = med([o['pp_tok_s'] for o in ours]); o_tg = med([o['tg_tok_s'] for o in ours])
bw = med([o['read_gb_s'] for o in ours]); wb = ours[0]['weight_bytes'] if ours else 0
r_pp, r_tg = [], []
for r in refs:
    if 'pp_tok_s_mean' in r:                       # node tool
        r_pp.append(r['pp_tok_s_mean']); r_tg.append(r['tg_tok_s_mean'])
    elif 'avg_ts' in r:                            # llama-bench jsonl: one line per test
        (r_pp if r.get('n_prompt', 0) > 0 and r.get('n_gen', 0) == 0 else r_tg).append(r['avg_ts'])
l_pp, l_tg = med(r_pp), med(r_tg)
# The ratios are medians of the per-round ratios (each pdserve run against the
# llama.cpp run right after it): this machine's speed drifts over minutes, and
# a round's two runs see the same state, while a ratio of medians mixes states.
n = min(len(ours), len(r_pp), len(r_tg))
pp_rounds = [ours[i]['pp_tok_s'] / r_pp[i] for i in range(n)]
tg_rounds = [ours[i]['tg_tok_s'] / r_tg[i] for i in range(n)]
bw_rounds = [ours[i]['tg_tok_s'] * ours[i]['weight_bytes'] / (ours[i]['read_gb_s'] * 1e9) for i in range(len(ours))]
pp_ratio, tg_ratio = med(pp_rounds), med(tg_rounds)
batched = {}
for o in ours:
    for k, v in o.get('batched_tok_s', {}).items():
        batched.setdefault(k, []).append(v)
name = model.rsplit('/', 1)[-1]
print(f"\n{name}: {threads} thread(s), medians of {len(ours)} interleaved rounds "
      f"(ratio: the median of the per-round ratios)")
print(f"| test    | pdserve tok/s | llama.cpp tok/s | ratio | per round |")
print(f"|---------|--------------:|----------------:|------:|-----------|")
print(f"| pp{pp:<5} | {o_pp:13.1f} | {l_pp:15.1f} | {pp_ratio:5.2f} | {' '.join(f'{x:.2f}' for x in pp_rounds)} |")
print(f"| tg{tg:<5} | {o_tg:13.1f} | {l_tg:15.1f} | {tg_ratio:5.2f} | {' '.join(f'{x:.2f}' for x in tg_rounds)} |")
tg_gbs = o_tg * wb * 1e-9
print(f"weights {wb / 1048576:.1f} MiB; read bandwidth {bw:.2f} GB/s; pdserve tg reads {tg_gbs:.2f} GB/s "
      f"= {100 * med(bw_rounds):.0f}% of the bandwidth measured in the same run (median of rounds); "
      f"llama.cpp tg {l_tg * wb * 1e-9:.2f} GB/s")
for k in sorted(batched, key=int):
    b = med(batched[k])
    print(f"batched x{k}: {b:.1f} tok/s = {b / o_tg:.2f}x pdserve single-stream")
print(json.dumps({"model": name, "threads": int(threads), "pdserve_pp": round(o_pp, 2), "llamacpp_pp": round(l_pp, 2),
                  "pp_ratio": round(pp_ratio, 3), "pdserve_tg": round(o_tg, 2), "llamacpp_tg": round(l_tg, 2),
                  "tg_ratio": round(tg_ratio, 3), "read_gb_s": round(bw, 2),
                  "tg_bw_fraction": round(med(bw_rounds), 3),
                  "pp_ratio_rounds": [round(x, 3) for x in pp_rounds],
                  "tg_ratio_rounds": [round(x, 3) for x in tg_rounds],
                  "batched_tok_s": {k: round(med(v), 2) for k, v in batched.items()}}))
PY
done
