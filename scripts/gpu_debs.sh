#!/usr/bin/env bash
# gpu_debs.sh - downloads, here, the Debian packages (amd64) that the GPU machine needs to build
# danlu and has not got: the libraries of scripts/deps.sh (cJSON, stb, libwebp, OpenSSL's
# libcrypto, zlib, LAPACKE, Criterion) with their run-time closure, and pkg-config. The GPU
# machine reaches no package registry; scripts/gpu_check.sh unpacks these files into a private
# prefix there (dpkg -x, never into /) when its own system lacks the libraries, and links danlu
# against that prefix. Nothing is installed here.
#
#   scripts/gpu_debs.sh [DIR]      (DIR defaults to .debs in the repository root)
#
# Once, in the root of the checkout the device tool sends: echo /.debs/ >> .git/info/exclude
# Then name .debs in the run call's carry (docs/perf.md, "GPU check"). About 12 MB.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/.debs}

# headers, .so links and pkg-config files (the build); the libraries they load (the run), with
# the closure `ldd` shows here for libcriterion.so.3 and liblapacke.so.3, less glibc and gcc's
# own run-time (which every machine with a compiler has)
dev=(libcjson-dev libstb-dev libwebp-dev libssl-dev zlib1g-dev liblapacke-dev libcriterion-dev)
run=(libcjson1 libstb0 libwebp7 libssl3 zlib1g liblapacke liblapack3 libblas3 libtmglib3 libgfortran5 libquadmath0
     libcriterion3 libffi8 libgit2-1.5 libnanomsg5 libhttp-parser2.9 libmbedtls14 libmbedx509-1 libmbedcrypto7
     libpcre2-8-0 libssh2-1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1)
tools=(pkgconf-bin libpkgconf3)

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
opts=()
if [ "$(dpkg --print-architecture)" != amd64 ]; then
    # another processor here: a separate amd64 package list (the device tool's README)
    mkdir -p /tmp/amd64/partial
    opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${opts[@]}" update -qq
fi
rm -f "$DIR"/*.deb
(cd "$DIR" && apt-get "${opts[@]}" download "${dev[@]}" "${run[@]}" "${tools[@]}")
n=$(find "$DIR" -name '*.deb' | wc -l)
echo "gpu_debs: $n packages in $DIR ($(du -sh "$DIR" | cut -f1)); carry .debs in the run call"
