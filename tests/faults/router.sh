#!/usr/bin/env bash
# router.sh - through pdserve router, every backend: the router SIGKILLed
# under load (6 clients) and restarted on its port; a decode killed
# mid-stream and a prefill killed mid-transfer behind the router, streamed
# and not (one error to the client, pages back, the restarted worker rejoins).
FAULT_HB=0.5 # see lib.sh
source "$(dirname "$0")/lib.sh"
START=$SECONDS
# shellcheck disable=SC2086
faults router $BACKENDS
echo "ok: router.sh ($((SECONDS - START)) s)"
