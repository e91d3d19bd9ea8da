"""Golden data for SDXL's second text encoder and for SDXL sampling, on a tiny SDXL pipeline of our
own with both text encoders and both tokenizers.

Model tests/golden/tiny_sdxl_pipe/ (diffusers folder, fp16 weights rounded to bf16 precision) and
the same weights as an SGM single file tests/golden/tiny_sdxl_pipe.safetensors:
  text_encoder    CLIPTextModel: 64 wide, 2 layers, 1 head, quick_gelu, vocabulary 1000 (the
                  tokenizer of tests/golden/tiny_pipe: bos 998, eos 999)
  text_encoder_2  CLIPTextModelWithProjection: 128 wide, 3 layers, 2 heads (head dim 64, what a
                  single file's detection assumes), gelu, text_projection 128 -> 32 without bias;
                  config eos_token_id 2 as SDXL's (transformers then pools at argmax(input_ids))
  tokenizer       tiny_pipe's (pads with <|endoftext|>); tokenizer_2 the same vocabulary with
                  pad_token "!" as SDXL's tokenizer_2 (special_tokens_map.json, tokenizer_config.json)
  unet            SDXL's block pattern of gen_sdxl_unet.py, cross_attention_dim 192 = 64 + 128 (the
                  two penultimate hidden states concatenated), pooled text embedding 32 + 6 time
                  ids x 8
  vae             two levels of 32 channels (16x16 pixels <-> 8x8 latents), scaling_factor 0.13025
The single file holds text_encoder_2 as conditioner.embedders.1.model.* in OpenCLIP's names
(fused attn.in_proj_*, text_projection stored [in, out]), written here by an independent map and
checked against diffusers' convert_open_clip_checkpoint.

tests/golden/sdxl_text.safetensors: transformers' CLIPTextModelWithProjection in float64 on
random ids: "<case>.input_ids" [N, 77], ".last_hidden_state", ".penultimate_hidden_state"
(hidden_states[-2], before the final layer norm), ".text_embeds" [N, 32]. Case "argmax": the
folder's config (eos_token_id 2: pooled at the largest id); case "eos": the same weights with
eos_token_id 500 in the config and ids holding larger ids before the first 500 (pooled at the
first 500).

tests/golden/sdxl_sample.safetensors: diffusers' StableDiffusionXLPipeline in float64 with
EulerDiscreteScheduler (from tiny_sd15's scheduler config, as gen_sample.py), every random tensor
drawn in float32 from torch.Generator("cpu").manual_seed(seed): "<case>.latents" [N, h, w, 4]
(output_type "latent", channels-last) and "<case>.image" [N, H, W, 3] (output_type "np").
Cases in sdxl_sample_cases.json.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_sample import float32_noise_patch  # noqa: E402
from gen_sdxl_unet import unet_key, vae_key  # noqa: E402
from gen_unet import randomize  # noqa: E402
from goldenlib import GOLDEN_DIR, Golden  # noqa: E402

FOLDER, SINGLE = "tiny_sdxl_pipe", "tiny_sdxl_pipe.safetensors"
TOK_SRC = os.path.join(GOLDEN_DIR, "tiny_pipe", "tokenizer")
POOLED, TIME_DIM = 32, 8
UNET_KW = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=192,
               attention_head_dim=[1, 2, 4], transformer_layers_per_block=[1, 1, 2], use_linear_projection=True,
               norm_num_groups=4, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
               projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM, flip_sin_to_cos=True, freq_shift=0)
VAE_KW = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
              latent_channels=4, norm_num_groups=32, sample_size=16, scaling_factor=0.13025)
TE1_KW = dict(hidden_size=64, intermediate_size=128, num_attention_heads=1, num_hidden_layers=2, vocab_size=1000,
              max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=998, eos_token_id=999,
              pad_token_id=1)
TE2_KW = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_hidden_layers=3, vocab_size=1000,
              max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
              projection_dim=POOLED)

PROMPT = "a photo of a cat sitting on a red chair, masterpiece"
NEGATIVE = "blurry, low quality"

# ---------------------------------------------------------------- transformers -> OpenCLIP names


def strip_text_model(sd):
    """transformers' state dict with "text_model." on every encoder tensor (5.x may drop it)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        if k.startswith("text_model.") or k.startswith("text_projection."):
            out[k] = v
        else:
            out["text_model." + k] = v
    return out


def openclip_text(sd, pre):
    """A CLIPTextModelWithProjection state dict as an OpenCLIP text tower under prefix pre."""
    sd = strip_text_model(sd)
    out = {}
    names = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
             "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
    layers = {int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")}
    for i in sorted(layers):
        p = f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{pre}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{p}self_attn.{q}_proj.{kind}"] for q in "qkv"], 0)
        for k, v in sd.items():
            if k.startswith(p) and "_proj." not in k.replace("out_proj.", "X."):
                rest = k[len(p):]
                for a, b in names.items():
                    if rest.startswith(a):
                        out[f"{pre}transformer.resblocks.{i}.{b}{rest[len(a):]}"] = v
    out[pre + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out[pre + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out[pre + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out[pre + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out[pre + "text_projection"] = sd["text_projection.weight"].t().contiguous()
    L = len(layers)  # per layer 16 tensors, 12 once q/k/v's six fuse into two; 5 outside the layers
    assert len(sd) == 5 + 16 * L and len(out) == 5 + 12 * L, (len(sd), len(out), L)
    return out


def write_single(path, unet, vae, te1, te2):
    from safetensors.torch import save_file
    sd = {}
    for k, v in unet.state_dict().items():
        sd[unet_key(k, unet.config)] = v
    for k, v in vae.state_dict().items():
        key = vae_key(k, len(vae.config.block_out_channels))
        if ".mid.attn_1." in key and key.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]
        sd[key] = v
    for k, v in strip_text_model(te1.state_dict()).items():
        sd["conditioner.embedders.0.transformer." + k] = v
    sd.update(openclip_text(te2.state_dict(), "conditioner.embedders.1.model."))
    sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
    save_file(sd, path)
    print(f"wrote {path}: {len(sd)} tensors, {os.path.getsize(path)} bytes")
    return sd


def check_single(sd, te2):
    """diffusers' own converter reads the second text encoder back as the folder's tensors."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    got = convert_open_clip_checkpoint(te2, {k: v for k, v in sd.items() if k.startswith("conditioner.embedders.1.")},
                                       prefix="conditioner.embedders.1.model.")
    got = {k: v for k, v in strip_text_model(got).items()}
    want = strip_text_model(te2.state_dict())
    if set(got) != set(want):
        raise SystemExit(f"FAIL: keys differ: {sorted(set(want) ^ set(got))[:6]}")
    for k in want:
        if not torch.equal(got[k].to(torch.float16), want[k].to(torch.float16)):
            raise SystemExit(f"FAIL: {k} differs")
    print(f"single-file text_encoder_2: diffusers' converter gives back all {len(want)} tensors exactly")


# ---------------------------------------------------------------- the models


def write_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    unet = UNet2DConditionModel(**UNET_KW)
    vae = AutoencoderKL(**VAE_KW)
    te1 = CLIPTextModel(CLIPTextConfig(**TE1_KW))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2_KW))
    for m in (unet, vae, te1, te2):
        randomize(m)
        m.to(torch.float16)
    folder = os.path.join(GOLDEN_DIR, FOLDER)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    vae.save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    te1.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    te2.save_pretrained(os.path.join(folder, "text_encoder_2"), safe_serialization=True)
    os.symlink(os.path.join("..", "tiny_sd15", "scheduler"), os.path.join(folder, "scheduler"))
    os.symlink(os.path.join("..", "tiny_pipe", "tokenizer"), os.path.join(folder, "tokenizer"))
    # tokenizer_2: the same vocabulary, pad "!" as SDXL's tokenizer_2 (whose two json files say so)
    t2 = os.path.join(folder, "tokenizer_2")
    os.makedirs(t2)
    for f in ("vocab.json", "merges.txt"):
        os.symlink(os.path.join("..", "..", "tiny_pipe", "tokenizer", f), os.path.join(t2, f))
    with open(os.path.join(t2, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
                   "unk_token": "<|endoftext|>"}, f, indent=2)
    with open(os.path.join(t2, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": "!",
                   "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
                  f, indent=2)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
                   "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                   "text_encoder": ["transformers", "CLIPTextModel"],
                   "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                   "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                   "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    sd = write_single(os.path.join(GOLDEN_DIR, SINGLE), unet, vae, te1, te2)
    check_single(sd, te2)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    print(f"wrote {folder}: {total} bytes")
    load = lambda cls, sub: cls.from_pretrained(os.path.join(folder, sub), torch_dtype=torch.float64).eval()
    tok1 = CLIPTokenizer(os.path.join(TOK_SRC, "vocab.json"), os.path.join(TOK_SRC, "merges.txt"))
    tok2 = CLIPTokenizer(os.path.join(TOK_SRC, "vocab.json"), os.path.join(TOK_SRC, "merges.txt"))
    tok2.pad_token = "!"  # assigned after loading: "!" pads, and stays ordinary text in a prompt
    for t in (tok1, tok2):
        t.model_max_length = 77
    return dict(unet=load(UNet2DConditionModel, "unet"), vae=load(AutoencoderKL, "vae"),
                text_encoder=load(CLIPTextModel, "text_encoder"),
                text_encoder_2=load(CLIPTextModelWithProjection, "text_encoder_2"), tokenizer=tok1, tokenizer_2=tok2)


# ---------------------------------------------------------------- text encoder goldens


def text_cases(m):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    g = Golden("sdxl_text", seed=2024)
    te2 = m["text_encoder_2"]
    ids = torch.randint(0, 998, (2, 77))
    ids[:, 0] = 998
    ids[0, 9] = 999
    ids[0, 10:] = tok_pad(m["tokenizer_2"])  # tokenizer_2 pads with "!"
    ids[1, 76] = 999
    cfg = CLIPTextConfig.from_pretrained(os.path.join(GOLDEN_DIR, FOLDER, "text_encoder_2"))
    cfg.eos_token_id = 500
    te_eos = CLIPTextModelWithProjection(cfg).double().eval()
    te_eos.load_state_dict(te2.state_dict())
    ids_eos = ids.clone()
    ids_eos[0, 5], ids_eos[0, 7], ids_eos[0, 12] = 990, 500, 500  # a larger id before the first 500
    ids_eos[1, 3], ids_eos[1, 40] = 997, 500
    for case, model, x in [("argmax", te2, ids), ("eos", te_eos, ids_eos)]:
        with torch.no_grad():
            out = model(input_ids=x, output_hidden_states=True)
        g.add(case, "input_ids", x.to(torch.int64))
        g.add(case, "last_hidden_state", out.last_hidden_state)
        g.add(case, "penultimate_hidden_state", out.hidden_states[-2])
        g.add(case, "text_embeds", out.text_embeds)
        print(f"{case}: |text_embeds| = {out.text_embeds.norm().item():.4f}")
    g.save()


def tok_pad(tok):
    return tok.convert_tokens_to_ids("!")


# ---------------------------------------------------------------- sampling goldens

CASES = [
    dict(case="euler", steps=4, cfg=5.0, seed=42, n=1, width=16, height=16, negative=NEGATIVE),
    dict(case="euler_zero_negative", steps=3, cfg=7.0, seed=5, n=1, width=16, height=16, negative=None),
    dict(case="euler_batch_wide", steps=3, cfg=4.0, seed=9, n=2, width=24, height=16, negative=NEGATIVE),
    dict(case="euler_sizes", steps=3, cfg=5.0, seed=13, n=1, width=16, height=16, negative=NEGATIVE,
         original_size=(40, 24), crops_coords_top_left=(4, 8), target_size=(32, 32)),
]


def sample_cases(m):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from diffusers.schedulers import PNDMScheduler
    base = dict(PNDMScheduler.from_pretrained(os.path.join(GOLDEN_DIR, FOLDER, "scheduler")).config)
    float32_noise_patch()
    g = Golden("sdxl_sample")
    meta = {"prompt": PROMPT}
    for c in CASES:
        pipe = StableDiffusionXLPipeline(scheduler=EulerDiscreteScheduler.from_config(base), add_watermarker=False,
                                         force_zeros_for_empty_prompt=True, **m)
        pipe.set_progress_bar_config(disable=True)
        kw = dict(prompt=PROMPT, negative_prompt=c["negative"], num_inference_steps=c["steps"],
                  guidance_scale=c["cfg"], height=c["height"], width=c["width"], num_images_per_prompt=c["n"])
        for k in ("original_size", "crops_coords_top_left", "target_size"):
            if k in c:
                kw[k] = c[k]
        with torch.no_grad():
            lat = pipe(**kw, output_type="latent", generator=torch.Generator("cpu").manual_seed(c["seed"])).images
            img = pipe(**kw, output_type="np", generator=torch.Generator("cpu").manual_seed(c["seed"])).images
        g.add(c["case"], "latents", lat.permute(0, 2, 3, 1))
        g.add(c["case"], "image", torch.from_numpy(np.asarray(img)))
        meta[c["case"]] = {k: v for k, v in c.items() if k != "case"}
        print(f"{c['case']}: |latents| = {lat.norm().item():.4f}")
    with open(os.path.join(GOLDEN_DIR, "sdxl_sample_cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    g.save()


def main():
    torch.manual_seed(1234)
    m = write_models()
    text_cases(m)
    sample_cases(m)


if __name__ == "__main__":
    main()
