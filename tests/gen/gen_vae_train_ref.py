"""Golden data for VAE training (`danlu train-vae`): three AdamW steps that train every weight of
a tiny diffusers AutoencoderKL (tests/golden/tiny_vae2/vae: 3 blocks of 16, 24, 32 channels, so
down/upsamplers and conv shortcuts; mid attention; quant_conv and post_quant_conv), in float32:

    post = vae.encode(x).latent_dist                      (DiagonalGaussianDistribution)
    z    = post.mean + post.std * eps                     (eps given: what danlu draws)
    rec  = vae.decode(z).sample
    loss = F.mse_loss(rec, x) + KL_WEIGHT * post.kl().mean()
    loss.backward(); clip_grad_norm_(vae.parameters(), 1.0)
    AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2).step()

post.kl() is 0.5 * sum over C, H, W of (mean^2 + var - 1 - logvar) per sample; .mean() averages
it over the batch (the reduction danlu documents). The weights on disk are fp16, upcast exactly.

Case "vt" holds per step s (0, 1, 2): "s<s>.img" [N, H, W, 3] in [-1, 1] and "s<s>.eps"
[N, h, w, 4] (NHWC); "loss", "rec", "kl", "gnorm" [3] (each step's, before its update; gnorm
before clipping); and "w.<diffusers name>" for every parameter after the three steps in danlu's
layouts (conv weights [Cout, kh, kw, Cin]; the 1x1 quant convs as [out, in]).
"""
import os

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from goldenlib import GOLDEN_DIR, Golden, nchw_to_nhwc, oihw_to_ohwi

STEPS, N, H, W = 3, 2, 16, 16
LR, BETAS, EPS, WD, MAX_NORM, KL_WEIGHT = 1e-3, (0.9, 0.999), 1e-8, 1e-2, 1.0, 1e-2


def danlu_layout(name, p):
    if p.ndim == 4:
        if p.shape[2] == 1 and p.shape[3] == 1 and "quant_conv" in name:
            return p.reshape(p.shape[0], p.shape[1])
        return oihw_to_ohwi(p)
    return p


def main():
    g = Golden("vae_train_ref", seed=777)
    vae = AutoencoderKL.from_pretrained(os.path.join(GOLDEN_DIR, "tiny_vae2", "vae"), torch_dtype=torch.float32)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    L = vae.config.latent_channels
    losses, recs, kls, norms = [], [], [], []
    for s in range(STEPS):
        gen = torch.Generator().manual_seed(300 + s)
        x = torch.rand(N, 3, H, W, generator=gen) * 2 - 1
        eps = torch.randn(N, L, H // f, W // f, generator=gen)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * eps
        rec = vae.decode(z).sample
        lrec = F.mse_loss(rec, x, reduction="mean")
        kl = post.kl().mean()
        loss = lrec + KL_WEIGHT * kl
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(vae.parameters(), MAX_NORM)))
        opt.step()
        losses.append(loss.item()), recs.append(lrec.item()), kls.append(kl.item())
        g.add("vt", f"s{s}.img", nchw_to_nhwc(x))
        g.add("vt", f"s{s}.eps", nchw_to_nhwc(eps))
    for k, v in (("loss", losses), ("rec", recs), ("kl", kls), ("gnorm", norms)):
        g.add("vt", k, torch.tensor(v))
    n = 0
    for name, p in vae.named_parameters():
        g.add("vt", f"w.{name}", danlu_layout(name, p.detach()))
        n += p.numel()
    print(f"losses {losses} (rec {recs}, kl {kls}), gradient norms {norms}, {n} parameters")
    g.save()


if __name__ == "__main__":
    main()
