#!/usr/bin/env bash
# gpu_check.sh - everything that needs a real NVIDIA GPU, in one run of under 8 minutes on one
# H100/H200 (issue 12, "Must show"), summary table last. Steps, in order of priority, each with a
# time limit in seconds (cut to what is left of the run's budget, GPU_CHECK_BUDGET, default 450;
# a step with no time left is SKIP(budget) and fails the run):
#
#   deps         60  the build's libraries: the system's, or the .debs carried
#                    (scripts/gpu_debs.sh), unpacked into a private prefix, linked with an rpath
#   wheels       60  diffusers from the .whl carried (scripts/gpu_wheels.sh), into /tmp/site
#   configure    90  Release, CUDA for the local GPU (CUDA_ARCH; by default 90a on a Hopper card,
#                    so the wgmma/TMA kernels are built and tested, else native), tests ON; fails
#                    unless the real CUDA device is built (cuDNN: the system's, or PyTorch's
#                    nvidia-cudnn wheel's)
#   build_tools 120  danlu-mkcheckpoint (so the SD1.5 checkpoint is written while the rest builds)
#   build       300  danlu, danlu_tests, bench_train_step, bench_models, danlu_gpu_tests,
#                    bench_gpu_kernels
#   kernels     120  danlu_gpu_tests: the kernels on the GPU against the CPU reference
#   backend     150  danlu_tests --filter 'backend_table*/*': the CUDA backend's op table on the
#                    GPU against the CPU backend (fails when no test matched)
#   train_be    150  danlu_tests --filter 'train_backend/*' (likewise)
#   tiny_cuda    90  danlu train --backend cuda on tests/golden/tiny_pipe (the demo's images at
#                    32², rank 4, lr 1e-4, fp32, LoRA saved as float), 4 steps
#   tiny_cpu     90  the same on --backend cpu
#   tiny_compare 60  scripts/compare_train.py: every step's loss (1e-4 relative) and every LoRA
#                    element (|d| <= 1e-5 + 1e-3 |cpu|)
#   memcheck, racecheck, synccheck, initcheck
#               180  compute-sanitizer --tool ... on the tiny run, 2 steps, --backend cuda; the
#                    four at once
#   sd15        150  danlu-mkcheckpoint --preset sd15 (random full-size SD1.5, fp16) in the work
#                    folder, in the background from the end of build_tools (kept for a rerun)
#   train_danlu 150  bench_train_step --backend cuda: LoRA r16 (192 modules), 512², batch 1,
#                    10 timed steps (--precision bf16 when its --help lists it; fp32 otherwise)
#   train_torch_bf16, train_torch_fp32
#               150  bench/torch_train_step.py --device cuda --dtype bf16 / fp32 (diffusers +
#                    PEFT, SDPA), the same step
#   unet_cfg     90  bench_models --what unet64 --batch 2 --backend cuda: one 512² sampling step
#                    with CFG, median of 20
#   sample_danlu 120 danlu sample --backend cuda --verbose: 512², 20 Euler steps, CFG 7
#   sample_torch_fp16, sample_torch_fp32
#               120  bench/torch_sample.py --device cuda: the same run in diffusers
#   kbench      120  bench_gpu_kernels (table + JSON)
#   k_memcheck   90  compute-sanitizer memcheck on danlu_gpu_tests --quick
#   k_racecheck 120  compute-sanitizer racecheck on danlu_gpu_tests --quick
#   report       30  scripts/gpu_report.py: the figures beside the targets (../shared/TARGETS.md)
#                    (runs whatever the budget left)
#
# While the training steps run, nvidia-smi samples the GPU's used memory every 100 ms: its peak
# less the idle level is the "smi" column (the process's whole footprint: CUDA context,
# libraries' workspaces, allocator caches), beside each program's own figure.
#
#   scripts/gpu_check.sh [OUTDIR]      (OUTDIR defaults to $OUT, then ./gpu_check_out)
#
# OUTDIR receives few files, as the device tool returns at most 8: summary.txt (the step table
# and the figures), results.json (every figure), device.txt, bench_kernels.json and logs.tar.gz
# (one log per step). The work folder (GPU_CHECK_WORK, default /tmp/danlu-gpu-check) holds the
# checkpoint and the runs. Exit status 0 only if every step passed. BUILD_DIR overrides the build
# directory (default build-gpu-check), CUDA_ARCH the architecture (e.g. 90a, native).
# GPU_CHECK_FORCE_DEBS=1 uses the carried .debs even when the system has the libraries, and
# GPU_CHECK_ALLOW_NO_GPU=1 runs on a machine without a GPU (to try the script: every GPU step
# then fails).
#
# On the device tool (docs/perf.md, "GPU check"): here, once, `scripts/gpu_debs.sh` and
# `scripts/gpu_wheels.sh` (with /.debs/ and /.whl/ in .git/info/exclude), then
#   run  command: bash scripts/gpu_check.sh "$OUT"   carry: [".debs", ".whl"]   timeout_s: 540
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${1:-${OUT:-$PWD/gpu_check_out}}
BUILD=${BUILD_DIR:-$ROOT/build-gpu-check}
ARCH=${CUDA_ARCH:-}
WORK=${GPU_CHECK_WORK:-/tmp/danlu-gpu-check}
BUDGET=${GPU_CHECK_BUDGET:-450}
RESERVE=20   # seconds kept for the report and the summary
JOBS=$(nproc 2>/dev/null || echo 8)
LOGS=$WORK/logs
JS=$WORK/json
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
rm -rf "$LOGS" "$JS" "$WORK/runs" "$WORK/figures.txt" "$WORK"/smi-*.txt
mkdir -p "$LOGS" "$JS" "$WORK/runs"
export PATH="/usr/local/cuda/bin:$PATH"
export PYTHONUNBUFFERED=1
SECONDS=0
trap 'echo "gpu_check: interrupted"; finish; exit 1' INT TERM

STEPS=()        # "name|status|seconds|detail"
FAILED=0
LAST_RC=0
declare -A BG_PID BG_T0 BG_LIM BG_LOG

# ---- step bookkeeping ------------------------------------------------------------------------

# the limit of a step that wants $1 seconds: cut to the budget left, less the reserve
limit_for() {
    local left=$((BUDGET - SECONDS - RESERVE))
    if ((left < $1)); then echo "$left"; else echo "$1"; fi
}

# record NAME STATUS SECONDS DETAIL LOG: one row of the summary; a failed step's log tail is shown
record() {
    STEPS+=("$1|$2|$3|$4")
    [ "$2" = PASS ] || FAILED=1
    echo "   -> $1: $2 in ${3}s${4:+ ($4)}"
    if [ "$2" != PASS ] && [ -n "${5:-}" ] && [ -s "${5:-}" ]; then
        tail -n 12 "$5" | sed 's/^/      | /'
    fi
}

status_of() { # rc limit -> PASS / TIMEOUT(Ns) / FAIL(rc=N)
    case $1 in
    0) echo PASS ;;
    124 | 137) echo "TIMEOUT(${2}s)" ;;
    *) echo "FAIL(rc=$1)" ;;
    esac
}

# run_step NAME WANT_S LOG cmd...: cmd under a time limit, output to LOG; LAST_RC is its status
run_step() {
    local name=$1 want=$2 log=$3
    shift 3
    local lim
    lim=$(limit_for "$want")
    if ((lim < 5)); then
        LAST_RC=125
        record "$name" "SKIP(budget)" 0 "no time left in the ${BUDGET}s budget"
        return
    fi
    echo "== $name (limit ${lim}s): $*" | tee "$log"
    local t0=$SECONDS
    timeout --kill-after=5 "$lim" "$@" >>"$log" 2>&1
    LAST_RC=$?
    record "$name" "$(status_of $LAST_RC "$lim")" $((SECONDS - t0)) "" "$log"
}

# bg_start NAME WANT_S LOG cmd...: the same, in the background; bg_wait NAME collects it
bg_start() {
    local name=$1 want=$2 log=$3
    shift 3
    local lim
    lim=$(limit_for "$want")
    if ((lim < 5)); then
        BG_PID[$name]=""
        return
    fi
    echo "== $name (background, limit ${lim}s): $*" | tee "$log"
    timeout --kill-after=5 "$lim" "$@" >>"$log" 2>&1 &
    BG_PID[$name]=$!
    BG_T0[$name]=$SECONDS
    BG_LIM[$name]=$lim
    BG_LOG[$name]=$log
}
bg_wait() {
    local name=$1
    if [ -z "${BG_PID[$name]:-}" ]; then
        LAST_RC=125
        record "$name" "SKIP(budget)" 0 "no time left in the ${BUDGET}s budget"
        return
    fi
    wait "${BG_PID[$name]}"
    LAST_RC=$?
    record "$name" "$(status_of $LAST_RC "${BG_LIM[$name]}")" $((SECONDS - BG_T0[$name])) "" "${BG_LOG[$name]}"
}

# set_detail TEXT: the detail column of the last row (a skipped step keeps its reason)
set_detail() {
    local last=${STEPS[-1]} n st rest
    IFS='|' read -r n st rest <<<"$last"
    [[ $st == SKIP* ]] && return
    STEPS[-1]="${last%|*}|$1"
}
# fail_last TEXT: the last row fails, with TEXT as its detail (a check after the command)
fail_last() {
    local last=${STEPS[-1]} n st sec det
    IFS='|' read -r n st sec det <<<"$last"
    STEPS[-1]="$n|FAIL|$sec|$1"
    FAILED=1
    echo "   -> $n: FAIL ($1)"
}
skip_step() { # NAME WHY: a step that cannot run (its input is missing); fails the run
    record "$1" "SKIP" 0 "$2"
}

# the GPU's used memory, sampled every 100 ms while a step runs (MiB)
smi_start() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$1" 2>/dev/null &
    SMI_PID=$!
}
smi_stop() { # FILE NAME: appends "NAME peak-idle" to smi.txt
    kill "$SMI_PID" 2>/dev/null
    wait "$SMI_PID" 2>/dev/null
    local peak
    peak=$(sort -n "$1" 2>/dev/null | tail -1)
    [ -n "$peak" ] && [ -n "$SMI_IDLE" ] && echo "$2 $((peak - SMI_IDLE))" >>"$JS/smi.txt"
}

finish() {
    {
        echo
        echo "== gpu_check summary ($(sed -n 2p "$OUTDIR/device.txt" 2>/dev/null))"
        printf '%-18s %-14s %5s  %s\n' step status secs detail
        for s in "${STEPS[@]}"; do
            IFS='|' read -r n st sec det <<<"$s"
            printf '%-18s %-14s %5s  %s\n' "$n" "$st" "$sec" "$det"
        done
        [ -s "$WORK/figures.txt" ] && cat "$WORK/figures.txt"
        echo "total ${SECONDS}s of a ${BUDGET}s budget; $([ $FAILED = 0 ] && echo 'every step passed' || echo 'FAILED'); results in $OUTDIR"
    } | tee "$OUTDIR/summary.txt"
    tar -C "$WORK" -czf "$OUTDIR/logs.tar.gz" logs json 2>/dev/null
}

# ---- the device --------------------------------------------------------------------------------

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
    nvcc --version 2>&1 | tail -2
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1
} >"$OUTDIR/device.txt"
cat "$OUTDIR/device.txt"
if ! nvidia-smi -L >/dev/null 2>&1 && [ "${GPU_CHECK_ALLOW_NO_GPU:-0}" != 1 ]; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed)" | tee "$OUTDIR/summary.txt"
    exit 2
fi
SMI_IDLE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
if [ -z "$ARCH" ]; then # Hopper (compute capability 9.0): 90a, the architecture-specific target
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1)
    if [ "$cc" = 9.0 ]; then ARCH=90a; else ARCH=native; fi
fi

# ---- the build's libraries ----------------------------------------------------------------------

DEPS_CMAKE=()
RPATH_DIRS=""   # libraries from outside the system: linked with an rpath (DT_RPATH, which also
                # serves their own dependencies and cuDNN's dlopen of its sub-libraries)
# setup_deps: the system's pkg-config modules, or the carried .debs in a prefix of their own
# (dpkg -x, never into /), described by .pc files written here, linked with an rpath
setup_deps() {
    local mods=(libcjson stb libwebp libcrypto lapacke criterion)
    if [ "${GPU_CHECK_FORCE_DEBS:-0}" != 1 ] && command -v pkg-config >/dev/null &&
        pkg-config --exists "${mods[@]}" && [ -e /usr/include/zlib.h ]; then
        echo "the system has ${mods[*]} and zlib"
        return 0
    fi
    if ! compgen -G "$ROOT/.debs/*.deb" >/dev/null; then
        echo "the system lacks some of ${mods[*]}, zlib or pkg-config, and no .debs were carried" \
            "(run scripts/gpu_debs.sh and name .debs in carry)"
        return 1
    fi
    local P=$WORK/deps l
    rm -rf "$P"
    mkdir -p "$P/pc" "$P/bin"
    # shellcheck disable=SC2016 # expanded by the inner shell
    timeout 60 bash -c 'for f in "$1"/.debs/*.deb; do dpkg -x "$f" "$2" || exit 1; done' _ "$ROOT" "$P" || return 1
    # the packages' own .pc files name /usr and require more modules (criterion: libgit2,
    # nanomsg, ...): the ones written below replace them
    rm -rf "$P"/usr/lib/*/pkgconfig "$P"/usr/share/pkgconfig
    # absolute links (zlib1g-dev's libz.so -> /lib/...) pointed into the prefix
    find "$P" -type l -lname '/*' | while read -r l; do ln -sfn "$P$(readlink "$l")" "$l"; done
    local A=x86_64-linux-gnu
    local U=$P/usr/lib/$A
    local L="$U:$U/lapack:$U/blas:$P/lib/$A"
    pc() { # NAME CFLAGS LIBS
        printf 'Name: %s\nDescription: %s (carried .debs)\nVersion: 0\nCflags: %s\nLibs: %s\n' \
            "$1" "$1" "$2" "$3" >"$P/pc/$1.pc"
    }
    pc libcjson "-I$P/usr/include -I$P/usr/include/cjson" "-L$U -lcjson"
    pc stb "-I$P/usr/include/stb" "-L$U -lstb"
    pc libwebp "-I$P/usr/include" "-L$U -lwebp"
    pc libcrypto "-I$P/usr/include -I$P/usr/include/$A" "-L$U -lcrypto"
    pc lapacke "-I$P/usr/include -I$P/usr/include/$A" "-L$U -llapacke"
    pc criterion "-I$P/usr/include" "-L$U -lcriterion"
    local pkgconfig
    pkgconfig=$(command -v pkg-config || true)
    if [ -z "$pkgconfig" ]; then
        pkgconfig=$P/bin/pkg-config
        printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$U" "$P/usr/bin/pkgconf" >"$pkgconfig"
        chmod +x "$pkgconfig"
    fi
    export PKG_CONFIG_LIBDIR=$P/pc PKG_CONFIG_PATH=
    DEPS_CMAKE=(-DPKG_CONFIG_EXECUTABLE="$pkgconfig" -DCMAKE_PREFIX_PATH="$P/usr" -DPKG_CONFIG_USE_CMAKE_PREFIX_PATH=OFF)
    RPATH_DIRS=$L
    "$pkgconfig" --exists "${mods[@]}" || return 1
    echo "carried libraries in $P: $(find "$ROOT/.debs" -name '*.deb' | wc -l) packages; pkg-config $pkgconfig"
}
echo "== deps" | tee "$LOGS/deps.log"
t0=$SECONDS
setup_deps >>"$LOGS/deps.log" 2>&1
rc=$?
record deps "$(status_of $rc 0)" $((SECONDS - t0)) "$(tail -1 "$LOGS/deps.log")" "$LOGS/deps.log"

# ---- diffusers, carried as wheels --------------------------------------------------------------

PYENV=(env)
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    run_step wheels 60 "$LOGS/wheels.log" python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl
    PYENV=(env "PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}")
    if timeout 60 "${PYENV[@]}" python3 -c 'import diffusers, peft; print("diffusers", diffusers.__version__, "peft", peft.__version__)' \
        >>"$LOGS/wheels.log" 2>&1; then
        set_detail "$(tail -1 "$LOGS/wheels.log")"
    else
        fail_last "diffusers or peft does not import"
    fi
else
    skip_step wheels "no .whl carried (scripts/gpu_wheels.sh): the diffusers steps will fail"
fi

# ---- configure and build ----------------------------------------------------------------------

# cuDNN: the system's, else the one PyTorch's nvidia-cudnn wheel ships (headers and libcudnn.so.9)
CUDNN_CMAKE=()
if ! compgen -G "/usr/include/cudnn.h" >/dev/null && ! compgen -G "/usr/local/cuda/include/cudnn.h" >/dev/null &&
    ! compgen -G "/usr/include/x86_64-linux-gnu/cudnn.h" >/dev/null; then
    nv=$(timeout 30 python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null)
    h=$([ -n "$nv" ] && timeout 20 find "$nv" -name cudnn.h 2>/dev/null | head -1)
    lib=$([ -n "$nv" ] && timeout 20 find "$nv" \( -name libcudnn.so -o -name 'libcudnn.so.[0-9]' \) 2>/dev/null | head -1)
    if [ -n "$h" ] && [ -n "$lib" ]; then
        CUDNN_CMAKE=(-DCUDNN_INCLUDE_DIR="$(dirname "$h")" -DCUDNN_LIBRARY="$lib")
        RPATH_DIRS=${RPATH_DIRS:+$RPATH_DIRS:}$(dirname "$lib")
        echo "cuDNN from PyTorch's wheel: $h, $lib"
    fi
fi
[ -n "$RPATH_DIRS" ] &&
    CUDNN_CMAKE+=("-DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags -Wl,-rpath,$RPATH_DIRS -Wl,-rpath-link,$RPATH_DIRS")
GEN=()
command -v ninja >/dev/null && [ ! -f "$BUILD/CMakeCache.txt" ] && GEN=(-G Ninja)
run_step configure 90 "$LOGS/configure.log" \
    cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DDANLU_CUDA=ON -DDANLU_TESTS=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" "${DEPS_CMAKE[@]}" "${CUDNN_CMAKE[@]}"
if [ $LAST_RC = 0 ]; then
    if grep -q "device layer: emulated (always), real ON" "$LOGS/configure.log"; then
        set_detail "$(grep -o 'CUDA backend uses [a-z]*' "$LOGS/configure.log"), arch $ARCH"
    else
        fail_last "the real CUDA device is not built (no cuDNN?): --backend cuda would run emulated"
    fi
fi

run_step build_tools 120 "$LOGS/build_tools.log" cmake --build "$BUILD" -j"$JOBS" --target danlu-mkcheckpoint
find_bin() { find "$BUILD" -type f -name "$1" -perm -u+x 2>/dev/null | head -1; }
MKCK=$(find_bin danlu-mkcheckpoint)
SD15=$WORK/sd15.safetensors   # written atomically: one left by an earlier run is whole
if [ -n "$MKCK" ] && [ ! -s "$SD15" ]; then
    bg_start sd15 150 "$LOGS/sd15.log" "$MKCK" -o "$SD15" --preset sd15
fi
run_step build 300 "$LOGS/build.log" cmake --build "$BUILD" -j"$JOBS" --target danlu danlu_tests \
    bench_train_step bench_models danlu_gpu_tests bench_gpu_kernels
DANLU=$(find_bin danlu)
TESTS=$(find_bin danlu_tests)
GPUTESTS=$(find_bin danlu_gpu_tests)
KBENCH=$(find_bin bench_gpu_kernels)
BTS=$(find_bin bench_train_step)
BM=$(find_bin bench_models)

# ---- correctness on the device -----------------------------------------------------------------

if [ -n "$GPUTESTS" ]; then
    run_step kernels 120 "$LOGS/kernels.log" "$GPUTESTS"
    set_detail "$(grep -E '^summary:' "$LOGS/kernels.log" | tail -1)"
else
    skip_step kernels "danlu_gpu_tests not built"
fi

# criterion_suite NAME FILTER: danlu_tests on the tests FILTER matches; no test matched fails
criterion_suite() {
    if [ -z "$TESTS" ]; then
        skip_step "$1" "danlu_tests not built"
        return
    fi
    run_step "$1" 150 "$LOGS/$1.log" "$TESTS" --filter "$2" --jobs 4
    local syn
    syn=$(grep -o 'Synthesis: .*' "$LOGS/$1.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g')
    if [ $LAST_RC = 0 ] && ! grep -Eq 'Tested: [1-9]' <<<"$syn"; then
        fail_last "no test matched '$2' (${syn:-no synthesis line})"
    else
        set_detail "$2: ${syn:-no synthesis line}"
    fi
}
criterion_suite backend 'backend_table*/*'
criterion_suite train_be 'train_backend/*'

# tiny_args BACKEND STEPS OUT: TA = danlu train on tiny_pipe (the demo's images at 32²), fp32
tiny_args() {
    TA=(train --pretrained_model_name_or_path "$ROOT/tests/golden/tiny_pipe"
        --train_data_dir "$ROOT/examples/demo/data" --output_dir "$3" --output_name tiny
        --resolution 32 --train_batch_size 1 --max_train_steps "$2" --learning_rate 1e-4
        --network_dim 4 --network_alpha 4 --seed 7 --mixed_precision no --save_precision float
        --no_hash_cache --threads 4 --backend "$1")
}
if [ -n "$DANLU" ]; then
    RUNS=$WORK/runs
    tiny_args cuda 4 "$RUNS/tiny-cuda"
    run_step tiny_cuda 90 "$LOGS/tiny_cuda.log" "$DANLU" "${TA[@]}"
    cuda_rc=$LAST_RC
    tiny_args cpu 4 "$RUNS/tiny-cpu"
    run_step tiny_cpu 90 "$LOGS/tiny_cpu.log" "$DANLU" "${TA[@]}"
    if [ $cuda_rc = 0 ] && [ $LAST_RC = 0 ]; then
        run_step tiny_compare 60 "$LOGS/tiny_compare.log" python3 "$ROOT/scripts/compare_train.py" \
            "$RUNS/tiny-cpu" "$RUNS/tiny-cuda" --name tiny --json "$JS/compare_tiny.json"
        set_detail "$(grep -E '^LoRA:' "$LOGS/tiny_compare.log" | cut -c1-110)"
    else
        skip_step tiny_compare "a tiny run failed"
    fi
    # compute-sanitizer, the four tools at once on the 2-step run
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck synccheck initcheck; do
            extra=()
            [ $tool = racecheck ] && extra=(--racecheck-report hazard)
            tiny_args cuda 2 "$RUNS/san-$tool"
            bg_start $tool 180 "$LOGS/$tool.log" compute-sanitizer --tool $tool "${extra[@]}" --error-exitcode 3 \
                "$DANLU" "${TA[@]}"
        done
        for tool in memcheck racecheck synccheck initcheck; do
            bg_wait $tool
            set_detail "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/$tool.log" | tail -1)"
        done
    else
        for tool in memcheck racecheck synccheck initcheck; do skip_step $tool "compute-sanitizer not found"; done
    fi
else
    for s in tiny_cuda tiny_cpu tiny_compare memcheck racecheck synccheck initcheck; do skip_step $s "danlu not built"; done
fi

# ---- full-size SD1.5: the training step and sampling, danlu beside diffusers ---------------------

if [ -n "$MKCK" ] && [ -n "${BG_PID[sd15]+x}" ]; then
    bg_wait sd15
    [ $LAST_RC = 0 ] && set_detail "$(du -h "$SD15" | cut -f1) random SD1.5 (fp16)"
elif [ -s "$SD15" ]; then
    record sd15 PASS 0 "$(du -h "$SD15" | cut -f1) random SD1.5, from an earlier run in $WORK"
    LAST_RC=0
else
    skip_step sd15 "danlu-mkcheckpoint not built"
fi
HAVE_SD15=0
[ -s "$SD15" ] && [ $LAST_RC = 0 ] && HAVE_SD15=1

# train_step NAME LOG cmd...: one training-step benchmark with the nvidia-smi sampler around it
train_step() {
    local name=$1 log=$2
    shift 2
    smi_start "$WORK/smi-$name.txt"
    run_step "$name" 150 "$log" "$@"
    smi_stop "$WORK/smi-$name.txt" "$name"
}
if [ $HAVE_SD15 = 1 ] && [ -n "$BTS" ]; then
    prec=()
    "$BTS" --help 2>&1 | grep -q -- '--precision' && prec=(--precision bf16)
    train_step train_danlu "$LOGS/train_danlu.log" "$BTS" --model "$SD15" --backend cuda --size 64 --rank 16 \
        --steps 10 "${prec[@]}" --json "$JS/train_danlu.json"
    [ $LAST_RC = 0 ] && set_detail "${prec[*]:-fp32}: $(grep -o '[0-9.]* it/s, backend memory [0-9.]* GiB' "$LOGS/train_danlu.log")"
else
    skip_step train_danlu "no SD1.5 checkpoint or bench_train_step"
fi
for dt in bf16 fp32; do
    train_step train_torch_$dt "$LOGS/train_torch_$dt.log" "${PYENV[@]}" python3 "$ROOT/bench/torch_train_step.py" \
        --device cuda --dtype $dt --size 64 --rank 16 --steps 10 --json "$JS/train_torch_$dt.json"
    [ $LAST_RC = 0 ] && set_detail "$(grep -o '([0-9.]* it/s)' "$LOGS/train_torch_$dt.log"), $(grep -o 'peak VRAM [0-9.]* GiB' "$LOGS/train_torch_$dt.log")"
done

if [ $HAVE_SD15 = 1 ] && [ -n "$BM" ]; then
    run_step unet_cfg 90 "$LOGS/unet_cfg.log" "$BM" --model "$SD15" --what unet64 --batch 2 --backend cuda \
        --repeats 20 --json "$JS/unet_cfg_danlu.json"
    set_detail "$(grep -o '[0-9.]* ms per evaluation' "$LOGS/unet_cfg.log")"
else
    skip_step unet_cfg "no SD1.5 checkpoint or bench_models"
fi
if [ $HAVE_SD15 = 1 ] && [ -n "$DANLU" ]; then
    run_step sample_danlu 120 "$LOGS/sample_danlu.log" "$DANLU" sample --model "$SD15" \
        --tokenizer "$ROOT/tests/golden/tiny_pipe/tokenizer" --prompt "a photo of a cat" --negative-prompt blurry \
        --sampler euler --steps 20 --cfg-scale 7 --width 512 --height 512 --seed 1 --backend cuda --verbose \
        --out-dir "$WORK/runs/sample" --overwrite
    set_detail "$(grep -o 'UNet steps [0-9.]* s ([0-9]* x [0-9.]* s)' "$LOGS/sample_danlu.log")"
else
    skip_step sample_danlu "no SD1.5 checkpoint or danlu"
fi
for dt in fp16 fp32; do
    run_step sample_torch_$dt 120 "$LOGS/sample_torch_$dt.log" "${PYENV[@]}" python3 "$ROOT/bench/torch_sample.py" \
        --device cuda --dtype $dt --size 512 --steps 20 --tokenizer "$ROOT/tests/golden/tiny_pipe/tokenizer" \
        --json "$JS/sample_torch_$dt.json"
    set_detail "$(grep -o '[0-9.]* ms/step (median)' "$LOGS/sample_torch_$dt.log")"
done

# ---- the kernels' benchmark, and the kernel tests under compute-sanitizer (what time is left) ----

if [ -n "$KBENCH" ]; then
    run_step kbench 120 "$LOGS/kbench.log" "$KBENCH" --json "$OUTDIR/bench_kernels.json"
    set_detail "$(grep -c -E '^(attention|groupnorm|lora)' "$LOGS/kbench.log") shapes timed"
else
    skip_step kbench "bench_gpu_kernels not built"
fi
if [ -n "$GPUTESTS" ] && command -v compute-sanitizer >/dev/null; then
    run_step k_memcheck 90 "$LOGS/k_memcheck.log" compute-sanitizer --tool memcheck --error-exitcode 3 \
        "$GPUTESTS" --quick
    set_detail "$(grep -E 'ERROR SUMMARY' "$LOGS/k_memcheck.log" | tail -1)"
    run_step k_racecheck 120 "$LOGS/k_racecheck.log" compute-sanitizer --tool racecheck --racecheck-report hazard \
        --error-exitcode 3 "$GPUTESTS" --quick
    set_detail "$(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$LOGS/k_racecheck.log" | tail -1)"
else
    skip_step k_sanitizers "danlu_gpu_tests or compute-sanitizer missing"
fi

# ---- the figures beside the targets, then the summary -------------------------------------------

echo "== report" | tee "$LOGS/report.log"
t0=$SECONDS
timeout 30 python3 "$ROOT/scripts/gpu_report.py" "$JS" --device "$(sed -n 2p "$OUTDIR/device.txt")" \
    --sample-log "$LOGS/sample_danlu.log" \
    --out "$OUTDIR/results.json" --table "$WORK/figures.txt" >>"$LOGS/report.log" 2>&1
rc=$?
record report "$(status_of $rc 30)" $((SECONDS - t0)) "$(tail -1 "$LOGS/report.log")" "$LOGS/report.log"
finish
exit $FAILED
