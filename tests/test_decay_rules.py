"""Decay rules beyond the classics: Muon's scaling, cautious decay, lr-corrected decay,
each reproducing its claimed effect in small."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchpenalty as tp

# ----------------------------------------------------------------------------- Muon


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 11)

    def forward(self, x):
        h = self.emb(x)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = self.norm(h + self.down(torch.relu(self.up(h))))
        return self.head(h)


def lm_loss(model, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 11, (4, 6), generator=g)
    return nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())


def test_muon_param_groups_gives_muon_only_matrices():
    model = Block()
    muon_groups, other = tp.muon_param_groups(model, 0.1, muon_exclude="head.*")
    (mg,) = muon_groups
    assert mg["names"] == ["up.weight", "down.weight"] and mg["weight_decay"] == 0.1
    assert all(p.ndim == 2 for p in mg["params"])
    assert [(g["names"], g["weight_decay"]) for g in other] == [
        (["emb.weight", "conv.weight", "head.weight"], 0.1),
        (["conv.bias", "up.bias", "down.bias", "norm.weight", "norm.bias", "head.bias"], 0.0),
    ]
    everything = [id(p) for g in muon_groups + other for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())  # disjoint, complete
    muon = torch.optim.Muon(muon_groups, lr=0.02)  # accepts them: all 2-D
    adamw = torch.optim.AdamW(other, lr=1e-3)
    lm_loss(model, 0).backward()
    muon.step()
    adamw.step()
    with pytest.raises(ValueError, match="Muon only supports 2D"):
        torch.optim.Muon(tp.param_groups(model, 0.1), lr=0.02)  # why the helper exists


@pytest.mark.parametrize("adjust", [None, "match_rms_adamw"])
@pytest.mark.parametrize("s", [0.1, 0.5])
def test_decoupled_on_muon_equals_muons_own_weight_decay(adjust, s):
    """Muon decays with the unadjusted lr, as reg.attach(mode='decoupled') does."""
    ref = Block()
    ours = copy.deepcopy(ref)
    groups_ref, _ = tp.muon_param_groups(ref, s)
    groups_ours, _ = tp.muon_param_groups(ours, 0.0)
    opt_ref = torch.optim.Muon(groups_ref, lr=0.05, adjust_lr_fn=adjust)
    opt_ours = torch.optim.Muon(groups_ours, lr=0.05, adjust_lr_fn=adjust)
    reg = tp.Regularizer(ours, tp.L2(s), include=groups_ours[0]["names"])
    reg.attach(opt_ours, mode="decoupled")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_ours, T_max=6)
    sched_ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt_ref, T_max=6)
    for step in range(6):
        for model, opt, sch in ((ref, opt_ref, sched_ref), (ours, opt_ours, sched)):
            opt.zero_grad()
            lm_loss(model, step).backward()
            opt.step()
            sch.step()
    assert groups_ours[0]["names"] == ["up.weight", "down.weight", "head.weight"]
    for name in groups_ours[0]["names"]:
        a, b = ref.get_parameter(name), ours.get_parameter(name)
        torch.testing.assert_close(b, a, rtol=0, atol=0)


# ----------------------------------------------------------------------------- structure
class BasicBlock(nn.Module):  # torchvision's naming
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.downsample = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3))
        self.fc = nn.Linear(3, 2)  # no bn next to it


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1)), ["0.weight"]),
        (
            nn.Sequential(nn.Linear(2, 3), nn.Dropout(), nn.Identity(), nn.BatchNorm1d(3)),
            ["0.weight"],
        ),
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.LayerNorm(3)), []),  # not directly
        (nn.Sequential(nn.LayerNorm(2), nn.Linear(2, 3)), []),  # pre-norm: not followed
        (nn.Sequential(nn.Conv1d(2, 3, 1), nn.GroupNorm(1, 3)), ["0.weight"]),
        (BasicBlock(), ["conv1.weight", "conv2.weight", "downsample.0.weight"]),
        (nn.TransformerEncoderLayer(4, 2, 8), []),  # residual sums: not guessed
    ],
    ids=[
        "seq",
        "dropout-between",
        "relu-between",
        "prenorm",
        "conv-groupnorm",
        "block",
        "transformer",
    ],
)
def test_normalized_weights_by_structure(model, expected):
    assert tp.normalized_weights(model) == expected


def test_cautious_decay_matches_the_formula():
    from torchpenalty.decay_rules import cautious_decay_

    torch.manual_seed(0)
    w0 = torch.randn(1000, dtype=torch.float64)
    u = torch.randn(1000, dtype=torch.float64)
    u[:10] = 0.0  # u * w = 0: decayed
    lr, s = 0.1, 0.3
    w = [w0 - lr * u]
    cautious_decay_(w, [w0], [s * w0], lr)
    expected = w0 - lr * (u + s * (u * w0 >= 0).double() * w0)
    torch.testing.assert_close(w[0], expected, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- cautious
def least_squares():
    torch.manual_seed(0)
    X = torch.randn(10, 30, dtype=torch.float64)  # 10 equations, 30 unknowns
    y = X @ torch.randn(30, dtype=torch.float64)
    return X, y


def fit_least_squares(rule, s=1.0, steps=3000, lr=1e-2):
    """Full-batch Adam on ||Xw - y||^2 / (2n) under a cosine schedule, with the decay
    applied by reg.attach: returns (loss, ||w||)."""
    X, y = least_squares()
    torch.manual_seed(1)
    model = nn.Linear(30, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 30, dtype=torch.float64))  # far from min-norm
    reg = tp.Regularizer(model, tp.L2(s))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if rule == "decoupled":
        reg.attach(opt, mode="decoupled")
    elif rule == "cautious":
        reg.attach(opt, mode="decoupled", cautious=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 1e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(X).squeeze(1) - y).square().mean() / 2
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        loss = (model(X).squeeze(1) - y).square().mean() / 2
    return loss.item(), model.weight.norm().item()


def test_cautious_reaches_a_smaller_minimizer_where_decoupled_stops_short():
    """Chen et al. 2025 in small: on an underdetermined least-squares problem plain Adam
    reaches a minimizer, decoupled decay trades loss for norm (stops short), cautious
    decay reaches a minimizer of the unpenalized loss with a smaller norm than Adam's."""
    adam_loss, adam_norm = fit_least_squares("none")
    dec_loss, _ = fit_least_squares("decoupled")
    cau_loss, cau_norm = fit_least_squares("cautious")
    X, y = least_squares()
    min_norm = torch.linalg.lstsq(X, y, driver="gelsd").solution.norm().item()
    assert adam_loss < 1e-12 and cau_loss < 1e-6  # both reach a minimizer ...
    assert dec_loss > 1e-2  # ... decoupled decay does not
    assert min_norm <= cau_norm < 0.7 * adam_norm  # cautious: a smaller one than Adam's


def test_cautious_rule_equals_the_formula_on_adam():
    """One step of attach(cautious=True) = w - lr * (u + s * 1[u * w >= 0] * w), with u
    Adam's own update (read from a twin optimizer without decay)."""
    torch.manual_seed(0)
    model = nn.Linear(8, 4, bias=False).double()
    twin = copy.deepcopy(model)
    reg = tp.Regularizer(model, tp.L2(0.7))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=0.05)
    reg.attach(opt, mode="decoupled", cautious=True)
    x = torch.randn(16, 8, dtype=torch.float64)
    for _ in range(4):
        w = model.weight.detach().clone()
        twin.load_state_dict(model.state_dict())
        for m, o in ((model, opt), (twin, opt_twin)):
            o.zero_grad()
            m(x).square().mean().backward()
        opt_twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # no shared moments
        opt_twin.step()
        opt.step()
        u = (w - twin.weight.detach()) / 0.05
        expected = w - 0.05 * (u + 0.7 * (u * w >= 0).double() * w)
        torch.testing.assert_close(model.weight.detach(), expected)


# ----------------------------------------------------------------------------- corrected
def ratio_profile(mode, steps=2000, lr=1e-2, s=0.5):
    """||g|| / ||w|| of a Linear followed by LayerNorm, averaged over tenths of a cosine
    schedule, with Adam and the decay applied by reg.attach."""
    torch.manual_seed(0)
    teacher = nn.Linear(16, 4)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    reg = tp.Regularizer(model, tp.L2(s))
    reg.attach(opt, mode=mode)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    w, ratios = model[0].weight, []
    for _ in range(steps):
        x = torch.randn(32, 16)
        y = teacher(x).detach() + 0.5 * torch.randn(32, 4)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        ratios.append((w.grad.norm() / w.norm()).item())
        opt.step()
        sched.step()
    return torch.tensor(ratios).reshape(10, -1).mean(1)


def test_corrected_keeps_the_gradient_to_weight_ratio_flat():
    """Defazio 2025 in small: under a cosine schedule the gradient-to-weight ratio of a
    normalized layer rises at the end with AdamW-style decay and stays flat with the
    corrected decay (``lr**2 / lr_max``)."""
    plain = ratio_profile("decoupled")
    corrected = ratio_profile("corrected")
    assert plain[-1] > 1.5 * plain[2]  # the end-of-training rise
    assert corrected[-1] < 1.15 * corrected[2]  # flat
    assert corrected[2:].max() < 1.15 * corrected[2:].min()


# ----------------------------------------------------------------------------- by hand
def ln_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def one_step(model, opt, lr_now=None):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no update: only the decay moves the weights
    if lr_now is not None:
        opt.param_groups[0]["lr"] = lr_now
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    return {n: (p.detach() / before[n]).mean().item() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("options", "factor0", "factor2"),
    [
        ({}, 1 - 0.5 * 0.05**2 / 0.1, 1 - 0.5 * 0.05),  # found by structure: 0.weight
        ({"normalized": "*"}, 1 - 0.5 * 0.05**2 / 0.1, 1 - 0.5 * 0.05**2 / 0.1),
        ({"normalized": ["2.*"]}, 1 - 0.5 * 0.05, 1 - 0.5 * 0.05**2 / 0.1),
        ({"lr_max": 0.2}, 1 - 0.5 * 0.05**2 / 0.2, 1 - 0.5 * 0.05),
    ],
)
def test_corrected_rates_by_hand(options, factor0, factor2):
    model = ln_net()
    reg = tp.Regularizer(model, tp.L2(0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode="corrected", **options)
    assert one_step(model, opt)["0.weight"] == pytest.approx(
        1 - 0.5 * 0.1**2 / max(0.1, options.get("lr_max", 0.1))
    )
    moved = one_step(model, opt, lr_now=0.05)  # the schedule halved the lr
    assert moved["0.weight"] == pytest.approx(factor0)
    assert moved["2.weight"] == pytest.approx(factor2)
    assert moved["0.bias"] == 1.0 and moved["1.weight"] == 1.0  # not regularized


def test_corrected_peak_is_the_largest_lr_seen_or_max_lr():
    model = ln_net()
    reg = tp.Regularizer(model, tp.L2(0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)  # warm-up start, no scheduler
    reg.attach(opt, mode="corrected")
    one_step(model, opt, lr_now=0.1)  # the peak
    assert one_step(model, opt, lr_now=0.05)["0.weight"] == pytest.approx(1 - 0.5 * 0.025)
    opt.param_groups[0]["max_lr"] = 0.5  # OneCycleLR's key wins
    assert one_step(model, opt, lr_now=0.05)["0.weight"] == pytest.approx(1 - 0.5 * 0.005)


@pytest.mark.parametrize("mode", ["decoupled", "independent", "corrected"])
def test_cautious_with_zero_update_equals_its_plain_rule(mode):
    """u = 0: 1[u * w >= 0] = 1 everywhere, so the cautious rule decays like its base."""
    a, b = ln_net(), ln_net()
    for model, cautious in ((a, False), (b, True)):
        reg = tp.Regularizer(model, tp.L2(0.5))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        reg.attach(opt, mode=mode, cautious=cautious)
        one_step(model, opt)
        one_step(model, opt, lr_now=0.05)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-7)


def test_cautious_skips_coordinates_the_update_pushes_away_from_zero():
    w = nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
    holder = nn.Module()
    holder.w = w
    reg = tp.Regularizer(holder, tp.L2(1.0), include="w")
    opt = torch.optim.SGD([w], lr=0.1)
    handle = reg.attach(opt, mode="decoupled", cautious=True)
    assert handle.mode == "decoupled" and "Cautious" in repr(handle.rule)
    w.grad = torch.tensor([1.0, -1.0, 1.0, -1.0])  # u: towards 0, away, away, towards 0
    opt.step()
    expected = torch.tensor([1 - 0.1 - 0.1, 1.1, -1.1, -1 + 0.1 + 0.1])
    torch.testing.assert_close(w.detach(), expected)


@pytest.mark.parametrize("rounding", ["stochastic", "compensated"])
def test_cautious_bfloat16_goes_through_rounding(rounding):
    torch.manual_seed(0)
    w = nn.Parameter(torch.ones(10_000, dtype=torch.bfloat16))
    holder = nn.Module()
    holder.w = w
    reg = tp.Regularizer(holder, tp.L2(1e-3), include="w")
    opt = torch.optim.SGD([w], lr=1e-2)  # decay 1e-5: far below bf16's half-ulp at 1.0
    handle = reg.attach(opt, mode="decoupled", cautious=True, rounding=rounding)
    for _ in range(100):
        w.grad = torch.zeros_like(w)
        opt.step()
    value = w.float()
    if rounding == "compensated":  # exact: the bf16 weight plus its float32 residual
        value = value + handle.residuals[id(w)]
    assert value.mean().item() == pytest.approx((1 - 1e-5) ** 100, abs=1e-4)
    assert value.mean().item() < 0.9995  # nearest rounding would leave 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "grad", "cautious": True}, ValueError, "cautious must be False unless mode is"),
        ({"mode": "proximal", "cautious": True}, ValueError, "cautious must be False"),
        ({"mode": "decoupled", "cautious": 1}, TypeError, "cautious must be a bool, got 1"),
        ({"mode": "corrected", "lr_max": 0}, ValueError, "lr_max must be a finite number > 0"),
        ({"mode": "corrected", "normalized": "nothing*"}, ValueError, "nothing"),
        ({"mode": "corrected", "bogus": 1}, TypeError, "bogus"),
    ],
)
def test_rule_option_errors(kwargs, error, match):
    model = ln_net()
    reg = tp.Regularizer(model, tp.L2(0.5) if kwargs["mode"] != "proximal" else tp.L1(0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        reg.attach(opt, **kwargs)


def test_corrected_outside_attach_needs_binding():
    from torchpenalty.decay_rules import Corrected
    from torchpenalty.updates import Batch

    w = torch.ones(2)
    opt = torch.optim.SGD([w], lr=0.1)
    b = Batch(tp.L2(1.0), [w], [w], ["w"], [w], opt, opt.param_groups[0])
    with pytest.raises(RuntimeError, match="bind"):
        Corrected().pre(b)


def test_stats_follow_the_corrected_handle():
    model = ln_net()
    reg = tp.Regularizer(model, tp.L2(0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = reg.attach(opt, mode="corrected")
    one_step(model, opt)  # the rule sees the peak lr 0.1
    opt.param_groups[0]["lr"] = 0.05
    out = reg.stats(handle)
    assert {t.name: t.decay for t in out.tensors} == pytest.approx(
        {"0.weight": 0.5 * 0.05**2 / 0.1, "2.weight": 0.5 * 0.05}
    )
    assert [g.names for g in out.groups] == [["0.weight"], ["2.weight"]]  # split by decay
    handle.remove()
    cautious = reg.attach(opt, mode="decoupled", cautious=True)
    t = reg.stats(cautious).tensors[0]
    assert t.decay == pytest.approx(0.025) and t.predicted_ratio != t.predicted_ratio  # nan


def test_cautious_generic_path_equals_the_l2_fast_path():
    """ElasticNet(s, l1_ratio=0) is L2(s) but takes the generic D = grad P(w) path."""
    models = [ln_net(), ln_net()]
    for model, pen in zip(models, [tp.L2(0.3), tp.ElasticNet(0.3, l1_ratio=0.0)], strict=True):
        reg = tp.Regularizer(model, pen)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        reg.attach(opt, mode="corrected", cautious=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5)
        for step in range(5):
            torch.manual_seed(step)
            opt.zero_grad()
            model(torch.randn(8, 3)).square().mean().backward()
            opt.step()
            sched.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(b, a)
