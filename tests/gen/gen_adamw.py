"""Golden data for host/ops/cpu/adamw.c: several steps of torch.optim.AdamW in float64 (with
weight decay, custom lr, betas and eps) from float32-rounded parameters and gradients."""
import torch

from goldenlib import Golden

g = Golden("adamw")

STEPS = 6
for case, n, lr, betas, eps, wd in [("default", 1037, 1e-3, (0.9, 0.999), 1e-8, 1e-2),
                                    ("custom", 517, 5e-2, (0.8, 0.95), 1e-6, 0.1),
                                    ("no_decay", 33, 1e-4, (0.9, 0.99), 1e-8, 0.0)]:
    p0 = torch.randn(n, dtype=torch.float64).to(torch.float32).to(torch.float64)
    grads = (torch.randn(STEPS, n, dtype=torch.float64) * 0.1).to(torch.float32).to(torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    g.add(case, "p0", p0)
    g.add(case, "grads", grads)
    g.add(case, "hparams", torch.tensor([lr, betas[0], betas[1], eps, wd], dtype=torch.float64))
    for s in range(STEPS):
        p.grad = grads[s].clone()
        opt.step()
        if s == 0:
            g.add(case, "p_step1", p.detach())
    st = opt.state[p]
    assert int(st["step"]) == STEPS
    g.add(case, "p", p.detach())
    g.add(case, "m", st["exp_avg"])
    g.add(case, "v", st["exp_avg_sq"])

g.save()
