#!/usr/bin/env bash
# scripts/test.sh - the README's test command and CI's entry point.
# Installs what is missing (Debian packages), configures, builds and runs every test; then the
# same suite under AddressSanitizer + UndefinedBehaviorSanitizer, and the safetensors fuzz target
# for a bounded time. CUDA is built when nvcc is present (kernels compile for sm_80/86/89/90a);
# every test runs on the CPU (kernels through the SIMT emulator).
#
# Environment: DANLU_TEST_JOBS (parallel test processes, default: cores), DANLU_FUZZ_SECONDS
# (default 60), DANLU_TEST_SKIP_ASAN=1 / DANLU_TEST_SKIP_FUZZ=1 to shorten a local run,
# DANLU_CUDA=OFF to force the CPU-only build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)
test_jobs=${DANLU_TEST_JOBS:-$jobs}
fuzz_seconds=${DANLU_FUZZ_SECONDS:-60}

step() { printf '\n==== %s\n' "$*"; }

# ---- 1. dependencies (the one list, shared with scripts/demo.sh) -------------------------
bash scripts/deps.sh --test

mkdir -p build
cuda_flag=()
[ "${DANLU_CUDA:-ON}" = OFF ] && cuda_flag=(-DDANLU_CUDA=OFF)

# ---- 2. release build and tests --------------------------------------------------------
step "configure and build (release)"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release "${cuda_flag[@]}" >build/release.configure.log 2>&1 ||
  { cat build/release.configure.log; exit 1; }
grep -E "danlu: CUDA backend" build/release.configure.log || true
cmake --build build/release -j"$jobs"

step "tests (release, the widest CPU path this machine has)"
build/release/tests/danlu_tests --jobs "$test_jobs"

# Every CPU path must pass the same tests: where this CPU has a wider path than AVX2, run the
# suite again on the AVX2 path that AVX2-only machines take (DANLU_CPU_ISA caps the choice),
# so that a test holding only on one path fails here rather than in CI on another machine.
if grep -qw avx512f /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo &&
   grep -qw avx512dq /proc/cpuinfo; then
  step "tests (release, AVX2 path forced: DANLU_CPU_ISA=avx2)"
  DANLU_CPU_ISA=avx2 build/release/tests/danlu_tests --jobs "$test_jobs"
else
  step "tests (release, portable path forced: DANLU_CPU_ISA=generic)"
  DANLU_CPU_ISA=generic build/release/tests/danlu_tests --jobs "$test_jobs"
fi

# a plain program with a counting malloc (not built with DANLU_SANITIZE: ASan owns malloc)
step "steady-state training step allocates nothing (release)"
DANLU_THREADS=2 build/release/tests/danlu_alloc_test

# the newcomer's demo (a fixed point: train, sample, grid on the embedded tiny model)
step "scripts/demo.sh"
DANLU=build/release/danlu DANLU_THREADS=2 scripts/demo.sh build/demo-out >build/demo.log 2>&1 ||
  { tail -40 build/demo.log; exit 1; }
for f in ringstyle.safetensors ringstyle_log.csv ringstyle_loss.png grid.png images/00002-3.png \
         sample/ringstyle_000120_01.png; do
  [ -s "build/demo-out/$f" ] || { echo "demo: build/demo-out/$f missing"; tail -40 build/demo.log; exit 1; }
done
tail -3 build/demo-out/ringstyle_log.csv

# ---- 3. the same without a CUDA toolkit ------------------------------------------------
# A machine with no toolkit must configure, build and pass: hide it in a private mount
# namespace (tmpfs over /usr/local/cuda*, nvcc off PATH) and build with the default options.
if [ "${DANLU_TEST_SKIP_NOCUDA:-0}" != 1 ] && ls -d /usr/local/cuda* >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
    step "configure, build and test with the CUDA toolkit hidden"
    unshare -m bash -c '
      set -euo pipefail
      for d in /usr/local/cuda*; do [ -d "$d" ] && mount -t tmpfs none "$d"; done
      PATH=$(printf %s "$PATH" | tr : "\n" | grep -v cuda | paste -sd:)
      unset CUDACXX CUDA_HOME CUDA_PATH
      cmake -S . -B build/nocuda -DCMAKE_BUILD_TYPE=Release >build/nocuda.configure.log 2>&1 ||
        { cat build/nocuda.configure.log; exit 1; }
      grep -q "danlu: CUDA backend OFF" build/nocuda.configure.log
      cmake --build build/nocuda -j'"$jobs"' >build/nocuda.build.log 2>&1 || { tail -50 build/nocuda.build.log; exit 1; }
      build/nocuda/tests/danlu_tests --jobs '"$test_jobs"' >build/nocuda.tests.log 2>&1 ||
        { tail -80 build/nocuda.tests.log; exit 1; }
      tail -1 build/nocuda.tests.log'
  else
    echo "(skipping the hidden-toolkit build: needs root and unshare)"
  fi
fi

# ---- 4. sanitizers ---------------------------------------------------------------------
if [ "${DANLU_TEST_SKIP_ASAN:-0}" != 1 ]; then
  step "configure and build (AddressSanitizer + UndefinedBehaviorSanitizer, CPU only)"
  cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDANLU_SANITIZE=ON -DDANLU_CUDA=OFF \
    >build/asan.configure.log 2>&1 || { cat build/asan.configure.log; exit 1; }
  cmake --build build/asan -j"$jobs"
fi

if [ "${DANLU_TEST_SKIP_FUZZ:-0}" != 1 ]; then
  step "fuzzing the safetensors reader for ${fuzz_seconds}s (libFuzzer + ASan + UBSan)"
  mkdir -p build/fuzz
  clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE \
    -Ihost -I/usr/include/cjson tests/fuzz/fuzz_safetensors.c host/io/safetensors.c host/io/atomic_file.c host/core/error.c \
    host/core/dtype.c host/core/tensor.c -lcjson -o build/fuzz/fuzz_safetensors
  rm -rf build/fuzz/corpus && cp -r tests/fuzz/corpus build/fuzz/corpus
  build/fuzz/fuzz_safetensors -max_total_time="$fuzz_seconds" -max_len=4096 -print_final_stats=1 \
    build/fuzz/corpus 2>build/fuzz/log.txt || { tail -50 build/fuzz/log.txt; exit 1; }
  grep -E "stat::number_of_executed_units|Done" build/fuzz/log.txt | tail -2
fi

if [ "${DANLU_TEST_SKIP_ASAN:-0}" != 1 ]; then
  step "tests (AddressSanitizer + UndefinedBehaviorSanitizer)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    LSAN_OPTIONS=suppressions="$root/tests/lsan.supp" \
    build/asan/tests/danlu_tests --jobs "$test_jobs"
fi
