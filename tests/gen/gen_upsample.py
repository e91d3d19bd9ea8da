"""Golden data for host/ops/cpu/upsample.c: nearest 2x upsampling (F.interpolate, mode
"nearest", scale_factor=2) forward and backward, stored channels-last."""
import torch
import torch.nn.functional as F

from goldenlib import Golden, nchw_to_nhwc

g = Golden("upsample")

for case, (N, C, H, W) in {"odd": (2, 7, 5, 3), "sd": (1, 320, 4, 4), "n1c1": (1, 1, 1, 1)}.items():
    x = torch.randn(N, C, H, W, dtype=torch.float64).to(torch.float32).to(torch.float64)
    x.requires_grad_(True)
    y = F.interpolate(x, scale_factor=2.0, mode="nearest")
    dy = torch.randn_like(y).to(torch.float32).to(torch.float64)
    (dx,) = torch.autograd.grad(y, x, dy)
    for k, t in dict(x=x, y=y, dy=dy, dx=dx).items():
        g.add(case, k, nchw_to_nhwc(t))

g.save()
