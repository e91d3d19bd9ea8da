"""One full txt2img run at the shape bench/bench_sample.sh times danlu on: SD1.5 architecture
with random weights (configs from torch_models.py), 256x256, 20 Euler steps, CFG 7 (batch 2
through the UNet), CPU fp32, same threads. Times prompt encoding + sampling + VAE decode.

usage: python bench/torch_sample.py [--threads N] [--steps 20] [--size 256]"""
import argparse
import resource
import time

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from torch_models import SD15_TEXT, SD15_UNET, SD15_VAE

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=torch.get_num_threads())
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--size", type=int, default=256)
ap.add_argument("--tokenizer", required=True, help="folder with vocab.json and merges.txt")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                               num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
pipe = StableDiffusionPipeline(
    vae=AutoencoderKL(**SD15_VAE).eval(), text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval(),
    tokenizer=CLIPTokenizer.from_pretrained(a.tokenizer, model_max_length=77), unet=UNet2DConditionModel(**SD15_UNET).eval(),
    scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
t0 = time.perf_counter()
with torch.no_grad():
    pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=a.steps, guidance_scale=7.0,
         width=a.size, height=a.size, generator=torch.Generator().manual_seed(1), output_type="np")
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1048576.0
print(f"diffusers txt2img {a.size}x{a.size}, {a.steps} Euler steps, CFG 7, threads {a.threads}: {dt:.1f} s, peak RSS {peak:.2f} GiB")
