"""What the decay is doing: weight and gradient norms, update-to-weight ratios against
their steady state, per-step decay, exact zeros, and embedding rows decayed without a
gradient.

The steady state (Van Laarhoven 2017; Kosson et al. 2024, arXiv 2305.17212; Defazio 2025,
arXiv 2506.02285; Chou 2025, arXiv 2512.08217). A step with per-step decay ``d`` is
``w' = (1 - d) w - u`` with the optimizer's own update ``u``. When ``u`` is orthogonal to
``w`` (weights followed by a normalization layer) or independent of it with mean zero
(the random-walk model), ``E||w'||**2 = (1 - d)**2 ||w||**2 + ||u||**2``, and the norm stops
changing when

    ||u|| / ||w|| = sqrt(d * (2 - d))  ~  sqrt(2 d)          (predicted update ratio)
    ||w||_eq = ||u|| / sqrt(d * (2 - d))                     (equilibrium norm).

For AdamW (``d = lr * s``), whose update has ``||u||**2 ~ lr**2 * numel`` when the
normalized update has unit RMS, this is ``||w||_eq ~ sqrt(lr * numel / (2 s))``; for SGD
(``u = lr * g``) the gradient-to-weight ratio is ``||g|| / ||w|| = sqrt(2 s / lr)``, which
grows as the lr anneals (the effect ``mode="corrected"`` removes). ``d`` per mode is
:func:`torchpenalty.timescale.decay_per_step`. A ratio far above the prediction means the
weights are still shrinking towards equilibrium (or the decay is too weak to matter); far
below, they are growing.

The update ``u`` is read from the optimizer's state after ``step()``, exactly as the last
step applied it, for ``torch.optim`` SGD, Adam and AdamW (``lr * m_hat / (sqrt(v_hat) +
eps)``); other optimizers report ``nan``. DTensor parameters report their local shard.

>>> import torch, torchpenalty as tp
>>> net = torch.nn.Linear(2, 2, bias=False)
>>> with torch.no_grad():
...     _ = net.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
>>> reg = tp.Regularizer(net, tp.L2(0.1))
>>> opt = torch.optim.SGD(net.parameters(), lr=0.5)
>>> net.weight.grad = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
>>> row = tp.stats(reg, opt, singular_values=True).tensors[0]
>>> row.weight_norm, row.grad_norm, row.update_norm, row.zero_fraction, row.sigma_max
(5.0, 1.0, 0.5, 0.5, 4.0)
>>> row.decay, round(row.update_ratio, 6), round(row.predicted_ratio, 6)  # 0.05, 0.5/5, sqrt(.05*1.95)
(0.05, 0.1, 0.31225)
"""

from __future__ import annotations

import math
import sys as _sys
import types as _types
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ._validation import check_positive, type_error
from .distributed import local
from .timescale import _lr, _regularized, decay_per_step, l2_rate, shrinking_modes
from .updates import Cautious, Corrected

__all__ = ["DecayStats", "GroupStats", "TensorStats", "stats"]

_NAN = float("nan")
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


class TensorStats(NamedTuple):
    name: str
    group: int | None  # optimizer group index (None without an optimizer)
    penalty: str
    numel: int
    weight_norm: float
    grad_norm: float  # nan without a gradient
    update_norm: float  # ||u|| of the optimizer's last update, decay excluded (nan: unknown)
    update_ratio: float  # update_norm / weight_norm
    predicted_ratio: float  # sqrt(d * (2 - d)) at steady state (nan: no prediction)
    decay: float  # per-step decay d (nan: not a multiplicative decay, or no optimizer)
    zero_fraction: float  # exact zeros / numel
    sigma_max: float  # largest singular value of the (rows, -1) matrix (nan unless asked)
    idle_rows: int | None  # embedding rows with an all-zero gradient (None: not an embedding)


class GroupStats(NamedTuple):
    group: int | None
    penalty: str
    names: list[str]
    numel: int
    weight_norm: float  # sqrt of the sum of squares over the group's tensors
    grad_norm: float
    update_norm: float
    update_ratio: float
    predicted_ratio: float
    decay: float
    zero_fraction: float
    sigma_max: float  # the largest over the group


class DecayStats(NamedTuple):
    """Per tensor and per group statistics; ``print(stats)`` shows them as a table (one
    row per tensor, then one per group; ``repr`` keeps every field)."""

    tensors: list[TensorStats]
    groups: list[GroupStats]

    def __str__(self) -> str:
        head = ("name", "group", "penalty", "numel", "||w||", "||grad||", "upd/||w||",
                "predicted", "decay", "zeros")  # fmt: skip
        rows = [_row(t.name, t) for t in self.tensors]
        rows += [_row(f"group {g.group} ({len(g.names)} tensors)", g) for g in self.groups]
        width = [max(len(head[j]), *(len(r[j]) for r in rows)) for j in range(len(head))]
        lines = [head, *rows]
        return "\n".join(
            "  ".join(
                c.ljust(w) if j < 3 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, width, strict=True))
            )
            for r in lines
        )


def _row(name: str, t: Any) -> tuple[str, ...]:
    def f(v: float) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    shown = name if len(name) <= 40 else "..." + name[-37:]
    group = "-" if t.group is None else str(t.group)
    return (shown, group, t.penalty, str(t.numel), f(t.weight_norm), f(t.grad_norm),
            f(t.update_ratio), f(t.predicted_ratio), f(t.decay), f"{100 * t.zero_fraction:.1f}%")  # fmt: skip


def _norms(tensors: Sequence[Tensor | None], like: Tensor) -> Tensor:
    """L2 norms in float64 on ``like``'s device, computed by foreach calls in float32 (the
    tensors' dtype if wider); ``nan`` where the tensor is None."""
    out = torch.full((len(tensors),), _NAN, dtype=torch.float64, device=like.device)
    for wide in (False, True):
        idx = [
            i
            for i, t in enumerate(tensors)
            if t is not None and (t.dtype in (torch.float32, torch.float64)) == wide
        ]
        if idx:
            kind = None if wide else torch.float32
            norms = torch._foreach_norm([tensors[i] for i in idx], 2, dtype=kind)
            out[idx] = torch.stack([n.to(like.device, torch.float64) for n in norms])
    return out


#: Elements per foreach chunk when an update must be rebuilt (Adam's ``m / sqrt(v)``):
#: bounds the temporaries to two such chunks, whatever the model size.
_CHUNK = 1 << 24


def _chunks(tensors: list[Tensor | None]):
    """Indices of the non-None tensors, in runs of about ``_CHUNK`` elements."""
    run: list[int] = []
    size = 0
    for i, t in enumerate(tensors):
        if t is None:
            continue
        run.append(i)
        size += t.numel()
        if size >= _CHUNK:
            yield run
            run, size = [], 0
    if run:
        yield run


def _adam_norms(group: dict[str, Any], states: list[dict], like: Tensor) -> Tensor:
    """``||m_hat / (sqrt(v_hat) + eps)||`` of each tensor (nan where there is no state)."""
    beta1, beta2 = group["betas"]
    key = "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"
    out = torch.full((len(states),), _NAN, dtype=torch.float64, device=like.device)
    moments = [local(s["exp_avg"]) if "exp_avg" in s else None for s in states]
    for run in _chunks(moments):
        steps = [float(states[i]["step"]) for i in run]
        denom = torch._foreach_sqrt([local(states[i][key]) for i in run])
        torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in steps])
        torch._foreach_add_(denom, group["eps"])
        u = torch._foreach_div([moments[i] for i in run], denom)
        del denom
        torch._foreach_div_(u, [1 - beta1**t for t in steps])
        out[run] = _norms(u, like)
    return out


def _sgd_norms(group: dict[str, Any], params: list[Tensor], states: list[dict], like: Tensor):
    """``||buf||`` (``||g + momentum * buf||`` with Nesterov, ``||g||`` without momentum)."""
    mu = group.get("momentum", 0.0)
    if not mu:
        return _norms([None if p.grad is None else local(p.grad) for p in params], like)
    bufs = [
        None if s.get("momentum_buffer") is None else local(s["momentum_buffer"]) for s in states
    ]
    if not group.get("nesterov"):
        return _norms(bufs, like)
    out = torch.full((len(params),), _NAN, dtype=torch.float64, device=like.device)
    for run in _chunks([b if params[i].grad is not None else None for i, b in enumerate(bufs)]):
        out[run] = _norms([local(params[i].grad).add(bufs[i], alpha=mu) for i in run], like)
    return out


def _update_norms(
    optimizer: torch.optim.Optimizer | None,
    group: dict[str, Any] | None,
    params: list[Tensor],
    like: Tensor,
) -> Tensor:
    """``lr * ||direction||`` of the optimizer's last update per tensor (decay excluded),
    read from its state; ``nan`` for optimizers whose state is not understood."""
    if optimizer is None or group is None:
        return torch.full((len(params),), _NAN, dtype=torch.float64, device=like.device)
    states = [optimizer.state.get(p, {}) for p in params]
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return _adam_norms(group, states, like) * _lr(group)
    if type(optimizer) is torch.optim.SGD:
        return _sgd_norms(group, params, states, like) * _lr(group)
    return torch.full((len(params),), _NAN, dtype=torch.float64, device=like.device)


def _sigma_max(params: list[Tensor], like: Tensor) -> Tensor:
    vals = [
        torch.linalg.matrix_norm(p.detach().float().reshape(p.shape[0], -1), ord=2).to(like.device)
        if p.ndim >= 2
        else p.detach().float().norm().to(like.device)
        for p in params
    ]
    return torch.stack(vals).double()


def _idle_rows(grads: list[Tensor | None], embedded: list[bool], like: Tensor) -> Tensor:
    """Rows of each embedding weight whose gradient is all zero (-1: not an embedding or
    no gradient)."""
    vals = [
        (g.reshape(g.shape[0], -1).abs().amax(dim=1) == 0).sum().to(like.device)
        if e and g is not None and not g.is_sparse
        else torch.tensor(-1, device=like.device)
        for g, e in zip(grads, embedded, strict=True)
    ]
    return torch.stack(vals).double()


def _rows(
    reg: Any, optimizer: torch.optim.Optimizer | None
) -> list[tuple[Any, int | None, dict | None, str, Tensor]]:
    """(penalty, group index, group, name, parameter) for every regularized tensor."""
    where: dict[int, tuple[int, dict]] = {}
    if optimizer is not None:
        for gi, g in enumerate(optimizer.param_groups):
            for p in g["params"]:
                where.setdefault(id(p), (gi, g))
    rows = []
    for pen, names, params in _regularized(reg):
        for n, p in zip(names, params, strict=True):
            gi, g = where.get(id(p), (None, None))
            if optimizer is None or g is not None:
                rows.append((pen, gi, g, n, p))
    return rows


class _Rule(NamedTuple):
    mode: str
    corrected: Corrected | None  # the handle's corrected rule (its weights and peaks)
    lr_max: float | None
    cautious: bool


def _resolve(optimizer: Any, mode: str | None, lr_max: float | None):
    """Accept an optimizer or an ``AttachHandle`` (whose rule then sets the defaults)."""
    chain = []
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            raise type_error("optimizer", "a torch.optim.Optimizer or an AttachHandle", optimizer)
        rule = getattr(optimizer, "rule", None)
        while rule is not None:
            chain.append(rule)
            rule = getattr(rule, "inner", None)
        mode = mode if mode is not None else getattr(optimizer, "mode", None)
        optimizer = inner
    mode = "decoupled" if mode is None else mode
    if not isinstance(mode, str):
        raise type_error("mode", "a string", mode)
    corrected = next((r for r in chain if isinstance(r, Corrected)), None)
    cautious = any(isinstance(r, Cautious) for r in chain)
    return optimizer, _Rule(mode, corrected, lr_max, cautious)


def _decays(rows: list, step: int, rule: _Rule) -> list[float]:
    """Per-step decay ``d`` of each row (host arithmetic, no device work)."""
    out = []
    for pen, _gi, g, name, _p in rows:
        rate = l2_rate(pen, step)
        mode, lr_max, c = rule.mode, rule.lr_max, rule.corrected
        if mode == "corrected" and c is not None and g is not None:
            if c.names is not None and name not in c.names:
                mode = "decoupled"
            lr_max = lr_max if lr_max is not None else c.seen_peak(g)
        if g is None or rate is None or mode not in shrinking_modes():
            out.append(_NAN)
        else:
            out.append(decay_per_step(rate, g, mode, lr_max=lr_max))
    return out


def _measure(
    rows: list, optimizer: torch.optim.Optimizer | None, embedded: set[int], singular: bool
) -> list[list[float]]:
    """One device pass: per row [weight, grad, update norms, exact zeros, sigma_max,
    idle rows], brought to the host with one transfer."""
    params = [local(r[4]).detach() for r in rows]
    grads = [None if r[4].grad is None else local(r[4].grad) for r in rows]
    like = params[0]
    update = torch.full((len(rows),), _NAN, dtype=torch.float64, device=like.device)
    by_group: dict[int | None, list[int]] = {}
    for i, r in enumerate(rows):
        by_group.setdefault(r[1], []).append(i)
    for idx in by_group.values():
        update[idx] = _update_norms(optimizer, rows[idx[0]][2], [rows[i][4] for i in idx], like)
    zeros = torch.stack([(p == 0).sum().to(like.device) for p in params]).double()
    sigma = _sigma_max(params, like) if singular else torch.full_like(update, _NAN)
    idle = _idle_rows(grads, [id(r[4]) in embedded for r in rows], like)
    table = torch.stack(
        [_norms(params, like), _norms(grads, like), update, zeros, sigma, idle], dim=1
    )
    return table.cpu().tolist()


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else (_NAN if math.isnan(num) or num == 0 else math.inf)


def _predicted(d: float) -> float:
    return math.sqrt(d * (2.0 - d)) if 0.0 <= d <= 2.0 else _NAN


def _group_stats(tensors: list[TensorStats]) -> list[GroupStats]:
    keyed: dict[tuple, list[TensorStats]] = {}
    for t in tensors:
        keyed.setdefault((t.group, t.penalty, t.decay), []).append(t)
    out = []
    for (gi, pen, _d), ts in keyed.items():
        numel = sum(t.numel for t in ts)
        w, g, u = (
            math.sqrt(sum(getattr(t, k) ** 2 for t in ts))
            for k in ("weight_norm", "grad_norm", "update_norm")
        )
        d = ts[0].decay
        sigma = max((t.sigma_max for t in ts), default=_NAN)
        zero = sum(round(t.zero_fraction * t.numel) for t in ts) / numel
        out.append(
            GroupStats(
                gi,
                pen,
                [t.name for t in ts],
                numel,
                w,
                g,
                u,
                _ratio(u, w),
                ts[0].predicted_ratio,
                d,
                zero,
                sigma,
            )
        )
    return out


def _warn_idle(tensors: list[TensorStats], rows: list, step: int) -> None:
    for t, r in zip(tensors, rows, strict=True):
        if t.idle_rows and r[0].strength_at(step):
            warnings.warn(
                f"{t.idle_rows} rows of the embedding {t.name!r} got no gradient this step but "
                "are still decayed: rows of rare tokens shrink towards zero. Leave embeddings "
                "out of the penalty, e.g. tp.Regularizer(model, penalty, exclude=nn.Embedding) "
                "(or a pattern such as exclude='*embed*').",
                RuntimeWarning,
                stacklevel=3,
            )


@torch.no_grad()
def stats(
    reg: Any,
    optimizer: Any = None,
    *,
    singular_values: bool = False,
    mode: str | None = None,
    lr_max: float | None = None,
) -> DecayStats:
    """Per regularized tensor and per (optimizer group, penalty, decay): weight norm, gradient
    norm, the optimizer's last update (decay excluded) and its ratio to the weight norm
    against the steady-state prediction ``sqrt(d * (2 - d))``, the per-step decay ``d``,
    the fraction of exact zeros and, with ``singular_values=True``, the largest singular
    value (of the weight reshaped to ``(rows, -1)``; costs an SVD per tensor). One foreach
    pass and one device-to-host transfer; call it after ``optimizer.step()``.

    Args:
        reg: a :class:`~torchpenalty.Regularizer`.
        optimizer: a ``torch.optim.Optimizer``, or the ``AttachHandle`` returned by
            ``reg.attach`` (its mode becomes the default ``mode``), or None (norms only).
        mode: the decay rule the prediction assumes: ``"decoupled"`` (default; an
            ``AttachHandle``'s own rule otherwise), ``"independent"`` or ``"corrected"``;
            any other mode (``"grad"``, ...) has no per-step decay (``nan``). With a
            ``"corrected"`` handle only its normalized weights get the corrected ``d``; with
            ``cautious=True`` ``d`` is the nominal decay and there is no prediction (the
            decay applies to a varying subset of coordinates).
        lr_max: the peak lr for ``"corrected"`` (see ``decay_per_step``).

    Warns (``RuntimeWarning``) when rows of an ``nn.Embedding`` / ``nn.EmbeddingBag``
    weight under a non-zero penalty got an all-zero gradient: they are decayed without
    being trained (rare tokens pushed to zero; torchtitan#2599). Remedy:
    ``exclude=nn.Embedding``.
    """
    if lr_max is not None:
        lr_max = check_positive("lr_max", lr_max)
    optimizer, rule = _resolve(optimizer, mode, lr_max)
    rows = _rows(reg, optimizer)
    if not rows:
        raise ValueError(
            f"optimizer must hold at least one parameter regularized by reg, got none of {reg.names[:3]}"
        )
    step = reg.step_count
    embedded = {
        id(p)
        for m in reg.model.modules()
        if isinstance(m, _EMBEDDINGS)
        for p in m.parameters(recurse=False)
    }
    measured = _measure(rows, optimizer, embedded, bool(singular_values))
    decays = _decays(rows, step, rule)
    tensors = []
    for (pen, gi, _g, name, p), (w, g, u, z, s, idle), d in zip(
        rows, measured, decays, strict=True
    ):
        numel = local(p).numel()
        tensors.append(
            TensorStats(
                name,
                gi,
                repr(pen),
                numel,
                w,
                g,
                u,
                _ratio(u, w),
                _NAN if rule.cautious else _predicted(d),
                d,
                z / numel,
                s,
                None if idle < 0 else int(idle),
            )
        )
    _warn_idle(tensors, rows, step)
    return DecayStats(tensors, _group_stats(tensors))


class _CallableModule(_types.ModuleType):
    """``torchpenalty.stats`` is both this module and the function ``tp.stats``; with lazy
    imports Python may bind either to the name, so calling the module works."""

    def __call__(self, *args: Any, **kwargs: Any) -> DecayStats:
        return stats(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
