"""Decay rules from 2025: cautious decay and lr-corrected decay for normalized layers.

Cautious decay (Chen et al. 2025, arXiv 2510.12402) decays a coordinate only where the
optimizer's update ``u`` and the decay direction agree in sign:
``w <- w - lr * (u + 1[u * D >= 0] * D)`` with ``D = grad P(w)`` (``s * w`` for ``L2(s)``,
the paper's ``s * 1[u * w >= 0] * w``). The update's sign is read from the step itself,
for any optimizer: before the step the regularized weights are copied (``w_old``), after
it ``delta = w_new - w_old = -lr * u`` gives ``u * D >= 0  <=>  delta * D <= 0``, and the
decay ``lr * mask * D(w_old)`` is subtracted, so the result is exactly the formula above
evaluated at the pre-step weights. Cost: one copy of the regularized weights (their size
in memory, kept between the two hooks of a step) and about six foreach passes per step.
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

import torch
from torch import Tensor, nn

from .select import is_norm_module

__all__ = ["cautious_decay_", "normalized_weights"]

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
    sum) are not guessed: name their weights instead."""
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
    params: Sequence[Tensor], before: Sequence[Tensor], directions: Sequence[Tensor], lr: float
) -> None:
    """``w <- w - lr * 1[delta * D <= 0] * D`` in place, with ``delta = w - before`` the
    optimizer's step (``-lr * u``) and ``D`` the decay direction at the pre-step weights
    (``s * before`` for L2): the decay applies where ``u * D >= 0``.

    >>> w0 = [torch.tensor([1.0, 1.0, -1.0, 0.0])]
    >>> w = [torch.tensor([0.9, 1.1, -0.9, 0.1])]      # the optimizer moved these ways
    >>> cautious_decay_(w, w0, [0.5 * w0[0]], lr=0.1)   # D = s * w0, s = 0.5
    >>> w[0]        # decayed where the step went towards zero (or D = 0), kept where not
    tensor([ 0.8500,  1.1000, -0.8500,  0.1000])
    """
    params, before, directions = list(params), list(before), list(directions)
    if not params:
        return
    mask = torch._foreach_sub(params, before)
    torch._foreach_mul_(mask, directions)
    mask = torch._foreach_sign(mask)
    torch._foreach_clamp_min_(mask, 0.0)  # 1 where delta * D > 0 (decay opposes u), else 0
    torch._foreach_mul_(mask, -1.0)
    torch._foreach_add_(mask, 1.0)  # 1 where delta * D <= 0
    torch._foreach_mul_(mask, directions)
    torch._foreach_add_(params, mask, alpha=-lr)
