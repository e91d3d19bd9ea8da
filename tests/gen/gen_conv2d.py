"""Golden data for host/ops/cpu/conv2d.c: channels-last conv2d forward and gradients, computed
in float64 by PyTorch autograd (NCHW internally) from float32-rounded inputs, stored float32 in
danlu's layouts.

Per case: x [N, H, W, Cin], w [Cout, k, k, Cin], b [Cout], dy [N, Ho, Wo, Cout],
y [N, Ho, Wo, Cout], dx [N, H, W, Cin], dw [Cout, k, k, Cin], db [Cout].
Padding is (top, left, bottom, right); asymmetric padding is applied with F.pad before an
unpadded convolution, as the SD VAE encoder's downsample does."""
import torch
import torch.nn.functional as F

from goldenlib import Golden, nchw_to_nhwc, oihw_to_ohwi

# name, N, H, W, Cin, Cout, k, stride, (top, left, bottom, right)
CASES = [
    ("k3s1p1", 2, 7, 9, 5, 6, 3, 1, (1, 1, 1, 1)),
    ("k3s1p1_sd", 1, 8, 8, 20, 24, 3, 1, (1, 1, 1, 1)),
    ("k1s1p0", 2, 5, 6, 7, 9, 1, 1, (0, 0, 0, 0)),
    ("k3s2p1", 1, 9, 8, 6, 5, 3, 2, (1, 1, 1, 1)),
    ("k3s2p1_even", 2, 8, 8, 16, 17, 3, 2, (1, 1, 1, 1)),
    ("k3s2_vae", 2, 8, 7, 4, 6, 3, 2, (0, 0, 1, 1)),
    ("k1s2p0", 1, 7, 7, 3, 5, 1, 2, (0, 0, 0, 0)),
    ("k3s1p0", 1, 6, 5, 17, 33, 3, 1, (0, 0, 0, 0)),
    ("k3s1p1_c40", 1, 10, 11, 32, 40, 3, 1, (1, 1, 1, 1)),  # K = 288 > one K block
]


def main():
    g = Golden("conv2d")
    for name, N, H, W, Cin, Cout, k, stride, (pt, pl, pb, pr) in CASES:
        x = torch.randn(N, Cin, H, W).float().double().requires_grad_()
        w = (torch.randn(Cout, Cin, k, k) / (Cin * k * k) ** 0.5).float().double().requires_grad_()
        b = torch.randn(Cout).float().double().requires_grad_()
        y = F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride=stride)
        dy = torch.randn_like(y).float().double()
        y.backward(dy)
        g.add(name, "x", nchw_to_nhwc(x))
        g.add(name, "w", oihw_to_ohwi(w))
        g.add(name, "b", b)
        g.add(name, "dy", nchw_to_nhwc(dy))
        g.add(name, "y", nchw_to_nhwc(y))
        g.add(name, "dx", nchw_to_nhwc(x.grad))
        g.add(name, "dw", oihw_to_ohwi(w.grad))
        g.add(name, "db", b.grad)
    g.save()


if __name__ == "__main__":
    main()
