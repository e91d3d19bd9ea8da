#!/usr/bin/env python3
"""gpu_report.py - the figures of one scripts/gpu_check.sh run, side by side and beside the GPU
targets of ../shared/TARGETS.md: the SD1.5 LoRA training step (danlu vs diffusers + PEFT, it/s and
peak memory), the 512² sampling step with CFG (danlu vs diffusers, ms per step), and the tiny
cpu-vs-cuda training comparison. Standard library only. A figure whose step did not run is n/a;
the report itself fails only when it cannot write its outputs.

usage: gpu_report.py JSON_DIR [--sample-log LOG] [--device TEXT] [--out results.json]
                     [--table figures.txt]
JSON_DIR holds what gpu_check.sh's steps wrote: train_danlu.json (bench_train_step),
train_torch_{bf16,fp32}.json (torch_train_step.py), unet_cfg_danlu.json (bench_models),
sample_torch_{fp16,fp32}.json (torch_sample.py), compare_tiny.json (compare_train.py) and
smi.txt ("NAME MiB": nvidia-smi's peak used memory during a step, less the idle level).
--sample-log is danlu sample --verbose's log (its "UNet steps" phase)."""
import argparse
import json
import os
import re
import sys

GB = 1e9 / 2**30  # GiB per GB
TARGET_SPEEDUP = 2.0  # danlu it/s / diffusers+PEFT bf16 it/s
TARGET_VRAM_GB = 3.0  # peak VRAM of the 512² step
TARGET_STEP_MS = 9.6  # one 512² UNet step with CFG (stable-fast on an H100)


def load(d, name):
    try:
        with open(os.path.join(d, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(x, spec, unit=""):
    """x formatted by spec (+ unit); n/a, padded to the spec's width, when x is None."""
    if x is None:
        return "n/a".rjust(int(re.match(r"\d*", spec).group() or 0))
    return f"{x:{spec}}{unit}"


def verdict(ok):
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json_dir")
    ap.add_argument("--sample-log")
    ap.add_argument("--device", default="")
    ap.add_argument("--out")
    ap.add_argument("--table")
    a = ap.parse_args()
    d = a.json_dir
    smi = {}
    try:
        with open(os.path.join(d, "smi.txt")) as f:
            for line in f:
                k, v = line.split()
                smi[k] = int(v) / 1024.0
    except (OSError, ValueError):
        pass
    td, tb, tf = load(d, "train_danlu.json"), load(d, "train_torch_bf16.json"), load(d, "train_torch_fp32.json")
    cfg, s16, s32 = load(d, "unet_cfg_danlu.json"), load(d, "sample_torch_fp16.json"), load(d, "sample_torch_fp32.json")
    cmp_ = load(d, "compare_tiny.json")
    sample_ms = sample_total = None
    if a.sample_log:
        try:
            text = open(a.sample_log).read()
            m = re.search(r"UNet steps ([0-9.]+) s \((\d+) x", text)
            if m:
                sample_ms = 1e3 * float(m.group(1)) / int(m.group(2))
            m = re.search(r"phase times:.*; total ([0-9.]+) s", text)
            if m:
                sample_total = float(m.group(1))
        except OSError:
            pass

    def g(j, k):
        return None if j is None else j.get(k)

    rows = [("danlu --backend cuda (" + ("bf16" if td and td.get("precision") == "bf16" else "fp32") + ")",
             g(td, "it_per_s"), g(td, "backend_mem_gib"), smi.get("train_danlu")),
            ("diffusers+PEFT bf16 (SDPA)", g(tb, "it_per_s"), g(tb, "peak_vram_gib"), smi.get("train_torch_bf16")),
            ("diffusers+PEFT fp32 (SDPA)", g(tf, "it_per_s"), g(tf, "peak_vram_gib"), smi.get("train_torch_fp32"))]
    speedup = (td["it_per_s"] / tb["it_per_s"]) if td and tb and tb.get("it_per_s") else None
    danlu_gb = td["backend_mem_gib"] / GB if td and td.get("backend_mem_gib") is not None else None
    cfg_ms = 1e3 * cfg["median_s"] if cfg else None
    out = []
    out.append(f"\n== figures ({a.device or 'device unknown'}; one run, one card)")
    out.append(f"{'LoRA r16 step, SD1.5 512², batch 1, 192 modules':50s} {'it/s':>7s} {'own peak':>10s} {'nvidia-smi':>11s}")
    for name, its, mem, sm in rows:
        out.append(f"  {name:48s} {fmt(its, '7.2f')} {fmt(mem, '6.2f', ' GiB'):>10s} {fmt(sm, '7.2f', ' GiB'):>11s}")
    out.append(f"  danlu / diffusers bf16: {fmt(speedup, '.2f', 'x')} it/s (target >= {TARGET_SPEEDUP}x: "
               f"{verdict(None if speedup is None else speedup >= TARGET_SPEEDUP)}); danlu {fmt(danlu_gb, '.2f', ' GB')} "
               f"(target <= {TARGET_VRAM_GB} GB: {verdict(None if danlu_gb is None else danlu_gb <= TARGET_VRAM_GB)})")
    out.append("  (own peak: danlu's backend memory = its arenas + buffers; torch.cuda.max_memory_allocated;"
               " nvidia-smi: whole process less idle)")
    out.append(f"{'sampling, SD1.5 512², CFG 7 (UNet batch 2)':50s} {'ms/step':>7s}")
    out.append(f"  {'danlu UNet step (bench_models, median of 20)':48s} {fmt(cfg_ms, '7.1f')}")
    out.append(f"  {'danlu sample, 20 Euler steps (UNet phase / 20)':48s} {fmt(sample_ms, '7.1f')}"
               f"   whole run {fmt(sample_total, '.2f', ' s')}")
    for name, j in (("diffusers fp16 (median step)", s16), ("diffusers fp32 (median step)", s32)):
        ms = 1e3 * j["s_per_step"] if j and j.get("s_per_step") is not None else None
        out.append(f"  {name:48s} {fmt(ms, '7.1f')}   whole run {fmt(g(j, 'total_s'), '.2f', ' s')}")
    out.append(f"  target <= {TARGET_STEP_MS} ms per UNet step: "
               f"{verdict(None if cfg_ms is None else cfg_ms <= TARGET_STEP_MS)}")
    if cmp_:
        lrel = max((x["rel"] for x in cmp_.get("losses", [])), default=None)
        out.append(f"tiny training, danlu cuda vs cpu, {len(cmp_.get('losses', []))} steps: "
                   f"{'PASS' if cmp_.get('ok') else 'FAIL'}; losses max rel {fmt(lrel, '.2e')} "
                   f"(<= {cmp_.get('loss_rtol')}), LoRA max abs {fmt(cmp_.get('max_abs'), '.2e')}, "
                   f"{cmp_.get('over')} of {cmp_.get('elements')} elements over {cmp_.get('atol')} + {cmp_.get('rtol')}|ref|")
    else:
        out.append("tiny training, danlu cuda vs cpu: n/a")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.table:
        with open(a.table, "w") as f:
            f.write(text)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": a.device, "train": {"danlu": td, "torch_bf16": tb, "torch_fp32": tf,
                                                     "smi_peak_gib": smi, "speedup_vs_bf16": speedup,
                                                     "danlu_gb": danlu_gb},
                       "sample": {"danlu_unet_cfg": cfg, "danlu_sample_ms_per_step": sample_ms,
                                  "danlu_sample_total_s": sample_total, "torch_fp16": s16, "torch_fp32": s32},
                       "compare_tiny": cmp_,
                       "targets": {"speedup": TARGET_SPEEDUP, "vram_gb": TARGET_VRAM_GB, "step_ms": TARGET_STEP_MS}},
                      f, indent=1)
    print(f"report: {'written ' + a.out if a.out else 'done'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
