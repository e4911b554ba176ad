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
