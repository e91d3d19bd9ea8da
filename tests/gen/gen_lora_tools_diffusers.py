"""Golden data for tests/test_lora_tools_diffusers.c: what `danlu lora merge` and `danlu convert`
write, loaded by diffusers / transformers.

Usage: python tests/gen/gen_lora_tools_diffusers.py PATH/TO/danlu   (a built danlu binary)

Runs the binary from the repository root on tests/golden/tiny_pipe (fp16 weights) and
tests/golden/tiny_pipe_loras/epoch1.safetensors (kohya, UNet and text-encoder modules):

merge   `danlu lora merge --model tiny_pipe --lora epoch1:0.7 --dtype fp32 --out M` (a diffusers
        folder). Its UNet and text encoder, loaded with from_pretrained, must agree with the
        base tiny_pipe + load_lora_weights + fuse_lora(lora_scale=0.7) (relative L2 below 1e-6
        in float64; the LoRA itself moves the outputs by far more).
single  the same bake into a single file: `danlu convert tiny_pipe --layout single`, `danlu lora
        merge` on that file, `danlu convert` back to a folder for diffusers to load; must agree
        with "merge" exactly (every weight is the same float32 number).
convert `danlu convert tiny_pipe --layout single`, then `danlu convert` that file to a diffusers
        folder: loaded in diffusers in float32 and float64 it must give the original folder's
        outputs bit for bit (same weight bytes, and config.json values that read back as the
        same numbers), and every config.json field that shapes the computation must be equal.

tests/golden/lora_tools_diffusers.safetensors holds
  in.x [2, 8, 8, 4] (NHWC), in.t [2], in.ctx [2, 8, 64], in.ids [2, 8] (as float)
  base.unet, base.te         tiny_pipe without LoRA
  merge.unet, merge.te       the merged folder as diffusers computes it (float64)
  convert.unet, convert.te   the converted folder as diffusers computes it (float64)
and the exact danlu arguments in its metadata ("merge.args", "convert.args": {model}, {lora},
{out}, {single} for the paths). Needs peft besides torch, diffusers and transformers.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as dlogging
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from goldenlib import GOLDEN_DIR, Golden, load_lora_checked, nchw_to_nhwc

REPO = os.path.normpath(os.path.join(GOLDEN_DIR, "..", ".."))
MODEL = "tests/golden/tiny_pipe"
LORA = "tests/golden/tiny_pipe_loras/epoch1.safetensors"
WEIGHT = 0.7
MERGE_ARGS = ["lora", "merge", "--model", "{model}", "--lora", "{lora}:0.7", "--dtype", "fp32", "--out", "{out}"]
TO_SINGLE = ["convert", "{model}", "--layout", "single", "--out", "{single}"]
TO_FOLDER = ["convert", "{single}", "--layout", "diffusers", "--out", "{out}"]
TOL_MERGE = 1e-6  # danlu's merged folder vs diffusers' fuse_lora, relative L2 in float64
# config.json fields that do not change what the UNet / text encoder compute, or that a single
# file cannot carry (sample_size: the single file does not record it; the rest are the defaults
# diffusers / transformers fill in, version stamps, or the dtype the file was saved in)
UNET_SKIP = {"_diffusers_version", "sample_size"}
TE_SKIP = {"transformers_version", "dtype", "torch_dtype", "architectures", "projection_dim"}


def danlu(binary, args, **paths):
    cmd = [binary] + [a.format(**paths) for a in args]
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def load(folder, dtype):
    u = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).eval()
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype).eval()
    return u, te


def run(u, te, x, t, ctx, ids):
    d = u.dtype
    with torch.no_grad():
        return u(x.to(d), t.to(d), encoder_hidden_states=ctx.to(d)).sample, te(ids).last_hidden_state


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def check_configs(a_dir, b_dir):
    """Every field of b's unet / text_encoder config.json that a also has is equal, except the
    listed ones; b's fields absent from a must be diffusers' / transformers' defaults (checked by
    loading: the models' resolved configs must agree too)."""
    for sub, skip in (("unet", UNET_SKIP), ("text_encoder", TE_SKIP)):
        a = json.load(open(os.path.join(a_dir, sub, "config.json")))
        b = json.load(open(os.path.join(b_dir, sub, "config.json")))
        for k in sorted(set(a) & set(b) - skip):
            va, vb = a[k], b[k]
            if k in ("attention_head_dim", "transformer_layers_per_block") and isinstance(va, int):
                va = [va] * len(a["block_out_channels"])  # an int means the same for every level
            assert va == vb, f"{sub}/config.json: {k} is {vb!r}, the original says {va!r}"
    ua, ta = load(a_dir, torch.float32)
    ub, tb = load(b_dir, torch.float32)
    for k, v in ua.config.items():
        w = ub.config.get(k)
        if k in UNET_SKIP or k.startswith("_"):
            continue
        if k in ("attention_head_dim", "transformer_layers_per_block") and isinstance(v, int):
            v = [v] * len(ua.config.block_out_channels)
        assert (list(v) if isinstance(v, tuple) else v) == (list(w) if isinstance(w, tuple) else w), \
            f"unet config {k}: {w!r} vs {v!r}"
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
              "layer_norm_eps", "max_position_embeddings", "vocab_size", "eos_token_id"):
        assert getattr(ta.config, k) == getattr(tb.config, k), f"text_encoder config {k}"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_lora_tools_diffusers.py PATH/TO/danlu")
    binary = os.path.abspath(sys.argv[1])
    dlogging.set_verbosity_warning()
    g = Golden("lora_tools_diffusers", seed=5)
    gen = torch.Generator().manual_seed(17)
    N, H, W, T = 2, 8, 8, 8
    x = torch.randn(N, 4, H, W, generator=gen).double()
    t = torch.tensor([45.0, 810.0], dtype=torch.float64)
    ctx = torch.randn(N, T, 64, generator=gen).double()
    ids = torch.randint(0, 1000, (N, T), generator=gen)
    g.add("in", "x", nchw_to_nhwc(x))
    g.add("in", "t", t)
    g.add("in", "ctx", ctx)
    g.add("in", "ids", ids.float())
    model = os.path.join(REPO, MODEL)
    u0, te0 = load(model, torch.float64)
    base_u, base_h = run(u0, te0, x, t, ctx, ids)
    g.add("base", "unet", nchw_to_nhwc(base_u))
    g.add("base", "te", base_h)

    with tempfile.TemporaryDirectory() as tmp:
        # 1. merge into a diffusers folder, against diffusers' own fuse_lora
        merged = os.path.join(tmp, "merged")
        danlu(binary, MERGE_ARGS, model=MODEL, lora=LORA, out=merged)
        um, tm = load(merged, torch.float64)
        mu, mh = run(um, tm, x, t, ctx, ids)
        pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False,
                                                       tokenizer=None, feature_extractor=None, image_encoder=None,
                                                       dtype=torch.float32)
        n_mod = sum(1 for k in load_file(os.path.join(REPO, LORA)) if k.endswith(".lora_down.weight"))
        load_lora_checked(pipe, os.path.join(REPO, LORA), n_mod, "epoch1")
        pipe.fuse_lora(lora_scale=WEIGHT)
        pipe.unload_lora_weights()  # keeps the fused weights, removes the LoRA layers
        ru, rh = run(pipe.unet.to(torch.float64), pipe.text_encoder.to(torch.float64), x, t, ctx, ids)
        eu, et = rel(mu, ru), rel(mh, rh)
        su, st = rel(ru, base_u), rel(rh, base_h)
        print(f"merge: danlu's merged folder vs diffusers fuse_lora({WEIGHT}): UNet rel L2 {eu:.2e}, text encoder "
              f"{et:.2e} (the LoRA moves them by {su:.2e}, {st:.2e})")
        assert su > 1e-2 and st > 1e-2, "the LoRA barely changes the outputs: nothing is compared"
        assert eu < TOL_MERGE and et < TOL_MERGE, "danlu's merge disagrees with diffusers' fuse_lora"
        g.add("merge", "unet", nchw_to_nhwc(mu))
        g.add("merge", "te", mh)

        # 1b. the same bake into a single file (read back through danlu convert)
        single = os.path.join(tmp, "s.safetensors")
        danlu(binary, TO_SINGLE, model=MODEL, single=single)
        ms = os.path.join(tmp, "ms.safetensors")
        danlu(binary, MERGE_ARGS, model=single, lora=LORA, out=ms)
        msd = os.path.join(tmp, "ms_folder")
        danlu(binary, TO_FOLDER, single=ms, out=msd)
        us, ts = load(msd, torch.float64)
        su2, sh2 = run(us, ts, x, t, ctx, ids)
        print(f"single-file merge vs folder merge: UNet max |diff| {(su2 - mu).abs().max().item():.2e}, text encoder "
              f"{(sh2 - mh).abs().max().item():.2e}")
        assert torch.equal(su2, mu) and torch.equal(sh2, mh), "the single-file merge differs from the folder merge"

        # 2. convert folder -> single file -> folder: diffusers computes the original's numbers
        conv = os.path.join(tmp, "conv")
        danlu(binary, TO_FOLDER, single=single, out=conv)
        check_configs(model, conv)
        for dt in (torch.float32, torch.float64):
            ua, ta = load(model, dt)
            ub, tb = load(conv, dt)
            a = run(ua, ta, x, t, ctx, ids)
            b = run(ub, tb, x, t, ctx, ids)
            du, dh = (a[0] - b[0]).abs().max().item(), (a[1] - b[1]).abs().max().item()
            print(f"convert ({dt}): converted folder vs original in diffusers: UNet max |diff| {du:.2e}, text encoder "
                  f"{dh:.2e}")
            assert du == 0 and dh == 0, "the converted folder computes other numbers than the original"
        cu, ch = run(*load(conv, torch.float64), x, t, ctx, ids)
        g.add("convert", "unet", nchw_to_nhwc(cu))
        g.add("convert", "te", ch)

    meta = {"generator": "tests/gen/gen_lora_tools_diffusers.py", "merge.args": json.dumps(MERGE_ARGS),
            "to_single.args": json.dumps(TO_SINGLE), "to_folder.args": json.dumps(TO_FOLDER),
            "model": MODEL, "lora": LORA, "n_modules": str(n_mod)}
    path = os.path.join(GOLDEN_DIR, "lora_tools_diffusers.safetensors")
    save_file(g.tensors, path, metadata=meta)
    print(f"wrote {path}: {len(g.tensors)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
