"""No silent double regularization, no silent no-op keys (issue #7 part 3)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import torchpenalty as tp


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1))


def step(model, opt, loss_extra=None):
    opt.zero_grad()
    loss = model(torch.randn(6, 4)).pow(2).mean()
    if loss_extra is not None:
        loss = loss + loss_extra()
    loss.backward()
    opt.step()


def test_same_regularizer_twice_on_one_optimizer_raises():
    model = net()
    reg = tp.Regularizer(model, tp.L2(1e-2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = reg.attach(opt, mode="grad")
    for mode in ("grad", "decoupled", "loss"):
        with pytest.raises(RuntimeError, match=r"optimizer already has this Regularizer attached"):
            reg.attach(opt, mode=mode)
    # the failed attempts left nothing behind: one step = one penalty gradient
    w0 = model[0].weight.detach().clone()
    model.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), w0 * (1 - 0.1 * 1e-2))
    assert reg.step_count == 1
    handle.remove()
    reg.attach(opt, mode="decoupled").remove()  # allowed again once removed
    reg.attach(torch.optim.SGD(model.parameters(), lr=0.1), mode="grad")  # another optimizer


@pytest.mark.parametrize("mode", ["grad", "decoupled", "independent", "proximal"])
def test_reg_in_loss_while_attached_warns_once(mode):
    model = net()
    reg = tp.Regularizer(model, tp.L1(1e-2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode=mode)
    with pytest.warns(UserWarning, match=rf"reg\(\) is in the loss while .*mode='{mode}'.*twice"):
        step(model, opt, reg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(model, opt, reg)  # once
        reg.value()  # no_grad: logging is fine


def test_reg_in_loss_with_loss_mode_is_quiet():
    model = net()
    reg = tp.Regularizer(model, tp.L2(1e-2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode="loss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(model, opt, reg)


def test_two_regularizers_on_the_same_parameters_warn():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tp.Regularizer(model, tp.L2(1e-2)).attach(opt, mode="grad")
    with pytest.warns(UserWarning, match="two Regularizers penalize the same parameters"):
        tp.Regularizer(model, tp.L1(1e-3)).attach(opt, mode="decoupled")


def test_disjoint_regularizers_and_constraints_are_quiet():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp.Regularizer(model, {"0.*": tp.L2(1e-2)}).attach(opt, mode="grad")
        tp.Regularizer(model, {"3.*": tp.L1(1e-2)}).attach(opt, mode="grad")
        tp.Regularizer(model, tp.MaxNorm(2.0)).attach(opt, mode="proximal")  # constraint


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("*.bias", r"0.bias: bias"),
        (nn.LayerNorm, r"1.weight: normalization module \(LayerNorm\)"),
        ("1.*", r"1.weight: normalization module \(LayerNorm\); 1.bias: "),
    ],
    ids=["bias_pattern", "norm_class", "norm_pattern"],
)
def test_dict_key_matching_only_excluded_parameters_raises(key, reason):
    model = net()
    with pytest.raises(ValueError, match=r"every parameter it matches was excluded") as e:
        tp.Regularizer(model, {key: tp.L1(1.0)})
    assert "include=" in str(e.value)
    assert re.search(reason, str(e.value)), str(e.value)
    # include= brings them in
    reg = tp.Regularizer(model, {key: tp.L1(1.0)}, include="*")
    assert reg.names


def test_dict_key_losing_to_an_earlier_key_is_not_an_error():
    model = net()
    reg = tp.Regularizer(model, {"*.weight": tp.L2(1.0), "0.*": tp.L1(1.0)})
    assert [b.names for b in reg.bindings] == [("0.weight", "3.weight")]
