#!/usr/bin/env bash
# scripts/demo.sh - the main job end to end on the embedded default, for a newcomer with no
# weights: a small SD-architecture model of our own (examples/demo/model: random weights, tiny
# tokenizer) and an example dataset (examples/demo/data: eight 64x64 images with captions).
# Trains a LoRA with `danlu train`, then samples with and without it (`danlu sample`) and draws
# a LoRA-weight grid (`danlu grid`). Outputs go to demo-out/ (or $1). On a bare machine it
# first installs the Debian packages the build needs (scripts/deps.sh) and builds. Takes well under a minute
# on two cores once built. The pictures are not art: the base model's weights are random; the
# point is that every stage runs and what it writes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-demo-out}
danlu=${DANLU:-build/release/danlu}
if [ ! -x "$danlu" ]; then
  mkdir -p build
  bash scripts/deps.sh   # the build's Debian packages, the same list scripts/test.sh uses
  echo "==== building $danlu (cmake, CPU backend is enough)"
  cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >build/demo.configure.log 2>&1 ||
    { cat build/demo.configure.log; exit 1; }
  cmake --build build/release -j"$(nproc)" --target danlu
fi
rm -rf "$out"
model=examples/demo/model

echo "==== danlu train (120 steps, rank 8, UNet + text-encoder LoRA)"
"$danlu" train --config examples/demo/train.json --output_dir "$out"

echo "==== danlu sample: the base model, then with the LoRA"
mkdir -p "$out/images"
"$danlu" sample --model "$model" --prompt "ringstyle, warm colors, thin rings" --negative-prompt blurry \
  --width 64 --height 64 --steps 20 --cfg-scale 5 --sampler euler_a --seed 3 --out-dir "$out/images"
"$danlu" sample --model "$model" --lora "$out/ringstyle.safetensors" \
  --prompt "ringstyle, warm colors, thin rings" --negative-prompt blurry \
  --width 64 --height 64 --steps 20 --cfg-scale 5 --sampler euler_a --seed 3 --out-dir "$out/images"

echo "==== danlu grid: LoRA weight 0, 0.5, 1 across the x axis"
"$danlu" grid --model "$model" --lora "$out/ringstyle.safetensors" --prompt "ringstyle, cool colors" \
  --width 64 --height 64 --steps 12 --seed 5 --x weight:0,0.5,1 --out "$out/grid.png"

echo
echo "==== done: $out/"
ls -1 "$out" "$out/images" "$out/sample" | sed 's/^/    /'
