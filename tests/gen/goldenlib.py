"""Shared helpers for the golden-data generators under tests/gen/.

Each generator builds small cases with PyTorch (float64 math where it matters, stored as
float32), and writes one tests/golden/<family>.safetensors holding every case's inputs,
outputs and gradients under names "<case>.<tensor>". Run from anywhere with a Python that has
torch and safetensors (a virtual environment outside the repo; see tests/gen/README.md).
The outputs are committed, so CI needs no Python.
"""
import logging
import os
import warnings

import torch
from safetensors.torch import save_file

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden")


class Golden:
    """Collects named tensors and writes them to tests/golden/<family>.safetensors."""

    def __init__(self, family, seed=1234):
        self.family = family
        self.tensors = {}
        torch.manual_seed(seed)

    def add(self, case, name, t):
        key = f"{case}.{name}"
        assert key not in self.tensors, key
        t = t.detach()
        if t.is_floating_point():
            t = t.to(torch.float32)
        self.tensors[key] = t.contiguous().cpu().clone()

    def save(self):
        os.makedirs(GOLDEN_DIR, exist_ok=True)
        path = os.path.join(GOLDEN_DIR, f"{self.family}.safetensors")
        save_file(self.tensors, path, metadata={"generator": f"tests/gen/gen_{self.family}.py"})
        size = os.path.getsize(path)
        print(f"wrote {path}: {len(self.tensors)} tensors, {size} bytes")


def nchw_to_nhwc(t):
    """[N, C, H, W] -> [N, H, W, C] (danlu's activation layout)."""
    return t.permute(0, 2, 3, 1).contiguous()


def oihw_to_ohwi(w):
    """Conv weight [Cout, Cin, kh, kw] -> danlu's [Cout, kh, kw, Cin]."""
    return w.permute(0, 2, 3, 1).contiguous()


class KeyLog(logging.Handler):
    """Collects every warning diffusers / peft / transformers log (e.g. while loading a LoRA:
    missing, unexpected or unused keys)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.msgs = []

    def emit(self, record):
        self.msgs.append(record.getMessage())


def count_lora_layers(model):
    """PEFT LoRA layers injected into a torch module."""
    from peft.tuners.lora import LoraLayer
    return sum(1 for _, m in model.named_modules() if isinstance(m, LoraLayer))


def load_lora_checked(pipe, path, n_modules, label):
    """pipe.load_lora_weights(path) with every warning diffusers / peft / transformers log or
    raise collected: fails on any missing, unexpected, unused or not-found key, and unless the
    number of injected LoRA layers is n_modules. A file without text-encoder keys may make
    diffusers say so ("No LoRA keys associated to CLIPTextModel"): that one is the truth."""
    log = KeyLog()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.load_lora_weights(path, adapter_name=label)
    for lg in loggers:
        lg.removeHandler(log)
    msgs = log.msgs + [str(w.message) for w in caught]
    n_te = count_lora_layers(pipe.text_encoder)
    benign = lambda m: n_te == 0 and m.startswith("No LoRA keys associated to CLIPTextModel")
    bad = [m for m in msgs if not benign(m)
           and any(s in m.lower() for s in ("unexpected", "missing", "not found", "no lora", "unused"))]
    if bad:
        raise SystemExit(f"FAIL {label}: diffusers reported {bad}")
    n = count_lora_layers(pipe.unet) + n_te
    if n != n_modules:
        raise SystemExit(f"FAIL {label}: {n} LoRA layers injected, the file has {n_modules} modules")
    print(f"{label}: diffusers loaded {n} LoRA layers, no missing / unexpected keys"
          + (f" (other messages: {msgs})" if msgs else ""))


def run_unet_te_f64(pipe, x, t, ctx, ids):
    """The pipeline's UNet on (x, t, ctx) and text encoder on ids in float64 (no grad); the
    modules are back in float32 afterwards. Returns (UNet output NCHW, last hidden state)."""
    unet = pipe.unet.to(torch.float64).eval()
    te = pipe.text_encoder.to(torch.float64).eval()
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=ctx).sample
        h = te(ids).last_hidden_state
    pipe.unet.float()
    pipe.text_encoder.float()
    return out, h
