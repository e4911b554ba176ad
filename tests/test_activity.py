"""Activity (output) penalties through forward hooks, reduced as current Keras does
(>= 3.14 and tf.keras 2: divided by the batch size; Keras 3.0-3.13's plain sum on
request), checked against the Keras formulas written in NumPy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import torchpenalty as tp


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


def hidden(net, x):
    with torch.no_grad():  # the reference pass must not trigger the hooks
        return net.encoder[2](net.encoder[1](net.encoder[0](x)))


def keras_activity(outputs, l1=0.0, l2=0.0, *, keras="3.14"):
    """Keras's activity loss in NumPy: ``L1L2(l1, l2)(y) = l1 * sum|y| + l2 * sum y**2``
    per output (keras/src/regularizers/regularizers.py), divided by ``y.shape[0]`` from
    Keras 3.14 on (keras-team/keras#22021) and in tf.keras 2, not in Keras 3.0-3.13."""
    total = 0.0
    for y in outputs:
        y = np.asarray(y, dtype=np.float64)
        v = l1 * np.abs(y).sum() + l2 * np.square(y).sum()
        if keras != "3.0-3.13" and y.ndim > 0:
            v = v / y.shape[0]
        total += v
    return total


def linear_outputs(net, x):
    with torch.no_grad():
        h0 = net.encoder[0](x)
        h2 = hidden(net, x)
        return [h0.numpy(), h2.numpy(), net.head(h2).numpy()]


@pytest.mark.parametrize(
    "key", ["encoder.2", "encoder.[2]", nn.Linear], ids=["name", "pattern", "class"]
)
@pytest.mark.parametrize(
    ("reduction", "keras"), [(None, "3.14"), ("batch_mean", "3.14"), ("sum", "3.0-3.13")]
)
def test_value_is_the_keras_formula(key, reduction, keras):
    net = Net()
    kw = {} if reduction is None else {"activity_reduction": reduction}
    reg = tp.Regularizer(net, tp.L2(0.0), activity={key: tp.L1(0.01)}, **kw)
    x = X[:5]  # a batch size that is not a power of two
    net(x)
    outs = linear_outputs(net, x)
    chosen = outs if key is nn.Linear else [outs[1]]  # every Linear, or encoder.2 alone
    expected = keras_activity(chosen, l1=0.01, keras=keras)
    assert reg().item() == pytest.approx(expected, rel=1e-6)
    assert reg.activity_hooks.pending == 0


@pytest.mark.parametrize(("reduction", "keras"), [("batch_mean", "3.14"), ("sum", "3.0-3.13")])
def test_l2_convention_against_keras(reduction, keras):
    # Keras L2(l2) = l2 * sum y**2 is tp.L2(2 * l2)
    net = Net()
    reg = tp.Regularizer(
        net, tp.L2(0.0), activity={"encoder.2": tp.L2(0.02)}, activity_reduction=reduction
    )
    net(X)
    expected = keras_activity([linear_outputs(net, X)[1]], l2=0.01, keras=keras)
    assert reg().item() == pytest.approx(expected, rel=1e-6)


def test_batch_mean_does_not_scale_with_the_batch():
    """The point of Keras 3.14's change: a batch twice as large (the same rows twice) gives
    the same activity penalty; with "sum" it doubles."""
    for reduction, factor in (("batch_mean", 1.0), ("sum", 2.0)):
        net = Net()
        reg = tp.Regularizer(
            net, tp.L2(0.0), activity={"encoder.2": tp.L1(0.01)}, activity_reduction=reduction
        )
        net(X)
        small = reg().item()
        net(torch.cat([X, X]))
        assert reg().item() == pytest.approx(factor * small, rel=1e-6)


def test_gradient_added_to_weight_penalty():
    net = Net()
    reg = tp.Regularizer(net, tp.L2(0.1), activity={"encoder.2": tp.L1(0.01)})
    (net(X).pow(2).mean() + reg()).backward()
    got = [p.grad.clone() for p in net.parameters()]
    ref = Net()
    out = ref.encoder(X)
    loss = ref.head(out).pow(2).mean() + 0.01 * out.abs().sum() / len(X)  # batch mean
    loss = loss + 0.05 * sum(
        m.weight.pow(2).sum() for m in (ref.encoder[0], ref.encoder[2], ref.head)
    )
    loss.backward()
    for g, p in zip(got, ref.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("reduction", ["sum", "batch_mean"])
def test_gradient_accumulation_equals_full_batch(reduction):
    act = {"encoder.*": tp.L1(0.01)}
    full = Net()
    reg = tp.Regularizer(full, tp.L2(0.1), activity=act, activity_reduction=reduction)
    (full(X).pow(2).mean() + reg()).backward()
    micro = Net()
    reg = tp.Regularizer(micro, tp.L2(0.1), activity=act, activity_reduction=reduction)
    for chunk in X.split(2):  # 4 micro-batches of 2
        (micro(chunk).pow(2).mean() / 4 + reg(accumulation_steps=4)).backward()
    for a, b in zip(full.parameters(), micro.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_no_activation_kept_and_hooks_removable():
    net = Net()
    reg = tp.Regularizer(net, tp.L2(0.0), activity={"encoder.2": tp.L1(0.01)})
    with torch.no_grad():
        net(X)  # evaluation: nothing recorded
    assert reg.activity_hooks.pending == 0
    net(X)
    assert reg.activity_hooks.pending == 1
    reg().backward()
    assert reg.activity_hooks.pending == 0 and reg.activity_loss() is None
    reg.activity_hooks.remove()
    net(X)
    assert reg.activity_hooks.pending == 0 and reg().item() == 0.0


def test_activity_with_attached_weight_penalty():
    """Weight penalty attached in grad mode, activity penalty in the loss: no warning
    with activity_loss(), which holds only the activity part."""
    net = Net()
    reg = tp.Regularizer(net, tp.L2(0.1), activity={"encoder.2": tp.L1(0.01)})
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    reg.attach(opt, mode="grad")
    out = net(X)
    h = hidden(net, X).detach()
    extra = reg.activity_loss()
    assert extra.item() == pytest.approx(0.01 * h.abs().sum().item() / len(X), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (out.pow(2).mean() + extra).backward()
        opt.step()


@pytest.mark.parametrize(
    ("activity", "error", "match"),
    [
        (
            {"decoder": tp.L1(1.0)},
            ValueError,
            r"activity key 'decoder' must match at least one module",
        ),
        (
            {nn.Conv2d: tp.L1(1.0)},
            ValueError,
            r"activity key 'Conv2d' must match at least one module",
        ),
        (
            {"encoder.2": tp.MaxNorm(1.0)},
            TypeError,
            r"activity\['encoder.2'\] must be a penalty \(not a constraint\)",
        ),
        ({3: tp.L1(1.0)}, TypeError, r"activity keys must be module names"),
        ({"encoder.2": tp.L1(1.0)}, None, None),
    ],
)
def test_activity_errors(activity, error, match):
    if error is None:
        tp.Regularizer(Net(), tp.L2(0.0), activity=activity, activity_reduction="sum")
        with pytest.raises(
            ValueError, match=r"activity_reduction must be one of 'batch_mean', 'sum', got 'mean'"
        ):
            tp.Regularizer(Net(), tp.L2(0.0), activity=activity, activity_reduction="mean")
        return
    with pytest.raises(error, match=match):
        tp.Regularizer(Net(), tp.L2(0.0), activity=activity)
