"""Writes the demo dataset (examples/demo/data/4_rings): eight 64x64 PNGs of concentric rings in
a small palette, each with a .txt caption of comma-separated tags. Run once; the output is
committed, so the demo needs no Python. usage: python examples/demo/make_data.py"""
import math
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "4_rings")
PALETTES = {"warm": [(230, 90, 40), (250, 200, 60), (120, 30, 30)],
            "cool": [(40, 90, 200), (60, 200, 220), (20, 30, 90)]}


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    for i in range(8):
        name = "warm" if i % 2 == 0 else "cool"
        pal = np.array(PALETTES[name], dtype=np.float64)
        cx, cy = rng.uniform(16, 48, 2)
        freq = rng.uniform(0.25, 0.6)
        r = np.hypot(xx - cx, yy - cy)
        band = (np.floor(r * freq) % 3).astype(int)
        img = pal[band] + rng.normal(0, 6, (64, 64, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(OUT, f"rings{i}.png"))
        size = "wide rings" if freq < 0.4 else "thin rings"
        with open(os.path.join(OUT, f"rings{i}.txt"), "w") as f:
            f.write(f"ringstyle, {name} colors, {size}\n")


if __name__ == "__main__":
    main()
