"""Golden data for host/ops/cpu/activation.c: GELU (erf, tanh), quick-GELU, SiLU, GEGLU forward
and backward, computed in float64 from float32-rounded inputs."""
import torch
import torch.nn.functional as F

from goldenlib import Golden

g = Golden("activation")

ACTS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": lambda x: F.silu(x),
}
SHAPES = {"odd": (2, 77, 33), "sd": (1, 4, 4, 320), "one": (1, 1, 5)}


def f32(t):
    return t.to(torch.float32).to(torch.float64)


for name, fn in ACTS.items():
    for sname, shape in SHAPES.items():
        case = f"{name}_{sname}"
        x = f32(torch.randn(shape, dtype=torch.float64) * 3)
        if sname == "one":  # saturated tails and zero
            x = torch.tensor([[[-30.0, -9.0, 0.0, 9.0, 30.0]]], dtype=torch.float64)
        x.requires_grad_(True)
        dy = f32(torch.randn(shape, dtype=torch.float64))
        y = fn(x)
        (dx,) = torch.autograd.grad(y, x, dy)
        g.add(case, "x", x)
        g.add(case, "dy", dy)
        g.add(case, "y", y)
        g.add(case, "dx", dx)

# GEGLU: diffusers GEGLU after proj: hidden, gate = x.chunk(2, -1); out = hidden * gelu(gate)
for case, (M, D) in {"geglu_odd": (2 * 77, 40), "geglu_tiny": (3, 13), "geglu_sd": (64, 160)}.items():
    x = f32(torch.randn(M, 2 * D, dtype=torch.float64) * 2).requires_grad_(True)
    dy = f32(torch.randn(M, D, dtype=torch.float64))
    hidden, gate = x.chunk(2, dim=-1)
    y = hidden * F.gelu(gate)
    (dx,) = torch.autograd.grad(y, x, dy)
    g.add(case, "x", x)
    g.add(case, "dy", dy)
    g.add(case, "y", y)
    g.add(case, "dx", dx)

g.save()
