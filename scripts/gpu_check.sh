#!/usr/bin/env bash
# gpu_check.sh - everything that needs a real NVIDIA GPU, in one run (under 8 minutes on one
# H100/H200): configure and build for the local architecture, run the kernel tests on the GPU
# against the CPU reference, run them (small shapes) under compute-sanitizer memcheck and
# racecheck, run the GPU kernel benchmarks, and print a summary table last.
#
#   scripts/gpu_check.sh [OUTDIR]      (OUTDIR defaults to $OUT, then ./gpu_check_out)
#
# OUTDIR receives one log per step, bench.json, bench.txt and summary.txt. Exit status 0 only
# if every step passed. BUILD_DIR overrides the build directory (default build-gpu-check),
# CUDA_ARCH the architecture (default native).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${1:-${OUT:-$PWD/gpu_check_out}}
BUILD=${BUILD_DIR:-$ROOT/build-gpu-check}
ARCH=${CUDA_ARCH:-native}   # e.g. CUDA_ARCH=90a to override the detected architecture
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export PATH="/usr/local/cuda/bin:$PATH"
JOBS=$(nproc 2>/dev/null || echo 8)

STEPS=()    # "name|status|seconds|detail"
FAILED=0

# run_step NAME TIMEOUT_S LOGFILE cmd... : runs cmd with a time limit, logs, records the status
run_step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS rc
    echo "== $name: $*" | tee "$log"
    timeout --signal=KILL "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) status=PASS
    [ $rc -eq 0 ] || { status="FAIL(rc=$rc)"; FAILED=1; }
    [ $rc -eq 137 ] && status="TIMEOUT(${limit}s)"
    LAST_RC=$rc
    STEPS+=("$name|$status|$dt|")
    echo "   -> $status in ${dt}s (log: $log)"
}

# set_detail TEXT : attaches a detail to the last step
set_detail() {
    local last=${STEPS[-1]}
    STEPS[-1]="${last%|*}|$1"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    nvcc --version 2>&1 | tail -2
} >"$OUTDIR/device.txt"
cat "$OUTDIR/device.txt"
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed)" | tee -a "$OUTDIR/summary.txt"
    exit 2
fi

# 1. configure + build for the local architecture (Criterion suite off: the GPU binaries are
#    separate executables; the emulated kernel tests run in CI)
run_step configure 120 "$OUTDIR/configure.log" \
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDANLU_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DDANLU_TESTS=OFF
if ! cmake --build "$BUILD" --target help 2>/dev/null | grep -q danlu_gpu_tests; then
    echo "gpu_check: the build has no danlu_gpu_tests target: the top-level CMakeLists.txt needs" \
        "add_subdirectory(kernels) after danlu_kernels is defined" | tee -a "$OUTDIR/configure.log"
fi
run_step build 300 "$OUTDIR/build.log" \
    cmake --build "$BUILD" -j"$JOBS" --target danlu_kernels danlu_gpu_tests bench_gpu_kernels

TESTS=$(find "$BUILD" -type f -name danlu_gpu_tests -perm -u+x | head -1)
BENCH=$(find "$BUILD" -type f -name bench_gpu_kernels -perm -u+x | head -1)

# 2. kernel tests on the GPU vs the CPU reference (tiny + SD-sized shapes)
if [ -n "$TESTS" ]; then
    run_step tests 240 "$OUTDIR/tests.log" "$TESTS"
    set_detail "$(grep -E '^summary:' "$OUTDIR/tests.log" | tail -1)"
    # 3. compute-sanitizer on the tiny shapes
    if command -v compute-sanitizer >/dev/null; then
        run_step memcheck 240 "$OUTDIR/memcheck.log" \
            compute-sanitizer --tool memcheck --error-exitcode 3 "$TESTS" --quick
        set_detail "$(grep -E 'ERROR SUMMARY' "$OUTDIR/memcheck.log" | tail -1)"
        run_step racecheck 300 "$OUTDIR/racecheck.log" \
            compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 3 \
            "$TESTS" --quick
        set_detail "$(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUTDIR/racecheck.log" | tail -1)"
    else
        STEPS+=("memcheck|SKIP|0|compute-sanitizer not found")
        STEPS+=("racecheck|SKIP|0|compute-sanitizer not found")
        FAILED=1
    fi
else
    STEPS+=("tests|FAIL|0|danlu_gpu_tests not built")
    FAILED=1
fi

# 4. benchmarks (table + JSON)
if [ -n "$BENCH" ]; then
    run_step bench 240 "$OUTDIR/bench.log" "$BENCH" --json "$OUTDIR/bench.json"
    grep -E '^(device|attention|groupnorm|lora|device-to-device)' "$OUTDIR/bench.log" \
        >"$OUTDIR/bench.txt"
    set_detail "$(grep -c -E '^(attention|groupnorm|lora)' "$OUTDIR/bench.log") shapes timed"
else
    STEPS+=("bench|FAIL|0|bench_gpu_kernels not built")
    FAILED=1
fi

# summary last
{
    echo
    echo "== benchmark"
    cat "$OUTDIR/bench.txt" 2>/dev/null
    echo
    echo "== gpu_check summary ($(head -3 "$OUTDIR/device.txt" | tail -1))"
    printf '%-10s %-16s %6s  %s\n' step status secs detail
    for s in "${STEPS[@]}"; do
        IFS='|' read -r n st sec det <<<"$s"
        printf '%-10s %-16s %6s  %s\n' "$n" "$st" "$sec" "$det"
    done
    echo "total ${SECONDS}s; results in $OUTDIR"
} | tee "$OUTDIR/summary.txt"
exit $FAILED
