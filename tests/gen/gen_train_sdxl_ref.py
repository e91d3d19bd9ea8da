"""Golden data for tests/test_train_sdxl.c: `danlu train` on an SDXL-architecture model re-done in
PyTorch, as sd-scripts' sdxl_train_network.py trains a LoRA, on the tiny SDXL pipeline
tests/golden/tiny_sdxl_pipe (gen_sdxl_pipe.py; both text encoders, VAE scaling factor 0.13025).

Data: one 256x192 image whose 2x2 blocks are uniform (so the exact 2x area downscale to its
128x96 bucket, danlu's cv2.INTER_AREA, is the 128x96 random image itself: no rounding), caption
"red square, thing". With --enable_bucket --resolution 128,96 the bucket is 128x96, so SDXL's
time ids are original size (192, 256), crop top-left (0, 0), target size (96, 128).

The loop (sd-scripts' SDXL conditioning, torch's generators as danlu draws them):
  latents = AutoencoderKL.encode(img).latent_dist.sample(Generator().manual_seed(seed*1000003 + 1))
            * 0.13025
  context = cat(text_encoder(ids1).hidden_states[-2], text_encoder_2(ids2).hidden_states[-2], -1)
            (both penultimate layers, before the final layer norm; sd-scripts' hidden_states[11]
            of the 12-layer ViT-L is the penultimate)
  pooled  = text_encoder_2(ids2).text_embeds (the projection of the EOS row after the final LN)
  tokenizer_2 pads with "!"
  torch.manual_seed(seed); per step: noise = randn_like(latents) (float32, as danlu draws it);
  t = randint(0, 1000, (1,));
  noisy = DDPMScheduler.add_noise; pred = unet(noisy, t, context, added_cond_kwargs={text_embeds:
  pooled, time_ids}); loss = mse(pred, noise); backward; clip_grad_norm_(1.0); AdamW(lr,
  weight_decay 0.01); LambdaLR cosine with warmup.
The VAE and the text encoders run in float32 (their outputs agree with danlu's to ~1e-7), the
UNet, the LoRA, the loss and AdamW in float64: a float32 run of this loop is itself up to 6e-3
(relative L2) away from the float64 one in a few cross-attention to_q / to_k lora_up tensors,
where AdamW's normalisation magnifies rounding in gradient entries near zero (danlu's fp32 run is
1.2e-3 away there, 2.6e-5 over all LoRA weights), so float64 is the reference to bound against.
LoRA on sd-scripts' default SDXL UNet targets (every Linear of every Transformer2DModel: proj_in,
proj_out, attn1/attn2 to_q/k/v/out.0, ff.net.0.proj, ff.net.2), rank 4, alpha 2, starting from
random A and B written as a kohya file with sd-scripts' SDXL names (lora_unet_ + the SGM path,
gen_sdxl_lora.py's rule), loaded by danlu through network_weights.

It also writes the time ids sd-scripts' dataset gives for a table of image sizes, buckets and
flips ("time_ids.cases" [n, 5] = image w, h, bucket w, h, flipped; "time_ids.expected" [n, 6]),
restating BucketManager.get_crop_ltrb (Python float arithmetic, floor division, int()).

A second run trains both text encoders' LoRAs too (sd-scripts without --network_train_unet_only):
LoRA on every CLIPAttention q/k/v/out_proj and CLIPMLP fc1/fc2 of both encoders (random A and B,
kohya names lora_te1_ / lora_te2_ + the transformers path), the encoders run inside the loop in
float64 and their LoRAs get gradients through the context and, for the second, through the
pooled embedding and the UNet's (frozen) added embedding; AdamW with two groups (learning_rate for
the UNet, text_encoder_lr for both encoders, as networks.lora), clip_grad_norm_ over all. The
first encoder's last layer does not reach the loss: torch leaves its LoRA without a gradient and
AdamW skips it (danlu gives it a zero gradient, so weight decay shrinks it: not compared).

Writes tests/golden/train_sdxl/{init_lora,expected,init_lora_te,expected_te}.safetensors,
train_sdxl/data/1_x/img.{png,txt} and tests/golden/train_sdxl_time_ids.safetensors."""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_sdxl_lora import kohya_unet_name, load_pipe, te_path  # noqa: E402
from goldenlib import GOLDEN_DIR  # noqa: E402

OUT = os.path.join(GOLDEN_DIR, "train_sdxl")
SEED, STEPS, LR, RANK, ALPHA, WARMUP = 7, 8, 2e-3, 4, 2.0, 2
TE_LR = 1e-3
TE_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]
CAPTION = "red square, thing"
BW, BH = 128, 96
torch.set_num_threads(1)

TARGETS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"]


def time_ids_sd_scripts(w, h, bw, bh, flipped):
    """sd-scripts' (original h, w), (crop top, left), (target h, w) of an image of w x h in a
    bucket of bw x bh: the crop is that of the image fitted inside the bucket and centred."""
    bucket_ar, image_ar = bw / bh, w / h
    if bucket_ar > image_ar:
        rw, rh = bh * image_ar, bh
    else:
        rw, rh = bw, bw / image_ar
    left, top = (bw - rw) // 2, (bh - rh) // 2
    right = left + rw
    if flipped:
        left = bw - right
    return [h, w, int(top), int(left), bh, bw]


def write_time_ids():
    rng = np.random.default_rng(17)
    cases = [(256, 192, 128, 96, 0), (256, 192, 128, 96, 1), (1000, 600, 1216, 832, 0), (1000, 600, 1216, 832, 1),
             (600, 1000, 832, 1216, 1), (512, 512, 1024, 1024, 0), (333, 777, 640, 1536, 1), (1920, 1080, 1344, 768, 1),
             (1080, 1920, 1024, 1024, 0), (100, 100, 1152, 896, 1)]
    for _ in range(30):
        cases.append((int(rng.integers(64, 3000)), int(rng.integers(64, 3000)), int(rng.integers(8, 48)) * 32,
                      int(rng.integers(8, 48)) * 32, int(rng.integers(0, 2))))
    exp = [time_ids_sd_scripts(*c) for c in cases]
    path = os.path.join(GOLDEN_DIR, "train_sdxl_time_ids.safetensors")
    save_file({"time_ids.cases": torch.tensor(cases, dtype=torch.float64),
               "time_ids.expected": torch.tensor(exp, dtype=torch.float64)}, path,
              metadata={"generator": "tests/gen/gen_train_sdxl_ref.py"})
    print("wrote", path, len(cases), "cases")


class LoRA(torch.nn.Module):
    def __init__(self, base, name, gen):
        super().__init__()
        self.base, self.name = base, name
        fin, fout = base.in_features, base.out_features
        self.down = torch.nn.Parameter(((torch.rand(RANK, fin, generator=gen) * 2 - 1) / fin ** 0.5).double())
        self.up = torch.nn.Parameter(((torch.rand(fout, RANK, generator=gen) * 2 - 1) * 0.05).double())
        self.scale = ALPHA / RANK

    def forward(self, x):
        return self.base(x) + self.scale * F.linear(F.linear(x, self.down), self.up)


def main():
    write_time_ids()
    d = os.path.join(OUT, "data", "1_x")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(5)
    small = rng.integers(0, 255, (BH, BW, 3)).astype(np.uint8)
    small[..., 0] = np.maximum(small[..., 0], 120)
    img = small.repeat(2, axis=0).repeat(2, axis=1)  # 256x192, every 2x2 block uniform
    Image.fromarray(img).save(os.path.join(d, "img.png"))
    with open(os.path.join(d, "img.txt"), "w") as f:
        f.write(CAPTION)

    pipe = load_pipe()
    unet, vae, te1, te2 = (m.float().eval() for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2))
    ucfg = dict(unet.config)
    sched_cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                     clip_sample=False)
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    sched = DDPMScheduler(**sched_cfg)
    for m in (unet, vae, te1, te2):
        for p in m.parameters():
            p.requires_grad_(False)

    with torch.no_grad():
        x = torch.from_numpy(small).float().permute(2, 0, 1)[None] / 127.5 - 1.0
        g = torch.Generator().manual_seed(SEED * 1000003 + 0 + 1)
        latents = vae.encode(x).latent_dist.sample(generator=g) * vae.config.scaling_factor
        assert abs(vae.config.scaling_factor - 0.13025) < 1e-9
        tok = lambda t: t(CAPTION, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        ids1, ids2 = tok(pipe.tokenizer), tok(pipe.tokenizer_2)
        h1 = te1(ids1, output_hidden_states=True).hidden_states[-2]
        o2 = te2(ids2, output_hidden_states=True)
        context = torch.cat([h1, o2.hidden_states[-2]], dim=-1)
        pooled = o2.text_embeds
        time_ids = torch.tensor([time_ids_sd_scripts(img.shape[1], img.shape[0], BW, BH, 0)], dtype=torch.float32)
    unet.double()
    latents, context, pooled, time_ids = (x.double() for x in (latents, context, pooled, time_ids))
    print("time ids", time_ids.tolist(), "context", tuple(context.shape), "pooled", tuple(pooled.shape))

    names = []
    for name, mod in unet.named_modules():
        if not isinstance(mod, torch.nn.Linear) or ".attentions." not in "." + name:
            continue
        inner = name.split(".attentions.")[1].split(".", 1)[1]  # after the attention index
        if inner in ("proj_in", "proj_out") or any(inner.endswith(s) and "transformer_blocks" in inner
                                                    for s in TARGETS):
            names.append(name)
    gen = torch.Generator().manual_seed(123)
    loras = []
    for name in names:
        parent = unet.get_submodule(".".join(name.split(".")[:-1]))
        leaf = name.split(".")[-1]
        lo = LoRA(getattr(parent, leaf), name, gen)
        setattr(parent, leaf, lo)
        loras.append(lo)
    print(len(loras), "LoRA modules")

    def lora_tensors():
        t = {}
        for lo in loras:
            k = kohya_unet_name(lo.name, ucfg)
            t[k + ".lora_down.weight"] = lo.down.detach().float().contiguous()
            t[k + ".lora_up.weight"] = lo.up.detach().float().contiguous()
            t[k + ".alpha"] = torch.tensor(ALPHA)
        return t

    meta = {"generator": "tests/gen/gen_train_sdxl_ref.py", "ss_base_model_version": "sdxl_base_v1-0"}
    save_file(lora_tensors(), os.path.join(OUT, "init_lora.safetensors"), metadata=meta)

    params = [p for lo in loras for p in (lo.down, lo.up)]
    opt = torch.optim.AdamW(params, lr=LR)
    lrs = get_scheduler("cosine", opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    torch.manual_seed(SEED)
    losses = []
    add = {"text_embeds": pooled, "time_ids": time_ids}
    for step in range(STEPS):
        noise = torch.randn_like(latents.float()).double()
        t = torch.randint(0, 1000, (1,)).long()
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, context, added_cond_kwargs=add).sample
        loss = F.mse_loss(pred, noise, reduction="none").mean([1, 2, 3]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lrs.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        print("step", step + 1, "t", t.item(), "loss", loss.item())
    exp = lora_tensors()
    exp["losses"] = torch.tensor(losses, dtype=torch.float64)
    exp["time_ids"] = time_ids.double()
    save_file(exp, os.path.join(OUT, "expected.safetensors"), metadata=meta)

    # ---- the text encoders train too
    init = load_file(os.path.join(OUT, "init_lora.safetensors"))
    with torch.no_grad():
        for lo in loras:
            k = kohya_unet_name(lo.name, ucfg)
            lo.down.copy_(init[k + ".lora_down.weight"])
            lo.up.copy_(init[k + ".lora_up.weight"])
    te1.double(), te2.double()
    gen_te = torch.Generator().manual_seed(321)
    te_loras = []
    for prefix, te in (("lora_te1_", te1), ("lora_te2_", te2)):
        names = [n for n, m in te.named_modules() if isinstance(m, torch.nn.Linear) and any(n.endswith(t) for t in TE_TARGETS)]
        for name in names:
            parent = te.get_submodule(".".join(name.split(".")[:-1]))
            leaf = name.split(".")[-1]
            lo = LoRA(getattr(parent, leaf), name, gen_te)
            lo.kohya = prefix + te_path(name).replace(".", "_")
            setattr(parent, leaf, lo)
            te_loras.append(lo)
    print(len(te_loras), "text-encoder LoRA modules")

    def all_tensors():
        t = lora_tensors()
        for lo in te_loras:
            t[lo.kohya + ".lora_down.weight"] = lo.down.detach().float().contiguous()
            t[lo.kohya + ".lora_up.weight"] = lo.up.detach().float().contiguous()
            t[lo.kohya + ".alpha"] = torch.tensor(ALPHA)
        return t

    save_file(all_tensors(), os.path.join(OUT, "init_lora_te.safetensors"), metadata=meta)
    te_params = [p for lo in te_loras for p in (lo.down, lo.up)]
    opt = torch.optim.AdamW([{"params": params, "lr": LR}, {"params": te_params, "lr": TE_LR}], lr=LR)
    lrs = get_scheduler("cosine", opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    torch.manual_seed(SEED)
    losses = []
    for step in range(STEPS):
        noise = torch.randn_like(latents.float()).double()
        t = torch.randint(0, 1000, (1,)).long()
        noisy = sched.add_noise(latents, noise, t)
        h1 = te1(ids1, output_hidden_states=True).hidden_states[-2]
        o2 = te2(ids2, output_hidden_states=True)
        context = torch.cat([h1, o2.hidden_states[-2]], dim=-1)
        add = {"text_embeds": o2.text_embeds, "time_ids": time_ids}
        pred = unet(noisy, t, context, added_cond_kwargs=add).sample
        loss = F.mse_loss(pred, noise, reduction="none").mean([1, 2, 3]).mean()
        loss.backward()
        if step == 0:
            last = te1.config.num_hidden_layers - 1
            dead = [lo for lo in te_loras if lo.kohya.startswith(f"lora_te1_text_model_encoder_layers_{last}_")]
            assert dead and all(lo.down.grad is None for lo in dead), "the first encoder's last layer got gradients"
            g2 = [lo.up.grad.norm().item() for lo in te_loras if lo.kohya.startswith("lora_te2_")]
            print("te2 LoRA gradients: min %.3g max %.3g" % (min(g2), max(g2)))
        torch.nn.utils.clip_grad_norm_(params + te_params, 1.0)
        opt.step()
        lrs.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        print("te step", step + 1, "t", t.item(), "loss", loss.item())
    exp = all_tensors()
    exp["losses"] = torch.tensor(losses, dtype=torch.float64)
    save_file(exp, os.path.join(OUT, "expected_te.safetensors"), metadata=meta)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
