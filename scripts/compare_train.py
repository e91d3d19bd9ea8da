#!/usr/bin/env python3
"""compare_train.py - compares two `danlu train` runs of the same configuration on different
backends (e.g. --backend cpu, the reference, and --backend cuda): the loss of every logged step
and every element of every tensor of the saved LoRA, each against its own tolerance (never one
norm over a whole tensor). Standard library only (no numpy), so it runs wherever python3 does.

usage: compare_train.py REF_DIR TEST_DIR --name NAME [--loss-rtol 1e-4] [--loss-atol 1e-7]
                        [--rtol 1e-3] [--atol 1e-5] [--json PATH]
REF_DIR/NAME_log.csv and REF_DIR/NAME.safetensors are the reference run's log and LoRA (save
them as float: --save_precision float), TEST_DIR's the other run's. A loss passes when
|test - ref| <= loss_atol + loss_rtol |ref|, a weight element when |test - ref| <= atol +
rtol |ref|; NaN or infinity never passes, nor a tensor or step present in one run only, nor a
shape or dtype that differs. Prints one line per step and per tensor (max abs and rel error,
elements over tolerance), the worst elements, and a verdict; exit status 0 only when everything
passed (1: a comparison failed, 2: a file could not be read).

The default weight tolerance (atol 1e-5 = 0.1 x the learning rate the GPU check trains with,
rtol 1e-3) allows fp32 rounding differences between backends carried through a few AdamW
steps; an element whose gradient changed sign between the two runs moves by 2 x lr and fails,
and is shown among the worst elements."""
import argparse
import json
import math
import struct
import sys
from array import array


def read_safetensors(path):
    """{name: (dtype, shape, [floats])} of a .safetensors file (F32, F16, BF16)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = data[b:e]
        dt = t["dtype"]
        if dt == "F32":
            vals = array("f")
            vals.frombytes(raw)
        elif dt == "F16":
            vals = list(struct.unpack(f"<{len(raw) // 2}e", raw))
        elif dt == "BF16":
            u16 = array("H")
            u16.frombytes(raw)
            vals = array("f")
            vals.frombytes(array("I", (u << 16 for u in u16)).tobytes())
        else:
            raise ValueError(f"{path}: tensor {name}: dtype {dt} not handled")
        if sys.byteorder != "little" and dt != "F16":
            vals.byteswap()
        out[name] = (dt, tuple(t["shape"]), vals)
    return out


def read_losses(path):
    """[(step, loss)] of a danlu training log (step,epoch,loss,lr,wall_s)."""
    rows = []
    with open(path) as f:
        head = f.readline().strip().split(",")
        i_step, i_loss = head.index("step"), head.index("loss")
        for line in f:
            c = line.strip().split(",")
            if len(c) > max(i_step, i_loss):
                rows.append((int(c[i_step]), float(c[i_loss])))
    return rows


def over(ref, test, atol, rtol):
    """|test - ref| > atol + rtol |ref|, or either not finite."""
    if not (math.isfinite(ref) and math.isfinite(test)):
        return True
    return abs(test - ref) > atol + rtol * abs(ref)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref_dir")
    ap.add_argument("test_dir")
    ap.add_argument("--name", required=True, help="the runs' output_name")
    ap.add_argument("--loss-rtol", type=float, default=1e-4)
    ap.add_argument("--loss-atol", type=float, default=1e-7)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--worst", type=int, default=8, help="how many of the worst elements to show")
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        ref_l = read_losses(f"{a.ref_dir}/{a.name}_log.csv")
        test_l = read_losses(f"{a.test_dir}/{a.name}_log.csv")
        ref_w = read_safetensors(f"{a.ref_dir}/{a.name}.safetensors")
        test_w = read_safetensors(f"{a.test_dir}/{a.name}.safetensors")
    except (OSError, ValueError, KeyError) as e:
        print(f"compare_train: {e}")
        return 2
    fails = []
    # losses, step by step
    losses = []
    test_by_step = dict(test_l)
    for step, r in ref_l:
        t = test_by_step.get(step)
        if t is None:
            fails.append(f"step {step}: in the reference log only")
            continue
        bad = over(r, t, a.loss_atol, a.loss_rtol)
        rel = abs(t - r) / abs(r) if r else abs(t - r)
        losses.append({"step": step, "ref": r, "test": t, "rel": rel, "ok": not bad})
        print(f"loss step {step:3d}: ref {r:.9g}  test {t:.9g}  rel {rel:.2e}  {'FAIL' if bad else 'ok'}")
        if bad:
            fails.append(f"loss of step {step}: {t!r} vs {r!r}")
    for step in sorted(set(test_by_step) - {s for s, _ in ref_l}):
        fails.append(f"step {step}: in the tested log only")
    if not ref_l:
        fails.append("the reference log has no step")
    # LoRA tensors, element by element
    worst, tensors, n_el, n_bad = [], [], 0, 0
    for name in sorted(ref_w):
        rdt, rshape, rv = ref_w[name]
        if name not in test_w:
            fails.append(f"{name}: in the reference LoRA only")
            continue
        tdt, tshape, tv = test_w[name]
        if (rdt, rshape) != (tdt, tshape):
            fails.append(f"{name}: {tdt}{list(tshape)} vs {rdt}{list(rshape)}")
            continue
        mabs = mrel = 0.0
        bad = 0
        for i, (r, t) in enumerate(zip(rv, tv)):
            d = abs(t - r) if math.isfinite(r) and math.isfinite(t) else math.inf
            if d > mabs:
                mabs = d
            rel = d / abs(r) if r else (0.0 if d == 0 else math.inf)
            if d > 0 and rel > mrel:
                mrel = rel
            if over(r, t, a.atol, a.rtol):
                bad += 1
                worst.append((d - (a.atol + a.rtol * abs(r)) if math.isfinite(d) else math.inf, name, i, r, t))
                if len(worst) > 4 * a.worst:
                    worst = sorted(worst, reverse=True)[: a.worst]
        n_el += len(rv)
        n_bad += bad
        tensors.append({"name": name, "n": len(rv), "max_abs": mabs, "max_rel": mrel, "over": bad})
        if bad:
            fails.append(f"{name}: {bad} of {len(rv)} elements over tolerance")
    for name in sorted(set(test_w) - set(ref_w)):
        fails.append(f"{name}: in the tested LoRA only")
    worst = sorted(worst, reverse=True)[: a.worst]
    g_abs = max((t["max_abs"] for t in tensors), default=0.0)
    g_rel = max((t["max_rel"] for t in tensors), default=0.0)
    for t in tensors:
        if t["over"]:
            print(f"tensor {t['name']}: {t['n']} elements, max abs {t['max_abs']:.3e}, max rel {t['max_rel']:.3e}, "
                  f"{t['over']} over tolerance")
    for _, name, i, r, t in worst:
        print(f"  worst: {name}[{i}] ref {r:.9g} test {t:.9g} (|d| {abs(t - r):.3e})")
    ok = not fails
    print(f"LoRA: {len(tensors)} tensors, {n_el} elements, {n_bad} over |d| <= {a.atol:g} + {a.rtol:g}|ref| "
          f"(max abs {g_abs:.3e}, max rel {g_rel:.3e}); losses: {len(losses)} steps, "
          f"max rel {max((x['rel'] for x in losses), default=0.0):.3e} (tolerance {a.loss_rtol:g})")
    for f in fails[:20]:
        print(f"FAIL {f}")
    print(f"compare_train: {'PASS' if ok else 'FAIL'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"what": "compare_train", "ok": ok, "losses": losses, "loss_rtol": a.loss_rtol,
                       "rtol": a.rtol, "atol": a.atol, "tensors": len(tensors), "elements": n_el, "over": n_bad,
                       "max_abs": g_abs, "max_rel": g_rel, "fails": fails[:50]}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
