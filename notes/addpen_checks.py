"""Checks of tp.Huber against references independent of its code (helper "addpen").

Run: PYTHONPATH=src python notes/addpen_checks.py
1. value == strength * torch.nn.functional.huber_loss(w, 0, delta, reduction="sum");
2. closed-form gradient == autograd through huber_loss;
3. prox == the minimizer of t*huber(x) + (x - w)**2 / 2 found by a dense grid search
   (no use of the closed form), for real w over both regions and t in (0, 5].
"""

import numpy as np
import torch

import torchpenalty as tp

torch.manual_seed(0)
worst = [0.0, 0.0, 0.0]
for delta in (0.1, 0.5, 1.0, 3.0):
    for s in (0.0, 0.37, 2.0):
        w = 3 * torch.randn(7, 11, dtype=torch.float64)
        pen = tp.Huber(s, delta=delta)
        ref = s * torch.nn.functional.huber_loss(
            w, torch.zeros_like(w), delta=delta, reduction="sum"
        )
        worst[0] = max(worst[0], abs(pen([w]).item() - ref.item()) / max(1.0, abs(ref.item())))
        x = w.clone().requires_grad_()
        (
            s * torch.nn.functional.huber_loss(x, torch.zeros_like(x), delta=delta, reduction="sum")
        ).backward()
        g = [torch.zeros_like(w)]
        pen.grad_(g, [w])
        worst[1] = max(worst[1], (g[0] - x.grad).abs().max().item())

rng = np.random.default_rng(0)


def huber(x, d):
    a = np.abs(x)
    return np.where(a <= d, a**2 / 2, d * (a - d / 2))


for _ in range(300):
    d = rng.uniform(0.05, 3.0)
    t = rng.uniform(0.01, 5.0)
    w0 = rng.normal(scale=4.0)
    grid = np.linspace(w0 - 30, w0 + 30, 600_001)  # step 1e-4
    obj = t * huber(grid, d) + (grid - w0) ** 2 / 2
    x_grid = grid[np.argmin(obj)]
    p = [torch.tensor([w0], dtype=torch.float64)]
    tp.Huber(1.0, delta=d).prox_(p, t)  # threshold lr * strength = t
    worst[2] = max(worst[2], abs(p[0].item() - x_grid))

print(f"value vs huber_loss: max rel err {worst[0]:.3g}")
print(f"grad vs autograd(huber_loss): max abs err {worst[1]:.3g}")
print(f"prox vs grid argmin (grid step 1e-4): max abs err {worst[2]:.3g}")
assert worst[0] < 1e-12 and worst[1] < 1e-12 and worst[2] < 1e-4

# 4. stackable: a vectorized sweep (models stacked, one strength per model) equals training
#    them one at a time, in grad, decoupled and proximal modes.
from torch import nn  # noqa: E402

g = torch.Generator().manual_seed(0)
X = torch.randn(80, 5, generator=g, dtype=torch.float64)
beta = torch.tensor([3.0, -2.0, 0.0, 0.5, 0.0], dtype=torch.float64)
y = X @ beta + 0.1 * torch.randn(80, generator=g, dtype=torch.float64)
kw = dict(strengths=[1e-3, 0.1, 1.0], folds=3, epochs=4, batch_size=16, progress=False, refit=False)
for mode in ("grad", "decoupled", "proximal"):
    a = tp.sweep(lambda: nn.Linear(5, 1), (X, y), penalty="huber", mode=mode, **kw)
    b = tp.sweep(lambda: nn.Linear(5, 1), (X, y), penalty="huber", mode=mode, vectorize=False, **kw)
    d = max(
        abs(r["val_loss_mean"] - q["val_loss_mean"]) / abs(q["val_loss_mean"])
        for r, q in zip(a.table, b.table, strict=True)
    )
    print(f"sweep mode={mode}: stacked vs one at a time, max rel diff of val loss {d:.3g}")
    assert d < 1e-9
