"""Golden data for multi-head scaled dot-product attention on channels-last tokens.

float64 math, stored f32. Per case: q [N, Tq, H*d], k, v [N, Tk, H*d], o, lse [N, H, Tq],
dy, dq, dk, dv; scalars N, Tq, Tk, H, d, causal (i64) and scale (f32). Head h uses channels
[h*d, (h+1)*d) of each token (diffusers' layout after to_q).
"""
import math

import torch

from goldenlib import Golden

CASES = [
    # name, N, Tq, Tk, H, d, causal
    ("self37_d40", 1, 37, 37, 2, 40, 0),
    ("self70_d64", 2, 70, 70, 1, 64, 0),
    ("cross77_d80", 2, 20, 77, 1, 80, 0),
    ("cross77_d160", 1, 5, 77, 1, 160, 0),
    ("clip_causal77_d64", 1, 77, 77, 2, 64, 1),
    ("causal130_d16", 1, 130, 130, 1, 16, 1),  # more than one query tile
    ("self130_d40", 1, 130, 101, 1, 40, 0),
    ("odd_d24", 1, 33, 19, 3, 24, 0),
]


def main():
    g = Golden("attention")
    for name, N, Tq, Tk, H, d, causal in CASES:
        scale = float(torch.tensor(1.0 / math.sqrt(d), dtype=torch.float32))
        q = (torch.randn(N, Tq, H * d, dtype=torch.float32) * 1.5).double().requires_grad_()
        k = torch.randn(N, Tk, H * d, dtype=torch.float32).double().requires_grad_()
        v = torch.randn(N, Tk, H * d, dtype=torch.float32).double().requires_grad_()
        dy = torch.randn(N, Tq, H * d, dtype=torch.float32).double()
        qh = q.reshape(N, Tq, H, d).permute(0, 2, 1, 3)
        kh = k.reshape(N, Tk, H, d).permute(0, 2, 1, 3)
        vh = v.reshape(N, Tk, H, d).permute(0, 2, 1, 3)
        s = (qh @ kh.transpose(-1, -2)) * scale
        if causal:
            s = s.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).triu(1), float("-inf"))
        lse = torch.logsumexp(s, -1)
        o = (torch.softmax(s, -1) @ vh).permute(0, 2, 1, 3).reshape(N, Tq, H * d)
        o.backward(dy)
        for key, t in [("q", q), ("k", k), ("v", v), ("o", o), ("lse", lse), ("dy", dy),
                       ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)]:
            g.add(name, key, t)
        for key, val in [("N", N), ("Tq", Tq), ("Tk", Tk), ("H", H), ("d", d), ("causal", causal)]:
            g.add(name, key, torch.tensor(val, dtype=torch.int64))
        g.add(name, "scale", torch.tensor(scale, dtype=torch.float32))
    g.save()


if __name__ == "__main__":
    main()
