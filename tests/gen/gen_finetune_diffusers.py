"""Golden data for tests/test_finetune_train.c: `danlu finetune`'s saved models loaded by diffusers.

Usage: python tests/gen/gen_finetune_diffusers.py PATH/TO/danlu   (a built danlu binary)

Runs the real `danlu finetune` on the tiny SD1.5-architecture model (tests/golden/tiny_pipe) and
the two-image dataset of tests/golden/train_diffusers/data for three steps, twice with the same
configuration and seed: "single" saves one fp32 .safetensors file in the SD single-file layout,
"folder" a diffusers folder in fp16. Then:
  - the single file's UNet loads with UNet2DConditionModel.from_single_file (the tiny model's
    config given), the folder with StableDiffusionPipeline.from_pretrained: every component, no
    missing or unexpected key logged or warned;
  - both hold the same UNet (the folder's to fp16 rounding) and a UNet that differs from the base;
  - each UNet runs in float64 on fixed inputs.
tests/golden/finetune_diffusers.safetensors holds in.x [2, 8, 8, 4] (NHWC), in.t [2], in.ctx
[2, 7, 64], single.unet and folder.unet [2, 8, 8, 4] (NHWC), and the exact flags in the metadata
("<run>.args", with {model}, {data}, {out} for the paths) so the test re-runs the trainer in
process with the same configuration and compares its files' UNet with these outputs.
"""
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

from goldenlib import GOLDEN_DIR, KeyLog, nchw_to_nhwc

MODEL = os.path.join(GOLDEN_DIR, "tiny_pipe")
DATA = os.path.join(GOLDEN_DIR, "train_diffusers", "data")
COMMON = ["--pretrained_model_name_or_path", "{model}", "--train_data_dir", "{data}", "--output_dir", "{out}",
          "--resolution", "32", "--seed", "11", "--threads", "2", "--max_train_steps", "3",
          "--learning_rate", "1e-3", "--cache_latents", "--backend", "cpu"]
RUNS = {
    "single": COMMON + ["--save_model_as", "safetensors", "--save_precision", "fp32", "--output_name", "single"],
    "folder": COMMON + ["--save_model_as", "diffusers", "--save_precision", "fp16", "--output_name", "folder"],
}


def checked(label, fn):
    """fn() with every warning diffusers / transformers log or raise collected; fails on any."""
    log = KeyLog()
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers")]
    for lg in loggers:
        lg.addHandler(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    for lg in loggers:
        lg.removeHandler(log)
    msgs = log.msgs + [str(w.message) for w in caught]
    bad = [m for m in msgs if any(k in m.lower() for k in ("missing", "unexpected", "not used", "were not"))]
    assert not bad, f"{label}: {bad}"
    return out


def main():
    danlu = sys.argv[1]
    g = {}
    meta = {}
    torch.manual_seed(5)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    t = torch.tensor([17.0, 640.0], dtype=torch.float64)
    ctx = torch.randn(2, 7, 64, dtype=torch.float64)
    g["in.x"], g["in.t"], g["in.ctx"] = nchw_to_nhwc(x).float(), t.float(), ctx.float()
    x, ctx = x.float().double(), ctx.float().double()
    base = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet")).double()
    with tempfile.TemporaryDirectory() as tmp:
        unets = {}
        for run, args in RUNS.items():
            a = [s.format(model=MODEL, data=DATA, out=tmp) for s in args]
            subprocess.run([danlu, "finetune"] + a, check=True, stderr=subprocess.DEVNULL)
            meta[f"{run}.args"] = json.dumps(args)
        unets["single"] = checked("single file", lambda: UNet2DConditionModel.from_single_file(
            os.path.join(tmp, "single.safetensors"), config=MODEL, subfolder="unet"))
        pipe = checked("folder", lambda: StableDiffusionPipeline.from_pretrained(os.path.join(tmp, "folder")))
        assert pipe.tokenizer is not None and pipe.text_encoder is not None and pipe.vae is not None
        unets["folder"] = pipe.unet
        sb, ss, sf = base.state_dict(), unets["single"].state_dict(), unets["folder"].state_dict()
        assert set(sb) == set(ss) == set(sf)
        moved = sum(float(((ss[k].double() - sb[k]) ** 2).sum()) for k in sb) ** 0.5
        fp16 = max(float((ss[k].half().float() - sf[k].float()).abs().max()) for k in sb)
        print(f"UNet moved by {moved:.4g} (L2); folder vs single rounded to fp16: max |diff| {fp16:.3g}")
        assert moved > 1e-3 and fp16 == 0.0
        for run, u in unets.items():
            with torch.no_grad():
                out = u.double()(x, t, encoder_hidden_states=ctx).sample
            g[f"{run}.unet"] = nchw_to_nhwc(out).float()
    path = os.path.join(GOLDEN_DIR, "finetune_diffusers.safetensors")
    meta["generator"] = "tests/gen/gen_finetune_diffusers.py"
    save_file({k: v.contiguous() for k, v in g.items()}, path, metadata=meta)
    os.chmod(path, 0o644)
    print(f"wrote {path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
