#!/usr/bin/env bash
# tokenize.sh - `pdserve tokenize` / `pdserve detokenize`, end to end.
#
# Runs the CLI over every llama.cpp test vector of the Llama-2 SPM vocabulary
# (text on stdin, byte for byte: the vectors include "\n", "\t" and "" which
# nothing may strip), checks the ids against the .out file and that
# detokenize gives the text back; then the flags (--text, --add-special,
# --parse-special) against ids recorded with llama.cpp, and the exit codes
# of usage errors (2) and runtime errors (1). Skips (exit 0) when ../shared
# is not there.
set -euo pipefail

BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${PDSERVE_SHARED:-$HERE/../../../shared}
VOCAB=$SHARED/models/vocab/ggml-vocab-llama-spm.gguf
if [ ! -r "$VOCAB" ] || [ ! -r "$VOCAB.inp" ]; then
	echo "skip: $VOCAB not found"
	exit 0
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
# status WANT CMD...: CMD exits with WANT; its stdout/stderr are in $T/out, $T/err
status() {
	local want=$1 rc=0
	shift
	"$@" >"$T/out" 2>"$T/err" || rc=$?
	[ "$rc" = "$want" ] || { cat "$T/err" >&2; fail "'$*' exited $rc, want $want"; }
}

# ---- every vector: ids, then back to the text
awk -v dir="$T" 'BEGIN { RS = "\n__ggml_vocab_test__\n" }
	{ f = sprintf("%s/in.%03d", dir, NR); printf "%s", $0 > f; close(f) }' "$VOCAB.inp"
n=0
while IFS= read -r want || [ -n "$want" ]; do
	n=$((n + 1))
	in=$(printf '%s/in.%03d' "$T" "$n")
	[ -e "$in" ] || fail "vector $n: no input (awk split)"
	got=$("$BIN" tokenize --model-path "$VOCAB" <"$in")
	[ "$got" = "$(echo $want)" ] || fail "vector $n: got '$got', want '$want'"
	if [ -n "$got" ]; then
		# shellcheck disable=SC2086
		"$BIN" detokenize --model-path "$VOCAB" -n $got >"$T/back"
	else
		: >"$T/back"
	fi
	cmp -s "$in" "$T/back" || fail "vector $n: detokenize does not give the text back"
done <"$VOCAB.out"
[ "$n" = 46 ] || fail "ran $n vectors, want 46"

# ---- flags (ids recorded with llama.cpp)
status 0 "$BIN" tokenize --model-path "$VOCAB" --text "<s>hi</s> <unk>"
[ "$(cat "$T/out")" = "529 29879 29958 2918 829 29879 29958 529 2960 29958" ] || fail "plain special text: $(cat "$T/out")"
status 0 "$BIN" tokenize --model-path "$VOCAB" --parse-special --text "<s>hi</s> <unk>"
[ "$(cat "$T/out")" = "1 7251 2 259 0" ] || fail "--parse-special: $(cat "$T/out")"
status 0 "$BIN" tokenize --model-path "$VOCAB" --add-special --text "Hello"
[ "$(cat "$T/out")" = "1 15043" ] || fail "--add-special: $(cat "$T/out")"
echo "1 15043" | "$BIN" detokenize --model-path "$VOCAB" >"$T/out"
[ "$(cat "$T/out")" = " Hello" ] || fail "detokenize from stdin: '$(cat "$T/out")'"
status 0 "$BIN" detokenize --model-path "$VOCAB" --special 1 15043 2
[ "$(cat "$T/out")" = "<s> Hello</s>" ] || fail "detokenize --special: '$(cat "$T/out")'"
printf '\xff\xfe\x80 bytes' | "$BIN" tokenize --model-path "$VOCAB" >"$T/out" || fail "invalid UTF-8 on stdin"
[ -s "$T/out" ] || fail "invalid UTF-8 gave no ids"

# ---- errors
status 2 "$BIN" tokenize
status 2 "$BIN" tokenize --model-path "$VOCAB" --bogus
status 2 "$BIN" detokenize --model-path "$VOCAB" 12x
status 1 "$BIN" tokenize --model-path "$T/missing.gguf" --text hi
grep -q "missing.gguf" "$T/err" || fail "no file name in: $(cat "$T/err")"
printf 'not a gguf' >"$T/bad.gguf"
status 1 "$BIN" tokenize --model-path "$T/bad.gguf" --text hi
status 1 "$BIN" detokenize --model-path "$VOCAB" 99999
grep -q "99999" "$T/err" || fail "bad id not named: $(cat "$T/err")"
status 0 "$BIN" tokenize --help

echo "ok: tokenize (46 vectors, flags, errors)"
