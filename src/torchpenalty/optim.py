"""Optimizer integration: ``param_groups()``; the step hooks behind ``Regularizer.attach``
live in :mod:`torchpenalty.hooks` (``AttachHandle`` is re-exported here) and the update
rules in :mod:`torchpenalty.updates`.

``param_groups(model, wd)`` splits the trainable parameters by the selection rule into a
decayed and a non-decayed group, for any torch optimizer (fused and foreach ones too):

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
>>> groups = param_groups(net, 1e-2)
>>> [(g["names"], g["weight_decay"]) for g in groups]
[(['0.weight', '2.weight'], 0.01), (['0.bias', '1.weight', '1.bias', '2.bias'], 0.0)]
>>> opt = torch.optim.AdamW(groups, lr=1e-3)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._validation import check_strength
from .hooks import AttachHandle, one_graph_step
from .select import Matcher, select, trainable
from .updates import ROUNDINGS, modes

__all__ = ["MODES", "ROUNDINGS", "AttachHandle", "one_graph_step", "param_groups"]  # noqa: F822 (MODES: __getattr__)


def __getattr__(name: str) -> Any:
    if name == "MODES":  # the modes of ``Regularizer.attach``, read from the registry
        return tuple(modes())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    include: Matcher | None = None,
    exclude: Matcher | None = None,
    **group_opts: Any,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``{"params", "names", "weight_decay": weight_decay}`` for
    the parameters the rule selects and ``weight_decay=0.0`` for every other trainable
    parameter. Groups are disjoint, frozen parameters are skipped, tied parameters appear
    once, empty groups are dropped, and ``group_opts`` (``lr=`` ...) go into both groups.

    With ``torch.optim.SGD`` this equals ``L2(weight_decay)``; with ``AdamW`` it is
    decoupled decay. Use it with fused optimizers for zero-overhead weight decay.

    >>> import torchpenalty as tp
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    >>> [(g["names"], g["weight_decay"]) for g in tp.param_groups(model, weight_decay=0.01)]
    [(['0.weight', '2.weight'], 0.01), (['0.bias', '1.weight', '1.bias', '2.bias'], 0.0)]
    """
    wd = check_strength("weight_decay", weight_decay)
    if "params" in group_opts or "names" in group_opts:
        raise TypeError(f"group_opts must not set 'params' or 'names', got {sorted(group_opts)}")
    chosen = select(model, include=include, exclude=exclude)
    ids = {id(p) for _, p in chosen}
    rest = [(n, p) for n, p in trainable(model) if id(p) not in ids]
    groups = []
    for pairs, decay in ((chosen, wd), (rest, 0.0)):
        if pairs:
            groups.append(
                {
                    "params": [p for _, p in pairs],
                    "names": [n for n, _ in pairs],
                    **group_opts,
                    "weight_decay": decay,
                }
            )
    return groups
