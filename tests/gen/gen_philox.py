"""Reference draws of A1111's "NV" random number source (modules/rng_philox.py of
AUTOMATIC1111/stable-diffusion-webui), which imitates torch.randn on an NVIDIA GPU on the CPU.

The reference here is an independent numpy transcription of that algorithm, not A1111 itself
(A1111 cannot be installed here) and not torch on CUDA (no GPU here): Philox4x32-10, key = the
64-bit seed split into (low, high) 32-bit words and bumped by the Weyl constants after each of
the first nine rounds, counter = [offset, 0, element index, 0], offset = the number of earlier
randn calls of the generator; each element is the first Box-Muller value of output words 0 and
1, with numpy's dtype promotion (uint32 * float32 constant -> float64 math, rounded to float32
at the end). Anchor: seed 0, shape (3, 4) must give A1111's documented (and torch CUDA's)
-0.92466259 -0.42534415 -2.6438457 0.14518388 ... (checked below and in tests/test_philox.c).

Cases "s<seed>_n<n>": two consecutive randn calls of n elements on a fresh generator, stored as
x0 (offset 0) and x1 (offset 1)."""
import numpy as np
import torch
from goldenlib import Golden

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
INV32 = np.float32(2.3283064e-10)
INV32_2PI = np.float32(2.3283064e-10 * 6.2831855)


def philox4x32_10(c, k0, k1):
    """c: 4 uint32 arrays (counter words); k0, k1: uint32 key words. Returns the 4 output words."""
    c0, c1, c2, c3 = (w.astype(np.uint32) for w in c)
    k0, k1 = np.uint32(k0), np.uint32(k1)
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = c0.astype(np.uint64) * M0
            p1 = c2.astype(np.uint64) * M1
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = np.uint32(k0 + W0)
            k1 = np.uint32(k1 + W1)
    return c0, c1, c2, c3


class NvRng:
    def __init__(self, seed):
        self.seed, self.offset = seed, 0

    def randn(self, n):
        idx = np.arange(n, dtype=np.uint32)
        zero = np.zeros(n, dtype=np.uint32)
        off = np.full(n, self.offset, dtype=np.uint32)
        self.offset += 1
        w0, w1, _, _ = philox4x32_10((off, zero, idx, zero), self.seed & 0xFFFFFFFF, self.seed >> 32)
        u = w0 * INV32 + INV32 / 2  # float64 (uint32 * float32 promotes)
        v = w1 * INV32_2PI + INV32_2PI / 2
        assert u.dtype == np.float64 and v.dtype == np.float64
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


anchor = NvRng(0).randn(12)
expect = np.array([-0.92466259, -0.42534415, -2.6438457, 0.14518388, -0.12086647, -0.57972564, -0.62285122,
                   -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497])
assert np.abs(anchor - expect).max() < 1e-6, anchor

g = Golden("philox")
for seed in [0, 1, 42, 3735928559, 2**32 + 7]:
    for n in [1, 7, 16, 4 * 64 * 64]:
        r = NvRng(seed)
        g.add(f"s{seed}_n{n}", "x0", torch.from_numpy(r.randn(n)))
        g.add(f"s{seed}_n{n}", "x1", torch.from_numpy(r.randn(n)))
g.save()
