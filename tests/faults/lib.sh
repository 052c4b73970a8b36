# lib.sh - sourced by every tests/faults/*.sh: the binary, the model, a temp
# dir, small SGLang timeouts, the backends this build has, and a cleanup
# trap that kills every process the case started (faults.py records their
# pids in $T/pids) and removes the temp dir.
set -euo pipefail
BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
FAULTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HERE=$(cd "$FAULTS/../.." && pwd)
SHARED=${PDSERVE_SHARED:-$HERE/../shared}
command -v curl >/dev/null && command -v python3 >/dev/null || { echo "skip: needs curl and python3"; exit 0; }
T=$(mktemp -d)
PIDS=()
cleanup() {
	set +e
	exec 2>/dev/null
	[ -f "$T/pids" ] && while read -r p; do kill -CONT "$p"; kill -9 "$p"; done <"$T/pids"
	for p in "${PIDS[@]}"; do kill -9 "$p" || true; done
	wait || true
	[ -n "${CLEANUP_MORE:-}" ] && eval "$CLEANUP_MORE"
	rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

MODEL=$SHARED/models/stories260K.gguf
if [ ! -r "$MODEL" ]; then
	MODEL=$T/synth.gguf
	"$BIN" model synth --out "$MODEL" >/dev/null 2>&1 || fail "model synth"
fi
export PDSERVE_BIN="$BIN" FAULT_MODEL="$MODEL" FAULT_TMP="$T"
# a silent peer is dead after 0.6 s; nothing waits for long. FAULT_HB
# overrides the interval: router.sh takes 0.5 s (its many clients leaving at
# once load the machine, and a ROOM_FAIL_ACK later than 0.6 s got the
# connection killed and, with ucx, the room held while the prefill lives:
# "Ducxr not back to baseline ... rooms_live 1" under a loaded make test)
export SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL=${FAULT_HB:-0.3} SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE=2
export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=5 SGLANG_DISAGGREGATION_WAITING_TIMEOUT=8

# the transfer backends to run: tcp, shm, and ucx when this build has it
BACKENDS="tcp shm"
if ldd "$BIN" 2>/dev/null | grep libucp >/dev/null; then # not grep -q: under pipefail its early exit can fail ldd
	BACKENDS="$BACKENDS ucx"
else
	echo "skip: ucx cases (this build has no UCX)"
fi

# faults CASE ARGS...: run one family of cases in faults.py
faults() { python3 "$FAULTS/faults.py" "$@" || fail "$1"; }
