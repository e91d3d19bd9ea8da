"""Golden data for host/ops/cpu/lora.c: LoRA on linear, 1x1-conv and kxk-conv (LoCon) layers:
y = base(x) + s * B(A(x)), its gradients dx, dA, dB (base frozen) and the merged weight
W + s * B A, in float64 from float32-rounded inputs. Channels-last storage."""
import torch
import torch.nn.functional as F

from goldenlib import Golden, nchw_to_nhwc, oihw_to_ohwi

g = Golden("lora")


def r(*shape, std=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * std).to(torch.float32).to(torch.float64)


# linear: case, M, in, out, rank, scale, bias
for case, M, fin, fout, rank, s, bias in [("lin_odd", 14, 17, 13, 3, 0.75, True),
                                         ("lin_sd", 64, 160, 160, 4, 0.25, True),
                                         ("lin_n1_nobias", 1, 5, 9, 2, 2.0, False)]:
    x = r(M, fin).requires_grad_(True)
    W = r(fout, fin, std=fin ** -0.5)
    b = r(fout) if bias else None
    A = r(rank, fin, std=fin ** -0.5).requires_grad_(True)
    B = r(fout, rank, std=0.5).requires_grad_(True)  # nonzero (trained), so every path is exercised
    h = x @ A.T
    y = F.linear(x, W, b) + s * (h @ B.T)
    dy = r(M, fout)
    dx, dA, dB = torch.autograd.grad(y, (x, A, B), dy)
    t = dict(x=x, W=W, A=A, B=B, h=h, y=y, dy=dy, dx=dx, dA=dA, dB=dB, Wm=W + s * (B @ A),
             params=torch.tensor([M, fin, fout, rank, s], dtype=torch.float64))
    if bias:
        t["b"] = b
    for k, v in t.items():
        g.add(case, k, v)

# convs: case, N, H, W, Cin, Cout, rank, k, stride, pad, scale, bias
for case, N, H, Wd, cin, cout, rank, k, stride, pad, s, bias in [
        ("conv1x1", 2, 3, 5, 8, 6, 2, 1, 1, 0, 0.5, True),
        ("conv3_s1", 2, 5, 7, 6, 5, 3, 3, 1, 1, 0.75, True),
        ("conv3_s2", 1, 9, 6, 8, 8, 4, 3, 2, 1, 1.5, True),
        ("conv3_sd", 1, 8, 8, 64, 64, 4, 3, 1, 1, 0.25, False)]:
    x = r(N, cin, H, Wd).requires_grad_(True)
    W = r(cout, cin, k, k, std=(cin * k * k) ** -0.5)
    b = r(cout) if bias else None
    A = r(rank, cin, k, k, std=(cin * k * k) ** -0.5).requires_grad_(True)
    B = r(cout, rank, 1, 1, std=0.5).requires_grad_(True)
    h = F.conv2d(x, A, None, stride, pad)
    y = F.conv2d(x, W, b, stride, pad) + s * F.conv2d(h, B)
    dy = r(*y.shape)
    dx, dA, dB = torch.autograd.grad(y, (x, A, B), dy)
    Wm = W + s * torch.einsum("or,rihw->oihw", B[:, :, 0, 0], A)
    t = dict(x=nchw_to_nhwc(x), W=oihw_to_ohwi(W), A=oihw_to_ohwi(A), B=B[:, :, 0, 0], h=nchw_to_nhwc(h),
             y=nchw_to_nhwc(y), dy=nchw_to_nhwc(dy), dx=nchw_to_nhwc(dx), dA=oihw_to_ohwi(dA),
             dB=dB[:, :, 0, 0], Wm=oihw_to_ohwi(Wm),
             params=torch.tensor([N, H, Wd, cin, cout, rank, k, stride, pad, s], dtype=torch.float64))
    if bias:
        t["b"] = b
    for kk, v in t.items():
        g.add(case, kk, v)

g.save()
