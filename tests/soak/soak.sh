#!/usr/bin/env bash
# soak.sh - `make soak` (not in CI, not in `make test`): SOAK_MINUTES (default
# 30) of mixed load through `pdserve router --pd-disaggregation` to one
# prefill and two decode servers on 127.0.0.1 (stories260K, or the model
# `pdserve model synth` writes when ../shared is absent), with a worker
# killed and started again on the same port every few minutes. The driver is
# tests/soak/soak.py (its header says how each part works).
#
# Load: back-to-back `pdserve bench serving` runs (random dataset, 192-256
# prompt tokens, 72-96 output tokens, Poisson arrivals at SOAK_RATE (6) req/s),
# cycling streaming chat, streaming /generate and non-streaming completions;
# beside them a client that abandons requests (a stream closed after 1-12
# events, a non-streaming request closed after 20-300 ms) and sends plain
# non-streaming chat requests.
# Restarts: every SOAK_RESTART_S (default 1/8 of the run, at least 45 s) the
# decode D1 or the prefill P, in turn, gets SIGTERM or SIGKILL, in turn, and
# is started again on the same port (the prefill on the same bootstrap port);
# the router's health checks (1 s) take it out and back. D2 and the router
# are never restarted, so they live through the whole run.
# Samples: every 10 s, VmRSS (and VmHWM, threads, open fds) of the router and
# of each worker's current process; a restarted worker starts a new series.
#
# Asserted at the end (exit 1 otherwise):
# - RSS: for every series with at least 3 samples after its warm-up
#   (SOAK_WARMUP_S, default 20% of the run, between 30 s and 3 min, counted
#   from the process's own start), max - first-after-warm-up < 5% of
#   first-after-warm-up + 8 MiB.
#   Why this bound: after warm-up everything that legitimately grows with use
#   has reached its size - the KV pool (mmap'd, its pages touched as they are
#   first handed out; --max-total-tokens 8192 is a few MiB for stories260K and
#   a few minutes of load cycle through all of it), libevent's buffers at
#   their peak request sizes, glibc's per-thread malloc arenas, the prefix
#   cache's radix tree (bounded by the pool), the router's cache_aware
#   trees (the router gets --max-tree-size 65536: the default, 2^26
#   characters per worker, is far more than 30 minutes of this load, so the
#   router would grow by design; see docs/ROUTER.md). What remains is
#   allocator fragmentation, which moves with how many requests happen to
#   be in flight: well under a MiB here, and in proportion to the heap
#   (hence the 5%). A leak is what grows with the number of requests: at
#   about 7.5 requests a second a 30-minute run sends about 12000 requests
#   after warm-up, so 8 MiB catches a leak of about 700 bytes per request
#   (one lost prompt buffer or JSON object per request), or of about 1 MiB
#   per restart of a peer (seen by the processes that are not restarted).
#   The slope (kB/min) is printed too.
# - zero unexpected errors: every failed request overlaps a restart window
#   (kill until the router routes to the worker again, plus 2 s; bench
#   requests started at most the run's longest latency before the kill);
#   no process exits outside a restart; each exits 0 on SIGTERM (under ASan:
#   no leak report); the router stops routing to a dead worker within 15 s
#   and takes it back within 30 s of its restart;
# - idle at the end: on every worker no running, waiting or importing
#   request, no page held, free + cached == total, and free == total after
#   POST /flush_cache; the router has nothing in flight.
# Output: a table of every series (RSS at start, after warm-up, max, end,
# growth, bound, slope, fds) and of requests by kind (ok, aborted by the
# client, failed in a restart window, unexpected); samples.csv,
# requests.csv, restarts.csv, summary.json and each process's log in
# SOAK_RESULTS (default build/soak/YYYYmmdd-HHMMSS).
#
# Knobs: SOAK_MINUTES, SOAK_RATE (6), SOAK_RESTART_S, SOAK_WARMUP_S,
# SOAK_SAMPLE_S (10), SOAK_BATCH_S (30: one bench run),
# SOAK_BACKEND (tcp; shm works too), SOAK_RESULTS, PDSERVE_BIN, SOAK_RSS_CHECK=0
# (report RSS without judging it: under ASan it holds the quarantine).
set -euo pipefail

BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${PDSERVE_SHARED:-$HERE/../shared}
command -v python3 >/dev/null || { echo "soak: needs python3" >&2; exit 1; }
python3 "$HERE/tests/soak/soak.py" --selftest
RES=${SOAK_RESULTS:-$HERE/build/soak/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$RES"
: >"$RES/pids"
cleanup() {
	exec 2>/dev/null
	while read -r p; do kill -9 "$p" || true; done <"$RES/pids"
	wait || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

MODEL=$SHARED/models/stories260K.gguf
if [ ! -r "$MODEL" ]; then
	MODEL=$RES/synth.gguf
	"$BIN" model synth --out "$MODEL" >/dev/null 2>&1 || fail "model synth"
fi
FREE_PORT_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)/free_port.py
free_port() { python3 "$FREE_PORT_PY"; } # below the ephemeral range

# a worker killed mid-transfer must be noticed within seconds, but a busy
# machine must not look like a dead peer: 1 s heartbeats, 3 missed
export SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL=1 SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE=3
export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=30 SGLANG_DISAGGREGATION_WAITING_TIMEOUT=30
export PDSERVE_BIN=$BIN SOAK_MODEL=$MODEL SOAK_RESULTS=$RES
for k in R P BP D1 D2; do export "SOAK_PORT_$k=$(free_port)"; done
echo "soak: ${SOAK_MINUTES:-30} min, results in $RES"
rc=0
python3 "$HERE/tests/soak/soak.py" > >(tee "$RES/soak.log") 2>&1 || rc=$?
exit "$rc"
