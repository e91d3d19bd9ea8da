"""Shared helpers for the golden-data generators under tests/gen/.

Each generator builds small cases with PyTorch (float64 math where it matters, stored as
float32), and writes one tests/golden/<family>.safetensors holding every case's inputs,
outputs and gradients under names "<case>.<tensor>". Run from anywhere with a Python that has
torch and safetensors (a virtual environment outside the repo; see tests/gen/README.md).
The outputs are committed, so CI needs no Python.
"""
import logging
import os

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
