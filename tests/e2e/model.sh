#!/usr/bin/env bash
# model.sh - `pdserve model synth` and `pdserve model info`, end to end.
#
# synth: same flags -> same bytes (twice, and against the pinned sha256
# below), the default path under $XDG_CACHE_HOME, quantized types. info: the
# synthesized file, the real stories260K (when ../shared is here), and bad
# files (exit 1 with the reader's one-sentence error). Usage errors exit 2.
#
# Recorded with llama.cpp (node-llama-cpp 3.21.1, /work/shared/tools/llamacpp_ref.mjs,
# greedy, prompt "Once upon a time", 32 tokens) on the default synth file
# (sha256 below); the same ids with --kv f32 and for --type Q8_0
# (sha256 6ce4df0a287f37b8358a72675f556bf3bb15b9e398717ffbfa3ddf698175772f):
#   prompt ids: 1 455 511 463 339 383 356 355 332 436
#   ids: 364 264 358 410 501 477 469 294 361 426 505 294 391 319 419 505
#        294 391 319 419 505 356 354 263 372 372 372 372 372 372 372 372
# pdserve generate should reproduce them once it exists.
set -euo pipefail

BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
SYNTH_SHA=731979db28c4012565b45665922b679c02661c8f43869676340f3ce5f36423ae
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
# has FILE REGEX: a line of FILE matches REGEX
has() { grep -Eq -- "$2" "$1" || { cat "$1" >&2; fail "no line matching '$2' in $1"; }; }
# status WANT CMD...: CMD exits with WANT; its stderr is in $T/err
status() {
	local want=$1 rc=0
	shift
	"$@" >"$T/out" 2>"$T/err" || rc=$?
	[ "$rc" = "$want" ] || { cat "$T/err" >&2; fail "'$*' exited $rc, want $want"; }
}

# ---- synth: deterministic
"$BIN" model synth --out "$T/a.gguf" >"$T/out"
has "$T/out" "^$T/a.gguf\$"
"$BIN" model synth --out "$T/b.gguf" >/dev/null
a=$(sha256sum <"$T/a.gguf" | cut -d' ' -f1)
b=$(sha256sum <"$T/b.gguf" | cut -d' ' -f1)
[ "$a" = "$b" ] || fail "two synth runs differ: $a $b"
[ "$a" = "$SYNTH_SHA" ] || fail "synth bytes changed: sha256 $a, pinned $SYNTH_SHA (update the pin and the recorded llama.cpp ids together)"
"$BIN" model synth --out "$T/s2.gguf" --seed 2 >/dev/null
cmp -s "$T/a.gguf" "$T/s2.gguf" && fail "--seed 2 gave the same bytes as seed 1"

# default path
XDG_CACHE_HOME="$T/cache" "$BIN" model synth >"$T/out"
has "$T/out" "^$T/cache/pdserve/synth-llama.gguf\$"
cmp "$T/a.gguf" "$T/cache/pdserve/synth-llama.gguf" || fail "default-path file differs"

# ---- info on the synthesized file
"$BIN" model info "$T/a.gguf" >"$T/info"
has "$T/info" '^gguf version +3$'
has "$T/info" '^architecture +llama$'
has "$T/info" '^name +pdserve-synth-tiny$'
has "$T/info" '^context length +512$'
has "$T/info" '^embedding length +64$'
has "$T/info" '^layers +5$'
has "$T/info" '^heads +8$'
has "$T/info" '^kv heads +4$'
has "$T/info" '^head dim +8$'
has "$T/info" '^ffn length +172$'
has "$T/info" '^rope type +norm$'
has "$T/info" '^vocab size +512$'
has "$T/info" '^tokenizer +llama$'
has "$T/info" '^bos id +1$'
has "$T/info" '^eos id +2$'
has "$T/info" '^chat template +none$'
has "$T/info" '^tensors +48$'
has "$T/info" '^parameters +292800 '
has "$T/info" "^file size +$(stat -c %s "$T/a.gguf") bytes"
has "$T/info" '^  F32 +48 +1171200 +100\.0%$'

"$BIN" model synth --out "$T/q8.gguf" --type q8_0 --tied >/dev/null
"$BIN" model info "$T/q8.gguf" >"$T/info"
has "$T/info" '^file type +7$'
has "$T/info" '^tensors +47$'
# norms and ffn_down (rows of 172) stay F32; the table is sorted by bytes
has "$T/info" '^  Q8_0 +31 +217056 '
has "$T/info" '^  F32 +16 +222976 '
sed -n '/^  type/,$p' "$T/info" | awk 'NR > 1 { if (NR > 2 && $3 > prev) exit 1; prev = $3 }' ||
	{ cat "$T/info"; fail "type table not sorted by bytes"; }

# ---- info on a real model
S=${PDSERVE_SHARED:-$(dirname "$0")/../../../shared}/models
if [ -f "$S/stories260K.gguf" ]; then
	"$BIN" model info "$S/stories260K.gguf" >"$T/info"
	has "$T/info" '^name +stories260K$'
	has "$T/info" '^layers +5$'
	has "$T/info" '^kv heads +4$'
	has "$T/info" '^ffn length +172$'
	has "$T/info" '^vocab size +512$'
	has "$T/info" '^rms eps +1e-05$'
	has "$T/info" '^rope base +10000$'
	has "$T/info" '^tensors +47$'
	has "$T/info" '^parameters +260032 '
	has "$T/info" '^file size +1054368 bytes'
	"$BIN" model info "$S/stories260K-q4_0.gguf" >"$T/info"
	has "$T/info" '^  Q4_0 +'
	"$BIN" model info "$S/vocab/ggml-vocab-gpt-2.gguf" >"$T/info"
	has "$T/info" '^tensors +0$'
	has "$T/info" '^tokenizer +gpt2$'
else
	echo "skip: ../shared/models/stories260K.gguf is not here"
fi

# ---- bad files: exit 1, one sentence naming the problem
printf 'NOTAGGUF and then some more bytes to be long enough' >"$T/bad.gguf"
status 1 "$BIN" model info "$T/bad.gguf"
has "$T/err" 'bad magic'
has "$T/err" "$T/bad.gguf"
[ "$(wc -l <"$T/err")" = 1 ] || fail "error is not one line"
head -c 5000 "$T/a.gguf" >"$T/trunc.gguf"
status 1 "$BIN" model info "$T/trunc.gguf"
has "$T/err" 'tokenizer.ggml.(tokens|scores|token_type).*past end of file'
head -c 1000000 "$T/a.gguf" >"$T/trunc2.gguf"
status 1 "$BIN" model info "$T/trunc2.gguf"
has "$T/err" 'tensor .*\.weight: data .* past end of file'
: >"$T/empty.gguf"
status 1 "$BIN" model info "$T/empty.gguf"
has "$T/err" 'empty file'
status 1 "$BIN" model info "$T/missing.gguf"
has "$T/err" 'No such file'

# ---- usage
status 2 "$BIN" model
status 2 "$BIN" model frobnicate
status 2 "$BIN" model info
status 2 "$BIN" model synth --type Q4_K --out "$T/x.gguf"
has "$T/err" 'Q4_K'
status 2 "$BIN" model synth --seed abc --out "$T/x.gguf"
status 2 "$BIN" model synth --preset huge --out "$T/x.gguf"
status 2 "$BIN" model synth --out
[ ! -e "$T/x.gguf" ] || fail "a usage error wrote a file"
status 0 "$BIN" model --help
has "$T/out" 'model synth'
status 1 "$BIN" model synth --out "$T/bad.gguf/x.gguf"
has "$T/err" "$T/bad.gguf"

echo "model.sh: ok"
