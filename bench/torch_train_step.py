"""The PyTorch twin of bench_train_step.c: one LoRA training step of the SD1.5 UNet (random
weights, no download), as sd-scripts runs it with latents and text embeddings cached: forward,
MSE loss, backward into the LoRA parameters (PEFT, rank r on sd-scripts' default targets: 192
modules), one torch.optim.AdamW step. Batch 1, 77 context tokens, same threads.

usage: python bench/torch_train_step.py [--device cpu|cuda] [--dtype fp32|bf16] [--size 32|64]
                                        [--rank 16] [--checkpointing 0|1] [--threads N]
                                        [--steps S] [--json PATH]
Attention is PyTorch's scaled_dot_product_attention (diffusers' AttnProcessor2_0, set
explicitly); on CUDA every SDPA kernel torch.backends.cuda offers stays enabled (flash,
memory-efficient, cuDNN, math) and torch picks one per shape. TF32 is left at torch's defaults
(matmul off, cuDNN convolutions on); both flags are in the JSON.

--dtype bf16 is sd-scripts' `--mixed_precision bf16` (without --full_bf16): the frozen UNet is cast
to bfloat16, the LoRA parameters stay float32 (PEFT's autocast_adapter_dtype, get_peft_model's
default, casts the adapters it creates on the bf16 model back to fp32; checked below), the
latents and text context are bf16 like sd-scripts' weight_dtype inputs, the forward runs under
torch.autocast(device, bfloat16) as accelerate's autocast does, and the loss is MSE on the
fp32-cast prediction. AdamW and its moments are fp32. --dtype fp32 is plain fp32 everywhere.

On CUDA each step is bracketed by torch.cuda.synchronize() (the loss is read with .item()
inside the step, as danlu reads its loss once a step), and the JSON gains the peak VRAM
(torch.cuda.max_memory_allocated from just before the first step: weights, LoRA, inputs,
activations, gradients, optimizer state; max_memory_reserved beside it). The first step is timed apart (warm-up) and not
in the median; run one configuration per process so the peaks belong to it."""
import argparse
import contextlib
import json
import resource
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from peft import LoraConfig, get_peft_model

from torch_models import SD15_UNET

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--checkpointing", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch_train_step.py: --device cuda but torch sees no CUDA device")
    wdtype = DTYPES[a.dtype]
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with dev:  # parameters are created (and randomly initialised) on the device
        unet = UNet2DConditionModel(**SD15_UNET)
    unet.set_attn_processor(AttnProcessor2_0())
    unet.requires_grad_(False)
    unet.to(dtype=wdtype)
    if a.checkpointing:
        unet.enable_gradient_checkpointing()
    unet = get_peft_model(unet, LoraConfig(r=a.rank, lora_alpha=a.rank, target_modules=TARGETS, init_lora_weights=True),
                          autocast_adapter_dtype=True)
    n_mod = sum(1 for n, _ in unet.named_modules() if n.endswith("lora_A"))
    params = [p for p in unet.parameters() if p.requires_grad]
    bad = {str(p.dtype) for p in params if p.dtype != torch.float32}
    if bad:
        raise SystemExit(f"torch_train_step.py: LoRA parameters are {bad}, not float32")
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    unet.train()
    x = torch.randn(1, 4, a.size, a.size).to(dev, wdtype)
    c = torch.randn(1, 77, 768).to(dev, wdtype)
    target = torch.randn(1, 4, a.size, a.size).to(dev)
    autocast = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if a.dtype == "bf16"
                else contextlib.nullcontext())
    if dev.type == "cuda":
        # from here the peak is the steps': the weights, LoRA and inputs (allocated now) plus what
        # the steps add; the fp32 model's transient before the bf16 cast is not counted
        torch.cuda.reset_peak_memory_stats(dev)
    times, first, loss = [], 0.0, 0.0
    for s in range(a.steps + 1):
        t = torch.tensor([100 + 37 * s % 900], device=dev)
        sync(dev)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            pred = unet(x, t, encoder_hidden_states=c).sample
        l = torch.nn.functional.mse_loss(pred.float(), target)
        l.backward()
        opt.step()
        loss = l.item()
        sync(dev)
        dt = time.perf_counter() - t0
        if s == 0:
            first = dt
        else:
            times.append(dt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1048576.0
    med = statistics.median(times)
    vram = vram_res = None
    gpu = "cpu"
    if dev.type == "cuda":
        vram = torch.cuda.max_memory_allocated(dev) / 2**30
        vram_res = torch.cuda.max_memory_reserved(dev) / 2**30
        gpu = torch.cuda.get_device_name(dev)
    tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    sdp = {"flash": torch.backends.cuda.flash_sdp_enabled(), "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
           "cudnn": torch.backends.cuda.cudnn_sdp_enabled(), "math": torch.backends.cuda.math_sdp_enabled()}
    vram_txt = f", peak VRAM {vram:.2f} GiB (reserved {vram_res:.2f})" if vram is not None else ""
    print(f"torch {torch.__version__} on {gpu}, {a.dtype}: train step {a.size}x{a.size} latent, rank {a.rank}, "
          f"{n_mod} modules, checkpointing {'on' if a.checkpointing else 'off'}, threads {a.threads}: median {med:.3f} s "
          f"({1 / med:.2f} it/s), best {min(times):.3f} s, first {first:.3f} s, loss {loss:.4f}, "
          f"peak RSS {peak:.2f} GiB{vram_txt}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"what": "train_step", "impl": "diffusers+peft", "torch": torch.__version__,
                       "device": a.device, "gpu": gpu, "dtype": a.dtype, "latent": a.size, "rank": a.rank,
                       "modules": n_mod, "checkpointing": a.checkpointing, "threads": a.threads, "median_s": med,
                       "best_s": min(times), "first_s": first, "it_per_s": 1 / med, "loss": loss,
                       "peak_rss_gib": peak, "peak_vram_gib": vram, "peak_vram_reserved_gib": vram_res,
                       "attention": "sdpa", "sdp_backends": sdp, "tf32": tf32}, f)


if __name__ == "__main__":
    main()
