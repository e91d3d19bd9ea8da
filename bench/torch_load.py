"""diffusers' side of the start-up comparison in docs/perf.md: the time StableDiffusionPipeline
takes to load the same weights danlu samples with (a diffusers folder written from the
single-file checkpoint by `danlu convert`), in float32 on the CPU as danlu holds them, and then
one 1-step txt2img run at the given size (CFG 7) so its fixed cost can be set beside danlu's
`danlu sample --verbose` phases.

usage: python bench/torch_load.py FOLDER [--threads N] [--size 256]
(the tokenizer is built from ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz as
tests/gen/gen_tokenizer.py does; its time is not counted)"""
import argparse
import os
import sys
import tempfile
import time

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from transformers import CLIPTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("folder")
ap.add_argument("--threads", type=int, default=torch.get_num_threads())
ap.add_argument("--size", type=int, default=256)
a = ap.parse_args()
torch.set_num_threads(a.threads)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "gen"))
from gen_tokenizer import clip_vocab, write_tok  # noqa: E402

tdir = tempfile.mkdtemp()
write_tok(tdir, *clip_vocab())
tok = CLIPTokenizer.from_pretrained(tdir, model_max_length=77)
t0 = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(a.folder, tokenizer=tok, torch_dtype=torch.float32, safety_checker=None,
                                               feature_extractor=None, requires_safety_checker=False)
t_load = time.perf_counter() - t0
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)


def run(steps):
    t = time.perf_counter()
    with torch.no_grad():
        pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=steps, guidance_scale=7.0,
             width=a.size, height=a.size, generator=torch.Generator().manual_seed(1), output_type="np")
    return time.perf_counter() - t


run(1)  # warm-up
t1, t2 = run(1), run(2)
step = t2 - t1
print(f"diffusers load (from_pretrained, fp32, threads {a.threads}): {t_load:.2f} s")
print(f"diffusers {a.size}x{a.size} CFG 7: 1 step {t1:.2f} s, one more step {step:.2f} s, "
      f"fixed cost of a run (1 step minus a step) {t1 - step:.2f} s; with the load {t_load + t1 - step:.2f} s")
