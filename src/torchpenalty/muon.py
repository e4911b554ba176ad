"""Muon and the decay: which parameters Muon gets, and how its decay is scaled.

``torch.optim.Muon`` accepts only 2-D parameters and is meant for hidden weight
matrices; embeddings, biases, normalization scales and convolution kernels go to AdamW.
:func:`muon_param_groups` splits a model that way with the default selection rule.

How Muon scales: it orthogonalizes the (Nesterov) momentum ``O = NS(B)`` and steps
``w <- w * (1 - lr * wd) - lr_adj * O`` with ``lr_adj = lr * sqrt(max(1, A / B))``
(``adjust_lr_fn="original"``, Keller Jordan's) or ``0.2 * lr * sqrt(max(A, B))``
(``"match_rms_adamw"``, Moonshot's) for an ``A x B`` matrix: the adjustment applies to the
update only, the decay uses the unadjusted ``lr`` (as in both reference implementations).
``reg.attach(muon, mode="decoupled")`` with ``L2(s)`` does the same, with the group's
``lr``, so it equals ``Muon(weight_decay=s)`` to the bit (tested). Scaling the decay with
``lr`` rather than ``lr_adj`` is what keeps the steady state independent of the shape:
the equilibrium update-to-weight ratio is ``sqrt(lr * s * (2 - lr * s))`` for every matrix
(see :mod:`torchpenalty.stats`), and the timescale is ``1 / (lr * s)`` steps (see
:mod:`torchpenalty.timescale`), the same reading as AdamW's. With ``"match_rms_adamw"``
the update's RMS is about AdamW's, so AdamW's ``lr`` and ``s`` carry over.

>>> import torch, torchpenalty as tp
>>> from torch import nn
>>> model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
>>> muon_groups, adamw_groups = tp.muon_param_groups(model, 0.1)
>>> [g["names"] for g in muon_groups], [(g["names"], g["weight_decay"]) for g in adamw_groups]
([['1.weight', '3.weight']], [(['0.weight'], 0.1), (['1.bias', '2.weight', '2.bias', '3.bias'], 0.0)])
>>> muon = torch.optim.Muon(muon_groups, lr=0.02)
>>> adamw = torch.optim.AdamW(adamw_groups, lr=3e-4)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._validation import check_strength
from .select import Matcher, select, trainable

__all__ = ["muon_param_groups"]

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def _group(pairs: list, decay: float, opts: dict[str, Any]) -> list[dict[str, Any]]:
    if not pairs:
        return []
    return [
        {
            "params": [p for _, p in pairs],
            "names": [n for n, _ in pairs],
            **opts,
            "weight_decay": decay,
        }
    ]


def muon_param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    include: Matcher | None = None,
    exclude: Matcher | None = None,
    muon_exclude: Matcher | None = None,
    **group_opts: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(muon_groups, other_groups)``: Muon gets the parameters the selection rule decays
    that are 2-D and not embedding tables (``nn.Embedding``/``nn.EmbeddingBag``) nor
    matched by ``muon_exclude`` (e.g. an output head, ``"lm_head.*"``); ``other_groups``
    is :func:`torchpenalty.param_groups`-shaped for AdamW: the other decayed parameters
    (embeddings, convolution kernels, the excluded matrices) with ``weight_decay`` and
    everything else trainable with ``0.0``. Groups are disjoint, empty ones dropped,
    ``group_opts`` go into every group.

    Use ``weight_decay`` in the groups (Muon's and AdamW's own decay), or build the
    groups with ``weight_decay=0`` and ``reg.attach(opt, mode=...)`` each optimizer, not both.

    >>> import torchpenalty as tp
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    >>> muon, other = tp.muon_param_groups(model, 0.1)
    >>> [(g["names"], g["weight_decay"]) for g in muon]
    [(['1.weight'], 0.1)]
    >>> [(g["names"], g["weight_decay"]) for g in other]
    [(['0.weight'], 0.1), (['1.bias', '2.weight', '2.bias'], 0.0)]
    """
    wd = check_strength("weight_decay", weight_decay)
    if "params" in group_opts or "names" in group_opts:
        raise TypeError(f"group_opts must not set 'params' or 'names', got {sorted(group_opts)}")
    chosen = select(model, include=include, exclude=exclude)
    embedded = {
        id(p)
        for m in model.modules()
        if isinstance(m, _EMBEDDINGS)
        for p in m.parameters(recurse=False)
    }
    kept = set()
    if muon_exclude is not None:
        kept = {id(p) for _, p in select(model, include=muon_exclude)}
    muon = [
        (n, p) for n, p in chosen if p.ndim == 2 and id(p) not in embedded and id(p) not in kept
    ]
    in_muon = {id(p) for _, p in muon}
    decayed = [(n, p) for n, p in chosen if id(p) not in in_muon]
    ids = {id(p) for _, p in chosen}
    rest = [(n, p) for n, p in trainable(model) if id(p) not in ids]
    return _group(muon, wd, group_opts), _group(decayed, wd, group_opts) + _group(
        rest, 0.0, group_opts
    )
