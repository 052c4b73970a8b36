# common.sh - the prologue of the shell tests (tests/e2e/*.sh, tests/faults/lib.sh),
# sourced: the binary ($BIN from PDSERVE_BIN), the checkout ($HERE) and
# ../shared ($SHARED), a temp dir $T, the model ($MODEL: stories260K, else a
# synthesized one), free_port, fail, and an EXIT trap that kills every
# process in PIDS (and any pid listed in $T/pids, resumed first in case it
# was stopped), runs $CLEANUP_MORE, and removes $T. Skips the test (exit 0)
# without curl and python3.
set -euo pipefail
BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
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
	echo "note: ../shared absent, using a synthesized model"
fi
FREE_PORT_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")/." && pwd)/free_port.py
free_port() { python3 "$FREE_PORT_PY"; } # below the ephemeral range
