"""Golden data for tests/test_train_sdxl_diffusers.c: `danlu train`'s own SDXL LoRA files loaded by
diffusers' StableDiffusionXLPipeline.

Usage: python tests/gen/gen_train_sdxl_diffusers.py PATH/TO/danlu   (a built danlu binary)

1. Runs the real `danlu train` on the tiny SDXL pipeline (tests/golden/tiny_sdxl_pipe) and the
   dataset of gen_train_sdxl_ref.py (tests/golden/train_sdxl/data, one 256x192 image in a 128x96
   bucket) for three steps, three times: "unet" (a UNet LoRA on sd-scripts' SDXL targets), "conv"
   (the same plus LoCon on the resnets' and samplers' convs: network_args conv_dim / conv_alpha)
   and "te" (the UNet's and both text encoders' LoRAs), fp32 files in the kohya layout sd-scripts
   writes for SDXL (lora_unet_ + the SGM path, lora_te1_ / lora_te2_ + the transformers path). The
   outputs are kept as tests/golden/train_sdxl/<run>.safetensors; the flags go in the golden
   metadata ("<run>.args", with {model}, {data}, {out} for the paths).
2. Loads each with StableDiffusionXLPipeline.load_lora_weights, failing on any missing,
   unexpected or unused key or a count of injected LoRA layers other than the file's modules
   (a UNet-only file makes diffusers say that no text-encoder keys were found: that one is the
   truth and is let through), then runs the UNet in float64 on fixed inputs with SDXL's added
   conditioning, and both text encoders on fixed ids: tests/golden/train_sdxl_diffusers.safetensors
   holds
     in.x [2, 8, 8, 4] (NHWC), in.t [2], in.ctx [2, 8, 192], in.text_embeds [2, 32], in.time_ids [2, 6],
     in.ids [2, 8] (as float)
     base.unet [2, 8, 8, 4]    without LoRA
     base.h1 [2, 8, 64], base.h2 [2, 8, 128], base.pooled [2, 32]: the encoders' penultimate
                               hidden states and the second's text_embeds (EOS: the largest id)
     <run>.unet, <run>.h1, <run>.h2, <run>.pooled   with the run's LoRA (multiplier 1)
Needs peft besides torch, diffusers and transformers.
"""
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_sdxl_lora import load_pipe  # noqa: E402
from goldenlib import GOLDEN_DIR, Golden, KeyLog, count_lora_layers, nchw_to_nhwc  # noqa: E402

REPO = os.path.normpath(os.path.join(GOLDEN_DIR, "..", ".."))
MODEL = os.path.join(GOLDEN_DIR, "tiny_sdxl_pipe")
OUT = os.path.join(GOLDEN_DIR, "train_sdxl")
DATA = os.path.join(OUT, "data")
COMMON = ["--pretrained_model_name_or_path", "{model}", "--train_data_dir", "{data}", "--output_dir", "{out}",
          "--resolution", "128,96", "--enable_bucket", "--min_bucket_reso", "64", "--max_bucket_reso", "256",
          "--bucket_reso_steps", "32", "--seed", "11", "--threads", "2", "--max_train_steps", "3",
          "--learning_rate", "2e-2", "--network_dim", "2", "--network_alpha", "2", "--save_precision", "float"]
RUNS = {
    "unet": COMMON + ["--network_train_unet_only", "--output_name", "unet"],
    "conv": COMMON + ["--network_train_unet_only", "--network_args", "conv_dim=2", "conv_alpha=1", "--output_name",
                      "conv"],
    "te": COMMON + ["--text_encoder_lr", "2e-2", "--output_name", "te"],
}


def train(danlu, name, tmp):
    # from the repository root with relative paths: the file's danlu.config names no local path
    args = [a.format(model=os.path.relpath(MODEL, REPO), data=os.path.relpath(DATA, REPO), out=tmp)
            for a in RUNS[name]]
    cmd = [danlu, "train"] + args
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO)
    dst = os.path.join(OUT, f"{name}.safetensors")
    shutil.copyfile(os.path.join(tmp, f"{name}.safetensors"), dst)
    return dst


def load_checked(pipe, path, n_unet, n_te, label):
    """pipe.load_lora_weights(path) failing on any missing / unexpected / unused / not-found key
    and unless exactly n_unet UNet and n_te text-encoder LoRA layers were injected; a file with
    UNet keys only makes diffusers say "No LoRA keys associated to CLIPTextModel(WithProjection)"."""
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
    benign = lambda m: n_te == 0 and m.startswith("No LoRA keys associated to CLIPTextModel")
    bad = [m for m in msgs if not benign(m)
           and any(s in m.lower() for s in ("unexpected", "missing", "not found", "no lora", "unused"))]
    if bad:
        raise SystemExit(f"FAIL {label}: diffusers reported {bad}")
    got_te = count_lora_layers(pipe.text_encoder) + count_lora_layers(pipe.text_encoder_2)
    n = count_lora_layers(pipe.unet)
    if n != n_unet or got_te != n_te:
        raise SystemExit(f"FAIL {label}: {n} UNet and {got_te} text-encoder LoRA layers injected, the file has "
                         f"{n_unet} and {n_te} modules")
    print(f"{label}: diffusers loaded {n} UNet and {got_te} text-encoder LoRA layers, no missing / unexpected keys")


def run_te_f64(pipe, ids):
    """Both text encoders in float64 on ids: penultimate hidden states and the pooled embedding."""
    with torch.no_grad():
        h1 = pipe.text_encoder.to(torch.float64)(ids, output_hidden_states=True).hidden_states[-2]
        o2 = pipe.text_encoder_2.to(torch.float64)(ids, output_hidden_states=True)
    return h1, o2.hidden_states[-2], o2.text_embeds


def run_unet_f64(unet, x, t, ctx, te, tid):
    unet.to(torch.float64)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs={"text_embeds": te, "time_ids": tid}).sample
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_train_sdxl_diffusers.py PATH/TO/danlu")
    danlu = os.path.abspath(sys.argv[1])
    pipe = load_pipe()  # float64
    g = Golden("train_sdxl_diffusers", seed=99)
    gen = torch.Generator().manual_seed(3)
    N, H, W, T = 2, 8, 8, 8
    x = torch.randn(N, 4, H, W, generator=gen).double()
    t = torch.tensor([30.0, 700.0], dtype=torch.float64)
    ctx = torch.randn(N, T, pipe.unet.config.cross_attention_dim, generator=gen).double()
    te = torch.randn(N, pipe.text_encoder_2.config.projection_dim, generator=gen).double()
    tid = torch.tensor([[192, 256, 0, 0, 96, 128], [1000, 600, 0, 96, 832, 1216]], dtype=torch.float64)
    g.add("in", "x", nchw_to_nhwc(x))
    g.add("in", "t", t)
    g.add("in", "ctx", ctx)
    g.add("in", "text_embeds", te)
    g.add("in", "time_ids", tid)
    ids = torch.randint(0, 990, (N, T), generator=gen)
    ids[:, 0], ids[0, 5], ids[1, 7] = 998, 999, 999  # bos, and an EOS (the largest id) to pool at
    g.add("in", "ids", ids.float())
    out0 = run_unet_f64(pipe.unet, x, t, ctx, te, tid)
    g.add("base", "unet", nchw_to_nhwc(out0))
    for k, v in zip(("h1", "h2", "pooled"), run_te_f64(pipe, ids)):
        g.add("base", k, v)

    meta = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            path = train(danlu, name, tmp)
            sd = load_file(path)
            assert all(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for k in sd), f"{name}: other keys"
            with safe_open(path, "pt") as f:
                md = f.metadata()
            assert md.get("ss_base_model_version") == "sdxl_base_v1-0", md.get("ss_base_model_version")
            n = sum(1 for k in sd if k.endswith(".lora_down.weight"))
            n_te = sum(1 for k in sd if k.endswith(".lora_down.weight") and k.startswith("lora_te"))
            assert (n_te > 0) == (name == "te"), f"{name}: {n_te} text-encoder modules"
            load_checked(pipe, path, n - n_te, n_te, name)
            out = run_unet_f64(pipe.unet, x, t, ctx, te, tid)
            for k, v in zip(("h1", "h2", "pooled"), run_te_f64(pipe, ids)):
                g.add(name, k, v)
            du = ((out - out0).norm() / out0.norm()).item()
            print(f"{name}: {n} modules; the LoRA changes the UNet output by {du:.2e}; {os.path.getsize(path)} bytes")
            assert du > 1e-3, f"{name}: the trained LoRA barely changes the UNet ({du:.2e})"
            g.add(name, "unet", nchw_to_nhwc(out))
            meta[f"{name}.args"] = json.dumps(RUNS[name])
            meta[f"{name}.n_modules"] = str(n)
            pipe.unload_lora_weights()
    path = os.path.join(GOLDEN_DIR, "train_sdxl_diffusers.safetensors")
    save_file(g.tensors, path, metadata={"generator": "tests/gen/gen_train_sdxl_diffusers.py", **meta})
    print(f"wrote {path}: {len(g.tensors)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
