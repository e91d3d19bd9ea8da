"""Golden data for host/train/objective.c: one batch of sd-scripts' training objective drawn
from torch's global CPU generator in sd-scripts' order (train_util.get_noise_noisy_latents_and_
timesteps): noise = randn_like(latents); noise offset randn((b, c, 1, 1)); timesteps =
randint(0, 1000, (b,)); noisy = DDPMScheduler.add_noise; target noise or get_velocity; min-SNR
weights as custom_train_functions.apply_snr_weight. Stored channels-last ([N, H, W, C])."""
import torch
from diffusers import DDPMScheduler

from goldenlib import Golden, nchw_to_nhwc

g = Golden("objective")
sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      num_train_timesteps=1000, clip_sample=False)
acp = sched.alphas_cumprod
all_snr = (acp ** 0.5 / (1.0 - acp) ** 0.5) ** 2

for case, N, C, H, W, offset, gamma, v, seed in [("eps", 2, 4, 8, 8, 0.0, 0.0, False, 7),
                                                 ("eps_offset_snr", 3, 4, 6, 10, 0.1, 5.0, False, 11),
                                                 ("v_snr", 2, 4, 8, 4, 0.0, 1.0, True, 3)]:
    latents = torch.randn(N, C, H, W)
    torch.manual_seed(seed)
    noise = torch.randn_like(latents)
    if offset:
        noise = noise + offset * torch.randn((N, C, 1, 1))
    t = torch.randint(0, 1000, (N,)).long()
    noisy = sched.add_noise(latents, noise, t)
    target = sched.get_velocity(latents, noise, t) if v else noise
    snr = torch.stack([all_snr[i] for i in t])
    mn = torch.minimum(snr, torch.ones_like(snr) * gamma) if gamma else None
    if not gamma:
        w = torch.ones(N)
    elif v:
        w = mn / (snr + 1)
    else:
        w = mn / snr
    g.add(case, "latents", nchw_to_nhwc(latents))
    g.add(case, "noise", nchw_to_nhwc(noise))
    g.add(case, "noisy", nchw_to_nhwc(noisy))
    g.add(case, "target", nchw_to_nhwc(target))
    g.add(case, "t", t)
    g.add(case, "w", w.float())
g.save()
