#!/usr/bin/env bash
# scripts/deps.sh - installs the Debian packages danlu needs that are missing: the one list,
# used by scripts/demo.sh (to build) and scripts/test.sh (to build and test).
#
#   scripts/deps.sh          what the build needs (compiler, CMake, stb, cJSON, zlib, libwebp,
#                            OpenSSL's libcrypto, LAPACK(E), Criterion: the default configure builds the tests)
#   scripts/deps.sh --test   also what scripts/test.sh runs beyond the build (clang and its
#                            sanitizer runtimes for the fuzz target)
# Runs apt-get through sudo when not root; does nothing when everything is installed.
set -euo pipefail

build_packages=(cmake make gcc g++ pkg-config libcriterion-dev libstb-dev libcjson-dev zlib1g-dev libwebp-dev
                libssl-dev liblapacke-dev)
test_packages=(clang libclang-rt-14-dev)

want=("${build_packages[@]}")
[ "${1:-}" = --test ] && want+=("${test_packages[@]}")

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0

if ! command -v apt-get >/dev/null; then
  echo "danlu needs these Debian packages (or your system's equivalents): ${missing[*]}" >&2
  exit 1
fi
echo "==== installing ${missing[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
