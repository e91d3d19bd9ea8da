"""Golden data for tests/test_train_diffusers.c: `danlu train`'s own kohya-layout output loaded by
diffusers.

Usage: python tests/gen/gen_train_diffusers.py PATH/TO/danlu   (a built danlu binary)

1. Writes a two-image dataset (32x32 PNGs + captions) to tests/golden/train_diffusers/data/2_thing.
2. Runs the real `danlu train` on the tiny SD1.5-architecture model (tests/golden/tiny_pipe) for
   a few steps, twice: "unet_te" (UNet + text-encoder LoRA, sd-scripts' default targets) and
   "conv" (UNet LoRA plus 3x3 conv LoCon: network_args conv_dim / conv_alpha), fp32 files.
   The outputs are kept as tests/golden/train_diffusers/<run>.safetensors; the exact flags go in
   the golden metadata ("<run>.args", with {model}, {data}, {out} for the paths) so the test can
   re-run the trainer in process with the same configuration.
3. Checks the sshs_model_hash / sshs_legacy_hash the writer put in each file against sd-scripts'
   functions (tests/gen/gen_addnet_hash.py), then loads each output with StableDiffusionPipeline.load_lora_weights (kohya format), asserting
   that diffusers / peft / transformers log no missing or unexpected keys and that every module
   of the file became a LoRA layer, then runs the UNet and the text encoder in float64 on fixed
   inputs: tests/golden/train_diffusers.safetensors holds
     in.x [2, 8, 8, 4] (NHWC), in.t [2], in.ctx [2, 8, 64], in.ids [2, 8] (as float)
     base.unet, base.te                  without LoRA
     <run>.unet [2, 8, 8, 4], <run>.te [2, 8, 64]   with the run's LoRA (multiplier 1)
Needs peft besides torch, diffusers and transformers.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as dlogging
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gen_addnet_hash import precalc
from goldenlib import GOLDEN_DIR, Golden, load_lora_checked, nchw_to_nhwc, run_unet_te_f64

REPO = os.path.normpath(os.path.join(GOLDEN_DIR, "..", ".."))
MODEL = os.path.join(GOLDEN_DIR, "tiny_pipe")
OUT = os.path.join(GOLDEN_DIR, "train_diffusers")
DATA = os.path.join(OUT, "data")
COMMON = ["--pretrained_model_name_or_path", "{model}", "--train_data_dir", "{data}", "--output_dir", "{out}",
          "--resolution", "32", "--seed", "11", "--threads", "2", "--max_train_steps", "3",
          "--learning_rate", "2e-2", "--network_alpha", "2", "--save_precision", "float"]
RUNS = {
    "unet_te": COMMON + ["--network_dim", "4", "--text_encoder_lr", "1e-2", "--output_name", "unet_te"],
    "conv": COMMON + ["--network_dim", "4", "--network_train_unet_only", "--network_args", "conv_dim=2",
                      "conv_alpha=1", "--output_name", "conv"],
}


def make_dataset():
    d = os.path.join(DATA, "2_thing")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(31)
    caps = ["red square, thing", "blue stripes, thing"]
    for i, cap in enumerate(caps):
        img = np.zeros((32, 32, 3), np.uint8)
        img[..., i * 2] = 190
        img[6:26, 6:26] = rng.integers(0, 255, (20, 20, 3))
        Image.fromarray(img).save(os.path.join(d, f"img{i}.png"))
        with open(os.path.join(d, f"img{i}.txt"), "w") as f:
            f.write(cap)


def train(danlu, name, tmp):
    # run from the repository root with relative paths: the file's danlu.config names no local path
    args = [a.format(model=os.path.relpath(MODEL, REPO), data=os.path.relpath(DATA, REPO), out=tmp)
            for a in RUNS[name]]
    cmd = [danlu, "train"] + args
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO)
    src = os.path.join(tmp, f"{name}.safetensors")
    dst = os.path.join(OUT, f"{name}.safetensors")
    shutil.copyfile(src, dst)
    return dst


def check_hashes(path, label):
    """The file's sshs_model_hash / sshs_legacy_hash are what sd-scripts computes for its tensors
    and ss_* metadata."""
    sd = load_file(path)
    with safe_open(path, "pt") as f:
        md = f.metadata()
    mh, lh, _ = precalc(sd, md)
    if (md.get("sshs_model_hash"), md.get("sshs_legacy_hash")) != (mh, lh):
        sys.exit(f"FAIL {label}: sshs hashes {md.get('sshs_model_hash')} {md.get('sshs_legacy_hash')}, "
                 f"sd-scripts computes {mh} {lh}")
    print(f"{label}: sshs_model_hash {mh[:16]}..., sshs_legacy_hash {lh} as sd-scripts computes them")


def load_checked(pipe, path, label):
    sd = load_file(path)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in sd), f"{label}: non-kohya keys"
    n_modules = sum(1 for k in sd if k.endswith(".lora_down.weight"))
    load_lora_checked(pipe, path, n_modules, label)
    return n_modules


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_train_diffusers.py PATH/TO/danlu")
    danlu = os.path.abspath(sys.argv[1])
    dlogging.set_verbosity_warning()
    make_dataset()
    g = Golden("train_diffusers", seed=99)
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False, tokenizer=None,
                                                   feature_extractor=None, image_encoder=None, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    N, H, W, T = 2, 8, 8, 8
    x = torch.randn(N, 4, H, W, generator=gen).double()
    t = torch.tensor([30.0, 700.0], dtype=torch.float64)
    ctx = torch.randn(N, T, pipe.unet.config.cross_attention_dim, generator=gen).double()
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (N, T), generator=gen)
    g.add("in", "x", nchw_to_nhwc(x))
    g.add("in", "t", t)
    g.add("in", "ctx", ctx)
    g.add("in", "ids", ids.float())
    out0, h0 = run_unet_te_f64(pipe, x, t, ctx, ids)
    g.add("base", "unet", nchw_to_nhwc(out0))
    g.add("base", "te", h0)

    meta = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            path = train(danlu, name, tmp)
            check_hashes(path, name)
            n = load_checked(pipe, path, name)
            out, h = run_unet_te_f64(pipe, x, t, ctx, ids)
            du = ((out - out0).norm() / out0.norm()).item()
            dt = ((h - h0).norm() / h0.norm()).item()
            print(f"{name}: {n} modules; the LoRA changes the UNet output by {du:.2e}, the text encoder's by {dt:.2e}"
                  f"; {os.path.getsize(path)} bytes")
            assert du > 1e-3, f"{name}: the trained LoRA barely changes the UNet ({du:.2e})"
            if name == "unet_te":
                assert dt > 1e-3, f"{name}: the trained LoRA barely changes the text encoder ({dt:.2e})"
            g.add(name, "unet", nchw_to_nhwc(out))
            g.add(name, "te", h)
            meta[f"{name}.args"] = json.dumps(RUNS[name])
            meta[f"{name}.n_modules"] = str(n)
            pipe.unload_lora_weights()
    path = os.path.join(GOLDEN_DIR, "train_diffusers.safetensors")
    save_file(g.tensors, path, metadata={"generator": "tests/gen/gen_train_diffusers.py", **meta})
    print(f"wrote {path}: {len(g.tensors)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
