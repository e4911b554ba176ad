"""``opt.step(closure)`` with an attached Regularizer: the closure computes the gradients
inside ``step()``, after the step pre-hooks; the penalty must act on them anyway."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchpenalty as tp

S, LR, STEPS = 0.3, 0.1, 5
X = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()


def loss_of(model):
    return model(X).pow(2).mean()


def ps(model):
    return list(model.parameters())


# (ours: optimizer without decay, mode) vs (reference: the torch optimizer's own decay)
CASES = {
    "sgd-grad": (
        lambda m: torch.optim.SGD(ps(m), lr=LR),
        "grad",
        lambda m: torch.optim.SGD(ps(m), lr=LR, weight_decay=S),
    ),
    "sgd-momentum-grad": (
        lambda m: torch.optim.SGD(ps(m), lr=LR, momentum=0.9),
        "grad",
        lambda m: torch.optim.SGD(ps(m), lr=LR, momentum=0.9, weight_decay=S),
    ),
    "adam-grad": (
        lambda m: torch.optim.Adam(ps(m), lr=LR),
        "grad",
        lambda m: torch.optim.Adam(ps(m), lr=LR, weight_decay=S),
    ),
    "adam-decoupled": (
        lambda m: torch.optim.Adam(ps(m), lr=LR),
        "decoupled",
        lambda m: torch.optim.AdamW(ps(m), lr=LR, weight_decay=S),
    ),
    "adamw-decoupled": (
        lambda m: torch.optim.AdamW(ps(m), lr=LR, weight_decay=0.0),
        "decoupled",
        lambda m: torch.optim.AdamW(ps(m), lr=LR, weight_decay=S),
    ),
    "sgd-independent": (  # constant lr: rate 1, so w <- w (1 - s) = SGD's lr * wd = s
        lambda m: torch.optim.SGD(ps(m), lr=LR),
        "independent",
        lambda m: torch.optim.SGD(ps(m), lr=LR),  # decayed by hand below
    ),
}


def closure_for(model, opt):
    def closure():
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        return loss

    return closure


def train_ours(case, how):
    make_opt, mode, _ = CASES[case]
    model = net()
    opt = make_opt(model)
    tp.Regularizer(model, tp.L2(S), include="*").attach(opt, mode=mode)
    losses = []
    for _ in range(STEPS):
        closure = closure_for(model, opt)
        if how == "positional":
            losses.append(opt.step(closure))
        elif how == "keyword":
            losses.append(opt.step(closure=closure))
        else:  # no closure: backward first, then step()
            losses.append(closure())
            opt.step()
    return model, [x.item() for x in losses]


def train_reference(case):
    _, mode, make_ref = CASES[case]
    model = net()
    opt = make_ref(model)
    losses = []
    for _ in range(STEPS):
        losses.append(closure_for(model, opt)().item())
        if mode == "independent":
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 - S)
        opt.step()
    return model, losses


@pytest.mark.parametrize("how", ["positional", "keyword", "no-closure"])
@pytest.mark.parametrize("case", list(CASES))
def test_step_with_closure_equals_the_torch_reference(case, how):
    ours, our_losses = train_ours(case, how)
    ref, ref_losses = train_reference(case)
    assert our_losses == pytest.approx(ref_losses, rel=0, abs=1e-12)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=f"{case} {how} {name}")


class PlainSGD(torch.optim.Optimizer):
    """``w <- w - lr * grad``, calling the closure ``calls`` times (0: ignores it; 2: a
    line search or SAM would)."""

    def __init__(self, params, lr, calls):
        super().__init__(params, {"lr": lr})
        self.calls = calls

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        for _ in range(self.calls if closure is not None else 0):
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-g["lr"])
        return loss


def test_closure_called_twice_applies_the_penalty_once():
    model, ref = net(), net()
    opt = PlainSGD(ps(model), LR, calls=2)
    tp.Regularizer(model, tp.L2(S), include="*").attach(opt, mode="decoupled")
    ref_opt = torch.optim.SGD(ps(ref), lr=LR)
    for _ in range(STEPS):
        opt.step(closure_for(model, opt))
        with torch.no_grad():  # decayed once, after the first call
            for p in ref.parameters():
                p.mul_(1 - LR * S)
        closure_for(ref, ref_opt)()  # the second call's gradient: at the decayed weights
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_closure_never_called_warns_and_skips_the_penalty():
    model = net()
    opt = PlainSGD(ps(model), LR, calls=0)
    tp.Regularizer(model, tp.L2(S), include="*").attach(opt, mode="grad")
    closure_for(model, opt)()
    before = [(p.detach().clone(), p.grad.clone()) for p in model.parameters()]
    with pytest.warns(UserWarning, match=r"PlainSGD.step\(closure\) never called its closure"):
        opt.step(closure_for(model, opt))
    for p, (w, g) in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), w - LR * g, rtol=0, atol=1e-15)
