"""Regularizer: modes x penalties x model shapes, per-layer dicts, schedules, handles."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from cases import PENALTIES, PENALTY_IDS
from torch import nn

import torchpenalty as tp


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 5)).double()


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).double()


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(7, 6)
        self.ln = nn.LayerNorm(6)
        self.out = nn.Linear(6, 7)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.ln(self.emb(x)))


MODELS = {
    "mlp": (mlp, lambda: torch.randn(4, 5, dtype=torch.float64)),
    "conv": (convnet, lambda: torch.randn(4, 2, 6, 6, dtype=torch.float64)),
    "tied": (lambda: TiedLM().double(), lambda: torch.randint(0, 7, (4, 3))),
}


def make(info, model):
    refs = {n: p.detach() + 0.1 for n, p in model.named_parameters()}
    return info.make(0.3, refs)


def grads_after(model, x, *, reg=None, mode=None):
    model.zero_grad()
    loss = model(x).pow(2).mean()
    if mode == "loss":
        loss = loss + reg()
    loss.backward()
    if mode == "grad":
        reg.add_grad_()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_id", list(MODELS))
@pytest.mark.parametrize("info", PENALTIES, ids=PENALTY_IDS)
def test_modes_agree_on_models(info, model_id):
    factory, inputs = MODELS[model_id]
    torch.manual_seed(1)
    x = inputs()
    base = factory()
    m_loss, m_grad, m_dec, m_prox = (copy.deepcopy(base) for _ in range(4))
    pen = make(info, base)

    # loss mode == grad mode
    g_loss = grads_after(m_loss, x, reg=tp.Regularizer(m_loss, pen), mode="loss")
    g_grad = grads_after(m_grad, x, reg=tp.Regularizer(m_grad, pen), mode="grad")
    for n in g_loss:
        torch.testing.assert_close(g_loss[n], g_grad[n], rtol=1e-12, atol=1e-12, msg=n)

    # decoupled (plain SGD at lr): w - lr*(grad_data) - lr*grad_P(w) == grad mode step
    lr = 0.05
    ref = copy.deepcopy(base)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=lr)
    tp.Regularizer(ref, pen).attach(opt_ref, mode="grad")
    grads_after(ref, x)
    opt_ref.step()
    opt = torch.optim.SGD(m_dec.parameters(), lr=lr)
    tp.Regularizer(m_dec, pen).attach(opt, mode="decoupled")
    grads_after(m_dec, x)
    opt.step()
    for (n, p), q in zip(m_dec.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=n)

    # proximal: the data step then the prox at lr*strength, only on selected params
    reg = tp.Regularizer(m_prox, pen)
    opt = torch.optim.SGD(m_prox.parameters(), lr=lr)
    if not info.prox:
        with pytest.raises(ValueError, match="no proximal operator"):
            reg.attach(opt, mode="proximal")
        return
    reg.attach(opt, mode="proximal")
    plain = copy.deepcopy(base)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=lr)
    grads_after(plain, x)
    opt_plain.step()
    grads_after(m_prox, x)
    opt.step()
    selected = set(reg.names)
    for (n, p), q in zip(m_prox.named_parameters(), plain.parameters(), strict=True):
        expected = q.detach().clone()
        if n in selected:
            pen.prox_([expected], lr, names=[n])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12, msg=n)


def test_per_layer_dict_first_match_wins():
    model = convnet()
    reg = tp.Regularizer(model, {nn.Conv2d: tp.L1(1e-3), "4.*": tp.L2(1e-2), "*": tp.L2(5.0)})
    assert [(repr(b.penalty), b.names) for b in reg.bindings] == [
        ("L1(strength=0.001)", ("0.weight",)),
        ("L2(strength=0.01)", ("4.weight",)),
    ]
    expected = 1e-3 * model[0].weight.abs().sum() + 0.5e-2 * model[4].weight.pow(2).sum()
    assert reg().item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"penalty key 'decoder.\*' must match at least one"):
        tp.Regularizer(model, {"decoder.*": tp.L2(1.0)})
    with pytest.raises(TypeError, match=r"penalty\['0.\*'\] must be a Penalty, got 0.1"):
        tp.Regularizer(model, {"0.*": 0.1})
    with pytest.raises(TypeError, match="penalty must be a Penalty or a dict"):
        tp.Regularizer(model, "l2")


def test_value_is_a_float_and_loss_is_fp32_scalar():
    model = nn.Sequential(nn.Linear(3, 3)).half()
    reg = tp.Regularizer(model, tp.L2(1.0))
    out = reg()
    assert out.dtype == torch.float32 and out.ndim == 0
    v = reg.value()
    assert isinstance(v, float)
    assert v == pytest.approx(0.5 * model[0].weight.float().pow(2).sum().item(), rel=1e-6)


def test_empty_selection_is_zero_and_backward_works():
    model = nn.Sequential(nn.LayerNorm(4))
    reg = tp.Regularizer(model, tp.L2(1.0))
    assert reg.names == []
    loss = model(torch.randn(2, 4)).sum() + reg()
    loss.backward()
    assert reg().item() == 0.0 and reg.value() == 0.0


def test_schedule_advances_per_step_and_state_dict_restores_it():
    model = mlp()
    sched = tp.schedules.Linear(0.0, 1.0, steps=10)
    reg = tp.Regularizer(model, tp.L2(sched))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    handle = reg.attach(opt, mode="grad")
    for _ in range(4):
        model(torch.randn(2, 5, dtype=torch.float64)).sum().backward()
        opt.step()
    assert reg.step_count == 4
    w2 = sum(p.pow(2).sum() for p in reg.parameters()).item()
    assert reg.value() == pytest.approx(0.5 * 0.4 * w2)
    state = reg.state_dict()
    reg2 = tp.Regularizer(model, tp.L2(sched))
    reg2.load_state_dict(state)
    assert reg2.value() == pytest.approx(reg.value())
    handle.remove()
    opt.step()
    assert reg.step_count == 4  # removed hooks no longer advance
    with pytest.raises(ValueError, match=r"state\['step'\] must be an integer >= 0, got -1"):
        reg.load_state_dict({"step": -1})
    with pytest.raises(ValueError, match="unknown"):
        reg.load_state_dict({"step": 1, "extra": 2})


def test_handle_remove_and_context_manager():
    model = mlp()
    reg = tp.Regularizer(model, tp.L2(10.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[0].weight.detach().clone()
    with reg.attach(opt, mode="decoupled") as h:
        assert "attached" in repr(h)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert "removed" in repr(h)
    torch.testing.assert_close(model[0].weight.detach(), before * (1 - 0.1 * 10.0))
    after = model[0].weight.detach().clone()
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), after)
    h.remove()  # idempotent


def test_params_without_grad_are_left_alone():
    model = mlp()
    reg = tp.Regularizer(model, tp.L2(1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode="decoupled")
    before = model[0].weight.detach().clone()
    model[2].weight.grad = torch.zeros_like(model[2].weight)
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), before)


def test_attach_errors_and_double_decay_warning():
    model = mlp()
    reg = tp.Regularizer(model, tp.L2(1e-2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"mode must be one of 'grad', .*got 'adamw'"):
        reg.attach(opt, mode="adamw")
    with pytest.raises(TypeError, match=r"optimizer must be a torch.optim.Optimizer, got \[\]"):
        reg.attach([], mode="grad")
    other = torch.optim.SGD([model[0].bias], lr=0.1)
    with pytest.raises(ValueError, match="optimizer must hold at least one regularized parameter"):
        reg.attach(other, mode="grad")
    with pytest.warns(UserWarning, match="decayed twice"):
        reg.attach(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2), mode="grad")
    with pytest.warns(UserWarning, match="AdamW's default is weight_decay=0.01"):
        reg.attach(torch.optim.AdamW(model.parameters()), mode="loss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.attach(torch.optim.AdamW(tp.param_groups(model, 0.0)), mode="decoupled")
    with pytest.raises(ValueError, match=r"accumulation_steps must be an integer >= 1, got 0"):
        reg(accumulation_steps=0)
    with pytest.raises(
        ValueError, match=r"mode must be 'loss' for torch.optim.LBFGS, .*got 'grad'"
    ):
        reg.attach(torch.optim.LBFGS(model.parameters()), mode="grad")


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1),  # GradScaler unscales before step()
        lambda ps: torch.optim.Adam(ps, lr=0.01, fused=True),  # the kernel unscales
    ],
    ids=["unscaled-before-step", "fused-deferred-unscale"],
)
def test_grad_mode_with_grad_scaler_matches_fp32(make_opt):
    """With GradScaler, grad mode gives the unscaled run's result: the penalty gradient is
    added to unscaled gradients, or scaled to match when a fused optimizer defers
    unscaling to its kernel (GradScaler then sets ``grad_scale`` on the optimizer)."""
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    base = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 5))
    ref, scaled = copy.deepcopy(base), copy.deepcopy(base)
    opt_ref, opt = make_opt(ref.parameters()), make_opt(scaled.parameters())
    tp.Regularizer(ref, tp.L2(0.5)).attach(opt_ref, mode="grad")
    tp.Regularizer(scaled, tp.L2(0.5)).attach(opt, mode="grad")
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(getattr(o, "grad_scale", None)))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(3):
        opt_ref.zero_grad()
        ref(x).pow(2).mean().backward()
        opt_ref.step()
        opt.zero_grad()
        scaler.scale(scaled(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
    fused = opt.defaults.get("fused")
    assert all((s is not None) == bool(fused) for s in seen)  # the intended path was taken
    for p, q in zip(ref.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_decoupled_skipped_when_grad_scaler_skips_a_fused_step():
    model = nn.Linear(3, 3, bias=False)
    reg = tp.Regularizer(model, tp.L2(1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, fused=True)
    reg.attach(opt, mode="decoupled")
    before = model.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    loss = scaler.scale(model(torch.full((1, 3), float("inf"))).sum())
    loss.backward()
    scaler.step(opt)  # inf found: the fused kernel skips, so must the decay
    scaler.update()
    torch.testing.assert_close(model.weight.detach(), before, rtol=0, atol=0)
    assert reg.step_count == 0
