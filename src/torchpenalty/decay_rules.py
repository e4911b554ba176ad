"""Decay rules from 2025: cautious decay and lr-corrected decay for normalized layers.

Cautious decay (Chen et al. 2025, arXiv 2510.12402) decays a coordinate only where the
optimizer's update ``u`` and the decay direction agree in sign:
``w <- w - lr * (u + 1[u * D >= 0] * D)`` with ``D = grad P(w)`` (``s * w`` for ``L2(s)``,
the paper's ``s * 1[u * w >= 0] * w``). The update's sign is read from the step itself,
for any optimizer: before the step the regularized weights are copied (``w_old``), after
it ``delta = w_new - w_old = -lr * u`` gives ``u * D >= 0  <=>  delta * D <= 0``, and the
decay ``lr * mask * D(w_old)`` is subtracted, so the result is exactly the formula above
evaluated at the pre-step weights. Cost: one copy of the regularized weights (their size
in memory, kept between the two hooks of a step) and five foreach passes per step for
``L2`` (about seven for other penalties, whose ``D`` needs a buffer).
Where the decay opposes the update it is skipped: the optimizer then converges to a
minimizer of the unpenalized loss, the decay choosing among minimizers (a smaller-norm one)
instead of trading loss for norm.

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
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_positive, type_error, value_error
from .penalties import L2
from .select import is_norm_module, select
from .updates import RULES, Batch, Decoupled, UpdateRule

__all__ = ["Cautious", "Corrected", "bind_rule", "cautious_decay_", "normalized_weights"]

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


@torch.no_grad()
def cautious_decay_(
    params: Sequence[Tensor],
    before: Sequence[Tensor],
    directions: Sequence[Tensor],
    lr: float | Sequence[float],
) -> None:
    """``w <- w - lr * 1[delta * D <= 0] * D`` in place, with ``delta = w - before`` the
    optimizer's step (``-lr * u``) and ``D`` the decay direction at the pre-step weights
    (``s * before`` for L2): the decay applies where ``u * D >= 0``. ``lr`` may be one
    value per tensor. ``directions`` is overwritten (with the masked, scaled decay).

    >>> w0 = [torch.tensor([1.0, 1.0, -1.0, 0.0])]
    >>> w = [torch.tensor([0.9, 1.1, -0.9, 0.1])]      # the optimizer moved these ways
    >>> cautious_decay_(w, w0, [0.5 * w0[0]], lr=0.1)   # D = s * w0, s = 0.5
    >>> w[0]        # decayed where the step went towards zero (or D = 0), kept where not
    tensor([ 0.8500,  1.1000, -0.8500,  0.1000])
    """
    params, before, directions = list(params), list(before), list(directions)
    if not params:
        return
    delta = torch._foreach_sub(params, before)
    torch._foreach_mul_(delta, directions)
    masks = [d <= 0 for d in delta]
    del delta
    torch._foreach_mul_(directions, masks)
    if isinstance(lr, (int, float)):
        torch._foreach_add_(params, directions, alpha=-lr)
    else:
        torch._foreach_mul_(directions, [-float(x) for x in lr])
        torch._foreach_add_(params, directions)


def _cautious_l2_(params: list[Tensor], before: list[Tensor], scales: list[float]) -> None:
    """:func:`cautious_decay_` for ``D = s * before`` (``s > 0`` leaves the sign test
    ``delta * before <= 0``), consuming ``before`` as the buffer of the masked decay."""
    delta = torch._foreach_sub(params, before)
    torch._foreach_mul_(delta, before)
    masks = [d <= 0 for d in delta]
    del delta
    torch._foreach_mul_(before, masks)
    torch._foreach_mul_(before, [-x for x in scales])
    torch._foreach_add_(params, before)


# ----------------------------------------------------------------------------- rules
def _rates(rule: UpdateRule, b: Batch) -> list[float]:
    """The decay factor of each tensor of the batch under a decoupled-family rule."""
    if isinstance(rule, Corrected):
        return rule.rates(b)
    return [rule.rate(b)] * len(b.params)  # type: ignore[attr-defined]


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

    def __init__(self, normalized: Any = None, lr_max: float | None = None) -> None:
        self.normalized = normalized
        self.lr_max = None if lr_max is None else check_positive("lr_max", lr_max)
        self.names: frozenset[str] | None = None
        self._peak: dict[int, float] = {}

    def bind(self, reg: Any) -> None:
        """Resolve the normalized weights against ``reg.model``."""
        model = reg.model
        if self.normalized is None:
            self.names = frozenset(normalized_weights(model))
        else:
            self.names = frozenset(n for n, _ in select(model, include=self.normalized))

    def peak(self, b: Batch) -> float:
        if self.lr_max is not None:
            return self.lr_max
        if "max_lr" in b.group:
            return float(b.group["max_lr"])
        seen = max(self._peak.get(id(b.group), 0.0), b.lr, b.lr0 or 0.0)
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
        low = lr * lr / peak if peak else 0.0
        return [low if n in self.names else lr for n in b.names]

    def pre(self, b: Batch) -> None:
        rates = self.rates(b)
        for rate in dict.fromkeys(rates):
            sub = _subset(b, [i for i, r in enumerate(rates) if r == rate])
            sub.penalty.decay_(
                sub.params, rate, step=sub.step, names=sub.names, strength=sub.strength
            )

    def __repr__(self) -> str:
        return f"Corrected(normalized={self.normalized!r}, lr_max={self.lr_max!r})"


class Cautious(UpdateRule):
    """``cautious=True`` on a decoupled-family rule (``"decoupled"``, ``"independent"``,
    ``"corrected"``; Chen et al. 2025): ``w <- w - rate * 1[u * D >= 0] * D`` with
    ``D = grad P(w_old)`` and the update ``u`` read from the step. ``pre`` copies the
    weights, ``post`` applies :func:`cautious_decay_` with each tensor's rate (the inner
    rule's). Memory: the copy lives during ``opt.step()``, plus two temporaries of the
    same size in ``post``."""

    writes_weights = True

    def __init__(self, inner: UpdateRule) -> None:
        if not isinstance(inner, Decoupled):
            raise value_error(
                "cautious",
                "False unless mode is 'decoupled', 'independent', 'corrected' (or another "
                f"decoupled rule); mode is {inner.name!r}",
                True,
            )
        self.inner = inner
        self._before: dict[tuple[int, ...], list[Tensor]] = {}

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @classmethod
    def around(cls, mode: str | UpdateRule, **options: Any) -> Cautious:
        """The cautious form of ``mode`` built with ``options``."""
        if isinstance(mode, UpdateRule):
            if options:
                raise TypeError(f"options must be empty for a rule instance, got {options}")
            return cls(mode)
        if mode not in RULES:
            raise value_error("mode", "one of " + ", ".join(map(repr, RULES)), mode)
        return cls(RULES[mode].from_options(**options))

    def bind(self, reg: Any) -> None:
        bind_rule(self.inner, reg)

    def check(self, penalty: Any) -> None:
        self.inner.check(penalty)

    def pre(self, b: Batch) -> None:
        self._before[tuple(b.keys)] = [p.detach().clone() for p in b.params]

    def post(self, b: Batch) -> None:
        before = self._before.pop(tuple(b.keys), None)
        if before is None:  # the pre hook did not run (a skipped step)
            return
        rates = _rates(self.inner, b)
        if type(b.penalty) is L2 and b.strength is None:  # D = s * w_old: no D buffer
            s = b.penalty.strength_at(b.step)
            _cautious_l2_(b.params, before, [r * s for r in rates])
            return
        directions = [torch.zeros_like(w) for w in before]
        b.penalty.grad_(directions, before, step=b.step, names=b.names, strength=b.strength)
        cautious_decay_(b.params, before, directions, rates[0] if len(set(rates)) == 1 else rates)

    def __repr__(self) -> str:
        return f"Cautious({self.inner!r})"


def bind_rule(rule: UpdateRule, reg: Any) -> None:
    """Call ``bind(reg)`` on ``rule`` or on the rule it wraps (``Rounded``), if any."""
    while rule is not None:
        bind = getattr(type(rule), "bind", None)
        if bind is not None:
            bind(rule, reg)
            return
        rule = getattr(rule, "inner", None)


def cautious_rule(mode: str | UpdateRule, cautious: Any, options: dict[str, Any]):
    """``(mode, options)`` for ``attach``: with ``cautious=True`` the cautious form of
    ``mode`` (its options consumed), else unchanged."""
    if not isinstance(cautious, bool):
        raise type_error("cautious", "a bool", cautious)
    if not cautious:
        return mode, options
    return Cautious.around(mode, **options), {}
