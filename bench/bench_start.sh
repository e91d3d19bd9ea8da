#!/usr/bin/env bash
# bench/bench_start.sh - the fixed cost of `danlu sample` (everything but the sampling steps):
# runs it with 1 and 2 steps, twice each (the second run finds the model hash in the cache),
# with --verbose, and prints the phase times and "fixed cost = t(1 step) - (t(2) - t(1))" beside
# one step's time. docs/perf.md records what it printed; bench/torch_load.py is diffusers' side.
#
# usage: bench/bench_start.sh MODEL.safetensors [SIZE]   (DANLU=path/to/danlu, DANLU_THREADS=N,
#        REPEAT=N: the fastest of N runs of each kind)
set -euo pipefail
model=$1
size=${2:-256}
danlu=${DANLU:-build/release/danlu}
tok=${TOKENIZER:-$(dirname "$0")/../../shared/data/clip/bpe_simple_vocab_16e6.txt.gz}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export XDG_CACHE_HOME=$out/cache   # a fresh hash cache: the first run hashes, later runs hit
run() {
  local steps=$1 t0 t1
  t0=$(date +%s.%N)
  "$danlu" sample --model "$model" --tokenizer "$tok" --prompt "a photo of a cat" --negative-prompt blurry \
    --steps "$steps" --cfg-scale 7 --sampler euler --width "$size" --height "$size" --seed 1 \
    --out-dir "$out/img" --overwrite --quiet --verbose 2>&1 >/dev/null | sed 's/^/    /' >&2
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}
# the fastest of REPEAT runs (default 1) of each kind: on a shared machine the minimum is the
# run that other work disturbed least
best() {
  local steps=$1 b="" t
  for _ in $(seq "${REPEAT:-1}"); do
    t=$(run "$steps")
    b=$(awk -v a="$t" -v b="$b" 'BEGIN { print (b == "" || a < b) ? a : b }')
  done
  echo "$b"
}
echo "danlu sample, $size x $size, CFG 7, Euler, threads ${DANLU_THREADS:-all}, best of ${REPEAT:-1}: $model"
first=$(run 1); echo "  run 1 (1 step, hash not cached): $(printf %.2f "$first") s"
one=$(best 1);  echo "  1 step, hash cached:             $(printf %.2f "$one") s"
two=$(best 2);  echo "  2 steps, hash cached:            $(printf %.2f "$two") s"
step=$(awk -v a="$one" -v b="$two" 'BEGIN { print b - a }')
fixed=$(awk -v a="$one" -v s="$step" 'BEGIN { print a - s }')
printf '  one step %.2f s; fixed cost (1 step minus a step) %.2f s = %.1f steps\n' "$step" "$fixed" \
  "$(awk -v f="$fixed" -v s="$step" 'BEGIN { print f / s }')"
printf '{"bench":"start","size":%d,"first_run_s":%.3f,"one_step_run_s":%.3f,"step_s":%.3f,"fixed_s":%.3f}\n' \
  "$size" "$first" "$one" "$step" "$fixed"
