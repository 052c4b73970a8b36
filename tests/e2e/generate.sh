#!/usr/bin/env bash
# generate.sh - `pdserve generate` end to end, against llama.cpp's outputs.
#
# - stories260K (when ../shared is here): greedy 64 tokens print exactly the
#   golden text (F32 and Q8_0 files, default f16 KV); --dump-logits of the
#   ktiny-f32 synth model agrees with llama.cpp's golden logits within the
#   F32 tolerance (shared/tools/compare_logits.py).
# - No model anywhere: the binary, copied away from the checkout, writes the
#   synthesized model and its greedy ids equal llama.cpp's on that file
#   (recorded with shared/tools/llamacpp_ref.mjs, see tests/e2e/model.sh).
# - Bad input: a missing file, a non-GGUF file, bad flags and a prompt longer
#   than the context exit non-zero with one clear line.
set -euo pipefail

BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${PDSERVE_SHARED:-$HERE/../shared}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
status() {
	local want=$1 rc=0
	shift
	"$@" >"$T/out" 2>"$T/err" || rc=$?
	[ "$rc" = "$want" ] || { cat "$T/err" >&2; fail "'$*' exited $rc, want $want"; }
}

STORY="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said"

if [ -f "$SHARED/models/stories260K.gguf" ]; then
	for f in stories260K.gguf stories260K-q8_0.gguf; do
		out=$("$BIN" generate --model-path "$SHARED/models/$f" --prompt "Once upon a time" -n 64 2>"$T/err")
		[ "Once upon a time$out" = "$STORY" ] || fail "$f: got '$out'"
	done
	# the same with f32 KV and 1 thread, and the ids of the F32 golden
	ids=$("$BIN" generate --model-path "$SHARED/models/stories260K.gguf" -n 64 --ids --kv-cache-dtype f32 -t 1 2>/dev/null)
	want=$(sed -n 's/^ids //p' "$SHARED/models/stories260K.golden.txt" | cut -d' ' -f6-69)
	[ "$ids" = "$want" ] || fail "stories260K ids: got '$ids' want '$want'"
	echo "ok: stories260K greedy text and ids equal the golden"

	if command -v python3 >/dev/null && [ -f "$SHARED/models/synth/ktiny-f32.gguf" ]; then
		"$BIN" generate --model-path "$SHARED/models/synth/ktiny-f32.gguf" --prompt "Once upon a time" \
			-n 32 --ignore-eos --kv-cache-dtype f32 --ids --dump-logits "$T/ktiny.f32" >"$T/ids" 2>/dev/null
		python3 "$SHARED/tools/compare_logits.py" "$SHARED/models/synth/ktiny-f32.golden.json" "$T/ktiny.f32" \
			--max-abs 1e-3 --min-top1 1 --gen-ids "$(cat "$T/ids")" --min-gen-match 32 >"$T/cmp" ||
			{ cat "$T/cmp" >&2; fail "ktiny-f32 logits outside tolerance"; }
		echo "ok: ktiny-f32 dumped logits: $(grep max_abs "$T/cmp")"
	fi
else
	echo "skip: $SHARED/models not present (golden checks)"
fi

# ---- no model anywhere: synthesized on the spot, same ids as llama.cpp
mkdir -p "$T/away/bin"
cp "$BIN" "$T/away/bin/pdserve"
(cd "$T/away" && env -u PDSERVE_MODEL XDG_CACHE_HOME="$T/cache" ./bin/pdserve generate --ids -n 32 \
	--kv-cache-dtype f32 >"$T/out" 2>"$T/err") || { cat "$T/err" >&2; fail "synth fallback"; }
want="364 264 358 410 501 477 469 294 361 426 505 294 391 319 419 505 294 391 319 419 505 356 354 263 372 372 372 372 372 372 372 372"
[ "$(cat "$T/out")" = "$want" ] || fail "synth ids: got '$(cat "$T/out")'"
[ -f "$T/cache/pdserve/synth-llama.gguf" ] || fail "synth model not written"
grep -q "writing a random-weight model" "$T/err" || fail "no log line about the synthesized model"
echo "ok: synthesized default model, ids equal llama.cpp's"

# ---- bad input
status 1 "$BIN" generate --model-path "$T/nope.gguf"
grep -q "nope.gguf" "$T/err" || fail "missing file not named"
printf 'not a gguf at all' >"$T/bad.gguf"
status 1 "$BIN" generate --model-path "$T/bad.gguf"
grep -q "not a GGUF file" "$T/err" || fail "bad magic not reported: $(cat "$T/err")"
status 2 "$BIN" generate --model-path "$T/cache/pdserve/synth-llama.gguf" -n abc
grep -q -- "-n" "$T/err" || fail "bad -n not named"
status 2 "$BIN" generate --kv-cache-dtype q3
status 2 "$BIN" generate --bogus-flag
status 1 "$BIN" generate --model-path "$T/cache/pdserve/synth-llama.gguf" --context-length 8 -n 4
grep -q "exceeds the context length" "$T/err" || fail "context overflow: $(cat "$T/err")"
echo "ok: bad input gets clear errors"
