"""The engine's fast path for stacks of ``nn.Linear`` layers and activations.

M models of one ``nn.Sequential`` of Linear layers and elementwise activations are run as
batched matrix products over their stacked parameters (weights ``(M, out, in)``, biases
``(M, out)``), and trained without autograd's graph: the forward pass keeps each layer's
input, the loss's gradient with respect to the output is written out where the loss has
one (:meth:`~torchpenalty.sweep.losses.SweepLoss.rows_grad`), and the backward pass is the
three products of a Linear layer,

    dL/dW = g^T x,    dL/db = sum over rows of g,    dL/dx = g W,

and each activation's derivative (torch's own backward kernels; autograd for the others).
For small models autograd's bookkeeping costs more than these products.
:class:`MlpStep` sets all of it up once per training run (views of the weights, the
gradient tensors every step writes into), so a step is the arithmetic and little else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import is_parametrized

__all__ = ["ACTIVATIONS", "MlpStep", "is_stackable_mlp", "stacked_forward"]

ACTIVATIONS = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Softplus,
    nn.Identity,
)

_threshold_backward = torch.ops.aten.threshold_backward.default
_tanh_backward = torch.ops.aten.tanh_backward.default
_sigmoid_backward = torch.ops.aten.sigmoid_backward.default

_DERIVATIVES: dict[type, Callable[[Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda g, out: _threshold_backward(g, out, 0),
    nn.Tanh: _tanh_backward,
    nn.Sigmoid: _sigmoid_backward,
    nn.Identity: lambda g, out: g,
}
"""Activations whose derivative torch's backward kernels give from the output (what
autograd itself calls for them)."""

_IN_PLACE: dict[type, Callable[[Tensor], Tensor]] = {
    nn.ReLU: torch.relu_,
    nn.Tanh: torch.tanh_,
    nn.Sigmoid: torch.sigmoid_,
}
"""In-place forms of the :data:`_DERIVATIVES` activations (applied to a Linear's fresh
output: nothing reads the pre-activation)."""

Layer = tuple[nn.Module, str | None]
"""A module of the stack and its parameter prefix (``"0."``), None for an activation."""


def is_stackable_mlp(model: nn.Module) -> bool:
    """An ``nn.Sequential`` of ``nn.Linear`` and :data:`ACTIVATIONS` (or one Linear), no
    Linear used twice (its weights would take two gradients), that computes what the
    stacked path computes: no Linear or Sequential subclass with a ``forward`` of its own,
    no parametrized Linear (``torch.nn.utils.parametrize``) and no module hooks, its own
    or global ones (the stacked path calls none of them).

    >>> is_stackable_mlp(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    True
    >>> lin = nn.Linear(3, 3)
    >>> is_stackable_mlp(nn.Sequential(lin, nn.ReLU(), lin))
    False
    >>> _ = lin.register_forward_hook(lambda mod, args, out: 2 * out)
    >>> is_stackable_mlp(nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 1)))
    False
    """
    seq = isinstance(model, nn.Sequential)
    mods = list(model) if seq else [model]
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    return (
        all(isinstance(m, (nn.Linear, *ACTIVATIONS)) for m in mods)
        and len(linears) > 0
        and len({id(m) for m in linears}) == len(linears)
        and all(type(m).forward is nn.Linear.forward and not is_parametrized(m) for m in linears)
        and (not seq or type(model).forward is nn.Sequential.forward)
        and not _global_hooks()
        and not any(_hooked(m) for m in (model, *mods))
    )


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(mod: nn.Module) -> bool:
    """Whether ``mod`` has forward or backward hooks of its own."""
    return any(getattr(mod, h, None) for h in _HOOKS)


def _global_hooks() -> bool:
    """Whether hooks are registered for every module
    (``torch.nn.modules.module.register_module_forward_hook`` and its kin)."""
    return any(getattr(nn.modules.module, f"_global{h}", None) for h in _HOOKS)


def layers_of(model: nn.Module) -> list[Layer]:
    """The stack's modules in order, each with its parameter prefix (None: an activation).
    Every position counts: an activation instance used twice appears twice
    (``named_children`` would list it once).

    >>> relu = nn.ReLU()
    >>> [p for _, p in layers_of(nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 1), relu))]
    ['0.', None, '2.', None]
    """
    if not isinstance(model, nn.Sequential):
        return [(model, "")]
    return [(m, f"{n}." if isinstance(m, nn.Linear) else None)
            for n, m in model._modules.items()]  # fmt: skip


def _activation(mod: nn.Module, after_linear: bool) -> tuple[Callable, Callable, bool]:
    """An activation's forward function, its backward ``(g, input, output) -> g_input``,
    and whether the forward runs in place (on a Linear's fresh output only)."""
    derivative = _DERIVATIVES.get(type(mod))
    if derivative is not None:
        backward: Callable = lambda g, inp, out: derivative(g, out)  # noqa: E731
    else:

        def backward(g: Tensor, inp: Tensor, out: Tensor) -> Tensor:
            a = inp.detach().requires_grad_()
            with torch.enable_grad():  # (an inplace module: on a copy, not the leaf)
                y = mod(a.clone()) if getattr(mod, "inplace", False) else mod(a)
                return torch.autograd.grad(y, a, g)[0]

    if after_linear and type(mod) in _IN_PLACE:
        return _IN_PLACE[type(mod)], backward, True
    if getattr(mod, "inplace", False):
        return (lambda h: mod(h.clone())), backward, False
    return mod, backward, False


def stacked_forward(layers: list[Layer], state: dict[str, Tensor], x: Tensor) -> list[Tensor]:
    """The forward pass without autograd: each layer's input and the output, in order
    (``bmm`` then the bias: ``baddbmm``'s broadcast bias cost more than the product for
    one output column). Call with gradients off."""
    acts, after_linear = [x], False
    for mod, pre in layers:
        h = acts[-1]
        if pre is None:
            fn, _, _ = _activation(mod, after_linear)
            acts.append(fn(h))
            after_linear = False
            continue
        b = state.get(pre + "bias")
        out = torch.bmm(h, state[pre + "weight"].transpose(1, 2))
        acts.append(out if b is None else out.add_(b.unsqueeze(1)))
        after_linear = True
    return acts


class MlpStep:
    """Forward pass, loss gradient and backward pass of M stacked MLPs whose parameters
    are ``live`` (trained in place), set up once: the weights' transposed views, the
    biases' row views, and the gradient tensors, created here and written in place by
    every step (``.grad`` of each trainable parameter: the optimizer reads the same
    tensors every step). ``loss_grad(out, y, mk) -> (rows, g)`` gives each row's loss
    and the gradient of the summed per-model mean losses with respect to ``out``.
    Calling it with a batch ``x``, ``y`` and padding mask ``mk`` writes the gradients and
    returns each row's loss ``(M, rows)`` (zero on padding). Call with gradients off."""

    def __init__(self, layers: list[Layer], live: dict[str, Tensor], loss_grad: Callable) -> None:
        self.loss_grad = loss_grad
        self.forward_ops: list[tuple[Any, ...]] = []
        self.backward_ops: list[tuple[Any, ...]] = []
        first = next(j for j, (_, pre) in enumerate(layers) if pre is not None)
        after_linear = False
        for j, (mod, pre) in enumerate(layers):
            if pre is None:
                fn, backward, _ = _activation(mod, after_linear)
                self.forward_ops.append((fn, None, None))
                if j > first:
                    self.backward_ops.append((j, backward, None, None, None))
                after_linear = False
                continue
            w, b = live[pre + "weight"], live.get(pre + "bias")
            self.forward_ops.append(
                (None, w.transpose(1, 2), None if b is None else b.unsqueeze(1))
            )
            gw = _grad_tensor(w)
            gb = None if b is None else _grad_tensor(b)
            self.backward_ops.append((j, None, gw, gb, w if j > first else None))
            after_linear = True
        self.backward_ops.reverse()

    def forward(self, x: Tensor) -> list[Tensor]:
        """Each layer's input and the output (the live parameters)."""
        acts = [x]
        for fn, wt, b in self.forward_ops:
            if fn is not None:
                acts.append(fn(acts[-1]))
            else:
                out = torch.bmm(acts[-1], wt)
                acts.append(out if b is None else out.add_(b))
        return acts

    def __call__(self, x: Tensor, y: Tensor, mk: Tensor | None) -> Tensor:
        acts = self.forward(x)
        rows, g = self.loss_grad(acts[-1], y, mk)
        for j, backward, gw, gb, w in self.backward_ops:
            if backward is not None:
                g = backward(g, acts[j], acts[j + 1])
                continue
            if gw is not None:
                torch.bmm(g.transpose(1, 2), acts[j], out=gw)
            if gb is not None:
                torch.sum(g, 1, out=gb)
            if w is not None:
                g = torch.bmm(g, w)
        return rows


def _grad_tensor(p: Tensor) -> Tensor | None:
    """``p.grad``, created (zeros) if missing, for a trainable ``p``; None if frozen. A
    gradient of another shape, dtype or layout is replaced."""
    if not p.requires_grad:
        return None
    g = p.grad
    if g is None or g.shape != p.shape or g.dtype != p.dtype or not g.is_contiguous():
        p.grad = g = torch.zeros_like(p, memory_format=torch.contiguous_format)
    return g
