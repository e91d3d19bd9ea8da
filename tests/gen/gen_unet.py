"""Golden data for the UNet (UNet2DConditionModel) forward on tiny random configurations.

Models:
  sd15  tests/golden/tiny_sd15/ (made by gen_checkpoint.py, reused as is; also present as the
        single file tests/golden/tiny_sd15.safetensors): SD1-style, 1x1-conv proj_in/proj_out,
        block_out_channels (32, 64), 1 layer per block, 8 heads, context 64.
  sd1x  tests/golden/tiny_unet_sd1x/ (written here): SD1-style with odd widths (12, 20),
        norm_num_groups 4, 2 layers per block, 2 heads (head dims 6 and 10), context 48,
        attention in every block.
  sd2x  tests/golden/tiny_unet_sd2x/ (written here): SD2-style, linear proj_in/proj_out,
        3 blocks (12, 20, 28), norm_num_groups 4, the SD2 block pattern (CrossAttn, CrossAttn,
        Down), heads [2, 4, 4] (head dims 6, 5, 7), transformer_layers_per_block [1, 2, 1],
        2 layers per block, context 32,
        upcast_attention False, v-prediction scheduler.
The folders written here also get a minimal random VAE and text encoder: the checkpoint loader
wants all three parts of a diffusers folder; only the UNet is used by these tests.

Cases "<model>_<k>" hold x [N, H, W, 4] (NHWC), t [N], ctx [N, T, cross_dim] and
out [N, H, W, 4] (NHWC), the reference computed by diffusers in float64 (model.double(): the
sinusoidal time projection is computed in float32 by diffusers and cast, as at run time) and
stored as float32. Weights are rounded to bf16 precision and stored as F16 (exact) to keep the
folders small.
"""
import json
import os
import shutil

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from goldenlib import GOLDEN_DIR, Golden, nchw_to_nhwc

SD1X_KW = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(12, 20), layers_per_block=2,
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=48,
               attention_head_dim=2, norm_num_groups=4)
SD2X_KW = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(12, 20, 28), layers_per_block=2,
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
               attention_head_dim=[2, 4, 4], transformer_layers_per_block=[1, 2, 1], use_linear_projection=True,
               upcast_attention=False, norm_num_groups=4)
VAE_KW = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
              up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
              latent_channels=4, norm_num_groups=8, sample_size=8)
CLIP_KW = dict(hidden_size=8, intermediate_size=16, num_attention_heads=1, num_hidden_layers=1, vocab_size=64,
               max_position_embeddings=77, hidden_act="gelu", bos_token_id=62, eos_token_id=63, pad_token_id=1,
               projection_dim=8)


def randomize(model):
    """Non-trivial random weights (norms too), rounded to bf16 precision (exact in fp16)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            v = torch.randn_like(p) * (0.2 if p.ndim > 1 else 0.5)
            if name.endswith("weight") and p.ndim == 1:
                v = 1.0 + 0.1 * v
            v = torch.where(v.abs() < 1e-3, torch.full_like(v, 1e-3) * torch.sign(v + 1e-9), v)
            p.copy_(v.to(torch.bfloat16).to(p.dtype))


def write_folder(name, unet, pred):
    folder = os.path.join(GOLDEN_DIR, name)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    vae = AutoencoderKL(**VAE_KW)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_KW))
    randomize(vae)
    randomize(text)
    unet.to(torch.float16).save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    vae.to(torch.float16).save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    text.to(torch.float16).save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    os.makedirs(os.path.join(folder, "scheduler"))
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": pred}, f, indent=2)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                   "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, f,
                  indent=2)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    print(f"wrote {folder}: {total} bytes")
    return folder


def run_cases(g, model_name, unet, cases):
    """cases: (N, H, W, T, timesteps); the reference in float64."""
    m = unet.to(torch.float64).eval()
    cross = m.config.cross_attention_dim
    for k, (N, H, W, T, ts) in enumerate(cases):
        case = f"{model_name}_{k}"
        x = torch.randn(N, 4, H, W, dtype=torch.float64)
        t = torch.tensor(ts, dtype=torch.float64)
        ctx = torch.randn(N, T, cross, dtype=torch.float64)
        # the inputs are rounded to fp32 first: that is what the C side gets
        x, t, ctx = x.float().double(), t.float().double(), ctx.float().double()
        with torch.no_grad():
            out = m(x, t, encoder_hidden_states=ctx).sample
        g.add(case, "x", nchw_to_nhwc(x))
        g.add(case, "t", t)
        g.add(case, "ctx", ctx)
        g.add(case, "out", nchw_to_nhwc(out))
        print(f"{case}: N={N} {H}x{W} T={T} t={ts} |out|={out.norm().item():.4f}")


def main():
    g = Golden("unet", seed=4321)
    sd15 = UNet2DConditionModel.from_pretrained(os.path.join(GOLDEN_DIR, "tiny_sd15", "unet"))
    run_cases(g, "sd15", sd15, [(1, 8, 8, 77, [999.0]), (2, 10, 6, 5, [1.0, 500.5])])

    sd1x = UNet2DConditionModel(**SD1X_KW)
    randomize(sd1x)
    write_folder("tiny_unet_sd1x", sd1x, "epsilon")
    run_cases(g, "sd1x", sd1x, [(1, 8, 8, 77, [250.0]), (2, 6, 10, 9, [0.0, 999.0])])

    sd2x = UNet2DConditionModel(**SD2X_KW)
    randomize(sd2x)
    write_folder("tiny_unet_sd2x", sd2x, "v_prediction")
    run_cases(g, "sd2x", sd2x, [(1, 8, 8, 77, [777.0]), (2, 12, 4, 3, [13.0, 640.25])])
    g.save()


if __name__ == "__main__":
    main()
