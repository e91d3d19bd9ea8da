"""The PyTorch twin of bench_train_step.c: one LoRA training step of the SD1.5 UNet on the CPU
(fp32, random weights, no download), as sd-scripts runs it with latents and text embeddings
cached: forward, MSE loss, backward into the LoRA parameters (PEFT, rank r on sd-scripts' default
targets: 192 modules), one torch.optim.AdamW step. Batch 1, 77 context tokens, same threads.

usage: python bench/torch_train_step.py [--size 32|64] [--rank 16] [--checkpointing 0|1]
                                        [--threads N] [--steps S] [--json PATH]
The first step is timed apart (warm-up) and not in the median; run one size per process so the
peak RSS belongs to it."""
import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model

from torch_models import SD15_UNET

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--checkpointing", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    unet.requires_grad_(False)
    if a.checkpointing:
        unet.enable_gradient_checkpointing()
    unet = get_peft_model(unet, LoraConfig(r=a.rank, lora_alpha=a.rank, target_modules=TARGETS, init_lora_weights=True))
    n_mod = sum(1 for n, _ in unet.named_modules() if n.endswith("lora_A"))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    unet.train()
    x, c = torch.randn(1, 4, a.size, a.size), torch.randn(1, 77, 768)
    target = torch.randn(1, 4, a.size, a.size)
    times, first, loss = [], 0.0, 0.0
    for s in range(a.steps + 1):
        t = torch.tensor([100 + 37 * s % 900])
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pred = unet(x, t, encoder_hidden_states=c).sample
        l = torch.nn.functional.mse_loss(pred, target)
        l.backward()
        opt.step()
        dt = time.perf_counter() - t0
        loss = l.item()
        if s == 0:
            first = dt
        else:
            times.append(dt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1048576.0
    med = statistics.median(times)
    print(f"torch {torch.__version__} train step {a.size}x{a.size} latent, rank {a.rank}, {n_mod} modules, "
          f"checkpointing {'on' if a.checkpointing else 'off'}, threads {a.threads}: median {med:.3f} s, "
          f"best {min(times):.3f} s, first {first:.3f} s, loss {loss:.4f}, peak RSS {peak:.2f} GiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"what": "train_step", "latent": a.size, "rank": a.rank, "modules": n_mod,
                       "checkpointing": a.checkpointing, "threads": a.threads, "median_s": med,
                       "best_s": min(times), "first_s": first, "peak_rss_gib": peak}, f)


if __name__ == "__main__":
    main()
