"""Writes small image fixtures in every format training reads (tests/golden/images/) and the
RGB pixels PIL decodes from each (tests/golden/images.safetensors, U8 [H, W, 3] per file),
so tests can check danlu's decoders against PIL's convert("RGB") (what sd-scripts uses)."""
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden", "images")
os.makedirs(OUT, exist_ok=True)

h, w = 5, 7
y, x = np.mgrid[0:h, 0:w]
rgb = np.stack([x * 36, y * 60, (x * y * 9) % 256], axis=-1).astype(np.uint8)
alpha = ((x + y) * 20).astype(np.uint8)

files = {}
Image.fromarray(rgb).save(os.path.join(OUT, "rgb.png"))
Image.fromarray(np.dstack([rgb, alpha])).save(os.path.join(OUT, "rgba.png"))
Image.fromarray(rgb[..., 0]).save(os.path.join(OUT, "gray.png"))
Image.fromarray(rgb).save(os.path.join(OUT, "rgb.bmp"))
Image.fromarray(rgb).save(os.path.join(OUT, "rgb.jpg"), quality=95)
Image.fromarray(rgb).save(os.path.join(OUT, "rgb.webp"), lossless=True)
Image.fromarray(np.dstack([rgb, alpha])).save(os.path.join(OUT, "rgba.webp"), lossless=True)
# a PNG that lies about its extension
Image.fromarray(rgb).save(os.path.join(OUT, "png_named.jpg"), format="PNG")
# corrupt inputs
data = open(os.path.join(OUT, "rgb.png"), "rb").read()
open(os.path.join(OUT, "truncated.png"), "wb").write(data[: len(data) // 2])
open(os.path.join(OUT, "not_an_image.png"), "wb").write(b"this is a caption, not an image\n")

ref = {}
for name in ["rgb.png", "rgba.png", "gray.png", "rgb.bmp", "rgb.jpg", "rgb.webp", "rgba.webp", "png_named.jpg"]:
    px = np.asarray(Image.open(os.path.join(OUT, name)).convert("RGB"))
    ref[name] = torch.from_numpy(px.copy())
save_file(ref, os.path.join(HERE, "..", "golden", "images.safetensors"))
print("wrote", OUT)
