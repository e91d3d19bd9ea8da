"""Golden data for host/train/lr_schedule.c: the learning rate torch's LambdaLR gives at every
optimizer step for each scheduler of diffusers.optimization.get_scheduler (as sd-scripts uses
them), stored in float64 (the lr is a Python float). Case names: <kind>_w<warmup>_t<total>."""
import os

import torch
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file

from goldenlib import GOLDEN_DIR

BASE_LR = 1e-4
tensors = {}
cases = []
for kind in ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]:
    for warmup, total, cycles, power in [(0, 50, 1, 1.0), (10, 60, 3, 2.0), (7, 33, 2, 0.5)]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=BASE_LR)
        sch = get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=total,
                            num_cycles=cycles, power=power)
        lrs = []
        for _ in range(total + 5):   # a few steps past the end too
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sch.step()
        case = f"{kind}_w{warmup}_t{total}"
        tensors[f"{case}.lr"] = torch.tensor(lrs, dtype=torch.float64)
        tensors[f"{case}.params"] = torch.tensor([warmup, total, cycles], dtype=torch.int64)
        tensors[f"{case}.power"] = torch.tensor([power], dtype=torch.float64)
path = os.path.join(GOLDEN_DIR, "lr.safetensors")
save_file(tensors, path, metadata={"generator": "tests/gen/gen_lr.py", "base_lr": repr(BASE_LR)})
print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")
