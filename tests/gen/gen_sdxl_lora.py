"""Golden data for SDXL LoRA files in sampling (host/lora/lora_io.c, lora_net.c on an SDXL model),
on the tiny SDXL pipeline tests/golden/tiny_sdxl_pipe (gen_sdxl_pipe.py; not rewritten here).

Writes tests/golden/tiny_sdxl_loras/:
  peft.safetensors    a LoRA made with PEFT (LoraConfig, add_adapter) on the UNet (every
                      transformer linear, the resnets' conv1 / conv2 / time_emb_proj /
                      conv_shortcut, the down- and upsampler convs; convs at another rank and
                      alpha through rank_pattern / alpha_pattern), the first text encoder and the
                      second, saved by StableDiffusionXLPipeline.save_lora_weights ("unet.",
                      "text_encoder.", "text_encoder_2." keys, alphas in lora_adapter_metadata).
  kohya.safetensors   the same LoRA in sd-scripts' SDXL layout, written here from the naming rule:
                      "lora_unet_" + the module's SGM (ldm) path (input_blocks / middle_block /
                      output_blocks, in_layers_2, emb_layers_1, out_layers_3, skip_connection, op,
                      conv) with "." -> "_", "lora_te1_" / "lora_te2_" + the transformers path;
                      lora_down / lora_up / alpha.
  kohya_dnames.safetensors   diffusers' convert_state_dict_to_kohya of the PEFT state dict
                      (kohya keys on diffusers' names, "lora_unet_down_blocks_...", alpha = rank),
                      with alpha / r folded into lora_up first so that alpha = rank holds.
Every file is loaded by StableDiffusionXLPipeline.load_lora_weights into the base pipeline
(failing on any missing / unexpected / unused key, or a count of LoRA layers that differs from
the file's modules), and the kohya file must give the PEFT file's images (relative L2 below
1e-10 in float64; the diffusers-names file, whose lora_up carries alpha / r rounded to float32,
below 1e-6): diffusers' own kohya converter
(_convert_non_diffusers_lora_to_diffusers, _maybe_map_sgm_blocks_to_diffusers) reads the names
written here as the modules PEFT made.

With an sd-scripts checkout (SD_SCRIPTS=/path/to/sd-scripts) it also checks the naming rule
against sd-scripts itself: library/sdxl_original_unet.py's SdxlUNet2DConditionModel is built on
the meta device, networks/lora.py's module rule (Linear / Conv2d children of Transformer2DModel,
and of ResnetBlock2D / Downsample2D / Upsample2D with conv_dim) gives its LoRA names, and they
must equal this script's rule applied to diffusers' SDXL base UNet config; it then writes
tests/golden/lora_names_sdxl.json {"unet": [...], "unet_conv": [[name, is_3x3], ...], "te1":
[...], "te2": [...]} (sd-scripts' names for SDXL base, text encoders from transformers' CLIP ViT-L
and bigG configs), which tests/test_sdxl_lora.c compares with danlu's module list.

tests/golden/sdxl_lora.safetensors: StableDiffusionXLPipeline (Euler, float64, float32 noise
from torch.Generator("cpu").manual_seed(seed)) with the LoRA: "<case>.latents" [1, h, w, 4],
"<case>.image" [1, H, W, 3]; cases:
  peft_08      peft.safetensors, set_adapters weight 0.8 (UNet and both text encoders)
  kohya_split  kohya.safetensors, weights {unet: 1.0, text_encoder: 0.5, text_encoder_2: 0.5}
  base         no LoRA (the same prompt and seed as peft_08)
Needs peft (pip install peft) and, for the sd-scripts check, einops.
"""
import importlib.util
import json
import math
import os
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_sample import float32_noise_patch  # noqa: E402
from gen_sdxl_pipe import FOLDER, NEGATIVE, PROMPT, TOK_SRC  # noqa: E402
from gen_sdxl_unet import unet_key  # noqa: E402
from goldenlib import GOLDEN_DIR, Golden, KeyLog, count_lora_layers  # noqa: E402

LDIR = os.path.join(GOLDEN_DIR, "tiny_sdxl_loras")
UNET_LINEAR = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "time_emb_proj", "conv_shortcut"]
UNET_CONV3 = ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
SEED, STEPS, CFG = 21, 3, 5.0

# ---------------------------------------------------------------- the models


def load_pipe():
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from diffusers.schedulers import PNDMScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    folder = os.path.join(GOLDEN_DIR, FOLDER)
    load = lambda cls, sub: cls.from_pretrained(os.path.join(folder, sub), torch_dtype=torch.float64).eval()
    tok1 = CLIPTokenizer(os.path.join(TOK_SRC, "vocab.json"), os.path.join(TOK_SRC, "merges.txt"))
    tok2 = CLIPTokenizer(os.path.join(TOK_SRC, "vocab.json"), os.path.join(TOK_SRC, "merges.txt"))
    tok2.pad_token = "!"
    for t in (tok1, tok2):
        t.model_max_length = 77
    base = dict(PNDMScheduler.from_pretrained(os.path.join(folder, "scheduler")).config)
    pipe = StableDiffusionXLPipeline(
        scheduler=EulerDiscreteScheduler.from_config(base), add_watermarker=False, force_zeros_for_empty_prompt=True,
        unet=load(UNet2DConditionModel, "unet"), vae=load(AutoencoderKL, "vae"),
        text_encoder=load(CLIPTextModel, "text_encoder"),
        text_encoder_2=load(CLIPTextModelWithProjection, "text_encoder_2"), tokenizer=tok1, tokenizer_2=tok2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def te_path(name):
    """transformers 5 dropped CLIPTextModel's "text_model." level in module paths; sd-scripts'
    names (transformers 4), diffusers' files and danlu keep it."""
    return name if name.startswith("text_model.") else "text_model." + name


# ---------------------------------------------------------------- the LoRA (PEFT)


def make_peft(pipe, gen):
    """PEFT adapters on a float32 copy of the pipeline's networks, random A and B; returns
    {part: (state dict in diffusers' names, LoraConfig)}."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    conv_ranks = {k: 2 for k in UNET_CONV3}
    conv_alphas = {k: 1.5 for k in UNET_CONV3}
    cfgs = {
        "unet": LoraConfig(r=4, lora_alpha=2.0, target_modules=UNET_LINEAR + UNET_CONV3, rank_pattern=conv_ranks,
                           alpha_pattern=conv_alphas, init_lora_weights=False),
        "text_encoder": LoraConfig(r=4, lora_alpha=8.0, target_modules=TE_TARGETS, init_lora_weights=False),
        "text_encoder_2": LoraConfig(r=2, lora_alpha=3.0, target_modules=TE_TARGETS, init_lora_weights=False),
    }
    out = {}
    for part, cfg in cfgs.items():
        model = type(getattr(pipe, part)).from_pretrained(os.path.join(GOLDEN_DIR, FOLDER, part),
                                                          torch_dtype=torch.float32)
        model.add_adapter(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_A." in name:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
                elif ".lora_B." in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        sd = get_peft_model_state_dict(model)
        if part != "unet":
            sd = {te_path(k): v for k, v in sd.items()}
        out[part] = (sd, cfg)
    return out


def peft_alpha(cfg, module):
    for pat, a in cfg.alpha_pattern.items():
        if module == pat or module.endswith("." + pat):
            return a
    return cfg.lora_alpha


def write_peft(path, lora):
    from diffusers import StableDiffusionXLPipeline
    meta = lambda cfg: {k: v for k, v in cfg.to_dict().items() if k in ("r", "lora_alpha", "rank_pattern",
                                                                            "alpha_pattern", "target_modules")}
    d, name = os.path.dirname(path), os.path.basename(path)
    StableDiffusionXLPipeline.save_lora_weights(
        d, unet_lora_layers=lora["unet"][0], text_encoder_lora_layers=lora["text_encoder"][0],
        text_encoder_2_lora_layers=lora["text_encoder_2"][0], weight_name=name,
        unet_lora_adapter_metadata=meta(lora["unet"][1]),
        text_encoder_lora_adapter_metadata=meta(lora["text_encoder"][1]),
        text_encoder_2_lora_adapter_metadata=meta(lora["text_encoder_2"][1]))


def kohya_unet_name(module, ucfg):
    """sd-scripts' SDXL LoRA name of a diffusers UNet module: the SGM path, "." -> "_"."""
    key = unet_key(module + ".weight", ucfg)
    assert key.startswith("model.diffusion_model.") and key.endswith(".weight"), key
    return "lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")


def write_kohya(path, lora, ucfg):
    sd = {}
    prefix = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    for part, (psd, cfg) in lora.items():
        for k, a in psd.items():
            if ".lora_A." not in k:
                continue
            module = k[:k.index(".lora_A.")]
            b = psd[module + ".lora_B.weight"]
            name = kohya_unet_name(module, ucfg) if part == "unet" else prefix[part] + module.replace(".", "_")
            assert name + ".lora_down.weight" not in sd, name
            sd[name + ".lora_down.weight"] = a.contiguous()
            sd[name + ".lora_up.weight"] = b.contiguous()
            sd[name + ".alpha"] = torch.tensor(float(peft_alpha(cfg, module)), dtype=torch.float32)
    from safetensors.torch import save_file
    save_file(sd, path, metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"})
    return sd


def write_kohya_dnames(path, lora):
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file
    flat = {}
    for part, (psd, cfg) in lora.items():
        for k, v in psd.items():
            module = k[:k.index(".lora_")]
            if ".lora_B." in k:  # alpha = rank in the converted file: fold alpha / r into B
                v = v * (peft_alpha(cfg, module) / v.shape[1])
            flat[f"{part}.{k}"] = v
    sd = convert_state_dict_to_kohya(flat)
    sd = {k: (v.to(torch.float32) if k.endswith(".alpha") else v.contiguous()) for k, v in sd.items()}
    save_file(sd, path)
    return sd


# ---------------------------------------------------------------- diffusers' view


def load_checked(pipe, path, n_modules, label):
    import logging
    import warnings
    log = KeyLog()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.load_lora_weights(path, adapter_name=label)
    for lg in loggers:
        lg.removeHandler(log)
    msgs = log.msgs + [str(w.message) for w in caught]
    bad = [m for m in msgs if any(s in m.lower() for s in ("unexpected", "missing", "not found", "no lora", "unused"))]
    if bad:
        raise SystemExit(f"FAIL {label}: diffusers reported {bad}")
    n = sum(count_lora_layers(m) for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2))
    if n != n_modules:
        raise SystemExit(f"FAIL {label}: {n} LoRA layers injected, the file has {n_modules} modules")
    print(f"{label}: diffusers loaded {n} LoRA layers, no missing / unexpected keys")


def run(pipe, seed):
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, height=16,
              width=16)
    with torch.no_grad():
        lat = pipe(**kw, output_type="latent", generator=torch.Generator("cpu").manual_seed(seed)).images
        img = pipe(**kw, output_type="np", generator=torch.Generator("cpu").manual_seed(seed)).images
    return lat, torch.from_numpy(np.asarray(img))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- sd-scripts' names


def sd_scripts_names(root):
    """networks/lora.py create_modules' rule over sd-scripts' own SDXL UNet (meta device)."""
    pkg = types.ModuleType("library")
    pkg.__path__ = []
    utils = types.ModuleType("library.utils")
    utils.setup_logging = lambda *a, **k: None
    sys.modules.setdefault("library", pkg)
    sys.modules["library.utils"] = utils
    spec = importlib.util.spec_from_file_location("sdxl_original_unet",
                                                  os.path.join(root, "library", "sdxl_original_unet.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with torch.device("meta"):
        unet = mod.SdxlUNet2DConditionModel()
    return modules_by_rule("lora_unet", unet, ["Transformer2DModel"], ["ResnetBlock2D", "Downsample2D", "Upsample2D"])


def modules_by_rule(prefix, root, targets, conv_targets, rename=lambda n: n):
    """[(kohya name, is_3x3, with_conv_only)] for Linear / Conv2d children of target classes."""
    out = []
    for with_conv, tg in ((0, targets), (1, conv_targets)):
        for name, module in root.named_modules():
            if module.__class__.__name__ not in tg:
                continue
            for cname, child in module.named_modules():
                kind = child.__class__.__name__
                if kind not in ("Linear", "Conv2d"):
                    continue
                is3 = kind == "Conv2d" and child.kernel_size != (1, 1)
                out.append(((prefix + "." + rename(name + "." + cname)).replace(".", "_"), int(is3), with_conv))
    return out


SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2048,
                 attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
TE1 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
           max_position_embeddings=77, hidden_act="quick_gelu")
TE2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
           max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)


def names_sdxl(root):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    theirs = sd_scripts_names(root)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        te1 = CLIPTextModel(CLIPTextConfig(**TE1))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2))
    ucfg = dict(unet.config)
    ours = modules_by_rule("lora_unet", unet, ["Transformer2DModel"], ["ResnetBlock2D", "Downsample2D", "Upsample2D"],
                           rename=lambda n: unet_key(n + ".weight", ucfg)[len("model.diffusion_model."):-7])
    if sorted(theirs) != sorted(ours):
        a, b = set(theirs), set(ours)
        raise SystemExit(f"FAIL: sd-scripts' SDXL names differ from the rule: {sorted(a - b)[:4]} vs {sorted(b - a)[:4]}")
    te_rule = lambda p, m: [n for n, _, _ in modules_by_rule(p, m, ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"], [],
                                                                 rename=te_path)]
    t1, t2 = te_rule("lora_te1", te1), te_rule("lora_te2", te2)
    unet_names = [n for n, _, c in theirs if not c]
    assert len(t1) == 72 and len(t2) == 192, (len(t1), len(t2))
    path = os.path.join(GOLDEN_DIR, "lora_names_sdxl.json")
    with open(path, "w") as f:
        json.dump({"unet": unet_names, "unet_conv": [[n, i] for n, i, _ in theirs], "te1": t1, "te2": t2}, f, indent=0)
    print(f"sd-scripts' SDXL UNet names ({len(unet_names)}, {len(theirs)} with conv_dim) equal the rule; wrote {path}")


# ---------------------------------------------------------------- main


def main():
    if os.environ.get("SD_SCRIPTS"):
        names_sdxl(os.environ["SD_SCRIPTS"])
    float32_noise_patch()
    gen = torch.Generator().manual_seed(4321)
    pipe = load_pipe()
    lora = make_peft(pipe, gen)
    n_mod = sum(sum(1 for k in sd if ".lora_A." in k) for sd, _ in lora.values())
    os.makedirs(LDIR, exist_ok=True)
    paths = {k: os.path.join(LDIR, f"{k}.safetensors") for k in ("peft", "kohya", "kohya_dnames")}
    write_peft(paths["peft"], lora)
    write_kohya(paths["kohya"], lora, dict(pipe.unet.config))
    write_kohya_dnames(paths["kohya_dnames"], lora)
    print(f"{n_mod} modules: " + ", ".join(f"{p} {sum(1 for k in sd if '.lora_A.' in k)}" for p, (sd, _) in lora.items()))

    g = Golden("sdxl_lora")
    base = run(pipe, SEED)
    g.add("base", "latents", base[0].permute(0, 2, 3, 1))
    g.add("base", "image", base[1])
    results = {}
    for label in ("peft", "kohya", "kohya_dnames"):
        load_checked(pipe, paths[label], n_mod, label)
        pipe.set_adapters([label], adapter_weights=[0.8])
        results[label] = run(pipe, SEED)
        pipe.delete_adapters([label])
    lat, img = results["peft"]
    # kohya: the same tensors; kohya_dnames: lora_up x alpha / r rounded to float32 (1e-7)
    for label, bound in (("kohya", 1e-10), ("kohya_dnames", 1e-6)):
        e = max(rel(results[label][0], lat), rel(results[label][1], img))
        if e > bound:
            raise SystemExit(f"FAIL: {label} gives other images than the PEFT file (relative {e:.3g})")
        print(f"{label}: the PEFT file's latents and image (relative {e:.2g})")
    moved = rel(lat, base[0])
    print(f"peft_08: the LoRA moves the latents by {moved:.1%}")
    assert moved > 0.05, moved
    g.add("peft_08", "latents", lat.permute(0, 2, 3, 1))
    g.add("peft_08", "image", img)
    load_checked(pipe, paths["kohya"], n_mod, "split")
    pipe.set_adapters(["split"], adapter_weights=[{"unet": 1.0, "text_encoder": 0.5, "text_encoder_2": 0.5}])
    lat, img = run(pipe, SEED + 1)
    g.add("kohya_split", "latents", lat.permute(0, 2, 3, 1))
    g.add("kohya_split", "image", img)
    pipe.delete_adapters(["split"])
    g.save()


if __name__ == "__main__":
    main()
