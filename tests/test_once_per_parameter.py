"""Each parameter is penalized exactly once per step, whatever the dtypes in its optimizer
group (huggingface/pytorch-image-models#2750: decay applied once per (device, dtype)
bucket, so two dtypes gave 0.81 instead of 0.90).

One SGD group holds float32, float64 and bfloat16 weights. Every mode is checked against
(1) a per-tensor loop (each weight alone in its own optimizer and Regularizer) and (2) the
mode's formula in NumPy for the float64 weight.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import torchpenalty as tp

LR, S = 0.1, 1.0  # lr * s = 0.1: one decay is x0.9, a double one x0.81
S_INDEPENDENT = 0.1  # its strength is the decay per step at the initial lr: x0.9 too
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
MODES = {  # name -> (attach mode, options, penalty class)
    "grad": ("grad", {}, tp.L2),
    "decoupled": ("decoupled", {}, tp.L2),
    "independent": ("independent", {}, tp.L2),
    "corrected": ("corrected", {"normalized": "*"}, tp.L2),
    "cautious": ("decoupled", {"cautious": True}, tp.L2),
    "proximal": ("proximal", {}, tp.L1),
}


def holder(dtypes):
    m = nn.Module()
    g = torch.Generator().manual_seed(0)
    for i, dt in enumerate(dtypes):
        w = torch.randn(3, 4, generator=g, dtype=torch.float64).to(dt)
        setattr(m, f"w{i}", nn.Parameter(w))
    return m


def grads(dtypes):
    g = torch.Generator().manual_seed(1)
    return [0.3 * torch.randn(3, 4, generator=g, dtype=torch.float64).to(dt) for dt in dtypes]


def run(mode, dtypes, steps=3, alone=None):
    """``steps`` SGD steps of one group holding weights of ``dtypes``; returns them. With
    ``alone=i``: weight ``i`` only, in its own optimizer and Regularizer (returns it)."""
    how, options, penalty = MODES[mode]
    m = holder(dtypes)
    gs = grads(dtypes)
    if alone is not None:
        keep = f"w{alone}"
        for name in [n for n, _ in m.named_parameters() if n != keep]:
            delattr(m, name)
        gs = [gs[alone]]
    opt = torch.optim.SGD(m.parameters(), lr=LR)
    reg = tp.Regularizer(m, penalty(S_INDEPENDENT if mode == "independent" else S), include="*")
    reg.attach(opt, mode=how, rounding="nearest", **options)
    for _ in range(steps):
        for p, g in zip(m.parameters(), gs, strict=True):
            p.grad = g.clone()
        opt.step()
    out = [p.detach().clone() for p in m.parameters()]
    return out[0] if alone is not None else out


@pytest.mark.parametrize("mode", list(MODES))
def test_mixed_dtypes_equal_a_per_tensor_loop(mode):
    mixed = run(mode, DTYPES)
    for i, dt in enumerate(DTYPES):
        alone = run(mode, DTYPES, alone=i)  # the same weight alone in its own group
        assert mixed[i].dtype == dt
        torch.testing.assert_close(mixed[i], alone, rtol=0, atol=0)


def formula(mode, w, g, steps=3):
    """The mode's update for SGD in NumPy (float64), step by step."""
    for _ in range(steps):
        if mode == "grad":
            w = w - LR * (g + S * w)
        elif mode in ("decoupled", "corrected"):  # corrected: lr**2 / lr_max = lr here
            w = w * (1 - LR * S) - LR * g
        elif mode == "independent":  # (lr / lr0) * s with lr0 = lr
            w = w * (1 - S_INDEPENDENT) - LR * g
        elif mode == "cautious":  # decay where the update -lr*g and the decay s*w agree
            u = g
            w = w - LR * (u + (u * w >= 0) * S * w)
        elif mode == "proximal":
            z = w - LR * g
            w = np.sign(z) * np.maximum(np.abs(z) - LR * S, 0.0)
    return w


@pytest.mark.parametrize("mode", list(MODES))
def test_float64_weight_follows_the_formula(mode):
    got = run(mode, DTYPES)[1].numpy()
    w0 = holder(DTYPES).w1.detach().numpy()
    np.testing.assert_allclose(got, formula(mode, w0, grads(DTYPES)[1].numpy()), rtol=1e-12)


def test_decay_once_not_per_dtype_bucket():
    """The timm#2750 numbers: zero gradients, lr * s = 0.1, weights of 1.0 in three dtypes
    decay to 0.9 each (0.81 would be a second application)."""
    m = nn.Module()
    for i, dt in enumerate(DTYPES):
        setattr(m, f"w{i}", nn.Parameter(torch.ones(2, 2, dtype=dt)))
    opt = torch.optim.SGD(m.parameters(), lr=LR)
    tp.Regularizer(m, tp.L2(S), include="*").attach(opt, mode="decoupled", rounding="nearest")
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in m.parameters():
        assert torch.all(p.detach().double() == torch.tensor(0.9, dtype=p.dtype).double())
