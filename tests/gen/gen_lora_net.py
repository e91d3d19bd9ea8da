"""Golden data for LoRA networks and LoRA files (host/lora/lora_net.c, lora_io.c).

Writes
  tests/golden/lora_net_names_sd15.json  sd-scripts' module names for full SD 1.5: its rule
        (networks/lora.py create_modules: every Linear / Conv2d inside a module whose class is
        Transformer2DModel, plus ResnetBlock2D / Downsample2D / Upsample2D when conv_dim is set;
        text encoder: CLIPAttention / CLIPMLP) re-implemented over diffusers' SD 1.5 UNet and
        transformers' CLIP-L text model built on the meta device (no weights).
        {"unet": [...192 kohya names], "text": [...72], "unet_conv": [[name, is_3x3], ...]}
  tests/golden/lora_net_kohya.safetensors  a kohya-layout LoRA (LoCon: transformer modules with
        rank 4 / alpha 3, resnet + sampler 3x3 convs with rank 2 / alpha 1.5, time_emb_proj and
        conv_shortcut with rank 4, text encoder rank 4 / alpha 5) for tests/golden/tiny_sd15 with
        random weights (up not zero), fp32.
  tests/golden/lora_net_peft.safetensors  the same LoRA as diffusers' save_lora_weights writes it
        after loading the kohya file (PEFT keys, alphas in "lora_adapter_metadata").
  tests/golden/lora_net_peft_baked.safetensors  the same LoRA in the PEFT layout the way danlu
        writes it (lora_B x alpha / r, no metadata); checked here to load in diffusers with no
        missing or unexpected keys and to give the same outputs.
  tests/golden/lora_net.safetensors
        kaiming.lin [4, 32], kaiming.conv [4, 3, 3, 32] (danlu layout): torch.manual_seed(100 / 101);
            nn.init.kaiming_uniform_(w, a=math.sqrt(5)) on [4, 32] and [4, 32, 3, 3]
        unet.x [2, 8, 8, 4], unet.t [2], unet.ctx [2, 8, 64]: inputs (NHWC)
        unet.out_base, unet.out (LoRA multiplier 1), unet.out_m05 (multiplier 0.5): diffusers UNet
            outputs in float64 with pipe.load_lora_weights(kohya file), NHWC
        te.ids [2, 8] (as float), te.out_base, te.out, te.out_m05: text encoder last_hidden_state
Needs peft and accelerate besides torch, diffusers and transformers (pip install peft accelerate).
The generator asserts that diffusers reports no missing or unexpected keys for each file and
that every module of the file became a LoRA layer.
"""
import json
import math
import os

import torch
from accelerate import init_empty_weights
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as dlogging
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from goldenlib import GOLDEN_DIR, Golden, load_lora_checked, nchw_to_nhwc, run_unet_te_f64

UNET_TARGETS = ["Transformer2DModel"]
UNET_TARGETS_CONV = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]
TE_TARGETS = ["CLIPAttention", "CLIPMLP"]


def te_name(root, name):
    """transformers 5 dropped CLIPTextModel's "text_model." level; sd-scripts' names (made with
    transformers 4) and danlu's keep it."""
    if isinstance(root, CLIPTextModel) and not name.startswith("text_model."):
        return "text_model." + name
    return name


def sd_scripts_modules(prefix, root, targets):
    """(kohya name, module, is_3x3) in sd-scripts' order and rule."""
    out, seen = [], set()
    for name, module in root.named_modules():
        if module.__class__.__name__ not in targets:
            continue
        for cname, child in module.named_modules():
            is_linear = child.__class__.__name__ == "Linear"
            is_conv = child.__class__.__name__ == "Conv2d"
            if not (is_linear or is_conv):
                continue
            kname = (prefix + "." + te_name(root, name + "." + cname)).replace(".", "_")
            assert kname not in seen, kname
            seen.add(kname)
            out.append((kname, child, is_conv and child.kernel_size != (1, 1)))
    return out


SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD15_TE = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")


def names_sd15():
    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET)
        te = CLIPTextModel(CLIPTextConfig(**SD15_TE))
    u = sd_scripts_modules("lora_unet", unet, UNET_TARGETS)
    uc = sd_scripts_modules("lora_unet", unet, UNET_TARGETS + UNET_TARGETS_CONV)
    t = sd_scripts_modules("lora_te", te, TE_TARGETS)
    assert len(u) == 192 and len(t) == 72, (len(u), len(t))
    path = os.path.join(GOLDEN_DIR, "lora_net_names_sd15.json")
    with open(path, "w") as f:
        json.dump({"unet": [n for n, _, _ in u], "text": [n for n, _, _ in t],
                   "unet_conv": [[n, int(c)] for n, _, c in uc]}, f, indent=0)
    print(f"wrote {path}: {len(u)} UNet, {len(t)} text encoder, {len(uc)} UNet with conv_dim")


def make_kohya(pipe, gen):
    """Random kohya LoCon for the tiny pipeline: {key: tensor}, n_unet, n_te."""
    sd = {}
    um = sd_scripts_modules("lora_unet", pipe.unet, UNET_TARGETS + UNET_TARGETS_CONV)
    tm = sd_scripts_modules("lora_te", pipe.text_encoder, TE_TARGETS)
    for (kname, mod, is3), te in [(m, False) for m in um] + [(m, True) for m in tm]:
        if te:
            r, alpha = 4, 5.0
        elif is3:
            r, alpha = 2, 1.5
        else:
            r, alpha = 4, 3.0
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0]
            down = torch.randn(r, mod.in_channels, k, k, generator=gen) / math.sqrt(mod.in_channels * k * k)
            up = torch.randn(mod.out_channels, r, 1, 1, generator=gen) * 0.3
        else:
            down = torch.randn(r, mod.in_features, generator=gen) / math.sqrt(mod.in_features)
            up = torch.randn(mod.out_features, r, generator=gen) * 0.3
        sd[kname + ".lora_down.weight"] = down.float().contiguous()
        sd[kname + ".lora_up.weight"] = up.float().contiguous()
        sd[kname + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return sd, len(um), len(tm)


def main():
    dlogging.set_verbosity_warning()
    names_sd15()
    g = Golden("lora_net", seed=2024)

    # Kaiming init as torch does it (what danlu's dl_lora_net_init_weights reproduces)
    torch.manual_seed(100)
    w = torch.empty(4, 32)
    torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    g.add("kaiming", "lin", w)
    torch.manual_seed(101)
    w = torch.empty(4, 32, 3, 3)
    torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    g.add("kaiming", "conv", w.permute(0, 2, 3, 1))

    folder = os.path.join(GOLDEN_DIR, "tiny_sd15")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False, tokenizer=None,
                                                   feature_extractor=None, image_encoder=None,
                                                   dtype=torch.float32)
    gen = torch.Generator().manual_seed(7)
    sd, n_unet, n_te = make_kohya(pipe, gen)
    kohya_path = os.path.join(GOLDEN_DIR, "lora_net_kohya.safetensors")
    save_file(sd, kohya_path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4",
                                        "ss_network_alpha": "3.0",
                                        "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "1.5"})})
    print(f"wrote {kohya_path}: {n_unet} UNet + {n_te} text encoder modules, {os.path.getsize(kohya_path)} bytes")

    N, H, W, T = 2, 8, 8, 8
    x = torch.randn(N, 4, H, W, generator=gen).double()
    t = torch.tensor([10.0, 500.0], dtype=torch.float64)
    ctx = torch.randn(N, T, pipe.unet.config.cross_attention_dim, generator=gen).double()
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (N, T), generator=gen)
    g.add("unet", "x", nchw_to_nhwc(x))
    g.add("unet", "t", t)
    g.add("unet", "ctx", ctx)
    g.add("te", "ids", ids.float())

    out0, h0 = run_unet_te_f64(pipe, x, t, ctx, ids)
    g.add("unet", "out_base", nchw_to_nhwc(out0))
    g.add("te", "out_base", h0)

    pipe.unet.float()
    pipe.text_encoder.float()
    load_lora_checked(pipe, kohya_path, n_unet + n_te, "kohya")
    out1, h1 = run_unet_te_f64(pipe, x, t, ctx, ids)
    g.add("unet", "out", nchw_to_nhwc(out1))
    g.add("te", "out", h1)
    pipe.set_adapters(["kohya"], adapter_weights=[0.5])
    out5, h5 = run_unet_te_f64(pipe, x, t, ctx, ids)
    g.add("unet", "out_m05", nchw_to_nhwc(out5))
    g.add("te", "out_m05", h5)
    pipe.set_adapters(["kohya"], adapter_weights=[1.0])
    rel = ((out1 - out0).norm() / out0.norm()).item()
    print(f"LoRA changes the UNet output by {rel:.3f} (relative), the text encoder by "
          f"{((h1 - h0).norm() / h0.norm()).item():.3f}")
    assert rel > 1e-2

    # diffusers' own PEFT file, with its adapter metadata (alphas)
    from peft.utils import get_peft_model_state_dict
    pipe.unet.float()
    pipe.text_encoder.float()
    ul = get_peft_model_state_dict(pipe.unet, adapter_name="kohya")
    tl = get_peft_model_state_dict(pipe.text_encoder, adapter_name="kohya")
    tmpdir = os.path.join(GOLDEN_DIR, "_lora_tmp")
    os.makedirs(tmpdir, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        tmpdir, unet_lora_layers=ul, text_encoder_lora_layers=tl,
        unet_lora_adapter_metadata=pipe.unet.peft_config["kohya"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["kohya"].to_dict())
    peft_path = os.path.join(GOLDEN_DIR, "lora_net_peft.safetensors")
    os.replace(os.path.join(tmpdir, "pytorch_lora_weights.safetensors"), peft_path)
    os.rmdir(tmpdir)
    print(f"wrote {peft_path}: {len(load_file(peft_path))} tensors")

    # the PEFT layout as danlu writes it: B x alpha / r, no metadata
    baked = {}
    for k, v in sd.items():
        if not k.endswith(".lora_down.weight"):
            continue
        stem = k[: -len(".lora_down.weight")]
        up = sd[stem + ".lora_up.weight"]
        r = v.shape[0]
        alpha = sd[stem + ".alpha"].item()
        mod = next(m for m in peft_modules(pipe) if m[0] == stem)
        baked[f"{mod[1]}.lora_A.weight"] = v
        baked[f"{mod[1]}.lora_B.weight"] = (up * (alpha / r)).contiguous()
    baked_path = os.path.join(GOLDEN_DIR, "lora_net_peft_baked.safetensors")
    save_file(baked, baked_path)

    for path, label in [(peft_path, "peft"), (baked_path, "baked")]:
        pipe.unload_lora_weights()
        pipe.unet.float()
        pipe.text_encoder.float()
        load_lora_checked(pipe, path, n_unet + n_te, label)
        o, h = run_unet_te_f64(pipe, x, t, ctx, ids)
        eu = ((o - out1).norm() / out1.norm()).item()
        et = ((h - h1).norm() / h1.norm()).item()
        print(f"{label}: UNet output vs the kohya file {eu:.2e}, text encoder {et:.2e}")
        assert eu < 1e-6 and et < 1e-6, (label, eu, et)
    g.save()


def peft_modules(pipe):
    """(kohya name, PEFT key prefix) of every targeted module of the pipeline."""
    out = []
    for prefix, root, peft_prefix, targets in [
            ("lora_unet", pipe.unet, "unet", UNET_TARGETS + UNET_TARGETS_CONV),
            ("lora_te", pipe.text_encoder, "text_encoder", TE_TARGETS)]:
        for name, module in root.named_modules():
            if module.__class__.__name__ not in targets:
                continue
            for cname, child in module.named_modules():
                if child.__class__.__name__ not in ("Linear", "Conv2d"):
                    continue
                full = te_name(root, name + "." + cname)
                out.append(((prefix + "." + full).replace(".", "_"), peft_prefix + "." + full))
    return out


if __name__ == "__main__":
    main()
