"""Reference draws of torch's CPU generator: torch.randn and torch.rand for several seeds and
sizes (below 16 elements torch takes a scalar double path with a cached second sample; from 16
on a vectorised float path that recomputes the last 16 when the size is not a multiple of 16),
and the raw 32-bit stream (via torch.randint over the full 32-bit range is not exposed, so the
uniform draws stand in for it)."""
import torch
from goldenlib import Golden

g = Golden("rng")
for seed in [0, 1, 42, 123456789, 2**32 + 7]:
    for n in [1, 3, 15, 16, 17, 40, 4 * 8 * 8]:
        gen = torch.Generator().manual_seed(seed)
        g.add(f"randn_s{seed}_n{n}", "x", torch.randn(n, generator=gen))
    gen = torch.Generator().manual_seed(seed)
    g.add(f"rand_s{seed}", "x", torch.rand(37, generator=gen))
    # the scalar path's cache carries across calls: randn(3) then randn(3)
    gen = torch.Generator().manual_seed(seed)
    g.add(f"randn_twice_s{seed}", "x", torch.cat([torch.randn(3, generator=gen), torch.randn(3, generator=gen)]))
    # latents as diffusers draws them for a 1x4x8x8 pipeline call
    gen = torch.Generator().manual_seed(seed)
    g.add(f"latents_s{seed}", "x", torch.randn((1, 4, 8, 8), generator=gen))
g.save()
