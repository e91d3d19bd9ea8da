"""Golden data for SD 2.x tokenization of prompts that contain the pad character "!":
tests/golden/tokenizer_sd2.json.

SD 2.x's tokenizer folder says pad_token "!" (id 0). That token only pads: a "!" typed in the
prompt is ordinary text, so "red hair!!" ends in the single BPE token "!!</w>" (748), not in
two pad ids. Two references, built from CLIP's own merge list (../shared/data/clip/
bpe_simple_vocab_16e6.txt.gz; nothing is downloaded):
  hf         transformers' (tokenizers-backed) CLIPTokenizer from vocab.json + merges.txt, with
             pad_token = "!" assigned after construction (pad id 0, not an added token)
  open_clip  open_clip's SimpleTokenizer, what A1111 and ComfyUI run for SD 2.x; its 77-id
             output pads with 0 after <end_of_text>, which is the id of "!", so both pad alike
For each prompt the golden holds hf_ids (add_special_tokens=False), hf_padded
(padding="max_length", max_length=77, truncation=True), hf_win3 (sd-scripts' 3 windows for
max_token_length=225, with its SD2 fix-ups), open_clip_ids (encode) and open_clip_padded
(tokenize, 77 ids).

The script asserts that the two references agree on every prompt except the ones listed in
DIFFER, where open_clip's text cleaning (ftfy, html.unescape, its own <start_of_text> /
<end_of_text> literals, Python's str.lower) differs from transformers' normalizer for reasons
that have nothing to do with "!"; danlu follows transformers there (see tokenizer.h), and
those cases carry a "differs" note. It also records, for the record only, what
CLIPTokenizer.from_pretrained on an SD 2.x tokenizer folder gives (hf_folder_ids):
transformers >= 5 registers the folder's pad "!" as an added special token and splits every
"!" out ("red hair!!" -> 736 2225 0 0). danlu does not follow that.

The SD 2.x tokenizer_config.json and special_tokens_map.json used for from_pretrained are
stored in the golden ("folder") so the C test can build the same folder.

Run: /path/to/venv/bin/python tests/gen/gen_tokenizer_sd2.py
     (transformers, tokenizers, open_clip_torch with ftfy and regex)
"""
import json
import os
import sys
import tempfile

import open_clip
import transformers
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tokenizer import BPE, clip_vocab, sd_scripts_windows, write_tok  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden", "tokenizer_sd2.json")


def _tok(content):
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


# The layout of stabilityai/stable-diffusion-2(-1)'s tokenizer/ folder: tokenizer_config.json
# says pad <|endoftext|>, special_tokens_map.json (read after it) overrides that with "!".
TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": dict(_tok("<|startoftext|>"), __type="AddedToken"),
    "do_lower_case": True,
    "eos_token": dict(_tok("<|endoftext|>"), __type="AddedToken"),
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": dict(_tok("<|endoftext|>"), __type="AddedToken"),
}
SPECIAL_TOKENS_MAP = {
    "bos_token": _tok("<|startoftext|>"),
    "eos_token": _tok("<|endoftext|>"),
    "pad_token": "!",
    "unk_token": _tok("<|endoftext|>"),
}

# prompt -> why open_clip's ids differ from transformers' (not because of "!")
DIFFER = {
    "\uff01fullwidth\uff01 \uff01\uff01": "ftfy folds fullwidth \uff01 to ASCII ! (transformers: no ftfy)",
    "!\u2019s": "ftfy uncurls \u2019 to ' (so open_clip sees the contraction 's)",
    "tom &amp; jerry!!": "open_clip html-unescapes &amp; (transformers does not)",
    "a<|endoftext|>!!": "<|endoftext|> is special in transformers; open_clip's literal is <end_of_text>",
    "<end_of_text>!": "open_clip's own special literal (transformers: ordinary text)",
    "\u039f\u0394\u039f\u03a3!!": "Python's str.lower applies the final-sigma rule (transformers: per character)",
}


def corpus():
    p = [
        # the prompt and "!" alone, doubled, tripled, in every position of a word
        "red hair!!", "!", "!!", "!!!", "!!!!", "! ! !", " ! ", "a!b", "a!!b!!c", "!start", "end!",
        "wow!!! ok", "wow !!", "hello, world!", "hello!!! ...", "!?", "?!?!", "!\"#", "#!",
        # prompt syntax around "!"
        "(cat:1.2)!", "((best quality!!))", "[!]", "(!)", "{a!|b!}", "<lora:x:0.8>!",
        "1girl!, solo!!, smile!", "masterpiece!!!, best quality!, (red hair!:1.3)",
        "don't!", "!'s", "it's!!", "42!", "!42", "3.14!", "x!y!z", "BREAK!",
        # case and unicode next to "!"
        "RED HAIR!!", "caf\u00e9!", "cafe\u0301!!", "e\u0301!", "a!\u0301", "\u0301!",
        "\u65e5\u672c!\u8a9e", "!\U0001f600", "\U0001f600!!", "\U0001f3a8!\U0001f600",
        "\u00a1hola!", "\u2757 \u203c \u2049", "Stra\u00dfe!", "\u0130!", "\u03a3!",
        "\u0440\u0443\u0441\u0441\u043a\u0438\u0439!", "\ud55c\uad6d\uc5b4!!", "!\u200d!",
        "x\u00a0!", "!\t!\n!", "\u3000!\u3000", "a\u200b!",
        # runs of "!" long enough to split into several BPE tokens
        "xxx" + "!" * 10, "!" * 80,
    ]
    # long prompts: "!" at the truncation point of 77 ids and of sd-scripts' windows
    p += [", ".join(["tag!"] * 60), "wow " * 74 + "!!", "wow " * 75 + "!!", "wow " * 76 + "!",
          "wow " * 150 + "!", "!! " * 80, " ".join(["cat!"] * 120), "cat " * 73 + "!!!!!!"]
    p += list(DIFFER)
    return p


def main():
    vocab, merges = clip_vocab()
    oc = SimpleTokenizer(bpe_path=BPE)
    golden = {"generator": "tests/gen/gen_tokenizer_sd2.py",
              "reference": f"transformers {transformers.__version__} CLIPTokenizer (pad_token "
                           f"'!' assigned), open_clip {open_clip.__version__} SimpleTokenizer",
              "folder": {"tokenizer_config.json": TOKENIZER_CONFIG,
                         "special_tokens_map.json": SPECIAL_TOKENS_MAP},
              "cases": []}
    with tempfile.TemporaryDirectory() as d:
        vf, mf = write_tok(d, vocab, merges)
        hf = CLIPTokenizer(vf, mf, model_max_length=77)
        hf.pad_token = "!"
        assert hf.pad_token_id == 0 and hf.eos_token_id == 49407 and hf.bos_token_id == 49406
        assert 0 not in hf.added_tokens_decoder, "pad '!' must not be an added (split) token"
        assert oc.sot_token_id == 49406 and oc.eot_token_id == 49407
        assert oc.encoder["!</w>"] == 256 and oc.encoder["!"] == 0
        for name, obj in golden["folder"].items():
            with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                json.dump(obj, f)
        folder = CLIPTokenizer.from_pretrained(d)
        assert folder.pad_token_id == 0
        n_agree = n_folder_split = 0
        for p in corpus():
            ids = hf(p, add_special_tokens=False).input_ids
            padded = hf(p, padding="max_length", max_length=77, truncation=True).input_ids
            oc_ids = oc.encode(p)
            oc_padded = oc([p])[0].tolist()
            assert len(padded) == 77 and len(oc_padded) == 77
            case = {"prompt": p, "hf_ids": ids, "hf_padded": padded,
                    "hf_win3": sd_scripts_windows(hf, p),
                    "open_clip_ids": oc_ids, "open_clip_padded": oc_padded,
                    "hf_folder_ids": folder(p, add_special_tokens=False).input_ids}
            agree = ids == oc_ids and padded == oc_padded
            if p in DIFFER:
                assert not agree, f"{p!r} is listed in DIFFER but the references agree"
                case["differs"] = DIFFER[p]
                print(f"differs {p!r}: hf {ids[:10]} open_clip {oc_ids[:10]} ({DIFFER[p]})")
            else:
                assert agree, f"{p!r}: hf {ids} / {padded} vs open_clip {oc_ids} / {oc_padded}"
                n_agree += 1
            if case["hf_folder_ids"] != ids:
                n_folder_split += 1
            golden["cases"].append(case)
        red = next(c for c in golden["cases"] if c["prompt"] == "red hair!!")
        assert red["hf_ids"] == [736, 2225, 748] and red["hf_folder_ids"] == [736, 2225, 0, 0]
        print(f"{n_agree} prompts: transformers (pad assigned) == open_clip, ids and 77-id padding")
        print(f"{n_folder_split} prompts: from_pretrained(SD2 folder) splits '!' out "
              f"(e.g. 'red hair!!' -> {red['hf_folder_ids']}), recorded only")
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=True, separators=(",", ":"))
    print(f"wrote {OUT}: {len(golden['cases'])} prompts, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    sys.exit(main())
