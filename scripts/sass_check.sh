#!/usr/bin/env bash
# scripts/sass_check.sh - what the CUDA kernels compile to, read without a GPU: each kernels/*.cu
# is compiled to a cubin per architecture (nvcc, the build's flags), ptxas reports registers,
# spills and shared memory per kernel, and cuobjdump's SASS is counted per kernel for the
# instructions that decide speed on NVIDIA tensor-core GPUs:
#   HMMA (mma.sync / WMMA tensor-core MMA)   HGMMA (sm_90 wgmma)   LDSM (ldmatrix)
#   LDGSTS (cp.async)   UTMALDG (TMA loads)   LDG.E.128 / STG.E.128 (16-byte global loads / stores)
#   LDL/STL (local memory)
# Prints a table per architecture and writes OUT/sass.json (OUT: $1, default build/sass).
#
# cuobjdump is not in the toolkit here: pip install nvidia-cuda-cuobjdump (any virtual
# environment) and point CUOBJDUMP at it, or have it on PATH.
#
#   scripts/sass_check.sh [OUT]        ARCHS="80 86 89 90a" by default; FILES="kernels/*.cu
#                                      tests/kernels/mma_probe.cu" by default
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/sass}
archs=${ARCHS:-80 86 89 90a}
files=${FILES:-$(ls kernels/*.cu) tests/kernels/mma_probe.cu}
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
cuobjdump=${CUOBJDUMP:-$(command -v cuobjdump || true)}
if [ -z "$cuobjdump" ]; then
  for c in /tmp/danlu-venv/lib/python3*/site-packages/nvidia/cu*/bin/cuobjdump; do [ -x "$c" ] && cuobjdump=$c; done
fi
[ -x "$nvcc" ] || { echo "sass_check: nvcc not found" >&2; exit 2; }
[ -n "$cuobjdump" ] && [ -x "$cuobjdump" ] || { echo "sass_check: cuobjdump not found (pip install nvidia-cuda-cuobjdump; CUOBJDUMP=...)" >&2; exit 2; }
mkdir -p "$out"
json="$out/sass.json"
echo "[" >"$json"
first=1
for arch in $archs; do
  printf '\n==== sm_%s\n' "$arch"
  printf '%-48s %5s %6s %6s %5s %5s %6s %6s %7s %8s %8s %7s\n' kernel regs spillB smem HMMA HGMMA LDSM LDGSTS UTMALDG LDG.128 STG.128 LDL/STL
  for cu in $files; do
    base=$(basename "$cu" .cu)
    cubin="$out/${base}.sm_${arch}.cubin"
    log="$out/${base}.sm_${arch}.ptxas.txt"
    "$nvcc" -cubin -O3 -std=c++17 -arch=sm_"$arch" -Ikernels -Ihost -I. -DDANLU_HAVE_CUDA=1 -D_GNU_SOURCE \
      -Xptxas -v -o "$cubin" "$cu" >"$log" 2>&1 || { echo "sass_check: $cu failed for sm_$arch (see $log)" >&2; exit 1; }
    sass="$out/${base}.sm_${arch}.sass"
    "$cuobjdump" -sass "$cubin" >"$sass"
    # per kernel: its SASS is the text between "Function : NAME" lines
    awk -v arch="$arch" -v ptx="$log" -v first="$first" '
      function flush() {
        if (fn == "") return
        regs = R[fn] == "" ? "?" : R[fn]; spill = S[fn] == "" ? 0 : S[fn]; smem = M[fn] == "" ? 0 : M[fn]
        printf "%-48s %5s %6s %6s %5d %5d %6d %6d %7d %8d %8d %7d\n", substr(short, 1, 48), regs, spill, smem,
               c["HMMA"], c["HGMMA"], c["LDSM"], c["LDGSTS"], c["UTMALDG"], c["LDG128"], c["STG128"], c["LOCAL"]
        printf "%s{\"arch\":\"sm_%s\",\"kernel\":\"%s\",\"registers\":%s,\"spill_bytes\":%d,\"smem_bytes\":%d,\"HMMA\":%d,\"HGMMA\":%d,\"LDSM\":%d,\"LDGSTS\":%d,\"UTMALDG\":%d,\"LDG128\":%d,\"STG128\":%d,\"local\":%d}\n",
               (first == 1 && nk == 0) ? "" : ",", arch, short, regs == "?" ? "null" : regs, spill, smem, c["HMMA"], c["HGMMA"],
               c["LDSM"], c["LDGSTS"], c["UTMALDG"], c["LDG128"], c["STG128"], c["LOCAL"] > "/dev/stderr"
        nk++
      }
      BEGIN {
        # ptxas -v: "Compiling entry function NAME for sm_XX", then "Used N registers, ... M bytes smem",
        # and "K bytes spill stores, L bytes spill loads"
        while ((getline line < ptx) > 0) {
          if (match(line, /Compiling entry function .[A-Za-z0-9_]+./)) { cur = substr(line, RSTART + 25, RLENGTH - 26); gsub(/[^A-Za-z0-9_]/, "", cur) }
          if (match(line, /Used [0-9]+ registers/)) { split(substr(line, RSTART, RLENGTH), a, " "); R[cur] = a[2] }
          if (match(line, /[0-9]+ bytes smem/)) { split(substr(line, RSTART, RLENGTH), a, " "); M[cur] = a[1] }
          if (match(line, /[0-9]+ bytes spill stores/)) { split(substr(line, RSTART, RLENGTH), a, " "); S[cur] += a[1] }
          if (match(line, /[0-9]+ bytes spill loads/)) { split(substr(line, RSTART, RLENGTH), a, " "); S[cur] += a[1] }
        }
      }
      /Function : / { flush(); fn = $3; short = fn; delete c; next }
      fn != "" {
        if ($0 ~ /[ \t]HMMA/) c["HMMA"]++
        if ($0 ~ /[ \t]HGMMA/) c["HGMMA"]++
        if ($0 ~ /[ \t]LDSM/) c["LDSM"]++
        if ($0 ~ /[ \t]LDGSTS/) c["LDGSTS"]++
        if ($0 ~ /[ \t]UTMALDG/) c["UTMALDG"]++
        if ($0 ~ /[ \t]LDG\.E\.128/ || $0 ~ /[ \t]LDG\.E\.[A-Z0-9.]*128/) c["LDG128"]++
        if ($0 ~ /[ \t]STG\.E\.[A-Z0-9.]*128/) c["STG128"]++
        if ($0 ~ /[ \t](LDL|STL)[ .]/) c["LOCAL"]++
      }
      END { flush() }
    ' "$sass" 2>>"$json.part"
    [ -s "$json.part" ] && first=0
    cat "$json.part" >>"$json" 2>/dev/null || true
    rm -f "$json.part"
  done
done
echo "]" >>"$json"
echo
echo "sass_check: SASS, ptxas reports and $json in $out/"
