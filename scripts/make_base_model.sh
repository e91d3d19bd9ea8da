#!/usr/bin/env bash
# scripts/make_base_model.sh - the from-scratch recipe of a small SD-architecture base model
# trained by danlu alone on the procedural shapes set (issue 15):
#   1. danlu-shapes           the 120 filled shapes (every shape x colour pair once), 64x64
#   2. danlu-mkcheckpoint     a random-weight model of the "tiny" preset (diffusers folder) with
#                             the demo's small tokenizer (examples/demo/model/tokenizer)
#   3. danlu train-vae        its VAE on the images (reconstruction + KL)
#   4. danlu finetune         UNet and text encoder from their random init, latents of the VAE
#                             just trained, saved as one fp16 single file in the SD layout
#   5. scripts/eval_shapes.py does it follow "a C1 circle on a C2 background"?
# Usage: scripts/make_base_model.sh [WORK_DIR]   (default: base-model-work). Step counts and
# rates from the environment: VAE_STEPS, VAE_LR, UNET_STEPS, UNET_LR, BATCH, THREADS.
# Outputs: WORK_DIR/base.safetensors (fp16) and WORK_DIR/eval.txt. Nothing is committed by it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-base-model-work}
bin=${BIN:-build/release}
danlu=$bin/danlu
VAE_STEPS=${VAE_STEPS:-900} VAE_LR=${VAE_LR:-2e-3}
UNET_STEPS=${UNET_STEPS:-1000} UNET_LR=${UNET_LR:-5e-4}
BATCH=${BATCH:-8} THREADS=${THREADS:-0}
mkdir -p "$work"
t0=$(date +%s)
stamp() { echo "==== [$(( $(date +%s) - t0 )) s] $*"; }

stamp "danlu-shapes"
[ -d "$work/shapes" ] || "$bin/tools/danlu-shapes" --out "$work/shapes" --count 0 --size 64 --repeats 1

stamp "danlu-mkcheckpoint (random init, tiny preset) + the demo tokenizer"
if [ ! -d "$work/random" ]; then
  "$bin/tools/danlu-mkcheckpoint" -o "$work/random" --preset tiny --layout diffusers --dtype fp32 --seed 0
  cp -r examples/demo/model/tokenizer "$work/random/"
fi

stamp "danlu train-vae ($VAE_STEPS steps)"
"$danlu" train-vae --pretrained_model_name_or_path "$work/random" --train_data_dir "$work/shapes" \
  --output_dir "$work/vae" --output_name vae --save_model_as diffusers --resolution 64 \
  --train_batch_size "$BATCH" --learning_rate "$VAE_LR" --lr_scheduler cosine --lr_warmup_steps 20 \
  --kl_weight 1e-6 --max_train_steps "$VAE_STEPS" --flip_aug --seed 1 --threads "$THREADS" \
  --save_every_n_steps 200 --save_last_n_steps 200 --save_state

stamp "danlu finetune: UNet + text encoder from random init ($UNET_STEPS steps)"
"$danlu" finetune --pretrained_model_name_or_path "$work/vae/vae" --train_data_dir "$work/shapes" \
  --output_dir "$work/unet" --output_name base --resolution 64 --train_batch_size "$BATCH" \
  --learning_rate "$UNET_LR" --train_text_encoder --lr_scheduler cosine --lr_warmup_steps 50 \
  --max_train_steps "$UNET_STEPS" --cache_latents --seed 2 --threads "$THREADS" \
  --save_precision fp16 --save_every_n_steps 250 --save_last_n_steps 250 --save_state
cp "$work/unet/base.safetensors" "$work/base.safetensors"
ls -la "$work/base.safetensors"

stamp "eval: a C1 circle on a C2 background"
python3 scripts/eval_shapes.py "$danlu" "$work/base.safetensors" "$work/random/tokenizer" "$work/eval" 3 |
  tee "$work/eval.txt"
stamp "done"
