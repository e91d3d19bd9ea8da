"""Golden data for the LoRA tools (tests/test_lora_tools.c): sd-scripts' resize rank rules
(networks/resize_lora.py: fixed rank, sv_ratio, sv_fro, sv_cumulative), the singular values of LoRA
products, and svd_merge_lora.py's sum of scaled products, computed with PyTorch in float64.

Writes tests/golden/lora_tools_in.safetensors (a kohya LoRA: a linear, a 3x3 conv, a 1x1 conv and
an all-zero module, with singular values spaced so that no rank rule sits on a tie) and
tests/golden/lora_tools.safetensors (expected values). The rank rules are re-stated here from
sd-scripts' documented behaviour, not imported."""
import os
import torch
from safetensors.torch import save_file

torch.manual_seed(16)
HERE = os.path.dirname(os.path.abspath(__file__))
GOLD = os.path.join(HERE, "..", "golden")


def orth(n, k):
    q, _ = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64))
    return q


def module(out, cols, svals):
    k = len(svals)
    u, v = orth(out, k), orth(cols, k)
    up = u * torch.tensor(svals, dtype=torch.float64)  # [out, k]
    down = v.T.contiguous()  # [k, cols]
    return up, down


# name: (out, in, kh, kw, singular values of up @ down, alpha)
MODS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (24, 16, 1, 1, [3.0, 2.1, 1.3, 0.72, 0.41, 0.17, 0.066, 0.023], 4.0),
    "lora_unet_down_blocks_0_resnets_0_conv1": (12, 6, 3, 3, [2.5, 1.9, 0.95, 0.52, 0.13, 0.031], 3.0),
    "lora_unet_down_blocks_0_attentions_0_proj_in": (10, 10, 1, 1, [1.7, 0.88, 0.46, 0.19], 4.0),
    "lora_unet_mid_block_attentions_0_proj_out": (8, 8, 1, 1, [0.0, 0.0], 2.0),
}
CASES = [("none", 0.0), ("sv_ratio", 4.0), ("sv_ratio", 30.0), ("sv_fro", 0.9), ("sv_fro", 0.99),
         ("sv_cumulative", 0.7), ("sv_cumulative", 0.95)]
RANK_CAP = 5
MIN_SV = 1e-6


def searchsorted_left(c, v):
    return int(torch.searchsorted(c, torch.tensor([v], dtype=c.dtype))[0])


def pick(S, rank, method, param, scale):
    n = len(S)
    if method == "sv_ratio":
        idx = int(torch.sum(S > S[0] / param)) - 1
        new = max(0, min(idx, n - 1)) + 1
    elif method == "sv_cumulative":
        c = torch.cumsum(S, 0) / torch.sum(S)
        new = max(0, min(searchsorted_left(c, param), n - 1)) + 1
    elif method == "sv_fro":
        c = torch.cumsum(S * S, 0) / torch.sum(S * S)
        new = max(0, min(searchsorted_left(c, param * param), n - 1)) + 1
    else:
        new = rank
    if S[0] <= MIN_SV:
        new = 1
    elif new > rank:
        new = rank
    s2 = S * S
    fro = float(torch.sqrt(torch.sum(s2[:new])) / torch.sqrt(torch.sum(s2))) if float(torch.sum(s2)) > 0 else float("nan")
    return new, scale * new, fro


lora, gold = {}, {}
for i, (name, (out, cin, kh, kw, sv, alpha)) in enumerate(MODS.items()):
    cols = cin * kh * kw
    r = len(sv)
    if max(sv) == 0:
        up, down = torch.zeros(out, r, dtype=torch.float64), torch.zeros(r, cols, dtype=torch.float64)
    else:
        up, down = module(out, cols, sv)
    four_d = kh > 1 or name.endswith("proj_in") or name.endswith("proj_out")
    lora[name + ".lora_up.weight"] = (up.reshape(out, r, 1, 1) if four_d else up).float().contiguous()
    lora[name + ".lora_down.weight"] = (down.reshape(r, cin, kh, kw) if four_d else down).float().contiguous()
    lora[name + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
    # what the C side sees: the fp32 factors' product
    W = lora[name + ".lora_up.weight"].double().reshape(out, r) @ lora[name + ".lora_down.weight"].double().reshape(r, cols)
    S = torch.linalg.svdvals(W)  # min(out, cols) values, as sd-scripts' full SVD
    gold[f"m{i}.S"] = S[: min(r, len(S))].float()
    scale = alpha / r
    for j, (meth, par) in enumerate(CASES):
        new, new_alpha, fro = pick(S, RANK_CAP, meth, par, scale)
        gold[f"m{i}.c{j}.rank"] = torch.tensor(new, dtype=torch.int64)
        gold[f"m{i}.c{j}.alpha"] = torch.tensor(new_alpha, dtype=torch.float32)
        gold[f"m{i}.c{j}.fro"] = torch.tensor(fro, dtype=torch.float64)
        U, Sv, Vh = torch.linalg.svd(W, full_matrices=False)
        gold[f"m{i}.c{j}.W"] = ((U[:, :new] * Sv[:new]) @ Vh[:new]).float().contiguous()
    gold[f"m{i}.W"] = W.float().contiguous()

# svd_merge_lora.py: sum of w x alpha / r x up @ down over two LoRAs, then the best rank-R
# approximation (no clamp: the clamp depends on the SVD's signs)
lora_b = {}
for name, (out, cin, kh, kw, sv, alpha) in MODS.items():
    cols = cin * kh * kw
    r = 3
    up, down = torch.randn(out, r, dtype=torch.float64) * 0.3, torch.randn(r, cols, dtype=torch.float64) * 0.3
    four_d = kh > 1 or name.endswith("proj_in") or name.endswith("proj_out")
    lora_b[name + ".lora_up.weight"] = (up.reshape(out, r, 1, 1) if four_d else up).float().contiguous()
    lora_b[name + ".lora_down.weight"] = (down.reshape(r, cin, kh, kw) if four_d else down).float().contiguous()
    lora_b[name + ".alpha"] = torch.tensor(1.5, dtype=torch.float32)
WA, WB = 0.7, -0.4
MERGE_RANK = 3
for i, name in enumerate(MODS):
    out = MODS[name][0]
    ra = lora[name + ".lora_down.weight"].shape[0]
    Wa = lora[name + ".lora_up.weight"].double().reshape(out, -1) @ lora[name + ".lora_down.weight"].double().reshape(ra, -1)
    Wb = lora_b[name + ".lora_up.weight"].double().reshape(out, -1) @ lora_b[name + ".lora_down.weight"].double().reshape(3, -1)
    M = WA * float(lora[name + ".alpha"]) / ra * Wa + WB * 1.5 / 3 * Wb
    gold[f"merge.m{i}.W"] = M.float().contiguous()
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    gold[f"merge.m{i}.Wr"] = ((U[:, :MERGE_RANK] * S[:MERGE_RANK]) @ Vh[:MERGE_RANK]).float().contiguous()

gold["rank_cap"] = torch.tensor(RANK_CAP, dtype=torch.int64)
gold["merge_rank"] = torch.tensor(MERGE_RANK, dtype=torch.int64)
gold["merge_w"] = torch.tensor([WA, WB], dtype=torch.float32)
save_file(lora, os.path.join(GOLD, "lora_tools_in.safetensors"), metadata={"ss_network_module": "networks.lora"})
save_file(lora_b, os.path.join(GOLD, "lora_tools_in_b.safetensors"))
save_file(gold, os.path.join(GOLD, "lora_tools.safetensors"),
          metadata={"cases": ";".join(f"{m}:{p}" for m, p in CASES), "modules": ";".join(MODS)})
print("ranks:", {f"m{i}": [int(gold[f'm{i}.c{j}.rank']) for j in range(len(CASES))] for i in range(len(MODS))})
