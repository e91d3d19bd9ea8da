"""Golden data for the SDXL UNet (UNet2DConditionModel with addition_embed_type "text_time") on a
tiny random configuration of SDXL's architecture, in both checkpoint layouts.

Model tests/golden/tiny_unet_sdxl/ (diffusers folder, fp16 weights rounded to bf16 precision) and
the same weights as an SGM/ldm single file tests/golden/tiny_unet_sdxl.safetensors:
  UNet  block_out_channels (8, 16, 16), 2 layers per block, norm_num_groups 4; SDXL's block pattern
        (DownBlock2D, CrossAttnDownBlock2D x 2 / CrossAttnUpBlock2D x 2, UpBlock2D): no attention on
        the first level; heads per level [1, 2, 4] (head dims 8 and 4 where there is attention),
        transformer_layers_per_block [1, 1, 2] (the mid block and up block 0 take 2, up block 1
        takes 1), linear proj_in/proj_out, cross_attention_dim 24; text_time added conditioning
        with addition_time_embed_dim 8 and projection_class_embeddings_input_dim 68 = 20 (pooled
        text embedding) + 6 x 8; flip_sin_to_cos, freq_shift 0 as SDXL.
  VAE   one level of 32 channels, 32 groups; text encoder: CLIP, 64 wide, one layer, quick_gelu.
        (Only the UNet is tested; the VAE and text encoder are what a single file's detection
        reads back: 32 norm groups, head dim 64.)
The single file's keys are written here by an independent diffusers -> SGM name map and checked
against diffusers' own single-file converters (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint give back exactly the folder's tensors).
The UNet's heads and norm groups are not in its weights: danlu reads this single file with the
folder's unet/config.json (dl_ckpt_options.unet_config).

tests/golden/sdxl_unet.safetensors, cases "xl_<k>": x [N, H, W, 4] (NHWC), t [N], ctx [N, T, 24],
text_embeds [N, 20], time_ids [N, 6], out [N, H, W, 4] (NHWC), diffusers in float64 (its
sinusoids in float32, as diffusers computes them, then cast).

tests/golden/sdxl_unet_train.safetensors, case "xl_train": one LoRA step with PEFT adapters
(LoraConfig r 4, alpha 2, dropout 0) on every transformer's proj_in, proj_out, attn1/attn2 to_q,
to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2 and on three resnet convs (LoCon: PEFT's kxk down
conv, 1x1 up conv), A and B random and nonzero; loss = mse(out, target), float64. Holds the
inputs, target, out, loss [1], dctx (d loss / d encoder_hidden_states), n_lora [1], and per
adapted module "<name>.A", ".B", ".dA", ".dB", ".scale" in danlu's layouts (linear A [r, in],
B [out, r]; conv A [r, k, k, Cin], B [Cout, r]).
"""
import json
import os
import shutil

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                 convert_ldm_vae_checkpoint)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from gen_unet import randomize
from goldenlib import GOLDEN_DIR, Golden, nchw_to_nhwc, oihw_to_ohwi

TEXT_EMBEDS, TIME_DIM, N_IDS = 20, 8, 6
UNET_KW = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=24,
               attention_head_dim=[1, 2, 4], transformer_layers_per_block=[1, 1, 2], use_linear_projection=True,
               norm_num_groups=4, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
               projection_class_embeddings_input_dim=TEXT_EMBEDS + N_IDS * TIME_DIM, flip_sin_to_cos=True,
               freq_shift=0)
VAE_KW = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
              up_block_types=("UpDecoderBlock2D",), block_out_channels=(32,), layers_per_block=1,
              latent_channels=4, norm_num_groups=32, sample_size=16, scaling_factor=0.13025)
CLIP_KW = dict(hidden_size=64, intermediate_size=128, num_attention_heads=1, num_hidden_layers=1, vocab_size=64,
               max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=62, eos_token_id=63,
               pad_token_id=1, projection_dim=64)
FOLDER, SINGLE = "tiny_unet_sdxl", "tiny_unet_sdxl.safetensors"

LORA_TARGETS = ["proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
                "down_blocks.0.resnets.1.conv1", "mid_block.resnets.0.conv2", "up_blocks.2.resnets.0.conv1"]
RANK, ALPHA = 4, 2.0

# ---------------------------------------------------------------- diffusers -> SGM / ldm names

RESNET = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
          ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."))


def resnet_rest(rest):
    for a, b in RESNET:
        if rest.startswith(a):
            return b + rest[len(a):]
    raise KeyError(rest)


def unet_key(name, cfg):
    """The single-file key of a diffusers UNet tensor (layers_per_block L, n levels)."""
    L, n = cfg["layers_per_block"], len(cfg["block_out_channels"])
    fixed = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
             "time_embedding.linear_2.": "time_embed.2.", "add_embedding.linear_1.": "label_emb.0.0.",
             "add_embedding.linear_2.": "label_emb.0.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for a, b in fixed.items():
        if name.startswith(a):
            return "model.diffusion_model." + b + name[len(a):]
    p = name.split(".")
    if p[0] == "down_blocks":
        i = int(p[1])
        if p[2] == "resnets":
            return f"model.diffusion_model.input_blocks.{1 + i * (L + 1) + int(p[3])}.0." + resnet_rest(".".join(p[4:]))
        if p[2] == "attentions":
            return f"model.diffusion_model.input_blocks.{1 + i * (L + 1) + int(p[3])}.1." + ".".join(p[4:])
        if p[2] == "downsamplers":
            return f"model.diffusion_model.input_blocks.{1 + i * (L + 1) + L}.0.op." + ".".join(p[5:])
    if p[0] == "mid_block":
        if p[1] == "resnets":
            return f"model.diffusion_model.middle_block.{2 * int(p[2])}." + resnet_rest(".".join(p[3:]))
        return "model.diffusion_model.middle_block.1." + ".".join(p[3:])
    if p[0] == "up_blocks":
        i = int(p[1])
        if p[2] == "resnets":
            return f"model.diffusion_model.output_blocks.{i * (L + 1) + int(p[3])}.0." + resnet_rest(".".join(p[4:]))
        if p[2] == "attentions":
            return f"model.diffusion_model.output_blocks.{i * (L + 1) + int(p[3])}.1." + ".".join(p[4:])
        if p[2] == "upsamplers":
            has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
            return f"model.diffusion_model.output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.conv." + p[-1]
    raise KeyError(name)


def vae_key(name, n):
    """The single-file key of a diffusers AutoencoderKL tensor (n levels); ldm's mid attention
    holds 1x1 convs (the caller reshapes)."""
    p = name.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return "first_stage_model." + name
    side, rest = p[0], p[1:]
    out = "first_stage_model." + side + "."
    if rest[0] in ("conv_in", "conv_out"):
        return out + ".".join(rest)
    if rest[0] == "conv_norm_out":
        return out + "norm_out." + rest[1]

    def res(parts):
        s = ".".join(parts)
        return s.replace("conv_shortcut.", "nin_shortcut.")
    if rest[0] == "down_blocks":
        i = rest[1]
        if rest[2] == "resnets":
            return out + f"down.{i}.block.{rest[3]}." + res(rest[4:])
        return out + f"down.{i}.downsample.conv." + rest[-1]
    if rest[0] == "up_blocks":
        i = n - 1 - int(rest[1])
        if rest[2] == "resnets":
            return out + f"up.{i}.block.{rest[3]}." + res(rest[4:])
        return out + f"up.{i}.upsample.conv." + rest[-1]
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return out + f"mid.block_{int(rest[2]) + 1}." + res(rest[3:])
        m = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
        return out + "mid.attn_1." + m[rest[3]] + "." + rest[-1]
    raise KeyError(name)


def write_single(path, unet, vae, text):
    sd = {}
    for k, v in unet.state_dict().items():
        sd[unet_key(k, unet.config)] = v
    for k, v in vae.state_dict().items():
        key = vae_key(k, len(vae.config.block_out_channels))
        if ".mid.attn_1." in key and key.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]
        sd[key] = v
    for k, v in text.state_dict().items():
        if not k.endswith("position_ids"):  # transformers 5 drops CLIPTextModel's "text_model." prefix
            sd["conditioner.embedders.0.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k] = v
    sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
    save_file(sd, path)
    print(f"wrote {path}: {len(sd)} tensors, {os.path.getsize(path)} bytes")
    return sd


def same_tensors(label, got, want):
    """Two state dicts hold the same names and values (fp16)."""
    want = {k: v for k, v in want.items() if not k.endswith("position_ids")}
    got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
    if set(got) != set(want):
        raise SystemExit(f"FAIL {label}: keys differ: missing {sorted(set(want) - set(got))[:5]}, "
                         f"extra {sorted(set(got) - set(want))[:5]}")
    for k in want:
        if not torch.equal(got[k].to(torch.float16).reshape(want[k].shape), want[k].to(torch.float16)):
            raise SystemExit(f"FAIL {label}: {k} differs")
    print(f"{label}: diffusers' converter gives back all {len(want)} tensors exactly")


def check_single(sd, unet, vae, text):
    """diffusers' own single-file converters read the file back as the folder's tensors."""
    same_tensors("single-file UNet", convert_ldm_unet_checkpoint(sd, unet.config), unet.state_dict())
    same_tensors("single-file VAE", convert_ldm_vae_checkpoint(sd, vae.config), vae.state_dict())
    te = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith("conditioner.embedders.0.")})
    plain = lambda d: {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in d.items()}
    same_tensors("single-file text encoder", plain(te), plain(text.state_dict()))


def write_models():
    unet = UNet2DConditionModel(**UNET_KW)
    vae = AutoencoderKL(**VAE_KW)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_KW))
    for m in (unet, vae, text):
        randomize(m)
        m.to(torch.float16)
    folder = os.path.join(GOLDEN_DIR, FOLDER)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    vae.save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    text.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    os.makedirs(os.path.join(folder, "scheduler"))
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon"}, f, indent=2)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                   "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                   "scheduler": ["diffusers", "EulerDiscreteScheduler"]}, f, indent=2)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    print(f"wrote {folder}: {total} bytes, UNet {sum(p.numel() for p in unet.parameters())} parameters")
    sd = write_single(os.path.join(GOLDEN_DIR, SINGLE), unet, vae, text)
    check_single(sd, unet, vae, text)
    return UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"))


def inputs(N, H, W, T, ts, ids, cross):
    """x, t, ctx, text_embeds, time_ids in float64, each rounded to fp32 first (what the C side gets)."""
    r = lambda *s: torch.randn(*s, dtype=torch.float64).float().double()
    x, ctx, te = r(N, 4, H, W), r(N, T, cross), r(N, TEXT_EMBEDS)
    t = torch.tensor(ts, dtype=torch.float64).float().double()
    tid = torch.tensor(ids, dtype=torch.float64).float().double()
    return x, t, ctx, te, tid


def add_inputs(g, case, x, t, ctx, te, tid):
    g.add(case, "x", nchw_to_nhwc(x))
    g.add(case, "t", t)
    g.add(case, "ctx", ctx)
    g.add(case, "text_embeds", te)
    g.add(case, "time_ids", tid)


def forward_cases(unet):
    g = Golden("sdxl_unet", seed=8080)
    m = unet.to(torch.float64).eval()
    cases = [(1, 8, 8, 77, [999.0], [[1024, 1024, 0, 0, 1024, 1024]]),
             (2, 12, 4, 5, [13.0, 640.25], [[64, 48, 8, 0, 64, 64], [832, 1216, 16, 32, 1024, 1024]])]
    for k, (N, H, W, T, ts, ids) in enumerate(cases):
        case = f"xl_{k}"
        x, t, ctx, te, tid = inputs(N, H, W, T, ts, ids, m.config.cross_attention_dim)
        with torch.no_grad():
            out = m(x, t, encoder_hidden_states=ctx, added_cond_kwargs={"text_embeds": te, "time_ids": tid}).sample
            base = m(x, t, encoder_hidden_states=ctx,
                     added_cond_kwargs={"text_embeds": te * 0, "time_ids": tid * 0}).sample
        add_inputs(g, case, x, t, ctx, te, tid)
        g.add(case, "out", nchw_to_nhwc(out))
        print(f"{case}: N={N} {H}x{W} T={T} t={ts} |out|={out.norm().item():.4f}, the added conditioning moves it "
              f"by {(out - base).norm().item() / out.norm().item():.3f} (relative)")
    g.save()


def lora_case(unet):
    from peft import LoraConfig
    g = Golden("sdxl_unet_train", seed=9090)
    unet = unet.to(torch.float64).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, init_lora_weights=False,
                                target_modules=LORA_TARGETS))
    unet.to(torch.float64)
    loras = {}
    for name, mod in unet.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            fan_in = A[0].numel()
            with torch.no_grad():
                A.copy_(((torch.rand(A.shape, dtype=torch.float64) * 2 - 1) / fan_in ** 0.5).float().double())
                B.copy_((torch.randn(B.shape, dtype=torch.float64) * 0.2).float().double())
            A.requires_grad_(True)
            B.requires_grad_(True)
            loras[name] = (A, B, mod.scaling["default"])
    N, H, W, T = 2, 8, 8, 7
    x, t, ctx, te, tid = inputs(N, H, W, T, [100.0, 700.0], [[512, 512, 0, 0, 512, 512], [640, 384, 32, 8, 576, 448]],
                                unet.config.cross_attention_dim)
    ctx.requires_grad_(True)
    target = torch.randn(N, 4, H, W, dtype=torch.float64).float().double()
    out = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs={"text_embeds": te, "time_ids": tid}).sample
    loss = F.mse_loss(out, target)
    loss.backward()
    case = "xl_train"
    add_inputs(g, case, x, t, ctx, te, tid)
    g.add(case, "target", nchw_to_nhwc(target))
    g.add(case, "out", nchw_to_nhwc(out))
    g.add(case, "loss", loss.reshape(1))
    g.add(case, "dctx", ctx.grad)
    g.add(case, "n_lora", torch.tensor([len(loras)], dtype=torch.int64))
    danlu = lambda w: oihw_to_ohwi(w) if w.ndim == 4 else w  # conv A [r, Cin, k, k] -> [r, k, k, Cin]
    for name, (A, B, scale) in loras.items():
        g.add(case, f"{name}.A", danlu(A))
        g.add(case, f"{name}.B", B.reshape(B.shape[0], B.shape[1]))
        g.add(case, f"{name}.dA", danlu(A.grad))
        g.add(case, f"{name}.dB", B.grad.reshape(B.shape[0], B.shape[1]))
        g.add(case, f"{name}.scale", torch.tensor([scale], dtype=torch.float64))
    n_conv = sum(1 for A, _, _ in loras.values() if A.ndim == 4)
    gn = torch.cat([torch.cat([A.grad.flatten(), B.grad.flatten()]) for A, B, _ in loras.values()]).norm()
    print(f"{case}: {len(loras)} PEFT LoRA modules ({n_conv} conv), loss={loss.item():.6f} |grad|={gn.item():.4g} "
          f"|dctx|={ctx.grad.norm().item():.4g}")
    g.save()


def main():
    torch.manual_seed(1717)
    unet = write_models()
    forward_cases(unet)
    lora_case(UNet2DConditionModel.from_pretrained(os.path.join(GOLDEN_DIR, FOLDER, "unet")))


if __name__ == "__main__":
    main()
