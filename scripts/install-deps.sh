#!/usr/bin/env bash
# install-deps.sh - install the Debian packages pdserve builds, tests and runs with.
# Idempotent: installs only what is missing. Uses sudo when not root.
#
#   scripts/install-deps.sh            build + test dependencies
set -euo pipefail

PKGS=(
	build-essential pkg-config git ca-certificates
	libevent-dev libjson-c-dev libcurl4-openssl-dev libucx-dev
	libssl-dev                   # libcrypto: HMAC-SHA256 for --disaggregation-secret
	libcriterion-dev
	clang libclang-rt-14-dev     # sanitizer runtime for `make check` and fuzzing
	python3                      # fixture comparison tools in ../shared/tools
	curl iproute2 procps
	gnuplot-nox                  # optional: PNGs of `pdserve bench serving --plot` and bench/pd_vs_unified.sh
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "install-deps: all ${#PKGS[@]} packages present"
	exit 0
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
