"""Tiny random SD1-style checkpoint in both layouts, for the checkpoint-loading tests.

Writes tests/golden/tiny_sd15/ (a diffusers folder: unet/, vae/, text_encoder/, scheduler/,
model_index.json; no tokenizer) and tests/golden/tiny_sd15.safetensors (the same weights in the
original-SD single-file layout: model.diffusion_model.*, first_stage_model.*,
cond_stage_model.transformer.*). The single file is built with our own diffusers -> ldm mapping
and then checked by converting it back with diffusers' own single-file converters, which must
give back every tensor exactly.

Weights are rounded to bf16 precision so that they are exact in fp16 and bf16 both; the two
layouts store them in different dtypes (folder: unet F16, vae BF16, text F16; single file: unet
BF16, vae F16, text BF16), so the loader's conversions are exercised and still read identically.
"""
import json
import os
import shutil

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from goldenlib import GOLDEN_DIR

torch.manual_seed(1234)

UNET_KW = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
               layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
               attention_head_dim=8, norm_num_groups=32)
VAE_KW = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
              layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=16)
# hidden 64 with one head: head dim 64 as in the real models, so the head count can be inferred.
CLIP_KW = dict(hidden_size=64, intermediate_size=128, num_attention_heads=1, num_hidden_layers=2,
               vocab_size=1000, max_position_embeddings=77, hidden_act="quick_gelu",
               bos_token_id=998, eos_token_id=999, pad_token_id=1, projection_dim=64)


def randomize(model):
    """Non-trivial random weights (norms too), rounded to bf16 precision."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            v = torch.randn_like(p) * (0.2 if p.ndim > 1 else 0.5)
            if name.endswith("weight") and p.ndim == 1:
                v = 1.0 + 0.1 * v
            # keep away from fp16 subnormals so the value is exact in fp16 and bf16 both
            v = torch.where(v.abs() < 1e-3, torch.full_like(v, 1e-3) * torch.sign(v + 1e-9), v)
            p.copy_(v.to(torch.bfloat16).to(p.dtype))


def unet_to_ldm(sd, cfg):
    L = cfg["layers_per_block"]
    nb = len(cfg["block_out_channels"])
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    fixed = {v: k for k, v in sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()}
    fixed = {k: v for v, k in fixed.items()}  # diffusers -> ldm
    out = {}
    for k, t in sd.items():
        p = k.split(".")
        if k in fixed:
            nk = fixed[k]
        elif p[0] == "down_blocks":
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
            if kind == "resnets":
                nk = f"input_blocks.{1 + i * (L + 1) + j}.0." + ".".join([res[rest[0]]] + rest[1:])
            elif kind == "attentions":
                nk = f"input_blocks.{1 + i * (L + 1) + j}.1." + ".".join(rest)
            else:  # downsamplers.0.conv.*
                nk = f"input_blocks.{1 + i * (L + 1) + L}.0.op." + rest[-1]
        elif p[0] == "mid_block":
            kind, j, rest = p[1], int(p[2]), p[3:]
            if kind == "resnets":
                nk = f"middle_block.{2 * j}." + ".".join([res[rest[0]]] + rest[1:])
            else:
                nk = "middle_block.1." + ".".join(rest)
        elif p[0] == "up_blocks":
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
            has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
            if kind == "resnets":
                nk = f"output_blocks.{i * (L + 1) + j}.0." + ".".join([res[rest[0]]] + rest[1:])
            elif kind == "attentions":
                nk = f"output_blocks.{i * (L + 1) + j}.1." + ".".join(rest)
            else:
                nk = f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.conv." + rest[-1]
        else:
            raise KeyError(k)
        assert nk not in out, nk
        out["model.diffusion_model." + nk] = t
    assert nb == 2
    return out


def vae_to_ldm(sd, cfg):
    nb = len(cfg["block_out_channels"])
    fixed = sfu.DIFFUSERS_TO_LDM_MAPPING["vae"]
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out = {}
    for k, t in sd.items():
        p = k.split(".")
        if k in fixed:
            nk = fixed[k]
        elif p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2])
            blk = f"{p[0]}.down.{i}" if p[1] == "down_blocks" else f"{p[0]}.up.{nb - 1 - i}"
            if p[3] == "resnets":
                nk = f"{blk}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
            elif p[3] == "downsamplers":
                nk = f"{blk}.downsample.conv.{p[-1]}"
            else:
                nk = f"{blk}.upsample.conv.{p[-1]}"
        elif p[1] == "mid_block":
            if p[2] == "resnets":
                nk = f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
            else:
                nk = f"{p[0]}.mid.attn_1.{attn[p[4]]}.{p[-1]}"
                if t.ndim == 2:
                    t = t[:, :, None, None]  # ldm keeps these as 1x1 convolutions
        else:
            raise KeyError(k)
        assert nk not in out, nk
        out["first_stage_model." + nk] = t
    return out


def main():
    unet = UNet2DConditionModel(**UNET_KW)
    vae = AutoencoderKL(**VAE_KW)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_KW))
    for m in (unet, vae, text):
        randomize(m)

    folder = os.path.join(GOLDEN_DIR, "tiny_sd15")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    unet.to(torch.float16).save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    vae.to(torch.bfloat16).save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    text.to(torch.float16).save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    os.makedirs(os.path.join(folder, "scheduler"))
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon",
                   "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}, f, indent=2)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline",
                   "scheduler": ["diffusers", "PNDMScheduler"],
                   "text_encoder": ["transformers", "CLIPTextModel"],
                   "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)

    # Read back what was written (so the single file holds exactly the same values).
    u_sd = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    v_sd = load_file(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))
    t_sd = load_file(os.path.join(folder, "text_encoder", "model.safetensors"))
    single = {}
    single.update({k: t.to(torch.bfloat16) for k, t in unet_to_ldm(u_sd, dict(unet.config)).items()})
    single.update({k: t.to(torch.float16) for k, t in vae_to_ldm(v_sd, dict(vae.config)).items()})
    # transformers >= 5 saves CLIPTextModel without the "text_model." prefix; SD1 files have it.
    t_sd = {(k if k.startswith("text_model.") else "text_model." + k): t for k, t in t_sd.items()}
    for k, t in t_sd.items():
        single["cond_stage_model.transformer." + k] = t.to(torch.bfloat16)
    # Extra tensors real checkpoints carry and the networks never use.
    single["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    single["alphas_cumprod"] = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    path = os.path.join(GOLDEN_DIR, "tiny_sd15.safetensors")
    save_file(single, path, metadata={"generator": "tests/gen/gen_checkpoint.py"})

    # Check our mapping with diffusers' own converters: ldm -> diffusers must give back everything.
    ck = {k: v.float() for k, v in load_file(path).items()}
    back_u = sfu.convert_ldm_unet_checkpoint(ck, dict(unet.config))
    back_v = sfu.convert_ldm_vae_checkpoint(ck, dict(vae.config))
    back_t = sfu.convert_ldm_clip_checkpoint(ck)
    for name, ref, back in (("unet", u_sd, back_u), ("vae", v_sd, back_v), ("text", t_sd, back_t)):
        missing = set(ref) - set(back)
        assert not missing, (name, sorted(missing)[:5])
        for k, t in ref.items():
            assert torch.equal(t.float(), back[k].float().reshape(t.shape)), (name, k)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    print(f"wrote {folder}: {total} bytes; {path}: {os.path.getsize(path)} bytes; "
          f"{len(u_sd)} unet, {len(v_sd)} vae, {len(t_sd)} text tensors; round trip through diffusers ok")


if __name__ == "__main__":
    main()
