"""Golden data for tests/test_vae_train_run.c: `danlu train-vae`'s saved models loaded by diffusers.

Usage: python tests/gen/gen_vae_train_diffusers.py PATH/TO/danlu   (a built danlu binary)

Runs the real `danlu train-vae` on the tiny SD1.5-architecture model (tests/golden/tiny_pipe) and
the two-image dataset of tests/golden/train_diffusers/data for three steps, twice with the same
configuration and seed: "single" saves one fp32 .safetensors file in the SD single-file layout,
"folder" a diffusers folder in fp16. Then:
  - the single file's VAE loads with AutoencoderKL.from_single_file (the tiny model's config
    given), the folder with StableDiffusionPipeline.from_pretrained: every component, no missing
    or unexpected key logged or warned;
  - both hold the same VAE (the folder's to fp16 rounding), one that differs from the base, and
    the same UNet as the base;
  - each VAE decodes a fixed latent in float64.
tests/golden/vae_train_diffusers.safetensors holds in.z [1, 8, 8, 4] (NHWC), single.dec and
folder.dec [1, 16, 16, 3] (NHWC), and the exact flags in the metadata ("<run>.args", with {model},
{data}, {out} for the paths) so the test re-runs the trainer in process with the same
configuration and compares its files' decoder with these outputs.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

from gen_finetune_diffusers import checked
from goldenlib import GOLDEN_DIR, nchw_to_nhwc

MODEL = os.path.join(GOLDEN_DIR, "tiny_pipe")
DATA = os.path.join(GOLDEN_DIR, "train_diffusers", "data")
COMMON = ["--pretrained_model_name_or_path", "{model}", "--train_data_dir", "{data}", "--output_dir", "{out}",
          "--resolution", "32", "--seed", "11", "--threads", "2", "--max_train_steps", "3",
          "--learning_rate", "1e-3", "--kl_weight", "1e-4", "--backend", "cpu"]
RUNS = {
    "single": COMMON + ["--save_model_as", "safetensors", "--save_precision", "fp32", "--output_name", "single"],
    "folder": COMMON + ["--save_model_as", "diffusers", "--save_precision", "fp16", "--output_name", "folder"],
}


def main():
    danlu = sys.argv[1]
    g, meta = {}, {}
    torch.manual_seed(6)
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    g["in.z"] = nchw_to_nhwc(z).float()
    z = z.float().double()
    base = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae"))
    base_unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"))
    with tempfile.TemporaryDirectory() as tmp:
        vaes = {}
        for run, args in RUNS.items():
            a = [s.format(model=MODEL, data=DATA, out=tmp) for s in args]
            subprocess.run([danlu, "train-vae"] + a, check=True, stderr=subprocess.DEVNULL)
            meta[f"{run}.args"] = json.dumps(args)
        vaes["single"] = checked("single file", lambda: AutoencoderKL.from_single_file(
            os.path.join(tmp, "single.safetensors"), config=MODEL, subfolder="vae"))
        pipe = checked("folder", lambda: StableDiffusionPipeline.from_pretrained(os.path.join(tmp, "folder")))
        assert pipe.tokenizer is not None and pipe.text_encoder is not None and pipe.unet is not None
        vaes["folder"] = pipe.vae
        sb, ss, sf = base.state_dict(), vaes["single"].state_dict(), vaes["folder"].state_dict()
        assert set(sb) == set(ss) == set(sf)
        moved = sum(float(((ss[k].double() - sb[k].double()) ** 2).sum()) for k in sb) ** 0.5
        fp16 = max(float((ss[k].half().float() - sf[k].float()).abs().max()) for k in sb)
        ub, uf = base_unet.state_dict(), pipe.unet.state_dict()
        unet_same = all(torch.equal(ub[k].half(), uf[k].half()) for k in ub)
        print(f"VAE moved by {moved:.4g} (L2); folder vs single rounded to fp16: max |diff| {fp16:.3g}; "
              f"UNet as the base (fp16): {unet_same}")
        assert moved > 1e-3 and fp16 == 0.0 and unet_same
        for run, v in vaes.items():
            with torch.no_grad():
                out = v.double().decode(z).sample
            g[f"{run}.dec"] = nchw_to_nhwc(out).float()
    path = os.path.join(GOLDEN_DIR, "vae_train_diffusers.safetensors")
    meta["generator"] = "tests/gen/gen_vae_train_diffusers.py"
    save_file({k: v.contiguous() for k, v in g.items()}, path, metadata=meta)
    os.chmod(path, 0o644)
    print(f"wrote {path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
