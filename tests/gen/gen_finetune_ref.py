"""Golden data for full UNet fine-tuning (`danlu finetune`): three AdamW steps that train every
weight of a tiny diffusers UNet, in float32, as sd-scripts' fine_tune.py does on one batch:

    noisy = DDPMScheduler(scaled_linear 0.00085..0.012, 1000 steps).add_noise(latents, noise, t)
    loss  = F.mse_loss(unet(noisy, t, ctx).sample, noise)          (epsilon target, plain mean)
    loss.backward(); clip_grad_norm_(unet.parameters(), 1.0)
    AdamW(unet.parameters(), lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2).step()

Model: tests/golden/tiny_unet_sd1x/unet (fp16 on disk, upcast to float32 exactly, as danlu loads
it). Inputs are drawn with a fixed seed per step: latents, noise [N, 4, 8, 8], integer timesteps
[N], text context [N, T, 48].

Case "ft" holds, per step s (0, 1, 2): "s<s>.noisy" and "s<s>.target" [N, H, W, 4] (NHWC),
"s<s>.t" [N] (float), "s<s>.ctx" [N, T, Dc]; "loss" [3] (the loss of each step, before its
update), "gnorm" [3] (the gradient's L2 norm before clipping), and "w.<diffusers name>" for every
UNet parameter after the three steps, in danlu's layouts (conv weights [Cout, kh, kw, Cin]; SD1's
1x1-conv proj_in / proj_out as [out, in]).

Case "te" (tests/golden/finetune_te_ref.safetensors) trains the text encoder too, as fine_tune.py
with --train_text_encoder: tests/golden/tiny_sd15's CLIPTextModel (last_hidden_state, i.e. clip
skip 1) feeds its UNet; AdamW over both (lr 1e-3 for the UNet, 5e-4 for the text encoder, one
clip_grad_norm_ over all parameters). Per step "s<s>.ids" [N, T] (as float), "s<s>.noisy",
"s<s>.target", "s<s>.t"; "loss", "gnorm" [3]; "w.<transformers name>" for every text-encoder
parameter after the three steps.
"""
import os

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from goldenlib import GOLDEN_DIR, Golden, nchw_to_nhwc, oihw_to_ohwi

STEPS, N, H, W, T = 3, 2, 8, 8, 7
LR, BETAS, EPS, WD, MAX_NORM = 1e-3, (0.9, 0.999), 1e-8, 1e-2, 1.0


def danlu_layout(name, p):
    if p.ndim == 4:
        w = oihw_to_ohwi(p)
        return w.reshape(w.shape[0], -1) if p.shape[2] == 1 and p.shape[3] == 1 and "proj_" in name else w
    return p


def main():
    g = Golden("finetune_ref", seed=4321)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(GOLDEN_DIR, "tiny_unet_sd1x", "unet"),
                                                torch_dtype=torch.float32)
    unet.train()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    Dc = unet.config.cross_attention_dim
    losses, norms = [], []
    for s in range(STEPS):
        gen = torch.Generator().manual_seed(100 + s)
        latents = torch.randn(N, 4, H, W, generator=gen) * 0.8
        noise = torch.randn(N, 4, H, W, generator=gen)
        t = torch.randint(0, 1000, (N,), generator=gen)
        ctx = torch.randn(N, T, Dc, generator=gen)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, noise, reduction="mean")
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(unet.parameters(), MAX_NORM)))
        opt.step()
        losses.append(loss.item())
        g.add("ft", f"s{s}.noisy", nchw_to_nhwc(noisy))
        g.add("ft", f"s{s}.target", nchw_to_nhwc(noise))
        g.add("ft", f"s{s}.t", t.float())
        g.add("ft", f"s{s}.ctx", ctx)
    g.add("ft", "loss", torch.tensor(losses))
    g.add("ft", "gnorm", torch.tensor(norms))
    n = 0
    for name, p in unet.named_parameters():
        g.add("ft", f"w.{name}", danlu_layout(name, p.detach()))
        n += p.numel()
    print(f"losses {losses}, gradient norms {norms}, {n} parameters")
    g.save()


def main_te():
    g = Golden("finetune_te_ref", seed=4322)
    root = os.path.join(GOLDEN_DIR, "tiny_sd15")
    unet = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet"), torch_dtype=torch.float32)
    te = CLIPTextModel.from_pretrained(os.path.join(root, "text_encoder"), torch_dtype=torch.float32)
    unet.train()
    te.train()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear")
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "lr": LR},
                             {"params": list(te.parameters()), "lr": LR / 2}],
                            betas=BETAS, eps=EPS, weight_decay=WD)
    params = list(unet.parameters()) + list(te.parameters())
    losses, norms = [], []
    for s in range(STEPS):
        gen = torch.Generator().manual_seed(200 + s)
        latents = torch.randn(N, 4, H, W, generator=gen) * 0.8
        noise = torch.randn(N, 4, H, W, generator=gen)
        t = torch.randint(0, 1000, (N,), generator=gen)
        ids = torch.randint(0, te.config.vocab_size, (N, T), generator=gen)
        noisy = sched.add_noise(latents, noise, t)
        ctx = te(ids).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, noise, reduction="mean")
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in params)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_NORM)))
        opt.step()
        losses.append(loss.item())
        g.add("te", f"s{s}.ids", ids.float())
        g.add("te", f"s{s}.noisy", nchw_to_nhwc(noisy))
        g.add("te", f"s{s}.target", nchw_to_nhwc(noise))
        g.add("te", f"s{s}.t", t.float())
    g.add("te", "loss", torch.tensor(losses))
    g.add("te", "gnorm", torch.tensor(norms))
    for name, p in te.named_parameters():  # transformers 5 drops the "text_model." of the file's names
        g.add("te", f"w.{name if name.startswith('text_model.') else 'text_model.' + name}", p.detach())
    print(f"text encoder case: losses {losses}, gradient norms {norms}")
    g.save()


if __name__ == "__main__":
    main()
    main_te()
