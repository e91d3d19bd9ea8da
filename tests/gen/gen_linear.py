"""Golden data for host/ops/cpu/linear.c: y = x w^T + b and its gradients, computed in float64
by PyTorch autograd from float32-rounded inputs, stored as float32.

Per case: x [M, in], w [out, in], b [out] (absent when the case has no bias), dy [M, out],
y [M, out], dx [M, in], dw [out, in], db [out]."""
import torch

from goldenlib import Golden

# name, M, in, out, bias
CASES = [
    ("tiny", 1, 7, 5, True),
    ("odd", 37, 45, 19, True),
    ("nobias", 64, 64, 96, False),
    ("sdlike", 130, 40, 70, True),   # tokens x head-dim-ish features, M not a multiple of 14
]


def main():
    g = Golden("linear")
    for name, M, fin, fout, bias in CASES:
        x = torch.randn(M, fin).float().double().requires_grad_()
        w = (torch.randn(fout, fin) / fin ** 0.5).float().double().requires_grad_()
        b = torch.randn(fout).float().double().requires_grad_() if bias else None
        dy = torch.randn(M, fout).float().double()
        y = torch.nn.functional.linear(x, w, b)
        y.backward(dy)
        g.add(name, "x", x)
        g.add(name, "w", w)
        g.add(name, "dy", dy)
        g.add(name, "y", y)
        g.add(name, "dx", x.grad)
        g.add(name, "dw", w.grad)
        if bias:
            g.add(name, "b", b)
            g.add(name, "db", b.grad)
        else:
            g.add(name, "db", dy.sum(0))  # the bias gradient is defined even without a bias
    g.save()


if __name__ == "__main__":
    main()
