#!/usr/bin/env bash
# model.sh - the prefill restarted with a different model (the q8_0 file of
# the same network: another GGUF fingerprint) on its ports: the decode's
# handshake is refused with the reason named to the client, the prefill's
# half ends with its bootstrap timeout, pages come back, and once the right
# model is back the same decode serves again. Every backend.
source "$(dirname "$0")/lib.sh"
START=$SECONDS
MODEL2=$SHARED/models/stories260K-q8_0.gguf
if [ ! -r "$MODEL2" ]; then
	MODEL2=$T/synth2.gguf
	"$BIN" model synth --seed 2 --out "$MODEL2" >/dev/null 2>&1 || fail "model synth (second model)"
fi
export FAULT_MODEL2=$MODEL2 SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=2 # the prefill half ends with it
# shellcheck disable=SC2086
faults model $BACKENDS
echo "ok: model.sh ($((SECONDS - START)) s)"
