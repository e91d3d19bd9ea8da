"""Golden data for group norm (+ fused SiLU) on channels-last [N, HW, C], forward and backward.

float64 math, stored f32. Per case: x [N, HW, C], gamma, beta [C], y, mean, rstd [N, G],
dy, dx, dgamma, dbeta; scalars N, HW, C, G, silu (i64) and eps (f32).
"""
import torch
import torch.nn.functional as F

from goldenlib import Golden

CASES = [
    # name, N, H, W, C, G, silu, eps
    ("c48g8", 2, 3, 5, 48, 8, 0, 1e-5),     # C not a multiple of 32, odd H and W
    ("c96g32_silu", 1, 5, 3, 96, 32, 1, 1e-6),
    ("sd_silu", 2, 4, 4, 64, 32, 1, 1e-5),
    ("multiblock", 1, 13, 11, 40, 4, 1, 1e-5),  # HW = 143 > one 128-row block
    ("g1", 1, 2, 3, 6, 1, 0, 1e-3),
]


def main():
    g = Golden("groupnorm")
    for name, N, H, W, C, G, silu, eps in CASES:
        x = (torch.randn(N, H * W, C, dtype=torch.float32) * 2 + 0.5).double()
        gamma = (1 + 0.5 * torch.randn(C, dtype=torch.float32)).double()
        beta = (0.5 * torch.randn(C, dtype=torch.float32)).double()
        dy = torch.randn(N, H * W, C, dtype=torch.float32).double()
        eps32 = float(torch.tensor(eps, dtype=torch.float32))
        x.requires_grad_(); gamma.requires_grad_(); beta.requires_grad_()
        xc = x.reshape(N, H, W, C).permute(0, 3, 1, 2)  # NCHW
        z = F.group_norm(xc, G, gamma, beta, eps32)
        y = F.silu(z) if silu else z
        y = y.permute(0, 2, 3, 1).reshape(N, H * W, C)
        y.backward(dy)
        xg = x.detach().reshape(N, H * W, G, C // G).permute(0, 2, 1, 3).reshape(N, G, -1)
        mean = xg.mean(-1)
        rstd = 1.0 / torch.sqrt(xg.var(-1, unbiased=False) + eps32)
        for k, t in [("x", x), ("gamma", gamma), ("beta", beta), ("y", y), ("mean", mean),
                     ("rstd", rstd), ("dy", dy), ("dx", x.grad), ("dgamma", gamma.grad),
                     ("dbeta", beta.grad)]:
            g.add(name, k, t)
        for k, v in [("N", N), ("HW", H * W), ("C", C), ("G", G), ("silu", silu)]:
            g.add(name, k, torch.tensor(v, dtype=torch.int64))
        g.add(name, "eps", torch.tensor(eps32, dtype=torch.float32))
    g.save()


if __name__ == "__main__":
    main()
