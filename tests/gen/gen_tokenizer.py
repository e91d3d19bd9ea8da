"""Golden data for the CLIP tokenizer: tests/golden/tokenizer.json.

Builds transformers' CLIPTokenizer from CLIP's own merge list (../shared/data/clip/
bpe_simple_vocab_16e6.txt.gz; vocab.json + merges.txt derived from it the way CLIP does, in a
temp dir) and records, for a corpus of awkward prompts:
  ids      raw ids (add_special_tokens=False)
  padded   tokenizer(p, padding="max_length", max_length=77, truncation=True) (diffusers)
  win3     sd-scripts' 3 windows for max_token_length=225 (get_input_ids), SD1 pad (= EOS)
and with pad_token="!" (SD2's pad) the same `ids`/`padded`/`win3` as sd2_*. The pad is assigned
after construction, so "!" only pads and stays ordinary text in prompts, as in open_clip (which
A1111 and ComfyUI use for SD2); gen_tokenizer_sd2.py has the "!" prompts against both references.
A tiny hand-made vocabulary (with unknown characters and a merge order where tokenizers' BPE
differs from a naive "merge every occurrence" loop) is recorded too, for the vocab.json loader.

In transformers >= 5 CLIPTokenizer is the `tokenizers`-backed one (the slow Python class is
gone), so that is the reference; the script also runs OpenAI's original simple_tokenizer logic
(without ftfy) and prints where it disagrees, for the record.

Run: /path/to/venv/bin/python tests/gen/gen_tokenizer.py   (transformers, tokenizers, regex)
"""
import gzip
import html
import json
import os
import random
import sys
import tempfile

import transformers
from transformers import CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
BPE = os.path.join(HERE, "..", "..", "..", "shared", "data", "clip", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(HERE, "..", "golden", "tokenizer.json")


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) +
          list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab():
    lines = gzip.open(BPE).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab)}, merges


def write_tok(d, vocab, merges):
    vf, mf = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
    with open(vf, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(mf, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return vf, mf


def sd_scripts_windows(tok, prompt, n_windows=3):
    """train_util.get_input_ids of kohya-ss/sd-scripts for max_token_length = 75 * n."""
    L = 75 * n_windows + 2
    ids = tok(prompt, padding="max_length", truncation=True, max_length=L).input_ids
    out = []
    for i in range(1, L - 77 + 2, 75):
        chunk = [ids[0]] + ids[i:i + 75] + [ids[-1]]
        if tok.pad_token_id != tok.eos_token_id:
            if chunk[-2] != tok.eos_token_id and chunk[-2] != tok.pad_token_id:
                chunk[-1] = tok.eos_token_id
            if chunk[1] == tok.pad_token_id:
                chunk[1] = tok.eos_token_id
        assert len(chunk) == 77
        out.append(chunk)
    assert len(out) == n_windows
    return out


def corpus():
    p = [
        "", " ", "a photo of a cat", "A Photo Of A CAT", "hello, world!", "hello!!! ...", "wow !!",
        "don't", "it's", "we're they've I'm you'll he'd", "DON'T IT'S", "'s'tis 'quoted' rock'n'roll",
        "it\u2019s don\u2019t \u201cquoted\u201d", "1girl, 2boys", "3.14", "2024-01-01", "1234567890",
        "caf\u00e9", "cafe\u0301", "na\u00efve", "CAF\u00c9 NA\u00cfVE", "\u65e5\u672c\u8a9e",
        "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u039f\u0394\u039f\u03a3",
        "\u0130stanbul", "stra\u00dfe STRASSE", "\U0001f600\U0001f3a8", "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
        "\u2764\ufe0f love", "a  b", "a\tb\nc\r\nd", "  leading and trailing  ", "\u3000ideographic\u3000space",
        "x\u00a0y", "x\u0085y x\u001cy", "a\u200bb", "(masterpiece:1.2), [bad], <lora:x:0.8>",
        "((best quality)), {extra}, (worst quality:1.4)", "BREAK, AND, |, \\(escaped\\)",
        "<|startoftext|>", "<|endoftext|>", "a<|endoftext|>b", "<|ENDOFTEXT|> <|StartOfText|>",
        "<|startoftext|> hi <|endoftext|><|endoftext|>", "email@example.com http://x.y/z?q=1&r=2",
        "&amp; &lt;tag&gt;", "\u00bd \u2153 \u2460\u2461 \u2167 \u00b2", "\u0661\u0662\u0663 \u0967",
        "\ud55c\uad6d\uc5b4 \u1112\u1161\u11ab", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
        "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u042f\u0417\u042b\u041a", "\u01c5 \u01c4 \ufb03",
        "\u1e9e \u2126 \u212a", "\u0958 \u2000a\u2001", "ABC\u0327\u0301 e\u0323\u0302",
        "a\u0301\u0327 \u1100\u1161\u11a8 \u0f73", "~!@#$%^&*()_+`-={}[]|\\:;\"'<>,.?/",
        "x" * 100, "supercalifragilisticexpialidocious " * 3,
        # marks newer than tokenizers' NFC tables: not combining there, so nothing composes
        # across them (Python's unicodedata would compose these)
        "a\u07fd\u0301", "e\U00010f4b\u0301", "e\u0323\u07fd\u0302",
        # NFC blocking: a mark of the same class, or a starter, between base and combining mark
        "a\u0305\u0301 A\u0305\u0301", "\u1100\u0301\u1161", "u\u0308\u0301 o\u031b\u0323\u0301",
    ]
    long75 = ", ".join(f"tag{i}" for i in range(40))
    long225 = ", ".join(["masterpiece", "best quality", "1girl", "solo", "long hair",
                         "looking at viewer", "smile", "blue eyes"] * 15)
    p += [long75, long225, long225 + " " + long225]
    # exactly 75 / 76 / 150 single-token words
    p += [" ".join(["cat"] * 74), " ".join(["cat"] * 75), " ".join(["cat"] * 76),
          " ".join(["cat"] * 150), " ".join(["cat"] * 151), " ".join(["cat"] * 225)]
    # random strings over a pool of awkward characters (fixed seed)
    pool = (list("abcXYZ019 ',.!?()<>|:") + ["\t", "\n", "  ", "\u00e9", "e\u0301", "\u0301",
            "\u0327", "\u00df", "\u0130", "\u03a3", "\u65e5", "\U0001f600", "\u200d", "\u3000",
            "\u0085", "\u001c", "\u00a0", "\u2019", "\u2460", "\u00bd", "\u0663", "'s", "'ll",
            "<|endoftext|>", "\u1100", "\u1161", "\u11a8", "\uac00", "\u0001", "\ufffd",
            "\U0001f3a8", "\u0915\u093c", "\u212b", "\u1e0a\u0323", "\u01c5"])
    rng = random.Random(1234)
    for _ in range(150):
        p.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 24))))
    return p


# ---- OpenAI's simple_tokenizer (CLIP repo), ftfy-less, for the record only ----
def openai_encoder(vocab, merges):
    import regex as re
    ranks = dict(zip(merges, range(len(merges))))
    b2u = bytes_to_unicode()
    pat = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                     re.IGNORECASE)
    cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    def bpe(token):
        if token in cache:
            return cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            new, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        cache[token] = " ".join(word)
        return cache[token]

    def encode(text):
        text = html.unescape(html.unescape(text)).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        out = []
        for t in re.findall(pat, text):
            t = "".join(b2u[b] for b in t.encode("utf-8"))
            out.extend(vocab[x] for x in bpe(t).split(" "))
        return out
    return encode


def main():
    vocab, merges = clip_vocab()
    assert len(vocab) == 49408
    prompts = corpus()
    golden = {"generator": "tests/gen/gen_tokenizer.py",
              "reference": f"transformers {transformers.__version__} CLIPTokenizer",
              "cases": []}
    with tempfile.TemporaryDirectory() as d:
        vf, mf = write_tok(d, vocab, merges)
        tok = CLIPTokenizer(vf, mf, model_max_length=77)
        tok2 = CLIPTokenizer(vf, mf, model_max_length=77)
        tok2.pad_token = "!"   # padding only: not an added token, so "!" is not split out
        assert tok.pad_token_id == 49407 and tok2.pad_token_id == 0
        assert tok2("red hair!!", add_special_tokens=False).input_ids == [736, 2225, 748]
        openai = openai_encoder(vocab, merges)
        differ = 0
        for p in prompts:
            ids = tok(p, add_special_tokens=False).input_ids
            padded = tok(p, padding="max_length", max_length=77, truncation=True).input_ids
            assert len(padded) == 77
            case = {"prompt": p, "ids": ids, "padded": padded,
                    "win3": sd_scripts_windows(tok, p),
                    "sd2_ids": tok2(p, add_special_tokens=False).input_ids,
                    "sd2_padded": tok2(p, padding="max_length", max_length=77,
                                       truncation=True).input_ids,
                    "sd2_win3": sd_scripts_windows(tok2, p)}
            golden["cases"].append(case)
            if openai(p) != ids:
                differ += 1
                if differ <= 8:
                    print(f"openai simple_tokenizer differs on {p!r}: {openai(p)[:12]} vs {ids[:12]}")
        print(f"{differ} of {len(prompts)} prompts differ from OpenAI's simple_tokenizer (no ftfy)")

        # tiny vocabulary: unknown characters -> unk (<|endoftext|>), tokenizers' merge order
        tv = ["a", "b", "a</w>", "b</w>", "ab", "aba", "ab</w>", "ba</w>", "<|startoftext|>",
              "<|endoftext|>", "!", "!</w>", "x", "xx", "xx</w>", "x</w>", "xxx</w>"]
        tiny_vocab = {t: i for i, t in enumerate(tv)}
        tiny_merges = [("ab", "a"), ("a", "b"), ("b", "a</w>"), ("x", "x"), ("xx", "x</w>"), ("x", "x</w>")]
        d2 = os.path.join(d, "tiny")
        os.makedirs(d2)
        tvf, tmf = write_tok(d2, tiny_vocab, tiny_merges)
        tt = CLIPTokenizer(tvf, tmf, model_max_length=77)
        tiny_prompts = ["ababa", "abab", "ab ba aba", "xxxx", "xxx", "x", "c", "abc a!b",
                        "A B ABABA", "xxxxxxx ab"]
        golden["tiny"] = {"vocab": tiny_vocab, "merges": [f"{a} {b}" for a, b in tiny_merges],
                          "cases": [{"prompt": p, "ids": tt(p, add_special_tokens=False).input_ids}
                                    for p in tiny_prompts]}
        for c in golden["tiny"]["cases"]:
            print("tiny", repr(c["prompt"]), c["ids"])

    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=True, separators=(",", ":"))
    print(f"wrote {OUT}: {len(golden['cases'])} prompts, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    sys.exit(main())
