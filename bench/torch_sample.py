"""One full txt2img run of diffusers' StableDiffusionPipeline at danlu sample's shape: SD1.5
architecture with random weights (configs from torch_models.py), 20 Euler steps, CFG 7 (batch 2
through the UNet), same threads. Times the whole run (prompt encoding + sampling + VAE decode)
and each denoising step: a step callback reads the clock (after torch.cuda.synchronize() on
CUDA), and s/step is the median gap between consecutive steps' callbacks (the first step,
which pays one-time costs, has no gap before it).

usage: python bench/torch_sample.py --tokenizer DIR [--device cpu|cuda] [--dtype fp32|bf16|fp16]
                                    [--threads N] [--steps 20] [--size 256] [--warmup 0|1]
                                    [--json PATH]
--dtype casts the whole pipeline (text encoder, UNet, VAE) to that dtype, as diffusers users load
it with torch_dtype=...; attention is PyTorch's scaled_dot_product_attention (AttnProcessor2_0,
set explicitly on the UNet and the VAE); on CUDA all of torch.backends.cuda's SDPA kernels stay
enabled. --warmup 1 (the default on CUDA) runs a 2-step generation first so cuDNN/cuBLAS plan
selection is not timed. On CUDA the JSON gains the peak VRAM (torch.cuda.max_memory_allocated).
The tokenizer folder holds vocab.json and merges.txt (e.g. tests/golden/tiny_pipe/tokenizer: a
small vocabulary is enough for timing)."""
import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from torch_models import SD15_TEXT, SD15_UNET, SD15_VAE

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

ap = argparse.ArgumentParser()
ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
ap.add_argument("--threads", type=int, default=torch.get_num_threads())
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--size", type=int, default=256)
ap.add_argument("--warmup", type=int, default=None, help="1: an untimed 2-step run first (default: 1 on CUDA)")
ap.add_argument("--tokenizer", required=True, help="folder with vocab.json and merges.txt")
ap.add_argument("--json")
a = ap.parse_args()
dev = torch.device(a.device)
if dev.type == "cuda" and not torch.cuda.is_available():
    raise SystemExit("torch_sample.py: --device cuda but torch sees no CUDA device")
warmup = a.warmup if a.warmup is not None else int(dev.type == "cuda")
torch.set_num_threads(a.threads)
torch.manual_seed(0)
sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                               num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
with dev:  # parameters are created (and randomly initialised) on the device
    vae = AutoencoderKL(**SD15_VAE).eval()
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval()
    unet = UNet2DConditionModel(**SD15_UNET).eval()
unet.set_attn_processor(AttnProcessor2_0())
vae.set_attn_processor(AttnProcessor2_0())
pipe = StableDiffusionPipeline(
    vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(a.tokenizer, model_max_length=77), unet=unet,
    scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe.to(dev, DTYPES[a.dtype])
pipe.set_progress_bar_config(disable=True)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


stamps = []


def on_step_end(p, i, t, kw):
    sync()
    stamps.append(time.perf_counter())
    return kw


def generate(steps):
    with torch.no_grad():
        pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=steps, guidance_scale=7.0,
             width=a.size, height=a.size, generator=torch.Generator().manual_seed(1), output_type="np",
             callback_on_step_end=on_step_end)


if warmup:
    generate(2)
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats(dev)
stamps.clear()
sync()
t0 = time.perf_counter()
generate(a.steps)
sync()
dt = time.perf_counter() - t0
gaps = [b - x for x, b in zip(stamps, stamps[1:])]
per_step = statistics.median(gaps) if gaps else float("nan")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1048576.0
vram, gpu = None, "cpu"
if dev.type == "cuda":
    vram, gpu = torch.cuda.max_memory_allocated(dev) / 2**30, torch.cuda.get_device_name(dev)
vram_txt = f", peak VRAM {vram:.2f} GiB" if vram is not None else ""
print(f"diffusers txt2img {a.size}x{a.size}, {a.steps} Euler steps, CFG 7, {a.dtype} on {gpu}, threads {a.threads}: "
      f"{dt:.2f} s, {per_step * 1e3:.1f} ms/step (median), peak RSS {peak:.2f} GiB{vram_txt}")
if a.json:
    with open(a.json, "w") as f:
        json.dump({"what": "txt2img", "impl": "diffusers", "torch": torch.__version__, "device": a.device, "gpu": gpu,
                   "dtype": a.dtype, "size": a.size, "steps": a.steps, "cfg": 7.0, "threads": a.threads,
                   "total_s": dt, "s_per_step": per_step, "peak_rss_gib": peak, "peak_vram_gib": vram}, f)
