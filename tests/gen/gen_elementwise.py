"""Golden data for host/ops/cpu/elementwise.c: broadcast add of per-channel / per-sample vectors
over channels-last [N, HW, C] and channel concat, forward and backward, in float64 from
float32-rounded inputs."""
import torch

from goldenlib import Golden

g = Golden("elementwise")


def r(*shape):
    return torch.randn(*shape, dtype=torch.float64).to(torch.float32).to(torch.float64)


# broadcast add: (case, N, HW, C, per_sample)
for case, N, HW, C, per_sample in [
    ("bias_odd", 2, 35, 37, 0),
    ("bias_sd", 1, 64, 320, 0),
    ("temb_odd", 2, 35, 37, 1),
    ("temb_sd", 2, 16, 320, 1),
    ("temb_n1", 1, 9, 70, 1),
]:
    x = r(N, HW, C).requires_grad_(True)
    v = (r(N, C) if per_sample else r(C)).requires_grad_(True)
    dy = r(N, HW, C)
    y = x + (v[:, None, :] if per_sample else v)
    dx, dv = torch.autograd.grad(y, (x, v), dy)
    for k, t in dict(x=x, v=v, dy=dy, y=y, dx=dx, dv=dv).items():
        g.add(case, k, t)

# channel concat: torch.cat on NCHW along dim 1 == concat of the last dim of NHWC
for case, N, H, W, C1, C2 in [("cat_odd", 2, 5, 3, 7, 11), ("cat_sd", 1, 4, 4, 320, 640)]:
    a = r(N, C1, H, W).requires_grad_(True)
    b = r(N, C2, H, W).requires_grad_(True)
    y = torch.cat([a, b], dim=1)
    dy = r(N, C1 + C2, H, W)
    da, db = torch.autograd.grad(y, (a, b), dy)
    nhwc = lambda t: t.permute(0, 2, 3, 1).contiguous()
    for k, t in dict(a=a, b=b, y=y, dy=dy, da=da, db=db).items():
        g.add(case, k, nhwc(t))

g.save()
