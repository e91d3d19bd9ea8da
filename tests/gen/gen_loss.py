"""Golden data for host/ops/cpu/loss.c: MSE loss (mean over elements), optionally weighted per
sample (min-SNR: mean over samples of w[n] * mean over the elements of sample n), and its
gradient, in float64 from float32-rounded inputs."""
import torch
import torch.nn.functional as F

from goldenlib import Golden

g = Golden("loss")


def r(*shape):
    return torch.randn(*shape, dtype=torch.float64).to(torch.float32).to(torch.float64)


for case, N, D, weighted in [("plain_n1", 1, 4 * 8 * 8, False), ("weighted_n2", 2, 4 * 9 * 7, True),
                             ("weighted_n3_big", 3, 5000, True), ("plain_n2", 2, 4 * 5 * 3, False)]:
    pred = r(N, D).requires_grad_(True)
    target = r(N, D).requires_grad_(True)
    if weighted:
        w = torch.rand(N, dtype=torch.float64).to(torch.float32).to(torch.float64) * 5
        loss = (w * F.mse_loss(pred, target, reduction="none").mean(dim=1)).mean()
        g.add(case, "w", w)
    else:
        loss = F.mse_loss(pred, target)
    dpred, dtarget = torch.autograd.grad(loss, (pred, target))
    per_sample = ((pred - target) ** 2).mean(dim=1)
    for k, t in dict(pred=pred, target=target, loss=loss.reshape(1), per_sample=per_sample,
                     dpred=dpred, dtarget=dtarget).items():
        g.add(case, k, t)

g.save()
