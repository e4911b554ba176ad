"""The built-in penalties: L2, L1, elastic net, group lasso, L2-SP, soft orthogonality, BerHu."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import functional as F
from .._validation import (
    check_int,
    check_positive,
    check_unit_interval,
    type_error,
)
from .base import _LOW, Penalty, StrengthLike


class L2(Penalty):
    """Ridge / weight decay: ``strength/2 * sum |w|**2``, gradient ``strength * w``.

    ``L2(s)`` with SGD equals ``torch.optim.SGD(weight_decay=s)``; with
    ``attach(opt, mode="decoupled")`` on Adam it equals ``torch.optim.AdamW(weight_decay=s)``.
    Keras ``L2(l2)`` is ``L2(2 * l2)``.

    >>> import torch
    >>> L2(0.5)([torch.tensor([3.0, 4.0])])   # 0.5/2 * 25
    tensor(6.2500)
    """

    name = "l2"
    aliases = ("ridge", "weight_decay")

    gaussian_prior = True

    def shrink_rate(self, step: int = 0) -> float | None:
        return self.strength_at(step)

    def term(self, w):
        return 0.5 * w.abs().square().sum()

    def _value(self, params, s, names):
        return F.l2(params, s)

    def _grad_(self, grads, params, s, names):
        F.l2_grad_(grads, params, s)

    def _decay_(self, params, lr, s, names):
        if isinstance(s, Tensor) and s.ndim == 1:  # stacked models
            super()._decay_(params, lr, s, names)
        elif isinstance(s, Tensor) or isinstance(lr, Tensor):  # live values: no host read
            F._mul_scalar_(params, 1.0 - lr * s)
        else:  # the exact operation torch.optim.AdamW performs
            torch._foreach_mul_(params, 1.0 - lr * s)

    def _prox_(self, params, t, names, metric=None):
        F.l2_prox_(params, t if metric is None else F.thresholds(params, t, metric))


class L1(Penalty):
    """Lasso: ``strength * sum |w|``, subgradient ``strength * sgn(w)``.

    Use ``attach(opt, mode="proximal")`` to get exact zeros (soft-thresholding at
    ``lr * strength`` after each step); the plain subgradient only oscillates around 0.

    >>> import torch
    >>> L1(0.5)([torch.tensor([3.0, -4.0])])   # 0.5 * 7
    tensor(3.5000)
    """

    name = "l1"
    aliases = ("lasso",)
    sweep_mode = "proximal"

    def term(self, w):
        return w.abs().sum()

    def _value(self, params, s, names):
        return F.l1(params, s)

    def _grad_(self, grads, params, s, names):
        F.l1_grad_(grads, params, s)

    def _prox_(self, params, t, names, metric=None):
        F.l1_prox_(params, t if metric is None else F.thresholds(params, t, metric))


class ElasticNet(Penalty):
    """``strength * (l1_ratio * sum |w| + (1 - l1_ratio)/2 * sum |w|**2)`` (scikit-learn /
    glmnet parametrization; ``l1_ratio=1`` is L1, ``0`` is L2).

    >>> import torch
    >>> ElasticNet(1.0, l1_ratio=0.5)([torch.tensor([3.0, -4.0])])  # 0.5*7 + 0.25*25
    tensor(9.7500)
    """

    name = "elastic_net"
    aliases = ("elasticnet", "enet")
    sweep_mode = "proximal"

    def shrink_rate(self, step: int = 0) -> float | None:
        return self.strength_at(step) * (1.0 - self.l1_ratio)

    def __init__(self, strength: StrengthLike, l1_ratio: float = 0.5) -> None:
        super().__init__(strength)
        self.l1_ratio = check_unit_interval("l1_ratio", l1_ratio)

    def _value(self, params, s, names):
        return F.elastic_net(params, s, self.l1_ratio)

    def _grad_(self, grads, params, s, names):
        F.elastic_net_grad_(grads, params, s, self.l1_ratio)

    def term(self, w):
        a = w.abs()
        return self.l1_ratio * a.sum() + (1 - self.l1_ratio) / 2 * a.square().sum()

    def _prox_(self, params, t, names, metric=None):
        tt = t if metric is None else F.thresholds(params, t, metric)
        F.elastic_net_prox_(params, tt, self.l1_ratio)


class GroupLasso(Penalty):
    """Structured sparsity: ``strength * sum_g ||w_g||_2`` with one group per slice along
    ``dim`` (``dim=0``: a Linear's output unit or a Conv's filter). With
    ``mode="proximal"`` whole groups become exact zeros.

    >>> import torch
    >>> GroupLasso(1.0)([torch.tensor([[3.0, 4.0], [0.0, 1.0]])])  # 5 + 1
    tensor(6.)
    """

    name = "group_lasso"
    aliases = ("grouplasso",)
    sweep_mode = "proximal"
    needs_full_tensors = True

    def __init__(self, strength: StrengthLike, dim: int = 0) -> None:
        super().__init__(strength)
        self.dim = check_int("dim", dim)

    def _value(self, params, s, names):
        return F.group_lasso(params, s, self.dim)

    def _grad_(self, grads, params, s, names):
        F.group_lasso_grad_(grads, params, s, self.dim)

    def term(self, w):
        return F.group_lasso([w], 1.0, self.dim)

    @property
    def whole_what(self) -> str:
        return f"whole slices along dim {self.dim}"

    def _sharding_hint(self, dim: int) -> str:
        return f"use GroupLasso(dim={dim})"

    def shard_ok(self, dim: int, ndim: int) -> bool:
        """Groups are slices along ``self.dim``: sharding along that dim keeps them whole."""
        return dim == self.dim % max(ndim, 1)

    def _prox_(self, params, t, names, metric=None):
        """Euclidean group shrinkage; with a ``metric`` (a preconditioned step), the exact
        prox in that metric (:func:`~torchpenalty.functional.group_lasso_prox_metric_`),
        whose fixed points satisfy the group lasso's KKT conditions."""
        if metric is None:
            F.group_lasso_prox_(params, t, self.dim)
        else:
            F.group_lasso_prox_metric_(params, t, metric, self.dim)


def _visible(name: str) -> str:
    from ..select import visible_name

    return visible_name(name)


class L2SP(Penalty):
    """Fine-tuning prior: ``strength/2 * sum |w - w0|**2``, pulling each weight toward its
    pretrained value ``w0`` (Li et al., 2018). ``reference`` is a model or a state dict;
    tensors are matched by parameter name and copied at construction.

    >>> import torch
    >>> from torch import nn
    >>> pre = nn.Linear(2, 1); net = nn.Linear(2, 1)
    >>> pen = L2SP(0.1, reference=pre)
    >>> float(pen([pre.weight.detach()], names=["weight"]))
    0.0
    """

    name = "l2sp"
    aliases = ("l2_sp",)
    stackable = False
    needs_full_tensors = True
    whole_what = "whole tensors (its reference tensors are not sharded)"
    config_exclude = ("reference",)

    def shrink_rate(self, step: int = 0) -> float | None:
        return self.strength_at(step)

    def __init__(
        self, strength: StrengthLike, reference: nn.Module | Mapping[str, Tensor] | None = None
    ) -> None:
        super().__init__(strength)
        if isinstance(reference, nn.Module):
            items = reference.named_parameters()
        elif isinstance(reference, Mapping):
            items = reference.items()
        else:
            raise type_error("reference", "an nn.Module or a state dict", reference)
        self.reference: dict[str, Tensor] = {}
        for k, v in items:
            if not isinstance(v, Tensor):
                raise type_error(f"reference[{k!r}]", "a tensor", v)
            self.reference[_visible(k)] = v.detach().clone()
        self._cache: dict[tuple, Tensor] = {}

    def refs(self, params: Sequence[Tensor], names: Sequence[str] | None) -> list[Tensor]:
        """Reference tensors for ``params`` (by ``names``), on their device and dtype."""
        if names is None:
            raise ValueError("names must be given for L2SP (reference tensors are matched by name)")
        out = []
        for n, p in zip(names, params, strict=True):
            key = (n, p.device, p.dtype, tuple(p.shape))
            ref = self._cache.get(key)
            if ref is None:
                if n not in self.reference:
                    raise ValueError(f"reference must hold a tensor for parameter {n!r}, got none")
                r = self.reference[n]
                if tuple(r.shape) != tuple(p.shape):
                    raise ValueError(
                        f"reference[{n!r}] must have shape {tuple(p.shape)}, got {tuple(r.shape)}"
                    )
                ref = self._cache[key] = r.to(device=p.device, dtype=p.dtype)
            out.append(ref)
        return out

    def _value(self, params, s, names):
        return F.l2sp(params, self.refs(params, names), s)

    def _grad_(self, grads, params, s, names):
        F.l2sp_grad_(grads, params, self.refs(params, names), s)

    def _decay_(self, params, lr, s, names):
        refs = self.refs(params, names)
        if isinstance(lr * s, Tensor):  # live values: one lerp per tensor
            for p, r in zip(params, refs, strict=True):
                p.lerp_(r, (lr * s).to(device=p.device, dtype=p.dtype))
        else:
            torch._foreach_lerp_(params, refs, lr * s)

    def _prox_(self, params, t, names, metric=None):
        tt = t if metric is None else F.thresholds(params, t, metric)
        F.l2sp_prox_(params, self.refs(params, names), tt)

    def __repr__(self) -> str:
        return f"L2SP(strength={self.strength!r}, reference=<{len(self.reference)} tensors>)"

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)


class Orthogonal(Penalty):
    """Soft orthogonality: ``strength * ||M M^H - I||_F**2`` with ``M`` each weight
    flattened to ``(out, -1)`` (transposed when taller than wide). Has no proximal step.

    >>> import torch
    >>> Orthogonal(1.0)([torch.eye(3)])
    tensor(0.)
    >>> float(Orthogonal(1.0)([2 * torch.eye(2)]))   # ||4I - I||^2 = 2 * 9
    18.0
    """

    name = "orthogonal"
    aliases = ("orth",)
    stackable = False
    needs_full_tensors = True
    whole_what = "whole matrices"

    def _value(self, params, s, names):
        return F.orthogonal(params, s)

    def _grad_(self, grads, params, s, names):
        F.orthogonal_grad_(grads, params, s)


class BerHu(Penalty):
    """Reverse Huber ("BerHu", Owen 2007) penalty: ``strength * sum(berhu(w))`` with,
    elementwise, ``berhu(x) = |x|`` for ``|x| <= delta`` and ``(|x|**2 + delta**2) /
    (2 * delta)`` otherwise: the lasso near zero (exact zeros), ridge in the tails (large
    weights shrink in proportion, correlated ones are kept together, as with elastic net).
    Gradient ``strength * sign(w)`` for ``|w| <= delta``, else ``strength * w / delta``
    (``0`` at ``w = 0``); proximal step
    (threshold ``t``): ``0`` where ``|w| <= t``, ``w - t * sign(w)`` where
    ``|w| <= delta + t``, else ``w * delta / (delta + t)``. Complex weights use ``|w|``.

    >>> import torch
    >>> w = torch.tensor([0.5, -3.0])
    >>> BerHu(2.0, delta=1.0)([w])   # 2 * (0.5 + (3**2 + 1) / 2)
    tensor(11.)
    >>> g = [torch.zeros(2)]; BerHu(2.0).grad_(g, [w]); g   # 2 * [sign(0.5), -3 / 1]
    [tensor([ 2., -6.])]
    >>> BerHu(1.0, delta=0)
    Traceback (most recent call last):
    ...
    ValueError: delta must be a finite number > 0, got 0
    """

    name = "berhu"
    aliases = ("reverse_huber",)
    sweep_mode = "proximal"

    def __init__(self, strength: StrengthLike, *, delta: float = 1.0) -> None:
        super().__init__(strength)
        self.delta = check_positive("delta", delta)

    def term(self, w: Tensor) -> Tensor:
        a, d = w.abs(), self.delta
        return torch.where(a <= d, a, (a * a + d * d) / (2 * d)).sum()

    def term_grad(self, w: Tensor) -> Tensor:  # w / min(|w|, delta), 0 at w = 0
        a = w.abs()
        return w / a.clamp(max=self.delta).clamp_min(torch.finfo(a.dtype).tiny)

    def term_prox(self, w: Tensor, t: float | Tensor) -> Tensor:
        x = w.float() if w.dtype in _LOW else w
        a, d = x.abs(), self.delta
        shrink = (1 - t / a.clamp_min(torch.finfo(a.dtype).tiny)).clamp_min(0)
        return x * torch.where(a <= d + t, shrink, d / (d + t))
