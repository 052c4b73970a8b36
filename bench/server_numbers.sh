#!/usr/bin/env bash
# server_numbers.sh - the serving numbers quoted in docs/BENCHMARKS.md:
#  1. unified server (2 threads): output tokens/s at 1, 4 and 16 concurrent
#     streams, 128 prompt tokens -> 128 output tokens (ignore_eos);
#  2. TTFT of a 2048-token prompt (4 output tokens, one at a time, prefix
#     cache flushed, median of 5): unified (2 threads) vs PD (prefill 2
#     threads, decode 1 thread, router in front) over tcp and shm;
#  3. per PD backend, three 2048-token /generate requests with their
#     meta_info.pd: KV bytes, prefill compute time, transfer time (from the
#     decode sending its destination to the room's completion, so it
#     includes the prefill's compute that the transfer overlaps) and the
#     tail (transfer - queue - compute: what the transfer adds after the
#     last chunk is computed).
#
#   bench/server_numbers.sh        (MODEL, PDSERVE_BIN, O=results dir)
# MODEL defaults to /tmp/models/syn110m-q8_0.gguf, made by
# ../shared/tools/make_synthetic_gguf.py --preset 110m --type Q8_0 if absent.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PDSERVE_BIN:-$HERE/build/pdserve}
M=${MODEL:-/tmp/models/syn110m-q8_0.gguf}
[ -r "$M" ] || { mkdir -p "$(dirname "$M")"; python3 "$HERE/../shared/tools/make_synthetic_gguf.py" "$M" --preset 110m --type Q8_0; }
O=${O:-$(mktemp -d /tmp/server_numbers.XXXXXX)}; mkdir -p $O
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null||true; done; wait 2>/dev/null||true' EXIT
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wh() { until curl -sf "$1/health" >/dev/null 2>&1; do sleep 0.2; done; }
C=(--model-path $M --context-length 2560 --max-total-tokens 32768 --max-running-requests 64 --log-level warning)
bench() { local tag=$1; shift; "$BIN" bench serving --base-url "$URL" --backend sglang --tokenizer $M --dataset-name random --disable-tqdm --warmup-requests 1 --flush-cache --output-file $O/$tag.jsonl "$@" > $O/$tag.txt 2>&1; python3 -c "
import json,sys; r=json.loads(open('$O/$tag.jsonl').readlines()[-1]); print('$tag', r['completed'], 'out tok/s %.1f'%r['output_throughput'], 'ttft p50 %.1f'%r['median_ttft_ms'], 'tpot p50 %.2f'%r['median_tpot_ms'])"; }
# --- issue 3: unified, 2 threads, 1/4/16 streams, 128 in / 128 out
p=$(fp); "$BIN" server "${C[@]}" --port $p --threads 2 > $O/u.log 2>&1 & PIDS+=($!); URL=http://127.0.0.1:$p; wh $URL
for c in 1 4 16; do bench u_c$c --random-input-len 128 --random-output-len 128 --random-range-ratio 1 --ignore-eos --max-concurrency $c --num-prompts $((c*4)) --request-rate inf; done
# --- issue 4: 2048-token prompt TTFT, unified (2 threads)
bench u_ttft2048 --random-input-len 2048 --random-output-len 4 --random-range-ratio 1 --ignore-eos --max-concurrency 1 --num-prompts 5 --request-rate inf
kill ${PIDS[-1]}; wait ${PIDS[-1]} 2>/dev/null || true
for be in tcp shm; do
  p=$(fp) d=$(fp) r=$(fp) bp=$(fp)
  "$BIN" server "${C[@]}" --port $p --threads 2 --disaggregation-mode prefill --disaggregation-transfer-backend $be --disaggregation-bootstrap-port $bp > $O/p_$be.log 2>&1 & PIDS+=($!); wh http://127.0.0.1:$p
  "$BIN" server "${C[@]}" --port $d --threads 1 --disaggregation-mode decode --disaggregation-transfer-backend $be > $O/d_$be.log 2>&1 & PIDS+=($!); wh http://127.0.0.1:$d
  "$BIN" router --port $r --prefill http://127.0.0.1:$p $bp --decode http://127.0.0.1:$d --log-level warning > $O/r_$be.log 2>&1 & PIDS+=($!); URL=http://127.0.0.1:$r; wh $URL
  until curl -sf $URL/generate -d '{"text":"warm","sampling_params":{"max_new_tokens":2}}' >/dev/null; do sleep 0.3; done
  bench pd_${be}_ttft2048 --random-input-len 2048 --random-output-len 4 --random-range-ratio 1 --ignore-eos --max-concurrency 1 --num-prompts 5 --request-rate inf
  for i in 1 2 3; do
    python3 -c "import json,random; random.seed($i*7); print(json.dumps({'input_ids':[random.randrange(10,32000) for _ in range(2048)],'sampling_params':{'max_new_tokens':2,'temperature':0}}))" > $O/req.json
    curl -s $URL/generate -d @$O/req.json | python3 -c "import json,sys; m=json.load(sys.stdin)['meta_info']; pd=m.get('pd',{}); b=pd.get('kv_bytes',0); t=pd.get('kv_transfer_time',0); tail=t-pd.get('prefill_queue_time',0)-pd.get('prefill_compute_time',0); print('$be: kv_bytes %d, prefill compute %.1f ms, transfer %.1f ms, tail %.1f ms'%(b, 1e3*pd.get('prefill_compute_time',0), 1e3*t, 1e3*tail))"
  done
  for x in 1 2 3; do kill ${PIDS[-1]} 2>/dev/null||true; unset 'PIDS[-1]'; done; wait 2>/dev/null||true
done
