#!/usr/bin/env bash
# client.sh - the client leaves before, during and after the KV transfer
# (both halves' connections, streamed and not), and one half's client alone
# mid-transfer, over every backend.
source "$(dirname "$0")/lib.sh"
START=$SECONDS
# shellcheck disable=SC2086
faults client $BACKENDS
echo "ok: client.sh ($((SECONDS - START)) s)"
