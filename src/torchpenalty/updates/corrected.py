"""Lr-corrected decay for weights followed by a normalization layer (``mode="corrected"``).

Lr-corrected decay (Defazio 2025, arXiv 2506.02285, "AdamC"): for a weight followed by a
normalization layer the gradient is orthogonal to the weight, and decoupled decay with
per-step factor ``lr * s`` settles at ``||g|| / ||w|| = sqrt(2 s / lr)`` (SGD), which grows
as the schedule anneals the lr: the gradient norm climbs at the end of training. Decaying
with ``s * lr**2 / lr_max`` instead keeps the steady state at ``sqrt(2 s / lr_max)``.
Other weights keep the plain decoupled factor ``lr * s``. Disputed: Chou 2025
(arXiv 2512.08217) finds the orthogonality argument immaterial in practice, derives
``lr**2`` scaling for every weight from updates independent of the weights at steady
state, and so disputes restricting it to normalized layers.

>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8),
...                     nn.Dropout(0.1), nn.BatchNorm1d(8), nn.Linear(8, 1))
>>> normalized_weights(net)
['0.weight', '3.weight']
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_positive
from ..select import is_norm_module, select
from .base import Batch
from .basic import Decoupled

_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_TRANSPARENT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)
_BLOCK_PAIR = re.compile(r"^conv(\d*)$")


def _followed_by_norm(children: list[tuple[str, nn.Module]]) -> list[str]:
    """Names of layer children whose next child (dropouts and identities skipped) is a
    normalization module."""
    out = []
    for i, (name, mod) in enumerate(children):
        if not isinstance(mod, _LAYERS):
            continue
        nxt = next((m for _, m in children[i + 1 :] if not isinstance(m, _TRANSPARENT)), None)
        if nxt is not None and is_norm_module(nxt):
            out.append(name)
    return out


def _block_pairs(children: dict[str, nn.Module]) -> list[str]:
    """The torchvision / timm convolution-block convention: ``conv<k>`` normalized by
    ``bn<k>`` (not ``linear1``/``norm1``: in transformer layers that norm follows a
    residual sum)."""
    out = []
    for name, mod in children.items():
        m = _BLOCK_PAIR.match(name)
        norm = children.get(f"bn{m.group(1)}") if m else None
        if isinstance(mod, _LAYERS) and norm is not None and is_norm_module(norm):
            out.append(name)
    return out


def normalized_weights(model: nn.Module) -> list[str]:
    """Names of the weights that a normalization layer follows, found by structure: a
    ``Linear``/``Conv``/``Bilinear`` whose next module in an ``nn.Sequential`` is a
    normalization layer (dropouts and identities in between are skipped), or, in any
    module, a convolution child ``conv<k>`` with a normalization child ``bn<k>``
    (torchvision and timm ResNet blocks). Other
    architectures (pre-norm transformers, where the *next* block's norm sees a residual
    sum) are not guessed: name their weights instead.

    >>> import torchpenalty as tp
    >>> from torch import nn
    >>> tp.normalized_weights(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1)))
    ['0.weight']
    """
    found: list[str] = []
    for prefix, module in model.named_modules():
        kids = list(module.named_children())
        names = (
            _followed_by_norm(kids)
            if isinstance(module, nn.Sequential)
            else _block_pairs(dict(kids))
        )
        for n in names:
            found.append(f"{prefix}.{n}.weight" if prefix else f"{n}.weight")
    order = {n: i for i, (n, _) in enumerate(model.named_parameters(remove_duplicate=False))}
    return sorted(set(found) & set(order), key=order.__getitem__)


def _subset(b: Batch, idx: list[int]) -> Batch:
    return b.replace(
        params=[b.params[i] for i in idx],
        grads=[b.grads[i] for i in idx],
        names=[b.names[i] for i in idx],
        originals=[b.originals[i] for i in idx],
    )


class Corrected(Decoupled):
    """``mode="corrected"`` (Defazio 2025): decoupled decay ``w <- w - rate * grad P(w)``
    before the step with ``rate = lr**2 / lr_max`` for weights followed by a normalization
    layer and ``rate = lr`` (plain decoupled) for the others.

    Options (``reg.attach(opt, mode="corrected", normalized=..., lr_max=...)``):
    ``normalized``: ``None`` finds the normalized weights by structure
    (:func:`normalized_weights` of the Regularizer's model), or a matcher as for
    ``include=`` (fnmatch patterns, module classes, predicates, a list of them), ``"*"``
    for every regularized weight (the reading of Chou 2025, arXiv 2512.08217).
    ``lr_max``: the peak lr; by default the group's ``max_lr`` (OneCycleLR), else the
    largest of its initial lr and every lr seen so far.
    """

    name = "corrected"
    sweepable = False  # needs the model's structure (bind)

    def __init__(self, normalized: Any = None, lr_max: float | None = None) -> None:
        self.normalized = normalized
        self.lr_max = None if lr_max is None else check_positive("lr_max", lr_max)
        self.names: frozenset[str] | None = None
        self._peak: dict[int, float] = {}
        self._peak_t: dict[int, Tensor] = {}

    def bind(self, reg: Any) -> None:
        """Resolve the normalized weights against ``reg.model``."""
        model = reg.model
        if self.normalized is None:
            self.names = frozenset(normalized_weights(model))
        else:
            self.names = frozenset(n for n, _ in select(model, include=self.normalized))

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """Device state for groups whose lr is a tensor: the running peak, kept as a tensor
        so that a compiled or captured step updates it without a host read."""
        for g in optimizer.param_groups:
            lr = g.get("lr")
            if isinstance(lr, Tensor) and self.lr_max is None and "max_lr" not in g:
                self._peak_t.setdefault(id(g), lr.detach().clone())

    def peak(self, b: Batch) -> float | Tensor:
        if self.lr_max is not None:
            return self.lr_max
        if "max_lr" in b.group:
            return float(b.group["max_lr"])
        lr = b.lr
        if isinstance(lr, Tensor):  # live: the running max on the device
            state = self._peak_t[id(b.group)]
            state.copy_(torch.clamp(torch.maximum(state, lr), min=b.lr0 or 0.0))
            return state
        state = self._peak_t.get(id(b.group))
        if state is not None:  # eager step of a group with a tensor lr: keep both in step
            state.copy_(torch.clamp(torch.maximum(state, state.new_tensor(lr)), min=b.lr0 or 0.0))
        seen = max(self._peak.get(id(b.group), 0.0), lr, b.lr0 or 0.0)
        self._peak[id(b.group)] = seen
        return seen

    def seen_peak(self, group: dict[str, Any]) -> float | None:
        """The peak lr this rule uses for ``group`` (``None`` before its first step)."""
        if self.lr_max is not None:
            return self.lr_max
        if "max_lr" in group:
            return float(group["max_lr"])
        return self._peak.get(id(group))

    def rates(self, b: Batch) -> list[float]:
        if self.names is None:
            raise RuntimeError(
                "mode='corrected' needs its normalized weights: use it through "
                "Regularizer.attach, or call bind(regularizer) first"
            )
        lr, peak = b.lr, self.peak(b)
        if isinstance(peak, Tensor):  # live: no branch on the value
            low = torch.where(peak > 0, lr * lr / peak.clamp_min(1e-30), 0.0)
        else:
            low = lr * lr / peak if peak else 0.0
        return [low if n in self.names else lr for n in b.names]

    def pre(self, b: Batch) -> None:
        rates = self.rates(b)
        normalized = [n in self.names for n in b.names]
        for flag in (True, False):  # grouped by kind, not by value (no read of a tensor)
            idx = [i for i, f in enumerate(normalized) if f is flag]
            if idx:
                sub = _subset(b, idx)
                sub.penalty.decay_(
                    sub.params, rates[idx[0]], step=sub.step, names=sub.names, strength=sub.strength
                )

    def __repr__(self) -> str:
        return f"Corrected(normalized={self.normalized!r}, lr_max={self.lr_max!r})"
