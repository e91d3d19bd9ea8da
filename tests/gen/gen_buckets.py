"""Reference data for the training data pipeline (tests/test_dataset.c): sd-scripts' bucket
resolutions and bucket choice, re-implemented faithfully from kohya-ss/sd-scripts
(library/model_util.py make_bucket_resolutions, library/train_util.py BucketManager) since
sd-scripts cannot be installed here; and cv2 resizes (INTER_AREA down, INTER_LINEAR up) of
small random images, the resampling sd-scripts' trim_and_resize_if_required uses.
Writes tests/golden/buckets.safetensors (int32 / uint8 tensors)."""
import math
import os

import cv2
import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden", "buckets.safetensors")


def make_bucket_resolutions(max_reso, min_size=256, max_size=1024, divisible=64):
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = set()
    width = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((width, width))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    resos = list(resos)
    resos.sort()
    return resos


class BucketManager:
    def __init__(self, no_upscale, max_reso, min_size, max_size, reso_steps):
        self.no_upscale = no_upscale
        self.max_reso = max_reso
        self.max_area = max_reso[0] * max_reso[1]
        self.min_size, self.max_size, self.reso_steps = min_size, max_size, reso_steps

    def make_buckets(self):
        self.set_predefined_resos(make_bucket_resolutions(self.max_reso, self.min_size, self.max_size, self.reso_steps))

    def set_predefined_resos(self, resos):
        self.predefined_resos = resos.copy()
        self.predefined_resos_set = set(resos)
        self.predefined_aspect_ratios = np.array([w / h for w, h in resos])

    def round_to_steps(self, x):
        x = int(x + 0.5)
        return x - x % self.reso_steps

    def select_bucket(self, image_width, image_height):
        aspect_ratio = image_width / image_height
        if not self.no_upscale:
            reso = (image_width, image_height)
            if reso not in self.predefined_resos_set:
                ar_errors = self.predefined_aspect_ratios - aspect_ratio
                reso = self.predefined_resos[np.abs(ar_errors).argmin()]
            ar_reso = reso[0] / reso[1]
            if aspect_ratio > ar_reso:
                scale = reso[1] / image_height
            else:
                scale = reso[0] / image_width
            resized_size = (int(image_width * scale + 0.5), int(image_height * scale + 0.5))
        else:
            if image_width * image_height > self.max_area:
                resized_width = math.sqrt(self.max_area * aspect_ratio)
                resized_height = self.max_area / resized_width
                assert abs(resized_width / resized_height - aspect_ratio) < 1e-2
                b_width_rounded = self.round_to_steps(resized_width)
                b_height_in_wr = self.round_to_steps(b_width_rounded / aspect_ratio)
                ar_width_rounded = b_width_rounded / b_height_in_wr
                b_height_rounded = self.round_to_steps(resized_height)
                b_width_in_hr = self.round_to_steps(b_height_rounded * aspect_ratio)
                ar_height_rounded = b_width_in_hr / b_height_rounded
                if abs(ar_width_rounded - aspect_ratio) < abs(ar_height_rounded - aspect_ratio):
                    resized_size = (b_width_rounded, int(b_width_rounded / aspect_ratio + 0.5))
                else:
                    resized_size = (int(b_height_rounded * aspect_ratio + 0.5), b_height_rounded)
            else:
                resized_size = (image_width, image_height)
            bucket_width = resized_size[0] - resized_size[0] % self.reso_steps
            bucket_height = resized_size[1] - resized_size[1] % self.reso_steps
            reso = (bucket_width, bucket_height)
        return reso, resized_size


# (res_w, res_h, min, max, steps)
SETTINGS = [
    (512, 512, 256, 1024, 64),
    (768, 768, 256, 1024, 64),
    (1024, 1024, 256, 2048, 64),
    (512, 768, 256, 1024, 64),
    (640, 448, 320, 960, 32),
]
SIZES = [(512, 512), (1024, 768), (768, 1024), (300, 200), (200, 300), (1920, 1080), (1080, 1920),
         (4000, 1000), (1000, 4000), (640, 480), (100, 100), (513, 383), (2048, 2048), (333, 777),
         (1234, 567), (64, 64), (96, 200), (1600, 900), (900, 1600), (700, 700)]

t = {}
for i, (w, h, mn, mx, st) in enumerate(SETTINGS):
    t[f"reso{i}.setting"] = torch.tensor([w, h, mn, mx, st], dtype=torch.int32)
    t[f"reso{i}.resos"] = torch.tensor(make_bucket_resolutions((w, h), mn, mx, st), dtype=torch.int32)
    for mode, no_up in (("up", False), ("noup", True)):
        bm = BucketManager(no_up, (w, h), mn, mx, st)
        if not no_up:
            bm.make_buckets()
        rows = []
        for iw, ih in SIZES:
            reso, rs = bm.select_bucket(iw, ih)
            rows.append([iw, ih, reso[0], reso[1], rs[0], rs[1]])
        t[f"reso{i}.select_{mode}"] = torch.tensor(rows, dtype=torch.int32)
    # enable_bucket off: one predefined resolution
    bm = BucketManager(False, (w, h), None, None, None)
    bm.set_predefined_resos([(w, h)])
    rows = []
    for iw, ih in SIZES:
        reso, rs = bm.select_bucket(iw, ih)
        rows.append([iw, ih, reso[0], reso[1], rs[0], rs[1]])
    t[f"reso{i}.select_off"] = torch.tensor(rows, dtype=torch.int32)

# cv2 resampling references (uint8 HWC RGB)
rng = np.random.default_rng(7)
RESIZES = [("area_int", 40, 30, 20, 15, cv2.INTER_AREA), ("area_frac", 37, 29, 20, 15, cv2.INTER_AREA),
           ("area_big", 203, 157, 64, 50, cv2.INTER_AREA), ("linear_up", 13, 11, 29, 23, cv2.INTER_LINEAR)]
for name, sw, sh, dw, dh, interp in RESIZES:
    src = rng.integers(0, 256, size=(sh, sw, 3), dtype=np.uint8)
    # smooth part so the comparison is not only noise
    yy, xx = np.mgrid[0:sh, 0:sw]
    src[..., 1] = ((xx * 255) // max(sw - 1, 1)).astype(np.uint8)
    dst = cv2.resize(src, (dw, dh), interpolation=interp)
    t[f"resize_{name}.src"] = torch.from_numpy(src.copy())
    t[f"resize_{name}.dst"] = torch.from_numpy(dst.copy())
    # cv2's float path: the exact resampling (its uint8 path rounds fixed-point weights)
    t[f"resize_{name}.dst_f32"] = torch.from_numpy(cv2.resize(src.astype(np.float32), (dw, dh), interpolation=interp))

save_file(t, OUT, metadata={"generator": "tests/gen/gen_buckets.py"})
print(f"wrote {OUT}: {len(t)} tensors, {os.path.getsize(OUT)} bytes")
