#!/usr/bin/env bash
# kill.sh - the prefill or the decode SIGKILLed before, during and after the
# KV transfer, over every backend; each case restarts the killed server on
# the same ports and checks the survivor serves with it (tests/faults/faults.py
# says what every case asserts).
source "$(dirname "$0")/lib.sh"
START=$SECONDS
# shellcheck disable=SC2086
faults kill $BACKENDS
echo "ok: kill.sh ($((SECONDS - START)) s)"
