"""Fine-tuning with L2-SP: pull toward the pretrained weights, not toward zero.

A small network is pretrained on a synthetic *source* task (2000 samples), then fine-tuned
on a *related* target task from 20 samples, three ways: no penalty, L2 (``tp.L2``: toward
0, forgetting what was learned) and L2-SP (``tp.L2SP``: toward the pretrained weights,
Li et al. 2018). The strengths of L2 and L2-SP are chosen by ``tp.sweep`` (3-fold
cross-validation on the 20 target samples). The sweep trains ``penalty="l2"``; L2-SP is
swept through a reparametrization ``w = w0 + d`` with ``w0`` fixed and ``d`` trained from
zero, where L2 on ``d`` *is* L2-SP on ``w`` (same gradients, same Adam steps). The final
models are fine-tuned by hand with ``tp.Regularizer`` and scored on 2000 held-out target
samples, over several seeds (target sets): mean and standard error, and the paired
difference to no penalty on the same target sets.

    python examples/finetune_l2sp.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from torch import nn

import torchpenalty as tp

D, HIDDEN, N_SOURCE, N_TARGET, N_TEST = 8, 32, 2000, 20, 2000
EPOCHS, LR, NOISE = 150, 1e-2, 0.1
STRENGTHS = [1e-3, 1e-2, 1e-1, 1.0, 10.0]


def teachers(g: torch.Generator) -> tuple[nn.Module, nn.Module]:
    """Source and target functions: the target's weights are the source's, perturbed."""
    src = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        for p in src.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.ndim > 1 else 0.3))
        tgt = copy.deepcopy(src)
        for p in tgt.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return src, tgt


def sample(teacher: nn.Module, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, D, generator=g)
    with torch.no_grad():
        return x, teacher(x) + NOISE * torch.randn(n, 1, generator=g)


def student() -> nn.Sequential:
    return nn.Sequential(nn.Linear(D, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                         nn.Linear(HIDDEN, 1))  # fmt: skip


def fit(model: nn.Module, x, y, penalty: tp.Penalty | None, epochs: int = EPOCHS) -> nn.Module:
    """Full-batch Adam, the penalty's gradient added by the Regularizer (as the sweep does)."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    if penalty is not None:
        tp.Regularizer(model, penalty).attach(opt, mode="grad")
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model


class Displaced(nn.Module):
    """``pretrained`` with every parameter ``w = w0 + d``: ``w0`` a fixed buffer, ``d``
    trained from zero. The default rule selects the weights' ``d`` (ndim 2), so ``L2(s)``
    on this model is ``L2SP(s)`` on the pretrained one."""

    def __init__(self, pretrained: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_shell", copy.deepcopy(pretrained))  # not a submodule
        self._keys = {n: n.replace(".", "_") for n, _ in pretrained.named_parameters()}
        for n, p in pretrained.named_parameters():
            self.register_buffer(f"w0_{self._keys[n]}", p.detach().clone())
            self.register_parameter(f"d_{self._keys[n]}", nn.Parameter(torch.zeros_like(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = {n: getattr(self, f"w0_{k}") + getattr(self, f"d_{k}") for n, k in self._keys.items()}
        return torch.func.functional_call(self._shell, w, (x,))


def choose(make_model, x, y, seed: int) -> float:
    result = tp.sweep(make_model, (x, y), strengths=STRENGTHS, penalty="l2", folds=3,
                      epochs=EPOCHS, batch_size=None, optimizer="adam", lr=LR, mode="grad",
                      standardize=False, refit=False, progress=False, seed=seed)  # fmt: skip
    return result.best_strength


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    src, tgt = teachers(g)
    torch.manual_seed(0)
    pretrained = fit(student(), *sample(src, N_SOURCE, g), None, epochs=400)

    losses: dict[str, list[float]] = {"none": [], "L2": [], "L2-SP": []}
    chosen: dict[str, list[float]] = {"L2": [], "L2-SP": []}
    for seed in range(args.seeds):
        gs = torch.Generator().manual_seed(100 + seed)
        x, y = sample(tgt, N_TARGET, gs)
        x_test, y_test = sample(tgt, N_TEST, gs)
        s_l2 = choose(lambda: copy.deepcopy(pretrained), x, y, seed)
        s_sp = choose(lambda: Displaced(pretrained), x, y, seed)
        chosen["L2"].append(s_l2)
        chosen["L2-SP"].append(s_sp)
        penalties = {"none": None, "L2": tp.L2(s_l2), "L2-SP": tp.L2SP(s_sp, reference=pretrained)}
        for name, pen in penalties.items():
            model = fit(copy.deepcopy(pretrained), x, y, pen)
            with torch.no_grad():
                losses[name].append(float(nn.functional.mse_loss(model(x_test), y_test)))
    with torch.no_grad():
        x_test, y_test = sample(tgt, N_TEST, torch.Generator().manual_seed(99))
        no_finetune = float(nn.functional.mse_loss(pretrained(x_test), y_test))

    print(f"held-out target MSE over {args.seeds} seeds ({N_TARGET} target samples each; "
          f"pretrained without fine-tuning: {no_finetune:.4f})")  # fmt: skip
    print(
        f"{'penalty':<8} {'mean MSE':>9} {'SE':>8} {'minus none':>11} {'SE':>8}  strengths chosen"
    )
    for name, vals in losses.items():
        mean, se = mean_se(vals)
        diff, diff_se = mean_se([v - b for v, b in zip(vals, losses["none"], strict=True)])
        picks = " ".join(f"{s:g}" for s in chosen.get(name, [])) or "-"
        print(f"{name:<8} {mean:>9.4f} {se:>8.4f} {diff:>11.4f} {diff_se:>8.4f}  {picks}")


def mean_se(vals: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / sqrt(n))."""
    mean = sum(vals) / len(vals)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) / len(vals))


if __name__ == "__main__":
    main()
