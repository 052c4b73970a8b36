#!/usr/bin/env bash
# bench_transfer.sh - `pdserve bench transfer` runs end to end: a short run
# (256-token prompts, 2 measured requests) over every backend this build has
# moves the whole payload through each and prints its table; bad flags exit 2.
# The numbers themselves are not checked here (this machine is shared); see
# docs/DEPLOY.md section 7 for what they mean.
set -euo pipefail

BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$T/out" ] && cat "$T/out" "$T/err" >&2; exit 1; }

backends=tcp,shm
if ldd "$BIN" 2>/dev/null | grep libucp >/dev/null; then backends=$backends,ucx-sm,ucx-tcp; fi

rc=0
timeout 300 "$BIN" bench transfer --backends "$backends" --tokens 256 --requests 2 --warmup 1 --reps 1 \
	--timeout 60 >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" = 0 ] || fail "bench transfer exited $rc"
grep -q "KV of a 256-token prompt, 16 layers x 8 kv heads x 128 dims x f16 = 16.0 MiB per request" "$T/out" ||
	fail "payload line"
grep -Eq "^tcp .* TCP stream [0-9.]+ GB/s .*>= 70%" "$T/out" || fail "no tcp row"
grep -Eq "^shm .* memcpy [0-9.]+ GB/s .*>= 80%" "$T/out" || fail "no shm row"
if [[ $backends == *ucx* ]]; then
	grep -Eq "^ucx UCX_TLS=sm .* memcpy [0-9.]+ GB/s .*>= 70%" "$T/out" &&
		grep -Eq "^ucx UCX_TLS=tcp .* TCP stream [0-9.]+ GB/s .*>= 50%" "$T/out" || fail "no ucx rows"
fi
! grep -q "failed:\|note:" "$T/out" || fail "a backend failed or moved the wrong number of bytes"
echo "ok: bench transfer over $backends"

rc=0
"$BIN" bench transfer --backends carrier-pigeon >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 2 ] && grep -q "unknown backend 'carrier-pigeon'" "$T/err" || fail "unknown backend: exit $rc"
rc=0
"$BIN" bench transfer --tokens 0 >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 2 ] || fail "--tokens 0: exit $rc"
echo "ok: bench transfer refuses bad flags"
