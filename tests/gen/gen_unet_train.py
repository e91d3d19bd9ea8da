"""Golden data for one LoRA training step through the UNet: loss and every LoRA gradient.

Models: the tiny random diffusers UNets written by gen_unet.py (reused as they are):
  sd1x  tests/golden/tiny_unet_sd1x/ (widths 12, 20; 2 layers per block; attention everywhere;
        1x1-conv proj_in/proj_out)
  sd2x  tests/golden/tiny_unet_sd2x/ (widths 12, 20, 28; linear proj_in/proj_out; a DownBlock2D /
        UpBlock2D without attention; 2 transformer blocks in the middle level)

LoRA adapters are attached by hand (no peft) on sd-scripts' default SD1.x targets of every
transformer: proj_in, proj_out, attn1/attn2 to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2,
as y = base(x) + scale * B(A x). On sd1x the 1x1-conv proj_in/proj_out get the same map as
1x1 convs. Plus LoCon adapters (kxk down conv with the base conv's stride and padding, 1x1 up
conv) on a few resnet and sampler convs (CONV_TARGETS). A and B are both random and nonzero so
both gradients are non-trivial.

The step: out = unet(x, t, ctx); loss = F.mse_loss(out, target) (plain mean), backward; in
float64 throughout (inputs, A and B rounded to fp32 first, as the C side gets them), stored as
float32.

Case "sd1x_subset" (sd1x) adapts only SUBSET_TARGETS plus one resnet LoCon and one time_emb_proj.

Each case holds x [N, H, W, 4] (NHWC), t [N], ctx [N, T, Dc], target [N, H, W, 4] (NHWC),
out [N, H, W, 4] (NHWC), loss [1], dctx [N, T, Dc] (d loss / d encoder_hidden_states), n_lora [1],
and for every adapted module (diffusers name without ".weight"):
  "<name>.A", "<name>.B", "<name>.dA", "<name>.dB", "<name>.scale" [1]
in danlu's layouts: linear A [r, in], B [out, r]; conv A [r, k, k, Cin], B [Cout, r].
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from goldenlib import GOLDEN_DIR, Golden, nchw_to_nhwc, oihw_to_ohwi

LINEAR_TARGETS = ("proj_in", "proj_out", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                  "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
CONV_TARGETS = {
    "sd1x": ("down_blocks.0.downsamplers.0.conv", "down_blocks.1.resnets.0.conv1",
             "down_blocks.1.resnets.0.conv_shortcut", "up_blocks.0.upsamplers.0.conv",
             "up_blocks.1.resnets.2.conv2"),
    "sd2x": ("down_blocks.2.resnets.1.conv2", "up_blocks.0.resnets.0.conv1", "mid_block.resnets.1.conv1"),
    "sd1x_subset": ("up_blocks.0.resnets.2.conv1",),
}
# A partial set (exercises the paths where a layer has no LoRA): to_k, to_v, to_out.0 only (no
# to_q, proj or ff), plus a linear LoRA on one resnet's time_emb_proj (not an sd-scripts target,
# but supported).
SUBSET_TARGETS = ("attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
EXTRA_LINEAR = {"sd1x_subset": ("mid_block.resnets.0.time_emb_proj",)}
RANK, ALPHA = 4, 2.0            # linear: scale 0.5
CONV_RANK, CONV_ALPHA = 2, 3.0  # conv: scale 1.5


class LoRA(nn.Module):
    """base(x) + scale * up(down(x)), down/up as linear or conv maps; A, B leaf tensors."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        if isinstance(base, nn.Linear):
            self.kind, fan_in, out = "linear", base.in_features, base.out_features
            a_shape = (rank, base.in_features)
        else:
            self.kind, out = "conv", base.out_channels
            k = base.kernel_size[0]
            fan_in = base.in_channels * k * k
            a_shape = (rank, base.in_channels, k, k)
        bound = 1.0 / fan_in ** 0.5
        self.A = ((torch.rand(a_shape, dtype=torch.float64) * 2 - 1) * bound).float().double().requires_grad_()
        self.B = (torch.randn(out, rank, dtype=torch.float64) * 0.2).float().double().requires_grad_()

    def forward(self, x):
        if self.kind == "linear":
            h = F.linear(x, self.A)
            return self.base(x) + self.scale * F.linear(h, self.B)
        b = self.base
        h = F.conv2d(x, self.A, stride=b.stride, padding=b.padding)
        return b(x) + self.scale * F.conv2d(h, self.B[:, :, None, None])

    def danlu_A(self, t):
        """A-shaped tensor in danlu's layout (a 1x1 conv's A as a linear's [r, in])."""
        if self.kind == "linear":
            return t
        if t.shape[2] == 1 and t.shape[3] == 1 and self.is_proj:
            return t[:, :, 0, 0]
        return oihw_to_ohwi(t)


def attach(unet, name, rank, alpha):
    parent_name, _, child = name.rpartition(".")
    parent = unet.get_submodule(parent_name)
    base = getattr(parent, child) if not child.isdigit() else parent[int(child)]
    lora = LoRA(base, rank, alpha)
    lora.is_proj = name.endswith("proj_in") or name.endswith("proj_out")
    if child.isdigit():
        parent[int(child)] = lora
    else:
        setattr(parent, child, lora)
    return lora


def run(g, case, model_name, N, H, W, T, ts, linear_targets=LINEAR_TARGETS):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(GOLDEN_DIR, f"tiny_unet_{model_name}", "unet"))
    unet = unet.to(torch.float64).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    names = [n for n, _ in unet.named_modules()
             if "transformer_blocks" in n or n.endswith("proj_in") or n.endswith("proj_out")]
    targets = sorted({n for n in names if any(n.endswith("." + t) or n == t for t in linear_targets)
                      and (n.endswith("proj_in") or n.endswith("proj_out") or "transformer_blocks" in n)})
    loras = {n: attach(unet, n, RANK, ALPHA) for n in targets}
    for n in EXTRA_LINEAR.get(case, ()):
        loras[n] = attach(unet, n, RANK, ALPHA)
    for n in CONV_TARGETS[case]:
        loras[n] = attach(unet, n, CONV_RANK, CONV_ALPHA)

    cross = unet.config.cross_attention_dim
    x = torch.randn(N, 4, H, W, dtype=torch.float64).float().double()
    t = torch.tensor(ts, dtype=torch.float64).float().double()
    ctx = torch.randn(N, T, cross, dtype=torch.float64).float().double().requires_grad_()
    target = torch.randn(N, 4, H, W, dtype=torch.float64).float().double()
    out = unet(x, t, encoder_hidden_states=ctx).sample
    loss = F.mse_loss(out, target)
    loss.backward()

    g.add(case, "x", nchw_to_nhwc(x))
    g.add(case, "t", t)
    g.add(case, "ctx", ctx)
    g.add(case, "target", nchw_to_nhwc(target))
    g.add(case, "out", nchw_to_nhwc(out))
    g.add(case, "loss", loss.reshape(1))
    g.add(case, "dctx", ctx.grad)
    g.add(case, "n_lora", torch.tensor([len(loras)], dtype=torch.int64))
    for n, l in loras.items():
        g.add(case, f"{n}.A", l.danlu_A(l.A))
        g.add(case, f"{n}.B", l.B)
        g.add(case, f"{n}.dA", l.danlu_A(l.A.grad))
        g.add(case, f"{n}.dB", l.B.grad)
        g.add(case, f"{n}.scale", torch.tensor([l.scale], dtype=torch.float64))
    gn = torch.cat([torch.cat([l.A.grad.flatten(), l.B.grad.flatten()]) for l in loras.values()]).norm()
    print(f"{case}: N={N} {H}x{W} T={T} t={ts} {len(loras)} LoRA modules, loss={loss.item():.6f} "
          f"|grad|={gn.item():.4g} |dctx|={ctx.grad.norm().item():.4g}")


def main():
    g = Golden("unet_train", seed=2024)
    run(g, "sd1x", "sd1x", 2, 8, 8, 5, [100.0, 700.0])
    run(g, "sd2x", "sd2x", 2, 8, 4, 3, [10.0, 900.0])
    run(g, "sd1x_subset", "sd1x", 1, 4, 4, 7, [333.0], SUBSET_TARGETS)
    g.save()


if __name__ == "__main__":
    main()
