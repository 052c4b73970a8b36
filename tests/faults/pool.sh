#!/usr/bin/env bash
# pool.sh - the decode's KV pool exhausted (8 requests needing ~3x its 32
# pages): back-pressure, not failure - all succeed, equal to unified, and
# the pages come back. Every backend.
source "$(dirname "$0")/lib.sh"
START=$SECONDS
# shellcheck disable=SC2086
faults pool $BACKENDS
echo "ok: pool.sh ($((SECONDS - START)) s)"
