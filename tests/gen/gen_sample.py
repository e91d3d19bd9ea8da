"""Golden data for danlu sample (tests/test_sample.c, tests/test_prompt.c).

1. tests/golden/tiny_pipe/: the tiny SD1.5-shaped pipeline of tests/golden/tiny_sd15 (symlinks)
   plus a tokenizer/ of our own: 512 byte symbols, BPE merges learnt on a small prompt corpus,
   unused filler tokens, <|startoftext|> = 998 and <|endoftext|> = 999 (the text encoder's
   vocabulary of 1000 with bos 998, eos 999). transformers' CLIPTokenizer loads it.
2. tests/golden/sample.safetensors: full diffusers StableDiffusionPipeline /
   StableDiffusionImg2ImgPipeline runs on that pipeline (16x16 pixels, 8x8 latents) for every
   sampler, with torch.Generator("cpu").manual_seed(seed). The networks and schedulers run in
   float64; every random tensor is drawn in float32 from the generator (exactly the numbers
   danlu's torch-compatible generator draws) and then cast, so the reference differs from danlu
   only by danlu's float32 arithmetic. Stored: "<case>.image" [N, H, W, 3] (output_type "np",
   before uint8), "<case>.latents" [N, h, w, 4] (output_type "latent", channels-last).
3. A1111 prompt emphasis: parse_prompt_attention and tokenize_line re-implemented from
   AUTOMATIC1111's modules/prompt_parser.py and modules/sd_hijack_clip.py (A1111 cannot be
   installed here); "<case>.weights" / "<case>.ids" / "<case>.mult" for a corpus of prompts, and
   "<case>.emb" the emphasised text-encoder output ("Original" emphasis).

Run: /work/venv/bin/python tests/gen/gen_sample.py
"""
import collections
import json
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "golden")
PIPE = os.path.join(GOLDEN, "tiny_pipe")
sys.path.insert(0, HERE)
from goldenlib import Golden  # noqa: E402


# ---------------------------------------------------------------- tiny tokenizer

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_tokenizer():
    os.makedirs(os.path.join(PIPE, "tokenizer"), exist_ok=True)
    for p in ["unet", "vae", "text_encoder", "scheduler", "model_index.json"]:
        link = os.path.join(PIPE, p)
        if not os.path.islink(link):
            os.symlink(os.path.join("..", "tiny_sd15", p), link)
    b2u = bytes_to_unicode()
    corpus = ("a photo of a cat sitting on a red chair, masterpiece, best quality, highly detailed, "
              "portrait of a woman with long hair, landscape with mountains and a river at sunset, "
              "a dog running in the park, oil painting, watercolor, digital art, anime style, "
              "blurry, low quality, worst quality, ugly, bad anatomy, extra fingers, text, watermark, "
              "the quick brown fox jumps over the lazy dog, style of an old master, dramatic lighting") * 3
    words = collections.Counter(corpus.replace(",", " , ").split())
    vocab = [b2u[b] for b in range(256)]
    vocab += [v + "</w>" for v in vocab]
    segs = {w: [b2u[c] for c in w.encode()] for w in words}
    for w in segs:
        segs[w][-1] += "</w>"
    merges = []
    while len(vocab) < 998:
        pairs = collections.Counter()
        for w, s in segs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab.append(a + b)
        for w, s in segs.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    k = 0
    while len(vocab) < 998:
        vocab.append(f"unused{k}</w>")
        k += 1
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == 1000
    d = os.path.join(PIPE, "tokenizer")
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


# ---------------------------------------------------------------- A1111 prompt syntax

RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    """A1111 modules/prompt_parser.py parse_prompt_attention."""
    res, round_brackets, square_brackets = [], [], []

    def multiply_range(start, mult):
        for p in range(start, len(res)):
            res[p][1] *= mult

    for m in RE_ATTENTION.finditer(text):
        t, weight = m.group(0), m.group(1)
        if t.startswith("\\"):
            res.append([t[1:], 1.0])
        elif t == "(":
            round_brackets.append(len(res))
        elif t == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif t == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif t == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(re.split(RE_BREAK, t)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, 1.1)
    for pos in square_brackets:
        multiply_range(pos, 1 / 1.1)
    if len(res) == 0:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


def tokenize_line(tok, line, chunk_length=75, backtrack=20):
    """A1111 modules/sd_hijack_clip.py tokenize_line (no textual inversion)."""
    parsed = parse_prompt_attention(line)
    tokenized = tok([t for t, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]
    id_start, id_end = tok.bos_token_id, tok.eos_token_id
    comma = tok.get_vocab().get(",</w>", None)
    chunks = []
    cur = {"t": [], "m": []}
    last_comma = -1

    def next_chunk():
        nonlocal cur, last_comma
        to_add = chunk_length - len(cur["t"])
        if to_add > 0:
            cur["t"] += [id_end] * to_add
            cur["m"] += [1.0] * to_add
        chunks.append(([id_start] + cur["t"] + [id_end], [1.0] + cur["m"] + [1.0]))
        last_comma = -1
        cur = {"t": [], "m": []}

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        pos = 0
        while pos < len(tokens):
            token = tokens[pos]
            if token == comma:
                last_comma = len(cur["t"])
            elif backtrack != 0 and len(cur["t"]) == chunk_length and last_comma != -1 and len(cur["t"]) - last_comma <= backtrack:
                brk = last_comma + 1
                rt, rm = cur["t"][brk:], cur["m"][brk:]
                cur["t"], cur["m"] = cur["t"][:brk], cur["m"][:brk]
                next_chunk()
                cur["t"], cur["m"] = rt, rm
            if len(cur["t"]) == chunk_length:
                next_chunk()
            cur["t"].append(token)
            cur["m"].append(weight)
            pos += 1
    if cur["t"] or not chunks:
        next_chunk()
    return chunks


def a1111_embed(te, tok, prompt, clip_skip=1):
    """Chunks -> text encoder (clip skip) -> Original emphasis, hstacked: [1, 77 n, C] float64."""
    zs = []
    for ids, mult in tokenize_line(tok, prompt):
        out = te(torch.tensor([ids]), output_hidden_states=True)
        fln = te.text_model.final_layer_norm if hasattr(te, "text_model") else te.final_layer_norm
        z = out.last_hidden_state if clip_skip == 1 else fln(out.hidden_states[-clip_skip])
        m = torch.tensor(mult, dtype=torch.float32).to(z.dtype)
        orig = z.mean()
        z = z * m.reshape(1, -1, 1)
        z = z * (orig / z.mean())
        zs.append(z)
    return torch.hstack(zs)


# corpus for the parser test: (name, prompt); weights/fragments go to the golden as text in
# the metadata, ids and multipliers as tensors
PROMPT_CORPUS = [
    ("plain", "a photo of a cat"),
    ("paren", "a (cat) on a chair"),
    ("weight", "a (cat:1.3), (dog:0.5)"),
    ("nested", "((masterpiece)), [[blurry]], ([mixed])"),
    ("nested_weight", "(a (cat:1.5) in (the park:0.8):1.2)"),
    ("escape", "a \\(cat\\) and \\[dog\\] \\\\ x"),
    ("unbalanced", "(open paren [square"),
    ("stray_close", "a) b] c:1.2) d"),
    ("colon_text", "style: anime, ratio:2"),
    ("break", "a cat BREAK a dog"),
    ("break_weighted", "(a BREAK b)"),
    ("empty", ""),
    ("long", ", ".join(["a photo of a cat"] * 18)),
    ("lone_backslash", "a\\b (c:1.1)"),
]


def prompt_cases(g, tok, te):
    meta = {}
    for name, p in PROMPT_CORPUS:
        parsed = parse_prompt_attention(p)
        meta[name] = {"prompt": p, "parsed": parsed}
        chunks = tokenize_line(tok, p)
        g.add("prompt_" + name, "ids", torch.tensor([c[0] for c in chunks], dtype=torch.int32))
        g.add("prompt_" + name, "mult", torch.tensor([c[1] for c in chunks], dtype=torch.float32))
        g.add("prompt_" + name, "weights", torch.tensor([w for _, w in parsed], dtype=torch.float64))
    for name, p, cs in [("emb_weight", "a (cat:1.3), [blurry] (dog)", 1), ("emb_skip2", "(masterpiece:1.2), a dog", 2),
                        ("emb_long", ", ".join(["a (photo:1.1) of a cat"] * 16), 1)]:
        with torch.no_grad():
            z = a1111_embed(te, tok, p, cs)
        g.add(name, "emb", z[0])
        meta[name] = {"prompt": p, "clip_skip": cs}
    return meta


# ---------------------------------------------------------------- pipelines

def float32_noise_patch():
    """Every diffusers randn_tensor draws float32 from the generator, then casts."""
    import diffusers.utils.torch_utils as tu
    orig = tu.randn_tensor

    def randn32(shape, generator=None, device=None, dtype=None, layout=None):
        return orig(shape, generator=generator, device=device, dtype=torch.float32, layout=layout).to(dtype)

    for mod in list(sys.modules.values()):
        if mod is not None and mod.__name__.startswith("diffusers") and getattr(mod, "randn_tensor", None) is orig:
            mod.randn_tensor = randn32


def schedulers(base):
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler)
    return {
        "euler": lambda: EulerDiscreteScheduler.from_config(base),
        "euler_karras": lambda: EulerDiscreteScheduler.from_config(base, use_karras_sigmas=True),
        "euler_a": lambda: EulerAncestralDiscreteScheduler.from_config(base),
        "heun": lambda: HeunDiscreteScheduler.from_config(base),
        "ddim": lambda: DDIMScheduler.from_config(base),
        "dpmpp_2m": lambda: DPMSolverMultistepScheduler.from_config(base),
        "dpmpp_2m_karras": lambda: DPMSolverMultistepScheduler.from_config(base, use_karras_sigmas=True),
        "lcm": lambda: LCMScheduler.from_config(base),
    }


PROMPT = "a photo of a cat sitting on a red chair, masterpiece"
NEGATIVE = "blurry, low quality"


def main():
    make_tokenizer()
    from diffusers import (AutoencoderKL, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from diffusers.schedulers import PNDMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer(os.path.join(PIPE, "tokenizer", "vocab.json"), os.path.join(PIPE, "tokenizer", "merges.txt"))
    tok.model_max_length = 77
    te = CLIPTextModel.from_pretrained(os.path.join(PIPE, "text_encoder"), torch_dtype=torch.float64).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(PIPE, "unet"), torch_dtype=torch.float64).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(PIPE, "vae"), torch_dtype=torch.float64).eval()
    # SD1.5's own scheduler_config.json says clip_sample false (the tiny folder's omits it, and
    # DDIMScheduler would then default to True); danlu's samplers follow SD1.5
    base = dict(PNDMScheduler.from_pretrained(os.path.join(PIPE, "scheduler")).config, clip_sample=False)
    float32_noise_patch()
    g = Golden("sample")
    meta = {"prompt": PROMPT, "negative": NEGATIVE}
    meta["prompts"] = prompt_cases(g, tok, te)

    def pipe_for(cls, sched):
        p = cls(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    S = schedulers(base)
    cases = []
    for name in ["euler", "euler_karras", "euler_a", "heun", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm"]:
        cases.append(dict(case=f"t2i_{name}", sampler=name, steps=4, cfg=7.0, seed=42, n=1))
    cases.append(dict(case="t2i_euler_a_batch", sampler="euler_a", steps=3, cfg=5.0, seed=7, n=2))
    cases.append(dict(case="t2i_ddim_nocfg", sampler="ddim", steps=3, cfg=1.0, seed=3, n=1))
    cases.append(dict(case="t2i_euler_skip2", sampler="euler", steps=3, cfg=7.0, seed=5, n=1, clip_skip=2))
    cases.append(dict(case="t2i_euler_weighted", sampler="euler", steps=3, cfg=7.0, seed=11, n=1,
                      prompt="a photo of a (cat:1.3) sitting on a [red] chair, (masterpiece)"))
    for c in cases:
        pipe = pipe_for(StableDiffusionPipeline, S[c["sampler"]]())
        kw = dict(num_inference_steps=c["steps"], guidance_scale=c["cfg"], height=16, width=16,
                  num_images_per_prompt=c["n"])
        if "prompt" in c or c.get("clip_skip", 1) > 1:
            # A1111 emphasis / clip skip (diffusers' clip_skip = ours - 1 is the same math, but
            # transformers 5's CLIPTextModel lacks the .text_model diffusers reaches for)
            cs = c.get("clip_skip", 1)
            with torch.no_grad():
                kw["prompt_embeds"] = a1111_embed(te, tok, c.get("prompt", PROMPT), cs)
                kw["negative_prompt_embeds"] = a1111_embed(te, tok, NEGATIVE, cs)
        else:
            kw["prompt"], kw["negative_prompt"] = PROMPT, NEGATIVE
        with torch.no_grad():
            lat = pipe(**kw, output_type="latent", generator=torch.Generator("cpu").manual_seed(c["seed"])).images
            img = pipe(**kw, output_type="np", generator=torch.Generator("cpu").manual_seed(c["seed"])).images
        g.add(c["case"], "latents", lat.permute(0, 2, 3, 1))
        g.add(c["case"], "image", torch.from_numpy(np.asarray(img)))
        meta[c["case"]] = {k: v for k, v in c.items() if k != "case"}

    # img2img from a 16x16 init image (already the output size: no resampling)
    rs = np.random.RandomState(0)
    init = rs.randint(0, 256, size=(16, 16, 3)).astype(np.uint8)
    g.add("i2i", "init", torch.from_numpy(init))
    from PIL import Image
    for name, strength, n, seed in [("euler_a", 0.6, 1, 21), ("ddim", 0.5, 1, 22), ("dpmpp_2m", 0.75, 1, 23),
                                    ("euler_a_batch", 0.6, 2, 24)]:
        sname = name.replace("_batch", "")
        pipe = pipe_for(StableDiffusionImg2ImgPipeline, S[sname]())
        kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=Image.fromarray(init), strength=strength,
                  num_inference_steps=5, guidance_scale=7.0, num_images_per_prompt=n)
        with torch.no_grad():
            lat = pipe(**kw, output_type="latent", generator=torch.Generator("cpu").manual_seed(seed)).images
            img = pipe(**kw, output_type="np", generator=torch.Generator("cpu").manual_seed(seed)).images
        case = f"i2i_{name}"
        g.add(case, "latents", lat.permute(0, 2, 3, 1))
        g.add(case, "image", torch.from_numpy(np.asarray(img)))
        meta[case] = dict(sampler=sname, strength=strength, n=n, seed=seed, steps=5, cfg=7.0)
    # v-prediction: the same networks under a scheduler config that says v_prediction
    # (tests/golden/tiny_pipe_v: symlinks + its own scheduler/)
    vdir = os.path.join(GOLDEN, "tiny_pipe_v")
    os.makedirs(os.path.join(vdir, "scheduler"), exist_ok=True)
    for p in ["unet", "vae", "text_encoder", "tokenizer"]:
        link = os.path.join(vdir, p)
        if not os.path.islink(link):
            os.symlink(os.path.join("..", "tiny_pipe", p), link)
    vcfg = dict(json.load(open(os.path.join(PIPE, "scheduler", "scheduler_config.json"))), prediction_type="v_prediction")
    with open(os.path.join(vdir, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(vcfg, f, indent=2)
    vbase = dict(base, prediction_type="v_prediction")
    for name in ["euler", "dpmpp_2m", "ddim"]:
        pipe = pipe_for(StableDiffusionPipeline, schedulers(vbase)[name]())
        kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=7.0, height=16, width=16)
        with torch.no_grad():
            lat = pipe(**kw, output_type="latent", generator=torch.Generator("cpu").manual_seed(31)).images
            img = pipe(**kw, output_type="np", generator=torch.Generator("cpu").manual_seed(31)).images
        case = f"vpred_{name}"
        g.add(case, "latents", lat.permute(0, 2, 3, 1))
        g.add(case, "image", torch.from_numpy(np.asarray(img)))
        meta[case] = dict(sampler=name, steps=4, cfg=7.0, seed=31, n=1)

    # LoRAs (merged by danlu; loaded through PEFT by diffusers): two "epochs" made from the
    # kohya-layout LoRA of gen_lora_net.py (epoch2 = its up weights x -0.5, so the two differ)
    from safetensors.torch import load_file, save_file
    ldir = os.path.join(GOLDEN, "tiny_pipe_loras")
    os.makedirs(ldir, exist_ok=True)
    src = load_file(os.path.join(GOLDEN, "lora_net_kohya.safetensors"))
    save_file(src, os.path.join(ldir, "epoch1.safetensors"), metadata={"ss_network_dim": "4"})
    e2 = {k: (v * -0.5 if k.endswith("lora_up.weight") else v) for k, v in src.items()}
    save_file(e2, os.path.join(ldir, "epoch2.safetensors"), metadata={"ss_network_dim": "4"})
    # a LoRA for a wider model (every down projection's input doubled): another architecture
    wide = {k: (torch.cat([v, v], dim=1) if k.endswith("lora_down.weight") else v) for k, v in src.items()}
    save_file(wide, os.path.join(ldir, "other_arch.safetensors"))
    pipe = pipe_for(StableDiffusionPipeline, S["euler"]())
    pipe.load_lora_weights(os.path.join(ldir, "epoch1.safetensors"), adapter_name="e1")
    pipe.load_lora_weights(os.path.join(ldir, "epoch2.safetensors"), adapter_name="e2")
    te.double()
    unet.double()
    for case, names, weights, seed in [("lora_e1", ["e1"], [0.7], 13), ("lora_e1_e2", ["e1", "e2"], [0.7, 0.5], 14)]:
        pipe.set_adapters(names, adapter_weights=weights)
        kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=7.0, height=16, width=16)
        with torch.no_grad():
            lat = pipe(**kw, output_type="latent", generator=torch.Generator("cpu").manual_seed(seed)).images
            img = pipe(**kw, output_type="np", generator=torch.Generator("cpu").manual_seed(seed)).images
        g.add(case, "latents", lat.permute(0, 2, 3, 1))
        g.add(case, "image", torch.from_numpy(np.asarray(img)))
        meta[case] = dict(sampler="euler", steps=3, cfg=7.0, seed=seed, loras=names, weights=weights)
    with open(os.path.join(GOLDEN, "sample_cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    g.save()


if __name__ == "__main__":
    main()
