"""Golden data for tests/test_train_ref.c: ten training steps of the whole `danlu train` loop
re-done in PyTorch, sd-scripts style, on the tiny SD1.5-architecture model (tests/golden/
tiny_pipe) with one 32x32 image and its caption:
  latents = AutoencoderKL.encode(img).latent_dist.sample(Generator().manual_seed(seed*1000003 + 1))
            * scaling_factor                      (danlu draws each item's VAE noise this way)
  context = CLIPTextModel(tokenizer(caption, max_length 77)).last_hidden_state   (clip skip 1)
  torch.manual_seed(seed); per step: noise = randn_like(latents); t = randint(0, 1000, (1,));
  noisy = DDPMScheduler.add_noise; loss = mse(unet(noisy, t, context), noise); backward;
  clip_grad_norm_(1.0); AdamW(lr, weight_decay 0.01); LambdaLR cosine with warmup.
LoRA on sd-scripts' default UNet targets (proj_in/proj_out as 1x1 convs, attn1/attn2 q/k/v/out,
ff.net.0.proj, ff.net.2), rank 4, alpha 2, starting from random A and B written here as a kohya
file (danlu loads it with network_weights), so every gradient is non-zero from step 1.
A second run adds v-prediction, min-SNR-gamma 5 and noise offset 0.1 (expected_v).
Writes tests/golden/train_ref/{init_lora,expected,expected_v}.safetensors and data/1_x/img.png,
img.txt."""
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
GOLD = os.path.join(HERE, "..", "golden")
MODEL = os.path.join(GOLD, "tiny_pipe")
OUT = os.path.join(GOLD, "train_ref")
SEED, STEPS, LR, RANK, ALPHA, WARMUP = 7, 10, 2e-3, 4, 2.0, 3
CAPTION = "red square, thing"
torch.set_num_threads(1)

# the image and its caption
os.makedirs(os.path.join(OUT, "data", "1_x"), exist_ok=True)
rng = np.random.default_rng(5)
img = np.zeros((32, 32, 3), np.uint8)
img[..., 0] = 200
img[8:24, 8:24] = rng.integers(0, 255, (16, 16, 3))
Image.fromarray(img).save(os.path.join(OUT, "data", "1_x", "img.png"))
with open(os.path.join(OUT, "data", "1_x", "img.txt"), "w") as f:
    f.write(CAPTION)

vae = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae")).float().eval()
unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet")).float().eval()
te = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder")).float().eval()
tok = CLIPTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer"))
sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      clip_sample=False)
for p in list(vae.parameters()) + list(unet.parameters()) + list(te.parameters()):
    p.requires_grad_(False)

with torch.no_grad():
    x = torch.from_numpy(img).float().permute(2, 0, 1)[None] / 127.5 - 1.0
    dist = vae.encode(x).latent_dist
    g = torch.Generator().manual_seed(SEED * 1000003 + 0 + 1)
    latents = dist.sample(generator=g) * vae.config.scaling_factor
    ids = tok(CAPTION, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    context = te(ids)[0]


class LoRA(torch.nn.Module):
    def __init__(self, base, name, gen):
        super().__init__()
        self.base, self.name = base, name
        conv = isinstance(base, torch.nn.Conv2d)
        fin = base.in_channels if conv else base.in_features
        fout = base.out_channels if conv else base.out_features
        self.conv = conv
        self.down = torch.nn.Parameter((torch.rand(RANK, fin, generator=gen) * 2 - 1) / fin ** 0.5)
        self.up = torch.nn.Parameter((torch.rand(fout, RANK, generator=gen) * 2 - 1) * 0.05)
        self.scale = ALPHA / RANK

    def forward(self, x):
        y = self.base(x)
        if self.conv:  # 1x1 conv: a linear over channels
            h = torch.einsum("nchw,rc->nrhw", x, self.down)
            return y + self.scale * torch.einsum("nrhw,or->nohw", h, self.up)
        return y + self.scale * F.linear(F.linear(x, self.down), self.up)


targets = []
for name, mod in unet.named_modules():
    if ".attentions." not in "." + name and not name.startswith("mid_block.attentions"):
        continue
    leaf = name.split(".")
    if (name.endswith("proj_in") or name.endswith("proj_out")) and "transformer_blocks" not in name or \
            any(name.endswith(s) for s in ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                                           "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj",
                                           "ff.net.2"]):
        targets.append(name)
gen = torch.Generator().manual_seed(123)
loras = []
for name in targets:
    parent = unet.get_submodule(".".join(name.split(".")[:-1]))
    leaf = name.split(".")[-1]
    l = LoRA(getattr(parent, leaf), name, gen)
    setattr(parent, leaf, l)
    loras.append(l)
print(len(loras), "LoRA modules")


def kohya(name):
    return "lora_unet_" + name.replace(".", "_")


def lora_tensors():
    t = {}
    for l in loras:
        k = kohya(l.name)
        d, u = l.down.detach().clone(), l.up.detach().clone()
        if l.conv:
            d, u = d[:, :, None, None], u[:, :, None, None]
        t[k + ".lora_down.weight"] = d.contiguous()
        t[k + ".lora_up.weight"] = u.contiguous()
        t[k + ".alpha"] = torch.tensor(ALPHA)
    return t


save_file(lora_tensors(), os.path.join(OUT, "init_lora.safetensors"), metadata={"generator": "tests/gen/gen_train_ref.py"})

params = [p for l in loras for p in (l.down, l.up)]
init = [p.detach().clone() for p in params]
acp = sched.alphas_cumprod
all_snr = (acp ** 0.5 / (1.0 - acp) ** 0.5) ** 2


def train(out_name, v_pred=False, gamma=0.0, offset=0.0):
    """Ten steps from the initial LoRA; writes the losses and final weights to out_name."""
    with torch.no_grad():
        for p, q in zip(params, init):
            p.copy_(q)
    opt = torch.optim.AdamW(params, lr=LR)
    lrs = get_scheduler("cosine", opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    torch.manual_seed(SEED)
    losses = []
    for step in range(STEPS):
        noise = torch.randn_like(latents)
        if offset:
            noise = noise + offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1))
        t = torch.randint(0, 1000, (1,)).long()
        noisy = sched.add_noise(latents, noise, t)
        target = sched.get_velocity(latents, noise, t) if v_pred else noise
        pred = unet(noisy, t, context).sample
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean([1, 2, 3])
        if gamma:
            snr = torch.stack([all_snr[i] for i in t])
            mn = torch.minimum(snr, torch.ones_like(snr) * gamma)
            loss = loss * (mn / (snr + 1) if v_pred else mn / snr)
        loss = loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lrs.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        print(out_name, step + 1, t.item(), loss.item())
    exp = lora_tensors()
    exp["losses"] = torch.tensor(losses, dtype=torch.float64)
    save_file(exp, os.path.join(OUT, out_name + ".safetensors"), metadata={"generator": "tests/gen/gen_train_ref.py"})


train("expected")
train("expected_v", v_pred=True, gamma=5.0, offset=0.1)
print("wrote", OUT)
