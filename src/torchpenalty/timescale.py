"""Weight decay as a timescale (Wang & Aitchison 2024, arXiv 2405.13698).

With decoupled decay, one step multiplies a weight by ``1 - d`` before the optimizer's
update ``-u``, where ``d = lr * s`` is the per-step decay (``L2(s)`` in ``mode="decoupled"``,
or ``torch.optim.AdamW(lr=lr, weight_decay=s)``). Unrolled,
``w_t = (1 - d)**t w_0 - sum_k (1 - d)**(t - 1 - k) u_k``: the weights are an exponential
moving average of the recent updates (scaled by ``1/d``) over

    tau_iter = 1 / d = 1 / (lr * s)        optimizer steps, or
    tau_epoch = tau_iter / steps_per_epoch epochs.

Wang & Aitchison find that the best ``tau_epoch`` stays roughly constant when the model
and the data set grow, and that it should lie between about one epoch (the average must
cover the whole data set) and the total number of epochs (it must forget the start).
So a strength tuned on a small run transfers by keeping ``tau_epoch`` fixed: with
``N`` examples, batch size ``B`` and ``steps_per_epoch = N / B``,

    s_new = s * (lr / lr_new) * (N / B) / (N_new / B_new)          (see transfer_strength)

The per-step decay ``d`` of each mode: ``lr * s`` (``"decoupled"``, also Muon's own
``weight_decay``, which uses the unadjusted lr), ``s * lr / initial_lr``
(``"independent"``), ``s * lr**2 / lr_max`` (``"corrected"``). Only penalties that shrink
weights multiplicatively have a timescale: ``L2(s)`` and ``L2SP(s)`` (rate ``s``, towards
the reference) and ``ElasticNet(s, l1_ratio=r)`` (rate ``s * (1 - r)``).

>>> import torch, torchpenalty as tp
>>> model = torch.nn.Linear(10, 10)
>>> reg = tp.Regularizer(model, tp.L2(0.1))
>>> opt = torch.optim.SGD(model.parameters(), lr=1e-3)
>>> row = tp.timescale(reg, opt, steps_per_epoch=500)[0]
>>> row.names, round(row.tau_iter), round(row.tau_epoch, 6)   # 1/(1e-3*0.1), /500
(['weight'], 10000, 20.0)
"""

from __future__ import annotations

import math
import sys as _sys
import types as _types
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from ._validation import check_choice, check_positive, check_strength, type_error
from .penalties import Penalty
from .updates import RULES, Decoupled

__all__ = [
    "TIMESCALE_MODES",  # noqa: F822 (module __getattr__)
    "Timescale",
    "decay_per_step",
    "shrinking_modes",
    "timescale",
    "transfer_strength",
]


def shrinking_modes() -> tuple[str, ...]:
    """The modes whose decay shrinks the weights once per step: the registered rules of the
    decoupled family (``TIMESCALE_MODES`` reads this).

    >>> shrinking_modes()
    ('decoupled', 'independent', 'corrected')
    """
    return tuple(n for n, cls in RULES.items() if issubclass(cls, Decoupled))


def __getattr__(name: str) -> Any:
    if name == "TIMESCALE_MODES":
        return shrinking_modes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Timescale(NamedTuple):
    """One row of :func:`timescale`: an optimizer group's parameters under one penalty."""

    group: int  # index in optimizer.param_groups
    names: list[str]
    penalty: str
    lr: float
    rate: float  # the L2 rate: s for L2 / L2SP, s * (1 - l1_ratio) for ElasticNet
    decay: float  # per-step decay d (weights are multiplied by 1 - d)
    tau_iter: float  # 1 / d optimizer steps (inf when d == 0)
    tau_epoch: float  # tau_iter / steps_per_epoch


def l2_rate(penalty: Penalty, step: int = 0) -> float | None:
    """The rate ``r`` of the multiplicative shrink ``w <- w - lr * r * w`` that ``penalty``
    applies at ``step``, or ``None`` when the penalty is not of that kind (L1, group lasso,
    orthogonality: no timescale). A sum of penalties has the sum of its parts' rates."""
    return penalty.shrink_rate(step)


def _lr(group: dict[str, Any]) -> float:
    lr = group.get("lr", 0.0)
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def decay_per_step(
    rate: float, group: dict[str, Any], mode: str = "decoupled", *, lr_max: float | None = None
) -> float:
    """The per-step decay ``d`` of an optimizer group under ``mode``:

    * ``"decoupled"``: ``d = lr * rate``;
    * ``"independent"``: ``d = rate * lr / initial_lr`` (``initial_lr`` as set by LR
      schedulers, else the current lr);
    * ``"corrected"``: ``d = rate * lr**2 / lr_max`` with ``lr_max`` given, else the group's
      ``max_lr`` (OneCycleLR), else ``max(initial_lr, lr)``.

    >>> decay_per_step(0.1, {"lr": 0.5, "initial_lr": 1.0}, "corrected")   # 0.1 * 0.25 / 1
    0.025
    """
    check_choice("mode", mode, shrinking_modes())
    lr = _lr(group)
    lr0 = float(group.get("initial_lr", lr))
    if mode == "decoupled":
        return lr * rate
    if mode == "independent":
        return rate * lr / lr0 if lr0 else 0.0
    peak = lr_max if lr_max is not None else float(group.get("max_lr", max(lr0, lr)))
    return rate * lr * lr / peak if peak else 0.0


def _regularized(reg: Any) -> Iterator[tuple[Penalty, list[str], list[torch.Tensor]]]:
    """(penalty, names, params) for each penalty of ``reg`` (its public bindings view)."""
    for b in reg.bindings:
        yield b.penalty, list(b.names), list(b.params)


def timescale(
    reg: Any,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: float,
    mode: str = "decoupled",
    lr_max: float | None = None,
) -> list[Timescale]:
    """The EMA timescale of the decay, per optimizer group and penalty, at the groups'
    current lr and the regularizer's current step:
    ``tau_iter = 1 / d`` steps and ``tau_epoch = tau_iter / steps_per_epoch`` epochs, with
    ``d`` the per-step decay of ``mode`` (see :func:`decay_per_step`; ``lr * s`` for
    ``"decoupled"``). Penalties without a multiplicative shrink (L1, ...) are skipped; it
    is an error if none is left.

    Args:
        reg: a :class:`~torchpenalty.Regularizer`.
        optimizer: the optimizer holding (some of) its parameters.
        steps_per_epoch: optimizer steps per epoch, ``N / B`` (a float is fine).
        mode: ``"decoupled"``, ``"independent"`` or ``"corrected"``.
        lr_max: the peak lr for ``"corrected"`` (default: see :func:`decay_per_step`).

    >>> import torch, torchpenalty as tp
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    >>> reg = tp.Regularizer(net, tp.L2(0.05))
    >>> opt = torch.optim.AdamW(
    ...     [{"params": net[0].parameters(), "lr": 2e-3}, {"params": net[1].parameters()}],
    ...     lr=1e-3, weight_decay=0.0)
    >>> [(r.group, r.names, round(r.tau_iter)) for r in tp.timescale(reg, opt, steps_per_epoch=100)]
    [(0, ['0.weight'], 10000), (1, ['1.weight'], 20000)]
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise type_error("optimizer", "a torch.optim.Optimizer", optimizer)
    m = check_positive("steps_per_epoch", steps_per_epoch)
    check_choice("mode", mode, shrinking_modes())
    if lr_max is not None:
        lr_max = check_positive("lr_max", lr_max)
    step = reg.step_count
    rows = []
    for gi, group in enumerate(optimizer.param_groups):
        ids = {id(p) for p in group["params"]}
        for penalty, names, params in _regularized(reg):
            rate = l2_rate(penalty, step)
            chosen = [n for n, p in zip(names, params, strict=True) if id(p) in ids]
            if rate is None or not chosen:
                continue
            d = decay_per_step(rate, group, mode, lr_max=lr_max)
            tau = 1.0 / d if d > 0 else math.inf
            rows.append(Timescale(gi, chosen, repr(penalty), _lr(group), rate, d, tau, tau / m))
    if not rows:
        raise ValueError(
            "reg must apply an L2, L2SP or ElasticNet penalty to parameters of the optimizer "
            f"to have a timescale, got {reg!r}"
        )
    return rows


def transfer_strength(
    strength: float,
    *,
    lr: float,
    dataset_size: float,
    batch_size: float,
    new_lr: float | None = None,
    new_dataset_size: float | None = None,
    new_batch_size: float | None = None,
) -> float:
    """The strength that keeps ``tau_epoch = batch_size / (lr * s * dataset_size)`` fixed
    when the lr, the data set size or the batch size change (unchanged ones may be left
    out): ``s_new = s * (lr / new_lr) * (dataset_size / batch_size) / (new_dataset_size /
    new_batch_size)``. For decoupled decay (AdamW, ``mode="decoupled"``, Muon); with
    ``mode="independent"`` drop the lr factor (its decay does not scale with the lr).

    Recipe (Wang & Aitchison 2024): tune ``s`` on a small run, keep its ``tau_epoch``.
    Worked example: AdamW with ``lr=1e-3, s=0.1`` on 50,000 images in batches of 128 has
    ``tau_iter = 1 / (1e-3 * 0.1) = 10,000`` steps and ``390.625`` steps per epoch, so
    ``tau_epoch = 25.6`` epochs. On 1,281,167 images, in batches of 1,024 at ``lr=2e-3``,
    there are ``1251.14`` steps per epoch, and ``tau_epoch = 25.6`` needs
    ``tau_iter = 32,029`` steps, ``s = 1 / (2e-3 * 32,029) = 0.01561``:

    >>> s = transfer_strength(0.1, lr=1e-3, dataset_size=50_000, batch_size=128,
    ...                       new_lr=2e-3, new_dataset_size=1_281_167, new_batch_size=1024)
    >>> round(s, 5)
    0.01561
    >>> round(1024 / (2e-3 * s * 1_281_167), 6)      # tau_epoch is kept
    25.6
    >>> transfer_strength(0.1, lr=1e-3, dataset_size=1000, batch_size=10, new_dataset_size=4000)
    0.025
    """
    s = check_strength("strength", strength)
    lr = check_positive("lr", lr)
    n = check_positive("dataset_size", dataset_size)
    b = check_positive("batch_size", batch_size)
    lr2 = lr if new_lr is None else check_positive("new_lr", new_lr)
    n2 = n if new_dataset_size is None else check_positive("new_dataset_size", new_dataset_size)
    b2 = b if new_batch_size is None else check_positive("new_batch_size", new_batch_size)
    return s * (lr / lr2) * (n / b) / (n2 / b2)


class _CallableModule(_types.ModuleType):
    """``torchpenalty.timescale`` is both this module and the function ``tp.timescale``;
    with lazy imports Python may bind either to the name, so calling the module works."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[Timescale]:
        return timescale(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
