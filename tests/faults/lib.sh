# lib.sh - sourced by every tests/faults/*.sh: on top of ../lib/common.sh (the binary, the model, a temp
# dir, the cleanup trap), small SGLang timeouts and the backends this build has; the cleanup
# trap that kills every process the case started (faults.py records their
# pids in $T/pids) and removes the temp dir.
FAULTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$FAULTS/../lib/common.sh"
export PDSERVE_BIN="$BIN" FAULT_MODEL="$MODEL" FAULT_TMP="$T"
# a silent peer is dead after 0.6 s; nothing waits for long. FAULT_HB
# overrides the interval: router.sh takes 0.5 s (its many clients leaving at
# once load the machine, and a ROOM_FAIL_ACK later than 0.6 s gets the
# connection killed and, with ucx, the room held with its pages while the
# prefill lives). "Ducxr not back to baseline ... rooms_live 1" with no
# pages used, which a 0.5 s heartbeat did not cure, was another cause: the
# decode kept the room of a request aborted while it queued for pages until
# the 5 s bootstrap timeout, just past pages_back's 5 s (fixed: the engine
# tells the transfer layer, which drops the room at once)
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
