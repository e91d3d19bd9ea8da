"""Golden data for the noise schedules and samplers (host/sample/schedule.c, sampler.c).

References:
- the DDPM training schedule, add_noise and get_velocity: diffusers' DDPMScheduler built from
  SD1.5's scheduler config (and linear / squaredcos_cap_v2 variants);
- min-SNR-gamma weights: a re-implementation of kohya sd-scripts'
  library/custom_train_functions.py (prepare_scheduler_for_custom_training + apply_snr_weight):
      all_snr = (sqrt(acp) / sqrt(1 - acp))**2            (float32)
      w = min(snr, gamma) / snr          (epsilon)
      w = min(snr, gamma) / (snr + 1)    (v-prediction)
- noise offset: sd-scripts' apply_noise_offset (noise + offset * randn(N, C, 1, 1), adaptive
  variant with |mean over H, W of the latents|), stored channels-last;
- inference timesteps / sigmas and full sampling loops: diffusers' schedulers created as
  StableDiffusionPipeline users do, Scheduler.from_config(sd15_pipe.scheduler.config, ...),
  driven by the pipeline's loop (scale_model_input + step with the pipeline generator), over a
  deterministic elementwise toy model
      model(x, t) = 0.3 x cos(t / 300) + 0.1 sin(x + t / 1000)      (float32, [1, 4, 8, 8]);
  every randn_tensor the schedulers draw is recorded, so the C test can check it draws the same
  tensors from dl_torch_randn in the same order;
- img2img: StableDiffusionImg2ImgPipeline's get_timesteps + add_noise + loop, without networks.
Everything runs in float32 as diffusers does on the CPU.
"""
import diffusers
import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, LCMScheduler, PNDMScheduler)

from goldenlib import Golden

SD15 = dict(
    _class_name="PNDMScheduler", beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085,
    clip_sample=False, num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
    steps_offset=1, trained_betas=None)

KINDS = {
    # danlu name: (class, extra config)
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "lcm": (LCMScheduler, {}),
}
SHAPE = (1, 4, 8, 8)

# record every randn_tensor a scheduler draws
DRAWS = []
_orig_randn = diffusers.utils.torch_utils.randn_tensor


def _recording_randn(*args, **kwargs):
    t = _orig_randn(*args, **kwargs)
    DRAWS.append(t.clone())
    return t


for _mod in [diffusers.schedulers.scheduling_euler_discrete,
             diffusers.schedulers.scheduling_euler_ancestral_discrete,
             diffusers.schedulers.scheduling_ddim, diffusers.schedulers.scheduling_lcm,
             diffusers.schedulers.scheduling_dpmsolver_multistep]:
    _mod.randn_tensor = _recording_randn


def base_config():
    return PNDMScheduler.from_config(SD15).config


def make(kind, pred="epsilon", **over):
    cls, extra = KINDS[kind]
    return cls.from_config(base_config(), prediction_type=pred, **extra, **over)


def toy(x, t):
    tf = torch.as_tensor(t).to(torch.float32)
    return 0.3 * x * torch.cos(tf / 300) + 0.1 * torch.sin(x + tf / 1000)


def step_kwargs(sched, gen, eta):
    import inspect
    params = set(inspect.signature(sched.step).parameters.keys())
    kw = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = gen
    return kw


def run_loop(sched, latents, timesteps, gen, eta):
    kw = step_kwargs(sched, gen, eta)
    for t in timesteps:
        xin = sched.scale_model_input(latents, t)
        out = toy(xin, t)
        latents = sched.step(out, t, latents, **kw, return_dict=False)[0]
    return latents


def euler_a_eta_loop(sched, latents, gen, eta):
    """Euler ancestral with k-diffusion's eta (get_ancestral_step: sigma_up scaled by eta and
    capped at sigma_to) on diffusers' sigmas, drawing noise as diffusers does (every step);
    eta = 1 is diffusers' EulerAncestralDiscreteScheduler."""
    sig = sched.sigmas
    for i, t in enumerate(sched.timesteps):
        sigma, sigma_to = sig[i], sig[i + 1]
        xin = latents / ((sigma**2 + 1) ** 0.5)
        out = toy(xin, t)
        x0 = latents - sigma * out
        sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        d = (latents - x0) / sigma
        latents = latents + d * (sigma_down - sigma)
        noise = _recording_randn(out.shape, generator=gen, dtype=out.dtype)
        latents = latents + noise * sigma_up
    return latents


def main():
    g = Golden("sched")

    # ---- training schedules ----
    for name, cfg in [
        ("sd15", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
        ("linear", dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)),
        ("cos", dict(beta_schedule="squaredcos_cap_v2")),
    ]:
        d = DDPMScheduler(num_train_timesteps=1000, **cfg)
        g.add(f"train_{name}", "betas", d.betas)
        g.add(f"train_{name}", "alphas_cumprod", d.alphas_cumprod)

    d = DDPMScheduler.from_config(base_config())
    x0 = torch.randn(3, *SHAPE[1:])
    eps = torch.randn(3, *SHAPE[1:])
    t = torch.tensor([0, 500, 999], dtype=torch.int64)
    g.add("noise", "x0", x0)
    g.add("noise", "eps", eps)
    g.add("noise", "t", t)
    g.add("noise", "xt", d.add_noise(x0, eps, t))
    g.add("noise", "v", d.get_velocity(x0, eps, t))

    # ---- min-SNR weights (sd-scripts' formula, float32) ----
    acp = d.alphas_cumprod
    all_snr = (torch.sqrt(acp) / torch.sqrt(1.0 - acp)) ** 2
    ts = torch.cat([torch.tensor([0, 1, 2, 10, 100, 250, 500, 750, 998, 999]),
                    torch.randint(0, 1000, (22,))]).to(torch.int64)
    g.add("snr", "t", ts)
    g.add("snr", "all_snr", all_snr)
    for gamma in [5.0, 1.0, 20.0]:
        snr = torch.stack([all_snr[i] for i in ts])
        m = torch.minimum(snr, torch.full_like(snr, gamma))
        g.add("snr", f"w_eps_g{int(gamma)}", torch.div(m, snr).float())
        g.add("snr", f"w_v_g{int(gamma)}", torch.div(m, snr + 1).float())

    # ---- noise offset (sd-scripts' apply_noise_offset), stored channels-last ----
    lat = torch.randn(2, 4, 6, 5) + torch.tensor([0.5, -1.0, 0.2, 0.0]).view(1, 4, 1, 1)
    noise = torch.randn(2, 4, 6, 5)
    r = torch.randn(2, 4, 1, 1)
    for name, off, ada in [("plain", 0.1, None), ("adaptive", 0.05, 0.3), ("adaptive_neg", 0.01, -0.4)]:
        o = off
        if ada is not None:
            o = torch.clamp(off + ada * torch.abs(lat.mean(dim=(2, 3), keepdim=True)), 0.0, None)
        out = noise + o * r
        g.add(f"offset_{name}", "out", out.permute(0, 2, 3, 1).reshape(2, 30, 4))
    g.add("offset", "latents", lat.permute(0, 2, 3, 1).reshape(2, 30, 4))
    g.add("offset", "noise", noise.permute(0, 2, 3, 1).reshape(2, 30, 4))
    g.add("offset", "r", r.reshape(2, 4))

    # ---- timesteps and sigmas ----
    kind_index = {k: i for i, k in enumerate(KINDS)}  # the order of dl_sampler_kind
    spacing_index = {None: 0, "linspace": 1, "leading": 2, "trailing": 3}

    def meta(case, kind, pred, sp, kar, n):
        g.add(case, "meta", torch.tensor([kind_index[kind], int(pred == "v_prediction"),
                                          spacing_index[sp], int(kar), n], dtype=torch.int64))

    nts = 0
    for kind in KINDS:
        spacings = [None] if kind == "lcm" else [None, "linspace", "leading", "trailing"]
        karras_opts = [False, True] if kind in ("euler", "heun", "dpmpp_2m") else [False]
        for sp in spacings:
            for kar in karras_opts:
                for n in [20, 7] + ([1, 2, 3, 50, {"lcm": 50, "ddim": 999}.get(kind, 1000)] if sp is None else []):
                    over = {}
                    if sp is not None:
                        over["timestep_spacing"] = sp
                    if kar:
                        over["use_karras_sigmas"] = True
                    s = make(kind, **over)
                    s.set_timesteps(n)
                    case = f"ts{nts}"
                    nts += 1
                    meta(case, kind, "epsilon", sp, kar, n)
                    g.add(case, "timesteps", s.timesteps.to(torch.float32))
                    if hasattr(s, "sigmas") and kind not in ("ddim", "lcm"):
                        g.add(case, "sigmas", s.sigmas.to(torch.float32))
                    g.add(case, "init_noise_sigma", torch.tensor([float(s.init_noise_sigma)]))

    g.add("ts", "count", torch.tensor([nts], dtype=torch.int64))

    # ---- full loops (txt2img) ----
    loops = []
    for kind in KINDS:
        for pred in ["epsilon", "v_prediction"]:
            loops.append((kind, pred, 20, 0.0, {}))
    loops += [("ddim", "epsilon", 20, 0.5, {}), ("ddim", "v_prediction", 7, 1.0, {}),
              ("euler", "epsilon", 7, 0.0, {"use_karras_sigmas": True}),
              ("heun", "v_prediction", 7, 0.0, {"use_karras_sigmas": True}),
              ("dpmpp_2m", "epsilon", 7, 0.0, {}), ("euler_a", "epsilon", 7, 0.0, {"timestep_spacing": "leading"}),
              ("lcm", "epsilon", 4, 0.0, {}), ("euler_a", "epsilon", 12, 0.5, {}),
              ("dpmpp_2m", "v_prediction", 9, 0.0, {"timestep_spacing": "trailing"}),
              ("euler", "v_prediction", 9, 0.0, {"timestep_spacing": "trailing"})]
    for li, (kind, pred, n, eta, over) in enumerate(loops):
        seed = 1000 + li
        s = make(kind, pred, **over)
        s.set_timesteps(n)
        gen = torch.Generator().manual_seed(seed)
        DRAWS.clear()
        init = torch.randn(SHAPE, generator=gen)
        lat = init * s.init_noise_sigma
        if kind == "euler_a" and eta > 0:
            out = euler_a_eta_loop(s, lat, gen, eta)
        else:
            out = run_loop(s, lat, s.timesteps, gen, eta)
        case = f"loop{li}"
        meta(case, kind, pred, over.get("timestep_spacing"), over.get("use_karras_sigmas", False), n)
        g.add(case, "seed", torch.tensor([seed], dtype=torch.int64))
        g.add(case, "steps", torch.tensor([n], dtype=torch.int64))
        g.add(case, "eta", torch.tensor([eta], dtype=torch.float32))
        g.add(case, "init", init)
        g.add(case, "ndraws", torch.tensor([len(DRAWS)], dtype=torch.int64))
        if DRAWS:
            g.add(case, "draws", torch.stack(DRAWS))
        g.add(case, "out", out)
        print(case, kind, pred, n, eta, over, "draws", len(DRAWS))

    g.add("loop", "count", torch.tensor([len(loops)], dtype=torch.int64))

    # ---- img2img ----
    imgs = []
    for kind in KINDS:
        imgs.append((kind, "epsilon", 20, 0.6))
    imgs += [("heun", "v_prediction", 7, 0.5), ("dpmpp_2m_karras", "v_prediction", 10, 0.35),
             ("euler_a", "epsilon", 10, 0.7), ("ddim", "epsilon", 20, 1.0), ("lcm", "epsilon", 6, 0.5)]
    x0 = torch.randn(SHAPE) * 0.8
    g.add("img2img", "x0", x0)
    for ii, (kind, pred, n, strength) in enumerate(imgs):
        seed = 2000 + ii
        s = make(kind, pred)
        s.set_timesteps(n)
        # StableDiffusionImg2ImgPipeline.get_timesteps
        init_timestep = min(int(n * strength), n)
        t_start = max(n - init_timestep, 0)
        timesteps = s.timesteps[t_start * s.order:]
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(t_start * s.order)
        gen = torch.Generator().manual_seed(seed)
        DRAWS.clear()
        noise = torch.randn(SHAPE, generator=gen)
        lat = s.add_noise(x0, noise, timesteps[:1].repeat(1))
        case = f"i2i{ii}"
        g.add(case, "seed", torch.tensor([seed], dtype=torch.int64))
        g.add(case, "steps", torch.tensor([n], dtype=torch.int64))
        meta(case, kind, pred, None, kind == "dpmpp_2m_karras", n)
        g.add(case, "strength_milli", torch.tensor([round(strength * 1000)], dtype=torch.int64))
        g.add(case, "begin", torch.tensor([t_start * s.order], dtype=torch.int64))
        g.add(case, "pipeline_steps", torch.tensor([n - t_start], dtype=torch.int64))
        g.add(case, "timesteps", timesteps.to(torch.float32))
        g.add(case, "noised", lat)
        out = run_loop(s, lat, timesteps, gen, 0.0)
        g.add(case, "ndraws", torch.tensor([len(DRAWS)], dtype=torch.int64))
        if DRAWS:
            g.add(case, "draws", torch.stack(DRAWS))
        g.add(case, "out", out)
        print(case, kind, pred, n, strength, "begin", t_start * s.order, "draws", len(DRAWS))
    g.add("i2i", "count", torch.tensor([len(imgs)], dtype=torch.int64))
    g.save()


if __name__ == "__main__":
    main()
