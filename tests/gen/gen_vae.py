"""Reference outputs of diffusers' AutoencoderKL (float64) for the VAE tests: encoder mean and
logvar, a sample with given noise, and the decoder, on the tiny checkpoint's VAE and on a
second tiny VAE with channel changes (conv shortcuts), 3 blocks and a non-square image. The
second VAE is written as a diffusers folder (tests/golden/tiny_vae2) whose unet/ and
text_encoder/ link to the tiny_sd15 ones, so the checkpoint loader opens it like any model."""
import os
import shutil

import torch
from diffusers import AutoencoderKL

from goldenlib import GOLDEN_DIR, Golden, nchw_to_nhwc

g = Golden("vae", seed=11)


def run(case, vae, n, h, w):
    vae = vae.double().eval()
    img = torch.rand(n, 3, h, w, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(img).latent_dist
        noise = torch.randn(dist.mean.shape, dtype=torch.float64)
        z = dist.mean + dist.std * noise
        dec = vae.decode(z).sample
    g.add(case, "image", nchw_to_nhwc(img))
    g.add(case, "mean", nchw_to_nhwc(dist.mean))
    g.add(case, "logvar", nchw_to_nhwc(dist.logvar))
    g.add(case, "noise", nchw_to_nhwc(noise))
    g.add(case, "latent", nchw_to_nhwc(z))
    g.add(case, "decoded", nchw_to_nhwc(dec))


base = AutoencoderKL.from_pretrained(os.path.join(GOLDEN_DIR, "tiny_sd15", "vae"), torch_dtype=torch.float32)
run("tiny_sd15", base, 2, 16, 12)

torch.manual_seed(5)
vae2 = AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 24, 32), layers_per_block=1, norm_num_groups=8, sample_size=32,
)
with torch.no_grad():  # larger weights than the default init so every path matters
    for p in vae2.parameters():
        p.mul_(1.5)
root = os.path.join(GOLDEN_DIR, "tiny_vae2")
shutil.rmtree(root, ignore_errors=True)
os.makedirs(root)
vae2.half().save_pretrained(os.path.join(root, "vae"))
for part in ["unet", "text_encoder", "scheduler", "model_index.json"]:
    os.symlink(os.path.join("..", "tiny_sd15", part), os.path.join(root, part))
vae2 = AutoencoderKL.from_pretrained(os.path.join(root, "vae"), torch_dtype=torch.float32)
run("tiny_vae2", vae2, 1, 24, 16)
g.save()
