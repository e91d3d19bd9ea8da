#!/usr/bin/env bash
# gpu_wheels.sh - downloads, here, the Python wheels that scripts/gpu_check.sh needs on the GPU
# machine and that machine lacks: diffusers (the PyTorch side of the training-step and sampling
# comparisons) and the pure-Python packages it requires that are not in the machine's image
# (the device tool's KINDS.md lists what is there: torch, peft, transformers, huggingface-hub,
# safetensors, numpy, regex, requests, filelock, pillow and zipp are; importlib-metadata and
# its lazy-importer are not). The GPU machine reaches no package registry: gpu_check.sh installs
# these files into /tmp/site there (pip install --no-index --no-deps --target) and puts that on
# PYTHONPATH for the Python steps only.
#
#   scripts/gpu_wheels.sh [DIR]     (DIR defaults to .whl in the repository root)
#
# Once, in the root of the checkout the device tool sends: echo /.whl/ >> .git/info/exclude
# Then name .whl in the run call's carry (docs/perf.md, "GPU check"). About 6.5 MB.
# One version of each package (two stop the install there); the machine's Python is 3.12.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/.whl}
# diffusers' Requires-Dist (0.42.1): importlib_metadata, filelock, huggingface-hub>=1.32,<3,
# numpy, regex, requests, safetensors>=0.8, Pillow; importlib-metadata 10.2: zipp>=3.20,
# lazy-importer (python < 3.15)
WHEELS=(diffusers==0.42.1 importlib-metadata==10.2.0 lazy-importer==0.1.0)

mkdir -p "$DIR"
rm -f "$DIR"/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" "${WHEELS[@]}"
# a new requirement of these versions would show here: compare with the list above
for w in "$DIR"/*.whl; do
    reqs=$(unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | cut -d' ' -f2- | tr '\n' ' ' || true)
    echo "$(basename "$w"): ${reqs:-no requirements}"
done
echo "gpu_wheels: $(find "$DIR" -name '*.whl' | wc -l) wheels in $DIR ($(du -sh "$DIR" | cut -f1)); carry .whl in the run call"
