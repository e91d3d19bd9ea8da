"""Golden data for layer norm over the last dimension, forward and backward.

float64 math, stored f32. Per case: x [M, C], gamma, beta [C], y, mean, rstd [M], dy, dx,
dgamma, dbeta; scalars M, C (i64) and eps (f32).
"""
import torch
import torch.nn.functional as F

from goldenlib import Golden

CASES = [("m7c48", 7, 48, 1e-5), ("m10c320", 10, 320, 1e-5), ("m3c13", 3, 13, 1e-6),
         ("m77c64", 77, 64, 1e-5)]  # 77 rows: more than one 64-row reduction block


def main():
    g = Golden("layernorm")
    for name, M, C, eps in CASES:
        x = (torch.randn(M, C, dtype=torch.float32) * 3 - 1).double().requires_grad_()
        gamma = (1 + 0.5 * torch.randn(C, dtype=torch.float32)).double().requires_grad_()
        beta = (0.5 * torch.randn(C, dtype=torch.float32)).double().requires_grad_()
        dy = torch.randn(M, C, dtype=torch.float32).double()
        eps32 = float(torch.tensor(eps, dtype=torch.float32))
        y = F.layer_norm(x, (C,), gamma, beta, eps32)
        y.backward(dy)
        xd = x.detach()
        mean = xd.mean(-1)
        rstd = 1.0 / torch.sqrt(xd.var(-1, unbiased=False) + eps32)
        for k, t in [("x", x), ("gamma", gamma), ("beta", beta), ("y", y), ("mean", mean),
                     ("rstd", rstd), ("dy", dy), ("dx", x.grad), ("dgamma", gamma.grad),
                     ("dbeta", beta.grad)]:
            g.add(name, k, t)
        g.add(name, "M", torch.tensor(M, dtype=torch.int64))
        g.add(name, "C", torch.tensor(C, dtype=torch.int64))
        g.add(name, "eps", torch.tensor(eps32, dtype=torch.float32))
    g.save()


if __name__ == "__main__":
    main()
