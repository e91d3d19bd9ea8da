"""Golden data for host/ops/cpu/embedding.c: diffusers' get_timestep_embedding (float32, as the
UNet runs it) and the same formula in float64."""
import math

import torch
from diffusers.models.embeddings import get_timestep_embedding

from goldenlib import Golden

g = Golden("embedding")


def ref64(t, dim, flip, shift, scale, max_period):
    half = dim // 2
    e = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / (half - shift))
    a = scale * t.to(torch.float64)[:, None] * e[None, :]
    emb = torch.cat([torch.sin(a), torch.cos(a)], -1)
    if flip:
        emb = torch.cat([emb[:, half:], emb[:, :half]], -1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


CASES = [  # name, timesteps, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period
    ("sd15", [999.0, 0.0, 1.0, 500.5], 320, True, 0.0, 1.0, 10000),
    ("n1_odd", [37.25], 7, True, 0.0, 1.0, 10000),
    ("noflip_shift1", [3.0, 999.0], 33, False, 1.0, 1.0, 10000),
    ("scaled", [12.0, 250.0, 0.5], 64, True, 1.0, 2.0, 1000),
]
for name, ts, dim, flip, shift, scale, mp in CASES:
    t = torch.tensor(ts, dtype=torch.float32)
    emb = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift,
                                 scale=scale, max_period=mp)
    assert emb.dtype == torch.float32 and emb.shape == (len(ts), dim)
    g.add(name, "t", t)
    g.add(name, "emb", emb)
    g.add(name, "emb64", ref64(t, dim, flip, shift, scale, mp))
    g.add(name, "params", torch.tensor([dim, float(flip), shift, scale, mp], dtype=torch.float32))

g.save()
