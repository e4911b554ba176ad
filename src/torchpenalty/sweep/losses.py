"""Sweep losses: one object per loss, answering every question the sweep asks of it.

A loss is one class (a :class:`SweepLoss` subclass with a ``name``: registered by
subclassing, and then ``tp.sweep(loss=name)`` and the table's ``result.loss`` know it).
Its class attributes say what the rest of the sweep must do:

* ``labels``: ``y`` holds class labels: encoded as codes ``0..k-1``, one model output per
  class, folds stratified, accuracy reported, ``predict`` returns labels;
* ``standardized``: a numeric target standardized with each training fold's statistics
  (a detail: losses are reported in the data's units).

and :meth:`SweepLoss.rows` is the loss of every row, ``(models, rows)``. A callable
``(output, target) -> mean loss`` is wrapped in :class:`UserLoss`.

>>> import torch
>>> get_loss("mse").rows(torch.zeros(1, 2, 1), torch.ones(1, 2, 1))
tensor([[1., 1.]])
>>> get_loss("cross_entropy").labels, get_loss(torch.nn.functional.l1_loss).name
(True, 'torch.nn.functional.l1_loss')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._validation import check_choice, type_error

__all__ = [
    "LOSSES",
    "CrossEntropy",
    "Huber",
    "MeanSquaredError",
    "SweepLoss",
    "UserLoss",
    "get_loss",
]

#: name -> loss class, filled by subclassing.
LOSSES: dict[str, type[SweepLoss]] = {}


class SweepLoss:
    """Base class of the sweep's losses (see the module docstring)."""

    name: ClassVar[str] = ""
    labels: ClassVar[bool] = False
    standardized: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            LOSSES[cls.name] = cls

    def rows(self, out: Tensor, y: Tensor) -> Tensor:
        """The loss of every row: ``out`` ``(M, rows, ...)``, ``y`` the targets as the
        engine holds them; returns ``(M, rows)``."""
        raise NotImplementedError

    def rows_grad(self, out: Tensor, y: Tensor, w: float | Tensor) -> tuple[Tensor, Tensor] | None:
        """Each row's loss ``(M, rows)`` and the gradient of ``sum(w * rows)`` with respect
        to ``out`` (``w``: a float, or one weight per row ``(M, rows)``), written out for the
        engine's hand-written backward pass; None (the default): autograd finds it. A
        subclass that overrides ``rows`` alone is differentiated by autograd
        (:func:`rows_grad_fits`), not by the inherited formula."""
        return None

    def hits(self, out: Tensor, y: Tensor) -> Tensor | None:
        """Whether each row's prediction is right ``(M, rows)``, for losses on labels."""
        return out.argmax(-1) == y if self.labels else None

    def __repr__(self) -> str:
        return self.name


class MeanSquaredError(SweepLoss):
    """``mean((output - y)**2)`` over the target columns; the target is standardized per
    training fold inside the sweep."""

    name = "mse"
    standardized = True

    def rows(self, out: Tensor, y: Tensor) -> Tensor:
        if out.ndim == 2:
            out = out.unsqueeze(-1)
        return (out - y).pow(2).mean(-1)

    def rows_grad(self, out: Tensor, y: Tensor, w: float | Tensor) -> tuple[Tensor, Tensor]:
        """``d = out - y``: rows ``mean(d**2)``, gradient ``2 * w * d / columns``.

        >>> out, y = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]])
        >>> get_loss("mse").rows_grad(out, y, 0.5)
        (tensor([[2.5000]]), tensor([[[0.5000, 1.0000]]]))
        """
        d = out - y
        scale = 2.0 / d.shape[-1]
        g = d * (scale * w) if isinstance(w, float) else d * (w * scale).unsqueeze(-1)
        return d.pow(2).mean(-1), g


class CrossEntropy(SweepLoss):
    """``cross_entropy(logits, class code)``; folds are stratified by class."""

    name = "cross_entropy"
    labels = True

    def rows(self, out: Tensor, y: Tensor) -> Tensor:
        m, b = out.shape[:2]
        flat = nn.functional.cross_entropy(out.reshape(m * b, -1), y.reshape(-1), reduction="none")
        return flat.view(m, b)

    def rows_grad(self, out: Tensor, y: Tensor, w: float | Tensor) -> tuple[Tensor, Tensor]:
        """``logp = log_softmax(out)``: rows ``-logp[y]``, gradient
        ``w * (softmax(out) - onehot(y))``.

        >>> rows, g = get_loss("cross_entropy").rows_grad(torch.zeros(1, 1, 2),
        ...                                               torch.tensor([[1]]), 1.0)
        >>> rows, g
        (tensor([[0.6931]]), tensor([[[ 0.5000, -0.5000]]]))
        """
        logp = out.log_softmax(-1)
        at = y.unsqueeze(-1)
        rows = logp.gather(-1, at).squeeze(-1).neg_()
        g = logp.exp_().scatter_add_(-1, at, torch.full_like(at, -1.0, dtype=out.dtype))
        return rows, g.mul_(w if isinstance(w, float) else w.unsqueeze(-1))


class Huber(SweepLoss):
    """Huber's robust loss, ``torch.nn.functional.huber_loss`` with ``delta = 1`` in the
    target's own units (squared below ``delta``, linear above), averaged over the target
    columns; the target is not standardized, so ``delta`` keeps its meaning."""

    name = "huber"
    delta: ClassVar[float] = 1.0

    def rows(self, out: Tensor, y: Tensor) -> Tensor:
        y = y.reshape(out.shape) if y.numel() == out.numel() else y
        err = nn.functional.huber_loss(out, y.to(out.dtype), reduction="none", delta=self.delta)
        return err.reshape(*out.shape[:2], -1).mean(-1)


class UserLoss(SweepLoss):
    """A callable ``(output, target) -> mean loss``, applied to each row alone
    (``torch.func.vmap`` over models and rows, so padded rows can be masked out); it sees
    ``y`` as given and must be written with operations vmap supports."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn
        qual, mod = getattr(fn, "__qualname__", None), getattr(fn, "__module__", None)
        self.name = f"{mod}.{qual}" if qual and mod else repr(fn)  # type: ignore[misc]

    def rows(self, out: Tensor, y: Tensor) -> Tensor:
        from torch.func import vmap

        def one(o: Tensor, t: Tensor) -> Tensor:
            return self.fn(o.unsqueeze(0), t.unsqueeze(0))

        return vmap(vmap(one))(out, y)


@functools.cache
def rows_grad_fits(cls: type[SweepLoss]) -> bool:
    """Whether the engine may call ``cls.rows_grad`` for the gradient of ``cls.rows``:
    it is defined by the class that defines ``rows`` or by a subclass of it. A subclass
    that changes ``rows`` alone inherits the gradient of its parent's rows (autograd
    differentiates its own); a loss without ``rows_grad`` has autograd's too.

    >>> class Tripled(MeanSquaredError):
    ...     def rows(self, out, y):
    ...         return 3 * super().rows(out, y)
    >>> rows_grad_fits(MeanSquaredError), rows_grad_fits(Tripled), rows_grad_fits(Huber)
    (True, False, False)
    """

    def owner(name: str) -> type:
        return next(c for c in cls.__mro__ if name in c.__dict__)

    return issubclass(owner("rows_grad"), owner("rows"))


def get_loss(spec: str | Callable[..., Any] | SweepLoss, name: str = "loss") -> SweepLoss:
    """The loss object for a registered name, a callable, or a loss passed through."""
    if isinstance(spec, SweepLoss):
        return spec
    if isinstance(spec, str):
        return LOSSES[check_choice(name, spec, list(LOSSES))]()
    if callable(spec):
        return UserLoss(spec)
    raise type_error(name, f"one of {list(LOSSES)} or a callable (output, target) -> mean", spec)
