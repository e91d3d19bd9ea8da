"""Golden data for softmax over the last dimension, forward and backward.

float64 math, stored f32. Per case: x [M, C] (may hold -inf: masked logits), y, dy, dx;
scalars M, C (i64).
"""
import torch

from goldenlib import Golden

CASES = [("m5c77", 5, 77, False), ("m3c1000", 3, 1000, False), ("m4c37_masked", 4, 37, True),
         ("m2c1", 2, 1, False)]


def main():
    g = Golden("softmax")
    for name, M, C, masked in CASES:
        x = (torch.randn(M, C, dtype=torch.float32) * 4).double()
        if masked:  # causal-style mask: row m sees columns <= 8 * m + 3
            for m in range(M):
                x[m, 8 * m + 4:] = float("-inf")
        x.requires_grad_()
        dy = torch.randn(M, C, dtype=torch.float32).double()
        y = torch.softmax(x, -1)
        y.backward(dy)
        for k, t in [("x", x), ("y", y), ("dy", dy), ("dx", x.grad)]:
            g.add(name, k, t)
        g.add(name, "M", torch.tensor(M, dtype=torch.int64))
        g.add(name, "C", torch.tensor(C, dtype=torch.int64))
    g.save()


if __name__ == "__main__":
    main()
