"""Reference gradients for text-encoder LoRA training: transformers' CLIPTextModel (the tiny
test checkpoint tests/golden/tiny_sd15/text_encoder, float64) with a hand-written LoRA
y = W x + b + s * B (A x) (rank 4, A and B random nonzero) on all six linears of every layer
(self_attn.q_proj/k_proj/v_proj/out_proj, mlp.fc1/fc2). loss = mean((out - target)^2) with
out = final_layer_norm(hidden state after `layers` layers):
  skip2: layers = L - 1 (clip skip 2, as A1111 / sd-scripts compute it)
  last:  layers = L     (last_hidden_state)
  last_h4: the same weights with 4 attention heads (exercises the multi-head backward)
Stores ids, target, every A and B, the loss and every dA, dB (zero for layers not run)."""
import math
import os

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from goldenlib import Golden

HERE = os.path.dirname(os.path.abspath(__file__))
TE = os.path.join(HERE, "..", "golden", "tiny_sd15", "text_encoder")
RANK, ALPHA = 4, 2.0
SCALE = ALPHA / RANK
PARTS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]



def text_of(m):
    """The CLIPTextTransformer (transformers 4 nests it as .text_model; 5 may not)."""
    return getattr(m, "text_model", m)


def local(name):
    """Module name inside text_of(m): without the "text_model." prefix."""
    return name[len("text_model."):]


g = Golden("clip_train", seed=11)
base = CLIPTextModel.from_pretrained(TE, torch_dtype=torch.float32)
state = base.state_dict()
L = base.config.num_hidden_layers
C = base.config.hidden_size

ids = torch.randint(0, 998, (2, 77))
ids[:, 0] = 998
ids[0, 9] = 999
ids[0, 10:] = 999          # SD1 pads with EOS
ids[1, 76] = 999
target = torch.randn(2, 77, C, dtype=torch.float64)
g.add("common", "input_ids", ids.to(torch.int64))
g.add("common", "target", target)
g.add("common", "scale", torch.tensor([SCALE], dtype=torch.float64))

# one set of adapters, shared by every case (stored once, f32-exact so C sees the same values)
adapters = {}
for l in range(L):
    for p in PARTS:
        name = f"text_model.encoder.layers.{l}.{p}"
        lin = text_of(base).get_submodule(local(name))
        bound = 1.0 / math.sqrt(lin.in_features)
        A = ((torch.rand(RANK, lin.in_features) * 2 - 1) * bound).float().double()
        B = (torch.randn(lin.out_features, RANK) * 0.1).float().double()
        adapters[name] = (A, B)
        g.add(name, "A", A)
        g.add(name, "B", B)


class LoRALinear(torch.nn.Module):
    def __init__(self, lin, A, B):
        super().__init__()
        self.lin = lin
        self.A = torch.nn.Parameter(A.clone())
        self.B = torch.nn.Parameter(B.clone())

    def forward(self, x):
        return self.lin(x) + SCALE * (x @ self.A.T) @ self.B.T


def set_module(root, name, mod):
    name = local(name)
    root = text_of(root)
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent), leaf, mod)


for case, heads, layers in [("skip2", 1, L - 1), ("last", 1, L), ("last_h4", 4, L)]:
    cfg = CLIPTextConfig.from_pretrained(TE)
    cfg.num_attention_heads = heads
    cfg._attn_implementation = "eager"
    m = CLIPTextModel(cfg)
    m.load_state_dict(state)
    m = m.double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    wrapped = {}
    for name, (A, B) in adapters.items():
        lin = text_of(m).get_submodule(local(name))
        w = LoRALinear(lin, A, B)
        set_module(m, name, w)
        wrapped[name] = w
    out = m(input_ids=ids, output_hidden_states=True)
    hid = out.hidden_states[layers]
    y = text_of(m).final_layer_norm(hid)
    if layers == L:
        assert torch.allclose(y, out.last_hidden_state)
    loss = ((y - target) ** 2).mean()
    loss.backward()
    g.add(case, "loss", loss.reshape(1))
    g.add(case, "out", y)
    for name, w in wrapped.items():
        dA = w.A.grad if w.A.grad is not None else torch.zeros_like(w.A)
        dB = w.B.grad if w.B.grad is not None else torch.zeros_like(w.B)
        g.add(case, f"{name}.dA", dA)
        g.add(case, f"{name}.dB", dB)
g.save()
