#!/usr/bin/env bash
# install-deps.sh - install the Debian packages pdserve builds, tests and runs with.
# Idempotent: installs only what is missing. Uses sudo when not root.
#
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --build    only what `make build/pdserve` needs (the Dockerfile's build stage)
#   scripts/install-deps.sh --runtime  only the shared libraries build/pdserve runs with, and curl for
#                                      health checks (the Dockerfile's runtime stage; libucx0 brings
#                                      libibverbs1, librdmacm1 and ibverbs-providers for RDMA)
#   scripts/install-deps.sh --runtime --list   print the packages instead (also with --build, or
#                                              "" for the default set)
set -euo pipefail

BUILD_PKGS=(
	build-essential pkg-config
	libevent-dev libjson-c-dev libcurl4-openssl-dev libucx-dev
	libssl-dev                   # libcrypto: HMAC-SHA256 for --disaggregation-secret
)
RUNTIME_PKGS=(
	libevent-2.1-7 libevent-pthreads-2.1-7 libjson-c5 libcurl4 libucx0 libssl3
	curl
)
TEST_PKGS=(
	git ca-certificates
	libcriterion-dev
	clang libclang-rt-14-dev     # sanitizer runtime for `make check` and fuzzing
	python3                      # fixture comparison tools in ../shared/tools
	python3-yaml                 # tests/e2e/deploy.sh reads deploy/docker-compose*.yml
	curl iproute2 procps
	gnuplot-nox                  # optional: PNGs of `pdserve bench serving --plot` and bench/pd_vs_unified.sh
)

case "${1:-}" in
--build) PKGS=("${BUILD_PKGS[@]}") ;;
--runtime) PKGS=("${RUNTIME_PKGS[@]}") ;;
"") PKGS=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}") ;;
*)
	echo "usage: scripts/install-deps.sh [--build | --runtime]" >&2
	exit 2
	;;
esac

if [ "${2:-}" = --list ]; then
	printf '%s\n' "${PKGS[@]}"
	exit 0
fi

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
if [ "${1:-}" = --runtime ]; then
	$SUDO rm -rf /var/lib/apt/lists/*  # a runtime image keeps no package lists
fi
