"""What a compiled or CUDA-graph-captured training step needs from the Regularizer.

Inside ``torch.compile`` tracing or a CUDA-graph capture (:func:`tracing`), the optimizer
hooks read strengths from 0-d tensors and learning rates as the optimizer holds them (a
tensor ``lr`` stays a tensor), and advance schedules on a device step counter through
their tensor form (:meth:`torchpenalty.schedules.Schedule.tensor`): no host read, no
data-dependent Python branch. :func:`problems` lists the settings that cannot work that
way; ``Regularizer.check_capturable`` raises with them.

>>> import torch, torchpenalty as tp
>>> net = torch.nn.Linear(3, 2)
>>> reg = tp.Regularizer(net, tp.L2(lambda step: 1e-3 / (1 + step)))
>>> opt = torch.optim.SGD(net.parameters(), lr=torch.tensor(0.1))
>>> _ = reg.attach(opt, mode="decoupled")
>>> print(problems(reg, opt)[0])   # doctest: +ELLIPSIS
the strength of L2(...) for 'weight' is a callable without a tensor(step) form...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._attached import handles_on

__all__ = ["live_strength", "problems", "tracing"]


def tracing() -> bool:
    """True inside ``torch.compile`` tracing or a CUDA-graph capture on this stream."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _callable_hint(what: str) -> str:
    return (
        f"the strength of {what} is a callable without a tensor(step) form: it can only be "
        "evaluated on the host, so a compiled step would recompile and a captured one would "
        "freeze it. Use a schedule from tp.schedules (Linear, Cosine, Exponential, "
        "Piecewise), a Schedule subclass with tensor(step), or a constant changed by "
        "reg.set_strengths() between replays"
    )


def live_strength(strength: Any, step: Tensor, what: str) -> Tensor:
    """The value of schedule ``strength`` at the device step ``step`` (tensor ops only)."""
    from .schedules import tensor_form

    fn = tensor_form(strength)
    if fn is None:
        raise TypeError(_callable_hint(what))
    return fn(step)


def _strength_problems(reg: Any) -> list[str]:
    from .schedules import tensor_form

    out = []
    for b in reg.bindings:
        parts = getattr(b.penalty, "parts", (b.penalty,))
        for pen in parts:
            if callable(pen.strength) and tensor_form(pen.strength) is None:
                out.append(_callable_hint(f"{pen!r} for {b.names[0]!r}"))
        if len(parts) > 1 and any(callable(p.strength) for p in parts):
            out.append(
                f"{b.penalty!r} for {b.names[0]!r} sums parts with schedules: their strengths "
                "are read on the host; give the parts constant strengths"
            )
    act = getattr(reg, "activity_hooks", None)
    for pen in {id(p): p for p in (act.modules.values() if act else [])}.values():
        if callable(pen.strength) and tensor_form(pen.strength) is None:
            out.append(_callable_hint(f"activity penalty {pen!r}"))
    return out


def _group_problems(handle: Any, optimizer: Any) -> list[str]:
    out = []
    reads_lr = handle.rule.name in ("decoupled", "independent", "corrected", "proximal")
    for i, (g, items) in enumerate(handle._groups()):
        if not items:
            continue
        if reads_lr and not isinstance(g.get("lr"), Tensor):
            out.append(
                f"optimizer.param_groups[{i}]['lr'] must be a tensor for mode="
                f"{handle.mode!r} (it reads the lr every step), got {g.get('lr')!r}: a "
                "Python float is frozen into a captured graph and recompiles a compiled one; "
                "build the optimizer with lr=torch.tensor(lr)"
            )
        if g.get("capturable") is False:
            out.append(
                f"optimizer.param_groups[{i}]['capturable'] must be True for "
                f"{type(optimizer).__name__} to be captured in a CUDA graph, got False"
            )
    return out


def _rule_problems(handle: Any, optimizer: Any) -> list[str]:
    out = []
    rule = handle.rule
    if getattr(handle, "fused", False) and any(
        callable(b.penalty.strength) for b in handle._reg.bindings
    ):
        out.append(
            "attach(fuse=True) with a scheduled strength writes it into the group's "
            "weight_decay as a Python float, which a captured graph freezes: attach without "
            "fuse=True"
        )
    if rule.name == "proximal" and isinstance(optimizer, torch.optim.RAdam):
        out.append(
            "mode='proximal' with RAdam reads the rectification term on the host (a "
            "data-dependent branch on rho_t > 5): use Adam, AdamW, SGD or another supported "
            "optimizer for a captured step"
        )
    if getattr(rule, "rounding", "nearest") == "compensated" and any(
        p.dtype in (torch.float16, torch.bfloat16) for p in handle._reg.parameters()
    ):
        out.append(
            "rounding='compensated' keeps float32 residuals created at the first step, which "
            "a captured graph cannot update: use rounding='stochastic' or 'nearest'"
        )
    if getattr(optimizer, "found_inf", None) is not None:
        out.append(
            "a GradScaler skip flag (optimizer.found_inf) is read on the host to skip the "
            "penalty with the step: unscale outside the captured step"
        )
    return out


def problems(reg: Any, optimizer: Any | None = None) -> list[str]:
    """Every setting of ``reg`` (and its hooks on ``optimizer``) that a compiled or
    captured step cannot read live, one message each (empty: capturable)."""
    out = _strength_problems(reg)
    if optimizer is not None:
        for h in handles_on(optimizer, reg):
            out += _group_problems(h, optimizer) + _rule_problems(h, optimizer)
    return out
