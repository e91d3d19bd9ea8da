"""Times diffusers/transformers on the CPU at the shapes bench_models.c measures: the SD1.5 text
encoder (1 x 77), one UNet evaluation at 32x32 and 64x64 latents, and the VAE decoder at 256²,
fp32, random weights (no download: the SD1.5 configs are written out here), same threads.

usage: python bench/torch_models.py --what text|unet32|unet64|vae256 [--threads N] [--repeats R] [--json PATH]
Run each --what in its own process so the peak RSS belongs to it."""
import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", required=True, choices=["text", "unet32", "unet64", "vae256"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.what == "text":
        m = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval()
        ids = torch.full((1, 77), 49407)
        ids[0, :20] = torch.arange(320, 340)
        ids[0, 0] = 49406
        run = lambda: m(input_ids=ids)
    elif a.what.startswith("unet"):
        hw = 32 if a.what == "unet32" else 64
        m = UNet2DConditionModel(**SD15_UNET).eval()
        x, c, t = torch.randn(1, 4, hw, hw), torch.randn(1, 77, 768), torch.tensor([500])
        run = lambda: m(x, t, encoder_hidden_states=c)
    else:
        m = AutoencoderKL(**SD15_VAE).eval()
        z = torch.randn(1, 4, 32, 32)
        run = lambda: m.decode(z)
    times = []
    with torch.no_grad():
        run()
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1048576.0
    med = statistics.median(times)
    print(f"{a.what:8s} torch {torch.__version__} threads {a.threads}  median {med:.3f} s  best {min(times):.3f} s  peak RSS {peak:.2f} GiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"what": a.what, "threads": a.threads, "median_s": med, "best_s": min(times), "peak_rss_gib": peak}, f)


if __name__ == "__main__":
    main()
