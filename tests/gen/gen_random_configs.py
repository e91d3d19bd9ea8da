"""Tiny SD pipelines whose UNet, VAE and text-encoder configs are drawn at random over the
legal space danlu supports, with diffusers / transformers reference outputs, for
tests/test_random_configs.c (the weights arenas are measured from the loader, never from a
formula of the config: these configs are what a formula would not foresee).

With a fixed seed it draws, for each pipeline rcK:
  UNet2DConditionModel: 1-4 levels of block_out_channels (rc1 has 4), layers_per_block 1-3, a
    CrossAttn/plain down block per level (up blocks mirrored, sometimes re-drawn), heads per
    level (attention_head_dim as an int or a list), use_linear_projection, transformer depth
    per level (int or list), norm_num_groups, norm_eps, cross_attention_dim (= the text
    encoder's width), flip_sin_to_cos, freq_shift;
  AutoencoderKL: 1-4 levels (rc0 is fixed: the 4-level, layers_per_block 1, widening VAE for
    which the hand-written size formula this replaced came out too small),
    layers_per_block 1-3, norm_num_groups, latent channels, mid-block attention on or off;
  CLIPTextModel: 1-3 layers, heads, hidden and intermediate width, quick_gelu or gelu.
The last pipeline ("rcs") keeps to what a single-file checkpoint can be read back as (32
norm groups, 8 UNet heads with 1x1-conv projections, a 64-wide text encoder with one head):
the test writes it in the single-file layout and loads that too.

Each pipeline is a diffusers folder tests/golden/random_configs/rcK/ (unet/, vae/,
text_encoder/ with config.json + fp16 safetensors, weights scaled up from the default init so
every path matters). The references are computed in float64 from the fp16 weights as written
(read back), and stored channels-last in tests/golden/random_configs.safetensors:
  rcK.unet.{x, t, ctx, out}          x [N, H, W, Cin], t [N], ctx [N, T, Dc], out [N, H, W, Cout]
  rcK.vae.{image, mean, logvar, z, decoded}   image [N, H, W, 3], mean/logvar/z [N, h, w, L]
  rcK.te.{input_ids, last, penultimate}       input_ids [N, T] int64, hidden states [N, T, C]
(penultimate: hidden_states[-2], without the final layer norm).
"""
import json
import os
import random
import shutil

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from goldenlib import GOLDEN_DIR, Golden, nchw_to_nhwc

ROOT = os.path.join(GOLDEN_DIR, "random_configs")
N_RANDOM = 5
rng = random.Random(20240611)
g = Golden("random_configs", seed=77)


def pick_channels(levels, groups, choices):
    """block_out_channels: non-decreasing-ish widths that are multiples of groups."""
    chans = []
    for _ in range(levels):
        c = rng.choice([c for c in choices if c % groups == 0])
        chans.append(c)
    return chans


def draw_clip(single):
    if single:
        hidden, heads = 64, 1
    else:
        hidden = rng.choice([16, 24, 32, 48])
        heads = rng.choice([h for h in (1, 2, 4, 8) if hidden % h == 0])
    return dict(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=rng.randint(1, 3),
                intermediate_size=rng.choice([hidden, 2 * hidden, 3 * hidden]), vocab_size=64,
                max_position_embeddings=16, hidden_act="quick_gelu" if single else rng.choice(["quick_gelu", "gelu"]),
                layer_norm_eps=rng.choice([1e-5, 1e-6]), bos_token_id=62, eos_token_id=63, pad_token_id=1,
                projection_dim=hidden)


def draw_unet(single, cross_dim, deep):
    levels = 4 if deep else rng.randint(1, 2 if single else 4)
    groups = 32 if single else rng.choice([4, 8])
    chans = pick_channels(levels, groups, [32] if single else [8, 16] if deep else [8, 16, 24])
    lpb = 1 if single else rng.randint(1, 2 if levels > 2 else 3)
    down_attn = [rng.random() < 0.6 for _ in range(levels)]
    up_attn = list(reversed(down_attn)) if rng.random() < 0.7 else [rng.random() < 0.6 for _ in range(levels)]
    if single:
        heads = 8
    else:
        per = [rng.choice([h for h in (1, 2, 4, 8) if c % h == 0]) for c in chans]
        heads = per if rng.random() < 0.6 else per[0] if all(c % per[0] == 0 for c in chans) else per
    depth = [rng.randint(1, 1 if single else 2) for _ in range(levels)]
    depth = depth if rng.random() < 0.6 else depth[0]
    return dict(sample_size=8, in_channels=rng.choice([3, 4]), out_channels=rng.choice([3, 4]),
                block_out_channels=tuple(chans), layers_per_block=lpb,
                down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn),
                up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn),
                attention_head_dim=heads, transformer_layers_per_block=depth,
                use_linear_projection=False if single else rng.random() < 0.5, norm_num_groups=groups,
                norm_eps=rng.choice([1e-5, 1e-6]), cross_attention_dim=cross_dim,
                flip_sin_to_cos=rng.random() < 0.7, freq_shift=rng.choice([0, 1]))


def draw_vae(single, issue_case):
    if issue_case:  # 4 levels, layers_per_block 1, widening: the old size formula fell ~3 KB short
        return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 24, 24, 24),
                    layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16,
                    mid_block_add_attention=True)
    levels, lpb = rng.randint(1, 2 if single else 4), 1 if single else rng.randint(1, 3)
    groups = 32 if single else rng.choice([4, 8])
    chans = pick_channels(levels, groups, [32] if single else [8, 16, 24])
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(chans),
                layers_per_block=lpb, latent_channels=rng.choice([2, 3, 4]), norm_num_groups=groups,
                sample_size=16, mid_block_add_attention=True if single else rng.random() < 0.8)


def scale_up(model, s):
    with torch.no_grad():  # larger weights than the default init so every path matters
        for p in model.parameters():
            p.mul_(s)


def build(name, single=False, issue_case=False, deep_unet=False):
    clip_kw = draw_clip(single)
    unet_kw = draw_unet(single, clip_kw["hidden_size"], deep_unet)
    vae_kw = draw_vae(single, issue_case)
    print(f"{name}: unet {unet_kw}\n    vae {vae_kw}\n    text {clip_kw}")
    root = os.path.join(ROOT, name)
    os.makedirs(root)
    unet = UNet2DConditionModel(**unet_kw)
    scale_up(unet, 1.5)
    unet.half().save_pretrained(os.path.join(root, "unet"))
    vae = AutoencoderKL(**vae_kw)
    scale_up(vae, 1.5)
    vae.half().save_pretrained(os.path.join(root, "vae"))
    te = CLIPTextModel(CLIPTextConfig(**clip_kw))
    scale_up(te, 2.0)
    te.half().save_pretrained(os.path.join(root, "text_encoder"))
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}, f,
                  indent=2)
    # the references run on the weights as written (fp16), in float64
    unet = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet")).double().eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(root, "vae")).double().eval()
    te = CLIPTextModel.from_pretrained(os.path.join(root, "text_encoder")).double().eval()

    n_levels = len(unet_kw["block_out_channels"])
    f = 1 << (n_levels - 1)
    N, T = 2, rng.randint(3, 7)
    H, W = f * rng.randint(1, 2), f * rng.randint(1, 3)
    # inputs drawn in float32 (what the golden file stores) and widened for the reference
    x = torch.randn(N, unet_kw["in_channels"], H, W).double()
    t = torch.tensor([rng.uniform(0, 999) for _ in range(N)], dtype=torch.float32).double()
    ctx = torch.randn(N, T, unet_kw["cross_attention_dim"]).double()
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=ctx).sample
    g.add(name, "unet.x", nchw_to_nhwc(x))
    g.add(name, "unet.t", t)
    g.add(name, "unet.ctx", ctx)
    g.add(name, "unet.out", nchw_to_nhwc(out))

    fv = 1 << (len(vae_kw["block_out_channels"]) - 1)
    Hv, Wv = fv * rng.randint(1, 3), fv * rng.randint(1, 2)
    img = (torch.rand(1, 3, Hv, Wv) * 2 - 1).double()
    with torch.no_grad():
        dist = vae.encode(img).latent_dist
        z = torch.randn(dist.mean.shape).double()
        dec = vae.decode(z).sample
    g.add(name, "vae.image", nchw_to_nhwc(img))
    g.add(name, "vae.mean", nchw_to_nhwc(dist.mean))
    g.add(name, "vae.logvar", nchw_to_nhwc(dist.logvar))
    g.add(name, "vae.z", nchw_to_nhwc(z))
    g.add(name, "vae.decoded", nchw_to_nhwc(dec))

    Tt = rng.randint(2, clip_kw["max_position_embeddings"])
    ids = torch.randint(0, clip_kw["vocab_size"], (2, Tt), dtype=torch.int64)
    with torch.no_grad():
        o = te(ids, output_hidden_states=True)
    g.add(name, "te.input_ids", ids)
    g.add(name, "te.last", o.last_hidden_state)
    g.add(name, "te.penultimate", o.hidden_states[-2])


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    for k in range(N_RANDOM):
        build(f"rc{k}", issue_case=k == 0, deep_unet=k == 1)
    build("rcs", single=True)
    g.save()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs)
    print(f"wrote {ROOT}: {total} bytes")


if __name__ == "__main__":
    main()
