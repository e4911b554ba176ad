"""Pure math on lists of tensors: penalty values, gradients and proximal operators.

Conventions (``s`` is the strength, sums run over every element of every tensor):

* ``l2``:          ``s/2 * sum |w|**2``                      gradient ``s * w``
* ``l1``:          ``s * sum |w|``                           gradient ``s * sgn(w)`` (0 at 0)
* ``elastic_net``: ``s * (r * sum |w| + (1 - r)/2 * sum |w|**2)``
* ``group_lasso``: ``s * sum_g ||w_g||_2``, groups are the slices of each tensor along ``dim``
* ``l2sp``:        ``s/2 * sum |w - w0|**2``                 gradient ``s * (w - w0)``
* ``orthogonal``:  ``s * ||M M^H - I||_F**2`` with ``M`` the tensor flattened to
  ``(size(0), -1)`` and transposed when it has more rows than columns (the smaller Gram).

Values are 0-d tensors accumulated in float32, or in float64 when a tensor is float64 or
complex128, on the device of the first tensor, and carry autograd. Complex tensors use
``|w|``. Elementwise penalties are computed with ``torch._foreach_*`` kernels (one pass
per (device, dtype) bucket, not a Python loop over tensors); group lasso and orthogonality
need per-tensor shapes and loop over tensors.

Functions ending in ``_`` work in place under ``torch.no_grad()``:
``*_grad_(grads, params, s)`` adds the penalty's gradient to ``grads``;
``*_prox_(params, t)`` replaces ``params`` by the proximal point of ``t * P`` where
``P`` is the penalty at strength 1 (``t = lr * s`` after an optimizer step).

>>> import torch
>>> w = [torch.tensor([[3.0, -4.0]])]
>>> l2(w, 0.5)  # 0.5/2 * (9 + 16)
tensor(6.2500)
>>> l1(w, 0.5)  # 0.5 * (3 + 4)
tensor(3.5000)
>>> p = [torch.tensor([-2.0, 0.5, 3.0])]
>>> l1_prox_(p, 1.0); p  # soft-threshold at 1: exact zeros
[tensor([-1.,  0.,  2.])]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "accumulation_dtype",
    "elastic_net",
    "elastic_net_grad_",
    "elastic_net_prox_",
    "group_lasso",
    "group_lasso_grad_",
    "group_lasso_prox_",
    "group_lasso_prox_metric_",
    "l1",
    "l1_grad_",
    "l1_prox_",
    "l2",
    "l2_grad_",
    "l2_prox_",
    "l2sp",
    "l2sp_grad_",
    "l2sp_prox_",
    "min_max_norm_",
    "non_neg_",
    "orthogonal",
    "orthogonal_grad_",
    "scale_threshold",
    "soft_threshold_",
    "stochastic_round",
    "sum_abs",
    "sum_squares",
    "thresholds",
    "unit_norm_",
]

Strength = float | Tensor


def accumulation_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """float64 if any tensor is float64 or complex128, else float32."""
    wide = (torch.float64, torch.complex128)
    return torch.float64 if any(t.dtype in wide for t in tensors) else torch.float32


def _zero(tensors: Sequence[Tensor], device: torch.device | None = None) -> Tensor:
    dev = device if device is not None else (tensors[0].device if tensors else None)
    return torch.zeros((), dtype=accumulation_dtype(tensors), device=dev)


def _buckets(tensors: Sequence[Tensor]) -> dict[tuple, list[int]]:
    out: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        out[(t.device, t.dtype)].append(i)
    return out


def _norms(tensors: Sequence[Tensor], ord: float) -> Tensor:
    """Per-tensor ``ord``-norms in the accumulation dtype, stacked on the first device."""
    acc = accumulation_dtype(tensors)
    device = tensors[0].device
    parts = []
    for (_, dtype), idx in _buckets(tensors).items():
        group = [tensors[i] for i in idx]
        if dtype.is_complex:
            norms = torch._foreach_norm(group, ord)
        else:
            norms = torch._foreach_norm(group, ord, dtype=acc)
        parts.extend(n.to(device=device, dtype=acc) for n in norms)
    return torch.stack(parts)


_DOT_MIN = 1 << 14  # elements from which a CPU BLAS dot beats the norm kernel


def _sum_sq(tensors: Sequence[Tensor]) -> Tensor:
    """``sum |w|**2`` in the accumulation dtype, on the first tensor's device. Large
    contiguous float32/float64 CPU tensors use a BLAS dot (about twice the speed of the
    CPU norm kernel); everything else goes through one ``_foreach_norm`` per bucket."""
    acc = accumulation_dtype(tensors)
    device = tensors[0].device
    dots, rest = [], []
    for t in tensors:
        if (
            t.device.type == "cpu"
            and t.dtype in (torch.float32, torch.float64)
            and t.numel() >= _DOT_MIN
            and t.is_contiguous()
            and type(t) in (Tensor, nn.Parameter)
        ):
            flat = t.view(-1)
            dots.append(torch.dot(flat, flat).to(acc))
        else:
            rest.append(t)
    total = torch.stack(dots).sum() if dots else None
    if rest:
        sq = _norms(rest, 2.0).square().sum().to(device)
        total = sq if total is None else total + sq
    return total


def _scaled(tensors: Sequence[Tensor], scale: Tensor) -> list[Tensor]:
    """``t * scale`` for each tensor, computed in each tensor's own dtype."""
    out: list[Tensor | None] = [None] * len(tensors)
    for (device, dtype), idx in _buckets(tensors).items():
        prods = torch._foreach_mul([tensors[i] for i in idx], scale.to(device=device, dtype=dtype))
        for i, t in zip(idx, prods, strict=True):
            out[i] = t
    return out  # type: ignore[return-value]


_DEFER_MIN = 1 << 16  # elements from which a weight's gradient is added in place


def _deferrable(t: Tensor) -> bool:
    """A plain leaf weight large enough for an in-place gradient to pay (no DTensor, no
    subclass: their gradients are reduced and assigned by their own machinery)."""
    return (
        type(t) in (Tensor, nn.Parameter)
        and t.is_leaf
        and t.requires_grad
        and t.numel() >= _DEFER_MIN
    )


def _add_later(tensors: Sequence[Tensor], scale: Tensor) -> None:
    """Add ``scale * t`` to ``t.grad`` in place once the backward pass has accumulated
    ``t``'s other gradients (a post-accumulate-grad hook), or at the end of the pass for a
    weight that gets none: one pass over ``grad`` and ``t``, where returning the gradient
    would allocate ``scale * t`` and then add it to the other gradients (three more)."""
    pending: dict[int, Tensor] = {id(t): t for t in tensors}
    handles = []

    def add(t: Tensor) -> None:
        if pending.pop(id(t), None) is not None:
            s = scale.to(device=t.device, dtype=t.dtype)
            if t.grad is None:
                t.grad = t.detach() * s
            else:
                t.grad.addcmul_(t.detach(), s)

    def finish() -> None:
        for t in list(pending.values()):
            add(t)
        for h in handles:
            h.remove()

    for t in tensors:
        handles.append(t.register_post_accumulate_grad_hook(add))
    torch.autograd.Variable._execution_engine.queue_callback(finish)


class _SumSquares(torch.autograd.Function):
    """``sum |w|**2`` with a one-pass backward ``2 * g * w`` (autograd through the norm
    would compute ``g * norm * w / norm`` in several passes). In eager ``.backward()``,
    large plain leaf weights get ``2 * g * w`` added to their ``.grad`` in place after
    their other gradients (:func:`_add_later`); compiled graphs, ``create_graph=True``,
    ``torch.autograd.grad`` and tensor subclasses get the gradient returned."""

    @staticmethod
    def forward(ctx, *tensors: Tensor) -> Tensor:
        ctx.save_for_backward(*tensors)
        ctx.may_defer = not torch.compiler.is_compiling()
        return _sum_sq(tensors)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        # grad mode is on here only under create_graph=True: return the gradient then
        return _sum_squares_backward(ctx, g, ctx.may_defer and not torch.is_grad_enabled())


@once_differentiable
def _sum_squares_backward(ctx, g: Tensor, may_defer: bool) -> tuple[Tensor | None, ...]:
    tensors = ctx.saved_tensors
    later = [False] * len(tensors)
    if may_defer:
        later = [_deferrable(t) and _accumulates(t) for t in tensors]
    if any(later):
        _add_later([t for t, d in zip(tensors, later, strict=True) if d], 2 * g)
    now = [t for t, d in zip(tensors, later, strict=True) if not d]
    grads = iter(_scaled(now, 2 * g)) if now else iter(())
    return tuple(None if d else next(grads) for d in later)


def _accumulates(t: Tensor) -> bool:
    """True when this backward pass will accumulate into ``t.grad`` (``.backward()``;
    ``torch.autograd.grad`` returns gradients without accumulating)."""
    node = torch.autograd.graph.get_gradient_edge(t).node
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except RuntimeError:  # raised for leaves inside torch.autograd.grad
        return False


class _SumAbs(torch.autograd.Function):
    """``sum |w|`` with backward ``g * sgn(w)`` (0 at 0)."""

    @staticmethod
    def forward(ctx, *tensors: Tensor) -> Tensor:
        ctx.save_for_backward(*tensors)
        return _norms(tensors, 1.0).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor, ...]:
        return tuple(_scaled_sgn(ctx.saved_tensors, g))


def _scaled_sgn(tensors: Sequence[Tensor], scale: Tensor) -> list[Tensor]:
    signs = _sgn(tensors)
    out = []
    for t, sg in zip(tensors, signs, strict=True):
        out.append(sg.mul_(scale.to(device=t.device, dtype=sg.dtype)))
    return out


def sum_squares(tensors: Sequence[Tensor]) -> Tensor:
    """``sum |w|**2`` over all tensors, accumulated in float32 (float64 if wider).

    >>> sum_squares([torch.full((1000,), 300.0, dtype=torch.float16)])  # fp16 would overflow
    tensor(90000000.)
    """
    if not tensors:
        return _zero(tensors)
    if any(t.requires_grad for t in tensors) and torch.is_grad_enabled():
        return _SumSquares.apply(*tensors)
    return _sum_sq(tensors)


def sum_abs(tensors: Sequence[Tensor]) -> Tensor:
    """``sum |w|`` over all tensors, accumulated in float32 (float64 if wider)."""
    if not tensors:
        return _zero(tensors)
    if any(t.requires_grad for t in tensors) and torch.is_grad_enabled():
        return _SumAbs.apply(*tensors)
    return _norms(tensors, 1.0).sum()


# --------------------------------------------------------------------------- stacked models
# The in-place gradient and proximal functions of L2, L1, elastic net and group lasso also
# take a 1-D tensor ``strength`` / ``t`` of length M: then every tensor holds M stacked
# models along dim 0 and model m uses ``strength[m]`` (the vectorized strength sweep).


def _per(p: Tensor, s: float | Tensor) -> float | Tensor:
    """``s`` as a float, or a length-M tensor viewed to broadcast over ``p``'s dim 0."""
    if isinstance(s, Tensor):
        return s.to(device=p.device, dtype=p.real.dtype).view(-1, *([1] * (p.ndim - 1)))
    return s


def _active(s: float | Tensor | list) -> bool:
    """Whether ``s`` may be nonzero. Tensors count as active without reading them (no host
    synchronization, no data-dependent branch inside a compiled or captured step)."""
    return isinstance(s, (Tensor, list)) or s != 0


def _stacked(s: object) -> bool:
    """A 1-D tensor of per-model strengths (stacked models); a 0-d tensor is one strength
    read live (a compiled or captured step)."""
    return isinstance(s, Tensor) and s.ndim == 1


def _mul_scalar_(tensors: Sequence[Tensor], scale: Tensor) -> None:
    """``t *= scale`` for each tensor, ``scale`` a 0-d tensor (moved to each device)."""
    for (device, _), idx in _buckets(tensors).items():
        torch._foreach_mul_([tensors[i] for i in idx], scale.to(device))


Threshold = float | Tensor | list
"""A proximal threshold: a float, a 1-D tensor of per-model values (stacked models), or a
list with one tensor per parameter of per-coordinate values (a preconditioned step)."""


def scale_threshold(t: Threshold, c: float) -> Threshold:
    """``t * c`` for any :data:`Threshold`."""
    return [x * c for x in t] if isinstance(t, list) else t * c


def thresholds(params: Sequence[Tensor], t: float | Tensor, metric: Sequence[Tensor]) -> list:
    """Per-coordinate thresholds ``t / d`` of a step preconditioned by the diagonal
    ``metric`` (one tensor ``d`` per parameter: the optimizer's step is ``lr * g / d``).
    ``t`` is a float or a 1-D tensor of per-model values (stacked models)."""
    return [_per(p, t) / d.to(p.real.dtype) for p, d in zip(params, metric, strict=True)]


# --------------------------------------------------------------------------- rounding
def stochastic_round(
    x: Tensor, dtype: torch.dtype, generator: torch.Generator | None = None
) -> Tensor:
    """Round ``x`` (float32) to ``dtype`` (float16 / bfloat16) up or down at random, with
    probability proportional to closeness, so that the result is ``x`` in expectation:
    small updates survive on average instead of rounding away.

    >>> x = torch.full((100_000,), 1.0 - 1e-3)   # between bf16's 0.99609375 and 1.0
    >>> torch.bfloat16 and round(stochastic_round(x, torch.bfloat16).float().mean().item(), 3)
    0.999
    """
    r = x.to(dtype)
    r32 = r.to(x.dtype)
    inf = torch.tensor(float("inf"), dtype=dtype, device=x.device)
    other = torch.nextafter(r, torch.where(x > r32, inf, -inf))
    gap = (other.to(x.dtype) - r32).abs()
    p = torch.where(gap > 0, (x - r32).abs() / torch.where(gap > 0, gap, 1), 0)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(u < p, other, r)


# --------------------------------------------------------------------------- L2
def l2(params: Sequence[Tensor], strength: Strength) -> Tensor:
    """``strength/2 * sum |w|**2``."""
    return sum_squares(params) * (strength * 0.5)


@torch.no_grad()
def l2_grad_(grads: Sequence[Tensor], params: Sequence[Tensor], strength: Strength) -> None:
    """``grads += strength * w`` (the same operation as ``SGD(weight_decay=strength)``)."""
    if not params or not _active(strength):
        return
    if isinstance(strength, Tensor):
        for g, p in zip(grads, params, strict=True):
            g.addcmul_(p, _per(p, strength))
    else:
        torch._foreach_add_(list(grads), list(params), alpha=strength)


@torch.no_grad()
def l2_prox_(params: Sequence[Tensor], t: Threshold) -> None:
    """Proximal point of ``t/2 * |w|**2``: ``w / (1 + t)``."""
    if not params or not _active(t):
        return
    if isinstance(t, list):
        for p, tv in zip(params, t, strict=True):
            p.div_(1 + tv)
    elif isinstance(t, Tensor):
        for p in params:
            p.div_(1 + _per(p, t))
    else:
        torch._foreach_div_(list(params), 1.0 + t)


# --------------------------------------------------------------------------- L1
def l1(params: Sequence[Tensor], strength: Strength) -> Tensor:
    """``strength * sum |w|``."""
    return sum_abs(params) * strength


def _sgn(params: Sequence[Tensor]) -> list[Tensor]:
    if any(p.is_complex() for p in params):
        return [torch.sgn(p) for p in params]
    return list(torch._foreach_sign(list(params)))


@torch.no_grad()
def l1_grad_(grads: Sequence[Tensor], params: Sequence[Tensor], strength: Strength) -> None:
    """``grads += strength * sgn(w)`` (subgradient 0 at ``w == 0``)."""
    if not params or not _active(strength):
        return
    if isinstance(strength, Tensor):
        for g, p, sg in zip(grads, params, _sgn(params), strict=True):
            g.addcmul_(sg, _per(p, strength))
    else:
        torch._foreach_add_(list(grads), _sgn(params), alpha=strength)


@torch.no_grad()
def soft_threshold_(params: Sequence[Tensor], t: Threshold) -> None:
    """``w <- sgn(w) * max(|w| - t, 0)``, written as ``w - clamp(w, -t, t)`` for real
    tensors so that every ``|w| <= t`` becomes an exact zero. ``t`` may be a list of
    per-coordinate thresholds (one tensor per parameter, see :func:`thresholds`).

    >>> p = [torch.tensor([-2.0, 0.5, 3.0])]
    >>> soft_threshold_(p, [torch.tensor([1.0, 1.0, 2.5])]); p
    [tensor([-1.0000,  0.0000,  0.5000])]
    """
    if not params or not _active(t):
        return
    if isinstance(t, list):
        for p, tv in zip(params, t, strict=True):
            _soft_one(p, tv)
        return
    real = [p for p in params if not p.is_complex()]
    if real and not isinstance(t, Tensor):
        clipped = torch._foreach_clamp_min(real, -t)
        torch._foreach_clamp_max_(clipped, t)
        torch._foreach_sub_(real, clipped)
    elif real:
        for p in real:
            _soft_one(p, _per(p, t))
    for p in params:
        if p.is_complex():
            _soft_one(p, _per(p, t))


def _soft_one(p: Tensor, tv: float | Tensor) -> None:
    if isinstance(tv, Tensor):
        tv = tv.to(device=p.device, dtype=p.real.dtype)
    if p.is_complex():
        mag = p.abs()
        p.mul_(torch.where(mag > tv, 1 - tv / torch.clamp(mag, min=tv), 0))
    elif isinstance(tv, Tensor):
        p.sub_(torch.minimum(torch.maximum(p, -tv), tv))
    else:
        p.sub_(torch.clamp(p, -tv, tv))


def l1_prox_(params: Sequence[Tensor], t: Threshold) -> None:
    """Proximal point of ``t * |w|``: the soft-threshold at ``t``."""
    soft_threshold_(params, t)


# --------------------------------------------------------------------------- elastic net
def elastic_net(params: Sequence[Tensor], strength: Strength, l1_ratio: float) -> Tensor:
    """``strength * (l1_ratio * sum |w| + (1 - l1_ratio)/2 * sum |w|**2)``."""
    if not params:
        return _zero(params)
    out = _zero(params)
    if l1_ratio != 0:
        out = out + sum_abs(params) * l1_ratio
    if l1_ratio != 1:
        out = out + sum_squares(params) * ((1 - l1_ratio) * 0.5)
    return out * strength


@torch.no_grad()
def elastic_net_grad_(
    grads: Sequence[Tensor], params: Sequence[Tensor], strength: Strength, l1_ratio: float
) -> None:
    """``grads += strength * (l1_ratio * sgn(w) + (1 - l1_ratio) * w)``."""
    l1_grad_(grads, params, strength * l1_ratio)
    l2_grad_(grads, params, strength * (1 - l1_ratio))


@torch.no_grad()
def elastic_net_prox_(params: Sequence[Tensor], t: Threshold, l1_ratio: float) -> None:
    """Proximal point of ``t * (r|w| + (1-r)/2 |w|**2)``:
    ``soft_threshold(w, t*r) / (1 + t*(1-r))``."""
    soft_threshold_(params, scale_threshold(t, l1_ratio))
    l2_prox_(params, scale_threshold(t, 1 - l1_ratio))


# --------------------------------------------------------------------------- group lasso
def _rows(p: Tensor, dim: int, stacked: bool = False) -> Tensor:
    """View ``p`` as ``(groups, -1)`` with one row per slice along ``dim`` (as
    ``(M, groups, -1)`` when ``stacked``: ``dim`` then counts after the model dim)."""
    if stacked:
        d = dim % (p.ndim - 1) + 1 if p.ndim > 1 else None
        if d is None:
            return p.reshape(p.shape[0], 1, 1)
        return p.movedim(d, 1).reshape(p.shape[0], p.shape[d], -1)
    if p.ndim == 0:
        return p.reshape(1, 1)
    return p.movedim(dim, 0).reshape(p.shape[dim], -1)


def _group_norms(p: Tensor, dim: int, acc: torch.dtype, stacked: bool = False) -> Tensor:
    rows = _rows(p, dim, stacked)
    if p.is_complex():
        return torch.linalg.vector_norm(rows, dim=-1).to(acc)
    return torch.linalg.vector_norm(rows, dim=-1, dtype=acc)


def _check_dim(p: Tensor, dim: int, stacked: bool = False) -> None:
    n = p.ndim - 1 if stacked else p.ndim
    if n and not -n <= dim < n:
        raise ValueError(
            f"dim must index every tensor's dimensions, got {dim} for shape {tuple(p.shape)}"
        )


def _per_tensor_total(params: Sequence[Tensor], fn) -> Tensor:
    """``sum_p fn(p, acc)`` for penalties that need each tensor's shape (no foreach)."""
    acc = accumulation_dtype(params)
    device = params[0].device
    total = _zero(params)
    for p in params:
        total = total + fn(p, acc).to(device=device, dtype=acc)
    return total


def group_lasso(params: Sequence[Tensor], strength: Strength, dim: int = 0) -> Tensor:
    """``strength * sum_g ||w_g||_2`` where each ``w_g`` is a slice of a tensor along ``dim``
    (``dim=0``: one group per output unit of a Linear, per filter of a Conv)."""
    if not params:
        return _zero(params)
    for p in params:
        _check_dim(p, dim)
    return _per_tensor_total(params, lambda p, acc: _group_norms(p, dim, acc).sum()) * strength


def _group_factor(p: Tensor, dim: int, fn, stacked: bool) -> Tensor:
    """Per-group factor ``fn(norms)`` shaped to broadcast against ``p`` along ``dim``."""
    f = fn(_group_norms(p, dim, accumulation_dtype([p]), stacked))
    if p.ndim == 0:
        return f.reshape(())
    shape = [1] * p.ndim
    if stacked:
        shape[0] = p.shape[0]
        if p.ndim > 1:
            shape[dim % (p.ndim - 1) + 1] = f.shape[1]
    else:
        shape[dim] = p.shape[dim]
    return f.reshape(shape)


def _dev(s: Strength, p: Tensor) -> Strength:
    """A 0-d tensor strength on ``p``'s device (floats as they are)."""
    return s.to(p.device) if isinstance(s, Tensor) else s


def _tracing() -> bool:
    """Inside ``torch.compile`` tracing or a CUDA graph capture (no host reads then)."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _col(s: Strength, stacked: bool) -> float | Tensor:
    return s.reshape(-1, 1) if stacked else s  # type: ignore[union-attr]


@torch.no_grad()
def group_lasso_grad_(
    grads: Sequence[Tensor], params: Sequence[Tensor], strength: Strength, dim: int = 0
) -> None:
    """``grads_g += strength * w_g / ||w_g||`` (0 for an all-zero group)."""
    if not _active(strength):
        return
    stacked = _stacked(strength)
    for g, p in zip(grads, params, strict=True):
        _check_dim(p, dim, stacked)
        s = _col(strength.to(p.real.dtype), True) if stacked else _dev(strength, p)

        def fn(n, s=s):
            return torch.where(n > 0, s / torch.clamp(n, min=1e-300), 0)

        g.add_((p * _group_factor(p, dim, fn, stacked)).to(g.dtype))


@torch.no_grad()
def group_lasso_prox_(params: Sequence[Tensor], t: Strength, dim: int = 0) -> None:
    """Proximal point of ``t * ||w_g||``: ``w_g * max(0, 1 - t/||w_g||)``; groups with
    ``||w_g|| <= t`` become exact zeros."""
    if not _active(t):
        return
    stacked = _stacked(t)
    for p in params:
        _check_dim(p, dim, stacked)
        tt = _col(t.to(p.real.dtype), True) if stacked else _dev(t, p)

        def fn(n, tt=tt):
            return torch.where(n > tt, 1 - tt / torch.clamp(n, min=tt), 0)

        p.copy_(p * _group_factor(p, dim, fn, stacked))


@torch.no_grad()
def group_lasso_prox_metric_(
    params: Sequence[Tensor], t: float | Tensor, metric: Sequence[Tensor], dim: int = 0
) -> None:
    """Proximal point of ``t * ||w_g||`` in the metric ``D = diag(d)`` of a preconditioned
    step (one tensor ``d`` per parameter), group by group:
    ``argmin_w 1/2 (w - z)^T D (w - z) + t ||w||``.

    The group is zero when ``||D z|| <= t``; otherwise ``w_i = d_i z_i / (d_i + mu)`` with
    ``mu > 0`` the root of ``||D z * mu / (d + mu)|| = t`` (increasing in ``mu``; found by
    bisection). With ``d`` constant on a group this is the Euclidean group shrinkage at
    ``t / d``. ``t`` is a float or a 1-D tensor of per-model values (stacked models).
    """
    if not _active(t):
        return
    stacked = _stacked(t)
    for p, d in zip(params, metric, strict=True):
        _check_dim(p, dim, stacked)
        acc = accumulation_dtype([p])
        z = _rows(p, dim, stacked).to(acc)
        dd = _rows(d.expand_as(p), dim, stacked).to(acc)
        if stacked:
            lam = t.to(acc).reshape(-1, 1, 1)
        elif isinstance(t, Tensor):  # one live strength: no host read
            lam = t.to(device=p.device, dtype=acc)
        else:
            lam = torch.tensor(float(t), dtype=acc, device=p.device)
        w = _metric_shrink(z, dd, lam)
        if p.ndim <= (1 if stacked else 0):
            p.copy_(w.reshape(p.shape))
        else:
            g = dim % (p.ndim - 1) + 1 if stacked else dim % p.ndim
            to = 1 if stacked else 0
            p.copy_(w.reshape(p.movedim(g, to).shape).movedim(to, g))


def _metric_shrink(z: Tensor, d: Tensor, lam: Tensor, iters: int = 40) -> Tensor:
    """Rows ``z`` (..., k) shrunk by ``lam`` (broadcast to (..., 1)) in the metric ``d``:
    safeguarded Newton on ``phi(mu) = ||D z * mu / (d + mu)|| - lam``, bracketed by
    ``lam * [min d, max d] / (||D z|| - lam)``, with geometric bisection as the fallback."""
    dz = d * z
    ndz = torch.linalg.vector_norm(dz, dim=-1, keepdim=True)
    lam = lam.expand(ndz.shape)
    live = ndz > lam
    gap = torch.clamp(ndz - lam, min=1e-30)
    hi = torch.where(live, lam * d.amax(dim=-1, keepdim=True) / gap, 1.0)
    lo = torch.where(live, lam * d.amin(dim=-1, keepdim=True) / gap, 1.0)
    mu = torch.sqrt(lo * hi)
    tol = 64 * torch.finfo(z.dtype).eps
    for i in range(iters):
        u = dz * (mu / (d + mu))
        nu = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        phi = nu - lam
        if i % 4 == 3 and not _tracing() and bool(((phi.abs() <= tol * lam) | ~live).all()):
            break  # early exit reads the device: not inside a compiled or captured step
        dphi = (u * dz * d / (d + mu).square()).sum(-1, keepdim=True) / nu.clamp(min=1e-300)
        up = phi > 0
        hi = torch.where(up, mu, hi)
        lo = torch.where(up, lo, mu)
        step = mu - phi / dphi.clamp(min=1e-300)
        mu = torch.where((step > lo) & (step < hi), step, torch.sqrt(lo * hi))
    return torch.where(live, dz / (d + mu), 0)


# --------------------------------------------------------------------------- constraints
# Euclidean projections onto constraint sets (Keras ``keras.constraints`` formulas, with
# Keras's ``epsilon() = 1e-7``). ``dim`` is the dimension (or tuple of dimensions) the
# norm runs over: Keras's ``axis`` on its kernel layout; a torch ``nn.Linear`` weight is
# ``(out, in)``, the transpose of a Keras Dense kernel ``(in, out)``, so Keras
# ``axis=0`` (per output unit) is ``dim=1`` here, and ``dim=None`` is every dimension
# but the first (per output unit of a Linear or a Conv).
EPSILON = 1e-7


def _norm_dims(p: Tensor, dim: int | tuple[int, ...] | None) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(1, p.ndim)) if p.ndim > 1 else tuple(range(p.ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -p.ndim <= d < max(p.ndim, 1):
            raise ValueError(
                f"dim must index every tensor's dimensions, got {dim} for shape {tuple(p.shape)}"
            )
    return dims


def _slice_norms(p: Tensor, dim) -> Tensor:
    dims = _norm_dims(p, dim)
    w = p.to(accumulation_dtype([p])) if p.dtype in (torch.float16, torch.bfloat16) else p
    return torch.sqrt(torch.sum(w.square(), dim=dims, keepdim=True)) if dims else w.abs()


@torch.no_grad()
def min_max_norm_(
    params: Sequence[Tensor],
    min_value: float,
    max_value: float,
    rate: float = 1.0,
    dim: int | tuple[int, ...] | None = None,
) -> None:
    """``w * (rate * clip(n, min, max) + (1 - rate) * n) / (eps + n)`` with ``n`` the norm
    over ``dim`` (Keras ``MinMaxNorm``; ``min=0, rate=1`` is ``MaxNorm``)."""
    for p in params:
        n = _slice_norms(p, dim)
        desired = rate * torch.clamp(n, min_value, max_value) + (1 - rate) * n
        p.mul_((desired / (EPSILON + n)).to(p.dtype))


@torch.no_grad()
def unit_norm_(params: Sequence[Tensor], dim: int | tuple[int, ...] | None = None) -> None:
    """``w / (eps + n)`` with ``n`` the norm over ``dim`` (Keras ``UnitNorm``)."""
    for p in params:
        p.div_((EPSILON + _slice_norms(p, dim)).to(p.dtype))


@torch.no_grad()
def non_neg_(params: Sequence[Tensor]) -> None:
    """``w * (w >= 0)`` (Keras ``NonNeg``)."""
    for p in params:
        p.clamp_(min=0)


# --------------------------------------------------------------------------- L2-SP
def l2sp(params: Sequence[Tensor], refs: Sequence[Tensor], strength: Strength) -> Tensor:
    """``strength/2 * sum |w - w0|**2`` (pull toward reference weights ``w0``)."""
    if not params:
        return _zero(params)
    low = (torch.float16, torch.bfloat16)
    if any(p.dtype in low for p in params):  # subtract in float32, not in half precision
        params = [p.float() if p.dtype in low else p for p in params]
        refs = [r.float() if r.dtype in low else r for r in refs]
    return sum_squares(torch._foreach_sub(list(params), list(refs))) * (strength * 0.5)


@torch.no_grad()
def l2sp_grad_(
    grads: Sequence[Tensor], params: Sequence[Tensor], refs: Sequence[Tensor], strength: float
) -> None:
    """``grads += strength * (w - w0)``."""
    if params and _active(strength):
        diff = torch._foreach_sub(list(params), list(refs))
        if isinstance(strength, Tensor):
            _mul_scalar_(diff, strength)
            torch._foreach_add_(list(grads), diff)
        else:
            torch._foreach_add_(list(grads), diff, alpha=strength)


@torch.no_grad()
def l2sp_prox_(params: Sequence[Tensor], refs: Sequence[Tensor], t: Threshold) -> None:
    """Proximal point of ``t/2 * |w - w0|**2``: ``(w + t*w0) / (1 + t)``."""
    if not params or not _active(t):
        return
    if isinstance(t, list):
        for p, r, tv in zip(params, refs, t, strict=True):
            p.lerp_(r, (tv / (1 + tv)).to(p.dtype))
    elif isinstance(t, Tensor):
        for p, r in zip(params, refs, strict=True):
            p.lerp_(r, (t / (1 + t)).to(device=p.device, dtype=p.dtype))
    else:
        torch._foreach_lerp_(list(params), list(refs), t / (1.0 + t))


# --------------------------------------------------------------------------- orthogonality
def _gram_operand(p: Tensor, acc: torch.dtype) -> tuple[Tensor, bool]:
    """``p`` as a matrix in the accumulation dtype, transposed to have rows <= columns."""
    m = p.reshape(p.shape[0], -1) if p.ndim else p.reshape(1, 1)
    if p.is_complex():
        m = m.to(torch.complex128 if acc == torch.float64 else torch.complex64)
    else:
        m = m.to(acc)
    transposed = m.shape[0] > m.shape[1]
    return (m.mT if transposed else m), transposed


def _gram_residual(m: Tensor) -> Tensor:
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    return m @ m.mH - eye


def orthogonal(params: Sequence[Tensor], strength: Strength) -> Tensor:
    """``strength * ||M M^H - I||_F**2`` summed over tensors (soft orthogonality)."""
    if not params:
        return _zero(params)

    def one(p: Tensor, acc: torch.dtype) -> Tensor:
        r = _gram_residual(_gram_operand(p, acc)[0])
        return (torch.view_as_real(r) if r.is_complex() else r).square().sum()

    return _per_tensor_total(params, one) * strength


@torch.no_grad()
def orthogonal_grad_(grads: Sequence[Tensor], params: Sequence[Tensor], strength: Strength) -> None:
    """``grads += 4 * strength * (M M^H - I) M`` (reshaped back to each tensor)."""
    if not _active(strength):
        return
    acc = accumulation_dtype(params)
    for g, p in zip(grads, params, strict=True):
        m, transposed = _gram_operand(p, acc)
        d = (_dev(strength, p) * 4.0) * (_gram_residual(m) @ m)
        if transposed:
            d = d.mT
        g.add_(d.reshape(p.shape).to(g.dtype))
