#!/usr/bin/env bash
# stop.sh - a peer that stops reading: the prefill or the decode SIGSTOPped
# mid-transfer over every backend. The other side must answer its client
# within the heartbeat window (also when it must keep the room's pages
# because the stopped prefill could still write into them: shm, ucx); after
# SIGCONT every answer is final and the pages come back.
source "$(dirname "$0")/lib.sh"
START=$SECONDS
# shellcheck disable=SC2086
faults stop $BACKENDS
echo "ok: stop.sh ($((SECONDS - START)) s)"
