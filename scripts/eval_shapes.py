#!/usr/bin/env python3
"""Does a base model trained on the shapes set follow its prompts? (issue 15's measure)

Usage: scripts/eval_shapes.py DANLU MODEL TOKENIZER OUT_DIR [SEEDS]

For ten (C1, C2) colour pairs from the shapes palette and SEEDS seeds each (default 1), samples
"a C1 circle on a C2 background" at 64x64 with `danlu sample` and checks that the mean colour of
the image's centre (the middle 16x16) is nearest, in the palette, to C1 and that of its four
8x8 corners to C2. Prints each case and the counts. Python standard library only (a measuring
script beside the recipe, not part of danlu)."""
import os
import struct
import subprocess
import sys
import zlib

PALETTE = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "white": (240, 240, 240), "black": (20, 20, 20)}
PAIRS = [("red", "blue"), ("green", "yellow"), ("blue", "white"), ("yellow", "black"), ("white", "red"),
         ("black", "green"), ("red", "yellow"), ("blue", "green"), ("white", "black"), ("green", "red")]


def read_png(path):
    """8-bit RGB or RGBA PNG -> (w, h, rows of RGB tuples)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), (path, depth, ctype)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, prev, rows, i = zlib.decompress(idat), w * bpp, bytearray(w * bpp), [], 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[k * bpp:k * bpp + 3]) for k in range(w)])
        prev = line
    return w, h, rows


def mean(rows, x0, y0, s):
    px = [rows[y][x] for y in range(y0, y0 + s) for x in range(x0, x0 + s)]
    return tuple(sum(p[c] for p in px) / len(px) for c in range(3))


def nearest(rgb):
    return min(PALETTE, key=lambda k: sum((a - b) ** 2 for a, b in zip(PALETTE[k], rgb)))


def main():
    danlu, model, tok, out = sys.argv[1:5]
    seeds = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    ok_c = ok_b = ok_both = n = 0
    for c1, c2 in PAIRS:
        d = os.path.join(out, f"{c1}_{c2}")
        subprocess.run([danlu, "sample", "--model", model, "--tokenizer", tok, "--prompt",
                        f"a {c1} circle on a {c2} background", "--width", "64", "--height", "64", "--steps", "20",
                        "--cfg-scale", "5", "--sampler", "euler", "--seed", "100", "--batch-count", str(seeds),
                        "--out-dir", d], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for f in sorted(os.listdir(d)):
            if not f.endswith(".png"):
                continue
            w, h, rows = read_png(os.path.join(d, f))
            centre = mean(rows, w // 2 - 8, h // 2 - 8, 16)
            corners = [mean(rows, x, y, 8) for x, y in ((0, 0), (w - 8, 0), (0, h - 8), (w - 8, h - 8))]
            corner = tuple(sum(c[k] for c in corners) / 4 for k in range(3))
            gc, gb = nearest(centre), nearest(corner)
            n += 1
            ok_c += gc == c1
            ok_b += gb == c2
            ok_both += gc == c1 and gb == c2
            print(f"{c1:>6} on {c2:<6} {f}: centre {tuple(round(v) for v in centre)} -> {gc:<6} "
                  f"corners {tuple(round(v) for v in corner)} -> {gb}")
    print(f"centre right {ok_c}/{n}, corners right {ok_b}/{n}, both {ok_both}/{n}")


if __name__ == "__main__":
    main()
