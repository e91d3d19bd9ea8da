"""PyTorch (CPU) timings of the ops bench_cpu_ops.c measures, at the same SD 1.5 shapes and
thread count, and the ratio to danlu's numbers.

    bench/torch_cpu_ops.py [--threads N] [--repeats R] [--danlu-json PATH] [--json PATH] [--only S]

torch CPU wheels do not use OpenBLAS: GEMMs go to MKL (or oneDNN), convolutions to oneDNN
(mkldnn); `--config` prints torch.__config__.show(). Convolutions and group-norm are timed in
both contiguous (NCHW) and channels_last memory formats and the faster one is the reference;
attention is timed with F.scaled_dot_product_attention and with a naive softmax(q k^T) v.
Backward timings use torch.autograd.grad on a retained graph (the forward is not included,
except in the *_fwdbwd rows). ratio = torch ms / danlu ms (> 1: danlu is faster).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

HW, C, T, HEADS, HDIM, TCTX, FF, GROUPS = 64, 320, 64 * 64, 8, 40, 77, 1280, 32


def timeit(fn, repeats):
    """(median ms, best ms) after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts), 1e3 * min(ts)


def grad_fn(out, inputs, dout):
    def f():
        torch.autograd.grad(out, inputs, dout, retain_graph=True)
    return f


def conv_cases(fmt):
    def make(k, stride, pad):
        x = torch.randn(1, C, HW, HW).to(memory_format=fmt).requires_grad_()
        w = (torch.randn(C, C, k, k) * 0.02).to(memory_format=fmt).requires_grad_()
        b = torch.randn(C).requires_grad_()
        y = F.conv2d(x, w, b, stride=stride, padding=pad)
        dy = torch.randn_like(y)
        return (lambda: F.conv2d(x, w, b, stride=stride, padding=pad)), grad_fn(y, (x, w, b), dy)
    f3, b3 = make(3, 1, 1)
    f2, b2 = make(3, 2, 1)
    f1, _ = make(1, 1, 0)
    x8 = torch.randn(1, 1280, 8, 8).to(memory_format=fmt).requires_grad_()
    w8 = (torch.randn(1280, 1280, 3, 3) * 0.01).to(memory_format=fmt).requires_grad_()
    b8 = torch.randn(1280).requires_grad_()
    y8 = F.conv2d(x8, w8, b8, padding=1)
    return {"conv3x3_fwd": f3, "conv3x3_bwd": b3, "conv3x3s2_fwd": f2, "conv3x3s2_bwd": b2, "conv1x1_fwd": f1,
            "conv3x3_8x8_fwd": lambda: F.conv2d(x8, w8, b8, padding=1),
            "conv3x3_8x8_bwd": grad_fn(y8, (x8, w8, b8), torch.randn_like(y8))}


def groupnorm_cases(fmt):
    x = torch.randn(1, C, HW, HW).to(memory_format=fmt).requires_grad_()
    g = torch.randn(C).requires_grad_()
    b = torch.randn(C).requires_grad_()
    dy = torch.randn(1, C, HW, HW).to(memory_format=fmt)

    def fwd():
        return F.silu(F.group_norm(x, GROUPS, g, b, 1e-5))

    def fwdbwd():
        torch.autograd.grad(fwd(), (x, g, b), dy)
    return {"groupnorm_silu_fwd": fwd, "groupnorm_silu_fwdbwd": fwdbwd}


def other_cases():
    cases = {}
    x = torch.randn(T, C).requires_grad_()
    w = (torch.randn(C, C) * 0.05).requires_grad_()
    b = torch.randn(C).requires_grad_()
    y = F.linear(x, w, b)
    cases["linear_fwd"] = lambda: F.linear(x, w, b)
    cases["linear_bwd"] = grad_fn(y, (x, w, b), torch.randn_like(y))
    xc = torch.randn(77, 768)
    wc = torch.randn(C, 768) * 0.03
    cases["linear_ctx_fwd"] = lambda: F.linear(xc, wc)

    def attn(tk, naive):
        q = torch.randn(1, HEADS, T, HDIM).requires_grad_()
        k = torch.randn(1, HEADS, tk, HDIM).requires_grad_()
        v = torch.randn(1, HEADS, tk, HDIM).requires_grad_()
        scale = HDIM ** -0.5
        if naive:
            def f():
                return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v
        else:
            def f():
                return F.scaled_dot_product_attention(q, k, v)
        o = f()
        return f, grad_fn(o, (q, k, v), torch.randn_like(o))
    for tk, name in ((T, "self"), (TCTX, "cross")):
        for naive in (False, True):
            f, g = attn(tk, naive)
            suffix = "_naive" if naive else ""
            cases[f"attn_{name}_fwd{suffix}"] = f
            cases[f"attn_{name}_bwd{suffix}"] = g

    xl = torch.randn(T, C).requires_grad_()
    gl = torch.randn(C).requires_grad_()
    bl = torch.randn(C).requires_grad_()
    dyl = torch.randn(T, C)
    cases["layernorm_fwd"] = lambda: F.layer_norm(xl, (C,), gl, bl, 1e-5)
    cases["layernorm_fwdbwd"] = lambda: torch.autograd.grad(F.layer_norm(xl, (C,), gl, bl, 1e-5), (xl, gl, bl), dyl)

    xf = torch.randn(T, 2 * FF).requires_grad_()

    def geglu():
        h, gate = xf.chunk(2, dim=-1)
        return h * F.gelu(gate)
    yf = geglu()
    cases["geglu_fwd"] = geglu
    cases["geglu_bwd"] = grad_fn(yf, (xf,), torch.randn_like(yf))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--danlu-json", help="bench_cpu_ops --json output to compare with")
    ap.add_argument("--json", help="write torch timings here")
    ap.add_argument("--only", help="run ops whose name contains this")
    ap.add_argument("--config", action="store_true", help="print torch.__config__.show()")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.config:
        print(torch.__config__.show())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), mkldnn {torch.backends.mkldnn.is_available()}, "
          f"mkl {torch.backends.mkl.is_available()}")

    results = {}  # name -> (median ms, variant, best ms)
    slow = ("attn_self",)

    def run(name, fn, variant):
        if a.only and a.only not in name:
            return
        reps = max(1, a.repeats // 3) if name.startswith(slow) else a.repeats
        with torch.no_grad() if name.endswith(("_fwd", "_fwd_naive")) else torch.enable_grad():
            ms, best = timeit(fn, reps)
        print(f"  {name:28s} {variant:14s} {ms:10.3f} ms (best {best:.3f})", flush=True)
        if name not in results or ms < results[name][0]:
            results[name] = (ms, variant, best)

    for fmt, tag in ((torch.contiguous_format, "nchw"), (torch.channels_last, "channels_last")):
        for name, fn in conv_cases(fmt).items():
            run(name, fn, tag)
        for name, fn in groupnorm_cases(fmt).items():
            run(name, fn, tag)
    for name, fn in other_cases().items():
        run(name, fn, "naive" if name.endswith("_naive") else ("sdpa" if name.startswith("attn") else ""))

    danlu = {}
    if a.danlu_json:
        with open(a.danlu_json) as f:
            d = json.load(f)
        danlu = {op["name"]: op for op in d["ops"]}
    print()
    print("medians; ratio = torch ms / danlu ms (> 1: danlu faster); best = same ratio of the best runs")
    print(f"{'op':26s} {'torch ms':>10s} {'(variant)':>15s} {'danlu ms':>10s} {'ratio':>7s} {'best':>6s} {'danlu rate':>16s}")
    for name, (ms, variant, best) in results.items():
        if name.endswith("_naive"):
            continue
        row = f"{name:26s} {ms:10.3f} {variant:>15s}"
        op = danlu.get(name)
        if op:
            rate = f"{op['gflops']:.1f} GFLOP/s" if op["gflops"] > 0 else f"{op['gbps']:.1f} GB/s"
            bratio = best / op["best_ms"] if op.get("best_ms") else float("nan")
            row += f" {op['ms']:10.3f} {ms / op['ms']:7.2f} {bratio:6.2f} {rate:>16s}"
        naive = results.get(name + "_naive")
        if naive:
            row += f"   (naive torch {naive[0]:.3f} ms)"
        print(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": a.threads,
                       "ops": {k: {"ms": v[0], "variant": v[1], "best_ms": v[2]} for k, v in results.items()}}, f, indent=1)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
