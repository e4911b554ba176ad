"""``compact(model)``: turn the exact zeros that group lasso (or L1) left into a smaller model.

In an ``nn.Sequential`` stack of ``Linear`` / ``Conv1d/2d/3d`` layers, hidden unit ``j``
between two weight layers ``A`` and ``B`` (an output row / channel of ``A``, the matching
input column / channel of ``B``) is removed when the result computes the same function:

* **dead input** -- ``B``'s weights for unit ``j`` are all exactly zero (group lasso with
  ``dim=1`` on ``B``): whatever unit ``j`` outputs is never used;
* **dead output** -- ``A``'s weights for unit ``j`` are all exactly zero (group lasso with
  ``dim=0`` on ``A``): the unit outputs the constant ``bias_j`` (0 without a bias), which
  the layers in between (activations, BatchNorm, pooling) map to a constant ``c_j``; ``B``
  then adds ``c_j * B[:, j]``, which is folded into ``B``'s bias (created if needed). So a
  zero row with a nonzero bias *is* removable -- except where ``B`` (or an average pool in
  between) zero-pads: a constant channel is not constant at the padded border, and the
  unit is kept unless ``c_j == 0``.

The equality is that of evaluation mode (BatchNorm with its running statistics; dropout
off). What lies between two weight layers may be: elementwise activations, dropout,
``BatchNorm1d/2d/3d`` (sliced with the units), pooling, and ``Flatten`` (a conv channel
becomes a block of the next Linear's inputs); nested ``nn.Sequential`` blocks are walked
in order, as if flat. A pair of layers with a feature-mixing module between them
(``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ``Softmax``: removing a feature changes the
others' statistics) or a grouped convolution is left whole and listed in the report. Any
other module (a residual block, another container), a parametrized weight, a layer used
twice, or a model that is not an ``nn.Sequential`` is refused with an error. The model's
first inputs and last outputs never change.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
>>> with torch.no_grad():
...     net[0].weight[[1, 4]] = 0.0   # rows that group lasso drove to zero
>>> small, report = compact(net, example_input=torch.randn(8, 4))
>>> small
Sequential(
  (0): Linear(in_features=4, out_features=4, bias=True)
  (1): ReLU()
  (2): Linear(in_features=4, out_features=2, bias=True)
)
>>> report.params_before, report.params_after, report.max_rel_diff < 1e-6
(44, 30, True)
"""

from __future__ import annotations

import copy
import itertools
import sys as _sys
import types as _types
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import type_error

__all__ = ["CompactReport", "compact"]

_WEIGHT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ELEMENTWISE = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink,
)  # fmt: skip
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_BN = nn.modules.batchnorm._BatchNorm
_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_MIXING = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.Softmax, nn.LogSoftmax)
if hasattr(nn, "RMSNorm"):
    _MIXING = (*_MIXING, nn.RMSNorm)


@dataclass
class CompactReport:
    """What :func:`compact` did: widths per weight layer, parameter counts, FLOPs per sample
    (multiply-adds count 2; ``None`` without ``example_input`` for convolutions), pairs left
    whole and why, and the largest output difference on ``example_input``."""

    widths: list[tuple[int, str, int, int]] = field(
        default_factory=list
    )  # index, type, before, after
    params_before: int = 0
    params_after: int = 0
    flops_before: int | None = None
    flops_after: int | None = None
    kept: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None
    #: largest |output| of the original on ``example_input`` (float32 rounding is relative)
    output_scale: float | None = None

    @property
    def max_rel_diff(self) -> float | None:
        """``max_abs_diff / max(1, output_scale)``: at most ~1e-6 in float32, the size of
        the rounding that a different summation order (fewer terms) alone produces."""
        if self.max_abs_diff is None or self.output_scale is None:
            return None
        return self.max_abs_diff / max(1.0, self.output_scale)

    def __str__(self) -> str:
        lines = [f"{'layer':<16}{'units before':>14}{'units after':>13}"]
        lines += [f"{f'{i}: {t}':<16}{b:>14}{a:>13}" for i, t, b, a in self.widths]
        lines.append(f"parameters: {self.params_before} -> {self.params_after}")
        if self.flops_before is not None:
            lines.append(f"FLOPs per sample: {self.flops_before} -> {self.flops_after}")
        lines += [f"kept whole: {k}" for k in self.kept]
        if self.max_abs_diff is not None:
            lines.append(
                f"max |output difference| on example_input: {self.max_abs_diff:.3g} "
                f"(largest |output| {self.output_scale:.3g})"
            )
        return "\n".join(lines)


def _where(path: tuple[int, ...]) -> str:
    return "model" + "".join(f"[{i}]" for i in path)


def _leaves(
    model: nn.Sequential, path: tuple[int, ...] = ()
) -> list[tuple[tuple[int, ...], nn.Module]]:
    """The modules of ``model`` in execution order, nested ``nn.Sequential`` flattened."""
    out: list[tuple[tuple[int, ...], nn.Module]] = []
    for i, m in enumerate(model):
        out += _leaves(m, (*path, i)) if isinstance(m, nn.Sequential) else [((*path, i), m)]
    return out


def _check(model: nn.Module) -> list[tuple[tuple[int, ...], nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise type_error("model", "an nn.Sequential of Linear/Conv layers", type(model).__name__)
    leaves = _leaves(model)
    allowed = (*_WEIGHT, *_ELEMENTWISE, *_DROPOUT, _BN, *_POOL, *_MIXING, nn.Flatten)
    seen: dict[int, tuple[int, ...]] = {}
    for path, m in leaves:
        if not isinstance(m, allowed):
            raise ValueError(
                f"{_where(path)} must be a Linear/Conv layer, an activation, dropout, BatchNorm, "
                f"pooling, Flatten or a norm, got {type(m).__name__} (compact shrinks "
                "nn.Sequential stacks only)"
            )
        if getattr(m, "parametrizations", None):
            raise ValueError(f"{_where(path)} must not be parametrized, got {type(m).__name__} "
                             "with parametrizations: remove them first")  # fmt: skip
        if isinstance(m, (*_WEIGHT, _BN)) and id(m) in seen:
            raise ValueError(f"{_where(path)} must be a module of its own, got the same "
                             f"{type(m).__name__} as {_where(seen[id(m)])}")  # fmt: skip
        seen[id(m)] = path
    return leaves


def _why_whole(a: nn.Module, between: list[nn.Module], b: nn.Module) -> str | None:
    """Why units between weight layers ``a`` and ``b`` cannot be removed (None: they can)."""
    for m in (a, b):
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and m.groups != 1:
            return f"grouped convolution ({type(m).__name__}, groups={m.groups})"
    for m in between:
        if isinstance(m, _MIXING):
            return f"{type(m).__name__} mixes the features"
        if isinstance(m, nn.Flatten) and (m.start_dim != 1 or m.end_dim != -1):
            return f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})"
    if any(isinstance(m, nn.Flatten) for m in between) and not isinstance(b, nn.Linear):
        return "Flatten before a convolution"
    return None


def _zero_padded(m: nn.Module) -> bool:
    """Whether ``m`` lets a constant channel vary near the border (zero padding)."""
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        if m.padding == "valid" or m.padding_mode != "zeros":
            return False  # reflect / replicate / circular padding keeps a constant constant
        return m.padding == "same" or any(p != 0 for p in m.padding)
    if isinstance(m, nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d):
        pads = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        return bool(m.ceil_mode) or (m.count_include_pad and any(p != 0 for p in pads))
    return False


@torch.no_grad()
def _constants(between: list[nn.Module], c: Tensor) -> Tensor:
    """Per-channel constants after the modules between two weight layers (eval mode)."""
    for m in between:
        if isinstance(m, _BN):
            if m.running_mean is not None:
                c = (c - m.running_mean) / torch.sqrt(m.running_var + m.eps)
            else:  # batch statistics: a constant channel normalizes to 0
                c = torch.zeros_like(c)
            if m.affine:
                c = c * m.weight + m.bias
        elif isinstance(m, _ELEMENTWISE):
            c = m(c)
    return c


def _per_unit(b: nn.Module, n_units: int) -> Tensor:
    """``b``'s weights as (outputs, units, rest): ``rest`` is the kernel of a convolution or
    the ``in_features / n_units`` inputs per unit of a Linear after Flatten."""
    w = b.weight.detach()
    return w.reshape(w.shape[0], n_units, -1)


@torch.no_grad()
def _shrink_pair(a: nn.Module, between: list[nn.Module], b: nn.Module) -> int:
    """Remove the removable units between ``a`` and ``b`` in place; return how many."""
    n = a.weight.shape[0]
    wb = _per_unit(b, n)
    dead_in = wb.eq(0).all(dim=2).all(dim=0)
    dead_out = a.weight.detach().reshape(n, -1).eq(0).all(dim=1)
    bias = (
        a.bias.detach() if a.bias is not None else torch.zeros_like(dead_out, dtype=a.weight.dtype)
    )
    c = _constants(between, torch.where(dead_out, bias, torch.zeros_like(bias)))
    border = _zero_padded(b) or any(_zero_padded(m) for m in between)
    remove = dead_in | (dead_out & ((c == 0) | (not border)))
    if remove.all():
        remove[0] = False  # keep one unit: layers of width 0 are not worth the edge cases
    if not remove.any():
        return 0
    fold = remove & ~dead_in & (c != 0)
    if fold.any():  # unit j always outputs c_j: b adds sum_rest(b[:, j, rest]) * c_j
        shift = (wb[:, fold, :].sum(dim=2) * c[fold]).sum(dim=1)
        if b.bias is None:
            b.bias = nn.Parameter(torch.zeros_like(shift))
        b.bias += shift
    keep = (~remove).nonzero().flatten()
    _slice_out(a, keep)
    for m in between:
        if isinstance(m, _BN):
            _slice_bn(m, keep)
    _slice_in(b, keep, n)
    return int(remove.sum())


def _slice_out(layer: nn.Module, keep: Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[keep].clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = len(keep)
    else:
        layer.out_channels = len(keep)


def _slice_in(layer: nn.Module, keep: Tensor, n_units: int) -> None:
    w = layer.weight.detach()
    block = w.shape[1] // n_units  # > 1 for a Linear after Flatten
    cols = (keep[:, None] * block + torch.arange(block)).flatten()
    layer.weight = nn.Parameter(w[:, cols].clone())
    if isinstance(layer, nn.Linear):
        layer.in_features = len(cols)
    else:
        layer.in_channels = len(cols)


def _slice_bn(bn: nn.Module, keep: Tensor) -> None:
    for name in ("weight", "bias"):
        p = getattr(bn, name)
        if p is not None:
            setattr(bn, name, nn.Parameter(p.detach()[keep].clone()))
    for name in ("running_mean", "running_var"):
        buf = getattr(bn, name)
        if buf is not None:
            setattr(bn, name, buf[keep].clone())
    bn.num_features = len(keep)


def _flops(model: nn.Module, example_input: Tensor | None) -> int | None:
    """FLOPs of one sample's forward pass through the weight layers (2 per multiply-add)."""
    layers = [m for m in model.modules() if isinstance(m, _WEIGHT)]
    if example_input is None:
        if any(not isinstance(m, nn.Linear) for m in layers):
            return None
        return sum(2 * m.in_features * m.out_features for m in layers)
    total = 0

    def hook(m: nn.Module, inputs: tuple, out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features * (out[0].numel() // m.out_features)
        else:
            per_out = m.in_channels // m.groups * m.weight[0, 0].numel()
            total += 2 * per_out * out[0].numel()

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def compact(
    model: nn.Module, *, example_input: Tensor | None = None
) -> tuple[nn.Sequential, CompactReport]:
    """Return ``(smaller_model, report)``: a copy of the ``nn.Sequential`` ``model`` without
    the hidden units whose weights are exactly zero (see the module docstring for the rule),
    and a :class:`CompactReport`. ``model`` is not modified.

    ``example_input`` (a batch) gives FLOPs for convolutions and checks the outputs:
    ``report.max_abs_diff`` is the largest difference of the two models' outputs on it,
    both in eval mode, and ``report.max_rel_diff`` that difference over the outputs' size
    (float32 rounding: fewer terms in a sum round differently, by ~1e-7 relative).

    >>> import torch, torchpenalty as tp
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     model[0].weight[1] = 0.0  # unit 1: zero in-weights and bias
    ...     model[0].bias[1] = 0.0
    >>> small, report = tp.compact(model)
    >>> small[0], small[2], (report.params_before, report.params_after)
    (Linear(in_features=3, out_features=3, bias=True), Linear(in_features=3, out_features=2, bias=True), (26, 20))
    >>> x = torch.randn(5, 3); torch.allclose(small(x), model(x))
    True
    """
    paths = [path for path, _ in _check(model)]
    if example_input is not None and not isinstance(example_input, Tensor):
        raise type_error("example_input", "a tensor (a batch of inputs)", example_input)
    small = copy.deepcopy(model)
    report = CompactReport(params_before=sum(p.numel() for p in model.parameters()))
    report.flops_before = _flops(model, example_input)
    mods = [m for _, m in _leaves(small)]  # the copy's modules, in the same order
    idx = [i for i, m in enumerate(mods) if isinstance(m, _WEIGHT)]
    before = {i: mods[i].weight.shape[0] for i in idx}
    for i, j in itertools.pairwise(idx):
        a, between, b = mods[i], mods[i + 1 : j], mods[j]
        why = _why_whole(a, between, b)
        if why is not None:
            report.kept.append(f"units of {_where(paths[i])} ({type(a).__name__}): {why}")
            continue
        _shrink_pair(a, between, b)
    report.widths = [
        (".".join(map(str, paths[i])), type(mods[i]).__name__, before[i], mods[i].weight.shape[0])
        for i in idx
    ]
    report.params_after = sum(p.numel() for p in small.parameters())
    report.flops_after = _flops(small, example_input)
    if example_input is not None:
        report.max_abs_diff, report.output_scale = _max_diff(model, small, example_input)
    return small, report


@torch.no_grad()
def _max_diff(model: nn.Module, small: nn.Module, x: Tensor) -> tuple[float, float]:
    modes = model.training
    model.eval()
    small.eval()
    try:
        out = model(x)
        return float((out - small(x)).abs().max()), float(out.abs().max())
    finally:
        model.train(modes)
        small.train(modes)


class _CallableModule(_types.ModuleType):
    """``tp.compact`` shares its name with this module; with lazy imports Python may bind
    either to the name, so calling the module compacts (as ``torchpenalty.select`` does)."""

    def __call__(self, model: nn.Module, **kwargs: Any) -> tuple[nn.Sequential, CompactReport]:
        return compact(model, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
