"""Golden data for sd-scripts' precalculated AddNet hashes (sshs_model_hash, sshs_legacy_hash).

Writes tests/golden/addnet_hash.safetensors. The hash functions below do what sd-scripts'
library/train_util.py does (precalculate_safetensors_hashes, addnet_hash_safetensors,
addnet_hash_legacy): serialise the tensors with only the ss_* metadata by safetensors.torch.save,
hash the bytes after the header (model hash) and the 0x10000 bytes at 0x100000 (legacy hash).

Cases (golden metadata "cases" lists them; "<case>.spec" is JSON):
  small      explicit tensors (F16, F32, BF16, F64, a 0-d alpha), metadata with escapes,
             UTF-8 and non-ss keys; image shorter than 0x100000 (legacy hash of no bytes)
  one_key    one ss key: the header is deterministic, so its bytes are stored too
  no_ss      no ss_* keys: safetensors still writes "__metadata__":{}
  straddle   formula-filled tensors, data > 0x110000 bytes (the legacy window is all data)
  partial    formula-filled, image ends inside the legacy window
  kohya_file lora_net_kohya.safetensors cast to fp16 with sd-scripts-like metadata: what
             danlu's writer must put in the file it saves from the same network
Explicit tensors are stored under "<case>.t.<name>" in their own dtype; formula tensors are
filled with v[i] = ((7 i + 13 k) mod 256 - 128) / 16 (k = tensor number; exact in every dtype).
"""
import hashlib
import json
import os
from io import BytesIO

import safetensors.torch
import torch
from safetensors.torch import load_file, save_file

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden")
DT = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
DT_NAME = {v: k for k, v in DT.items()}


def hash_legacy(b):
    m = hashlib.sha256()
    b.seek(0x100000)
    m.update(b.read(0x10000))
    return m.hexdigest()[0:8]


def hash_model(b):
    m = hashlib.sha256()
    b.seek(0)
    n = int.from_bytes(b.read(8), "little")
    b.seek(n + 8)
    for chunk in iter(lambda: b.read(1 << 20), b""):
        m.update(chunk)
    return m.hexdigest()


def precalc(tensors, metadata):
    """(model_hash, legacy_hash, image) as sd-scripts computes them."""
    md = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    img = safetensors.torch.save(tensors, md)
    b = BytesIO(img)
    mh = hash_model(b)
    lh = hash_legacy(b)
    return mh, lh, img


def formula(k, dtype, shape):
    n = 1
    for s in shape:
        n *= s
    i = torch.arange(n, dtype=torch.int64)
    v = ((7 * i + 13 * k) % 256 - 128).to(torch.float64) / 16.0
    return v.to(DT[dtype]).reshape(shape)


def main():
    g = torch.Generator().manual_seed(77)
    store, meta, cases = {}, {}, []

    def case(name, tensors, md, explicit, extra=None):
        mh, lh, img = precalc(tensors, md)
        hlen = int.from_bytes(img[:8], "little")
        spec = {"meta": [[k, v] for k, v in md.items()], "model_hash": mh, "legacy_hash": lh,
                "header_len": hlen, "image_len": len(img), "n_tensors": len(tensors)}
        if explicit:
            for k, t in tensors.items():
                store[f"{name}.t.{k}"] = t.contiguous()
            spec["tensors"] = list(tensors.keys())
        if extra:
            spec.update(extra)
        meta[f"{name}.spec"] = json.dumps(spec)
        cases.append(name)
        print(f"{name}: {len(tensors)} tensors, image {len(img)} bytes, header {hlen}, {mh[:12]} {lh}")
        return img

    r = lambda *s: torch.randn(*s, generator=g)
    small = {
        "lora_unet_a_b.lora_down.weight": r(4, 8).half(),
        "lora_unet_a_b.lora_up.weight": r(8, 4).half(),
        "lora_unet_a_b.alpha": torch.tensor(4.0).half(),
        "lora_te_text_model_x.lora_down.weight": r(2, 3),
        "Zed": r(3).bfloat16(),
        "mid": r(2).double(),
        "conv.lora_down.weight": r(2, 3, 3, 3).half(),
    }
    md = {"ss_network_dim": "4", "modelspec.title": "not hashed", "sshs_model_hash": "stale",
          "ss_note": 'quote " backslash \\ nl \n tab \t cr \r bs \b ff \f ctrl \x01\x1f del \x7f é ☃ / <>',
          "ss_tag_frequency": json.dumps({"a": {"x y": 1}}), "ss_empty": ""}
    case("small", small, md, True)

    img = case("one_key", {"w": r(3, 2)}, {"ss_network_module": "networks.lora"}, True)
    hlen = int.from_bytes(img[:8], "little")
    meta["one_key.header"] = img[8:8 + hlen].decode("utf-8")

    case("no_ss", {"b": r(2).half(), "a": r(5)}, {"modelspec.title": "t"}, True)

    def formula_case(name, specs, md):
        tensors = {nm: formula(k, dt, sh) for k, (nm, dt, sh) in enumerate(specs)}
        return case(name, tensors, md, False, {"formula": [[nm, dt, sh] for nm, dt, sh in specs]})

    formula_case("straddle", [("lora_unet_big.lora_down.weight", "F16", [640, 1024]),
                              ("lora_unet_big.alpha", "F16", []),
                              ("lora_unet_big.lora_up.weight", "F16", [320, 64]),
                              ("w32", "F32", [20, 1000]), ("wbf", "BF16", [7, 3])],
                 {"ss_network_dim": "64", "ss_output_name": "straddle"})
    formula_case("partial", [("p.a", "F32", [263000]), ("p.b", "F16", [3, 5])], {"ss_x": "1"})

    # what danlu's writer must give for lora_net_kohya.safetensors saved at fp16
    src = load_file(os.path.join(GOLDEN_DIR, "lora_net_kohya.safetensors"))
    kt = {k: v.to(torch.float16) for k, v in src.items()}
    kmd = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
           "ss_training_comment": "danlu \"test\"", "modelspec.architecture": "stable-diffusion-v1/lora"}
    case("kohya_file", kt, kmd, False)

    meta["cases"] = json.dumps(cases)
    meta["generator"] = "tests/gen/gen_addnet_hash.py"
    path = os.path.join(GOLDEN_DIR, "addnet_hash.safetensors")
    save_file(store, path, metadata=meta)
    print(f"wrote {path}: {len(store)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
