"""``Regularizer.set_strengths``: new strengths in effect at once, in every mode, checked
against torch.optim's own weight decay with the same per-group strengths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchpenalty as tp

X = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def closure(model, opt):
    opt.zero_grad()
    model(X).pow(2).mean().backward()


def groups(model, s0, s2):
    return [
        {"params": list(model[0].parameters()), "weight_decay": s0},
        {"params": list(model[2].parameters()), "weight_decay": s2},
    ]


# (ours, mode, reference with the strengths as per-group weight_decay)
CASES = {
    "sgd-grad": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "grad",
                 lambda gs: torch.optim.SGD(gs, lr=0.1, momentum=0.9)),
    "adam-decoupled": (lambda ps: torch.optim.Adam(ps, lr=0.05), "decoupled",
                       lambda gs: torch.optim.AdamW(gs, lr=0.05)),
}  # fmt: skip


@pytest.mark.parametrize("keys", ["names", "penalty-keys"])
@pytest.mark.parametrize("case", list(CASES))
def test_new_strengths_equal_torch_weight_decay(case, keys):
    make, mode, make_ref = CASES[case]
    ours, ref = net(), net()
    # start from a schedule and other strengths: the first 2 steps run with those
    pens = {"0.*": tp.L2(lambda k: 0.1 * (k + 1)), "2.*": tp.L2(0.7)}
    reg = tp.Regularizer(ours, pens, include="*")
    opt = make(list(ours.parameters()))
    reg.attach(opt, mode=mode)
    ref_opt = make_ref(groups(ref, 0.1, 0.7))
    for k in range(2):
        ref_opt.param_groups[0]["weight_decay"] = 0.1 * (k + 1)
        closure(ours, opt), opt.step()
        closure(ref, ref_opt), ref_opt.step()
    if keys == "names":
        new = {"0.weight": 0.3, "0.bias": 0.3, "2.weight": 0.05}
    else:
        new = {"0.*": 0.3, "2.*": 0.05}
    reg.set_strengths(new)
    for g, s in zip(ref_opt.param_groups, (0.3, 0.05), strict=True):
        g["weight_decay"] = s
    for _ in range(3):
        closure(ours, opt), opt.step()
        closure(ref, ref_opt), ref_opt.step()
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    assert reg.step_count == 5 and pens["0.*"].strength == 0.3  # the schedule is gone


def test_loss_mode_value_and_grad_follow_at_once():
    model = net()
    reg = tp.Regularizer(model, tp.L2(lambda k: 1.0 + k), include="*")
    reg.step()
    reg.set_strengths({"*": 0.25})
    expected = 0.125 * sum(p.detach().pow(2).sum() for p in model.parameters())
    torch.testing.assert_close(reg().detach(), expected.to(reg().dtype), rtol=1e-12, atol=0)
    reg()  # autograd through the new strength: d/dw = 0.25 w
    model.zero_grad()
    reg().backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, 0.25 * p.detach(), rtol=1e-12, atol=0)
    reg.step()  # a later step keeps the number
    torch.testing.assert_close(reg().detach(), expected.to(reg().dtype), rtol=1e-12, atol=0)


def test_module_class_keys_and_state_dict_round_trip():
    model = net()
    reg = tp.Regularizer(model, {"2.bias": tp.L1(0.0), nn.Linear: tp.L2(0.0)}, include="*")
    reg.set_strengths({nn.Linear: 2.0, "2.bias": 0.5})
    w = [p.detach() for p in model.parameters()]
    expected = 1.0 * sum(x.pow(2).sum() for x in w[:3]) + 0.5 * w[3].abs().sum()
    torch.testing.assert_close(reg().detach(), expected, rtol=1e-12, atol=0)
    reg.load_state_dict(reg.state_dict())  # reloading the step keeps the new strengths
    torch.testing.assert_close(reg().detach(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("penalty", "strengths", "error", "match"),
    [
        (tp.L2(0.1), {"nope": 0.1}, ValueError,
         r"strengths keys must be regularized parameter names \['0.weight', '2.weight'\] "
         r"or penalty keys \['\*'\], got 'nope'"),
        (tp.L2(0.1), {"0.weight": -1.0}, ValueError,
         r"strengths\['0.weight'\] must be a finite number >= 0, got -1.0"),
        (tp.L2(0.1), {"0.weight": float("nan")}, ValueError,
         r"strengths\['0.weight'\] must be a finite number >= 0, got nan"),
        (tp.L2(0.1), {"0.weight": "1"}, TypeError,
         r"strengths\['0.weight'\] must be a real number, got '1'"),
        (tp.L2(0.1), {"0.weight": 0.1, "2.weight": 0.2}, ValueError,
         r"strengths must be equal for keys that share one penalty \(L2\(strength=0.1\): "
         r"'0.weight' and '2.weight'\), got 0.1 and 0.2"),
        (tp.L2(0.1) + tp.L1(0.1), {"*": 0.1}, ValueError,
         r"strengths\['\*'\] must be set on a penalty that takes a strength, "
         r"got L2\(strength=0.1\) \+ L1\(strength=0.1\)"),
        (tp.L2(0.1), [("0.weight", 0.1)], TypeError, "strengths must be a dict"),
        (tp.L2(0.1), {nn.Conv2d: 0.1}, ValueError, "got <class 'torch.nn.modules.conv.Conv2d'>"),
    ],
    ids=["unknown", "negative", "nan", "not-a-number", "shared-unequal", "sum", "not-a-dict",
         "unknown-class"],
)  # fmt: skip
def test_errors_name_the_key_and_repeat_the_value(penalty, strengths, error, match):
    reg = tp.Regularizer(net(), penalty)
    before = reg.value()
    with pytest.raises(error, match=match):
        reg.set_strengths(strengths)
    assert reg.value() == before  # nothing half-applied


def test_a_failing_mapping_changes_nothing():
    reg = tp.Regularizer(net(), {"0.*": tp.L2(0.1), "2.*": tp.L2(0.2)})
    before = reg.value()
    with pytest.raises(ValueError, match="finite"):
        reg.set_strengths({"0.weight": 5.0, "2.weight": -1.0})
    assert reg.value() == before
