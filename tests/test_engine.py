"""The sweep engine's fast paths: the stacked Linear's hand-written backward, subnormal
flushing, and the vectorize plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import torchpenalty as tp
from torchpenalty.sweep.engine import (
    Engine,
    Problem,
    Task,
    _StackedLinear,
    denormals_flushed,
    flush_denormal,
)
from torchpenalty.sweep.plan import STACK_MARGIN


def engine(make=None, n=48, d=3, batch=8, epochs=2):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g)
    Y = (X @ torch.randn(d, 1, generator=g)).unsqueeze(0).expand(3, n, 1).contiguous()
    rows = np.arange(n)
    pb = Problem(
        X.unsqueeze(0).expand(3, n, d).contiguous(),
        Y,
        torch.ones(3, 1),
        [rows[: n // 2], rows[n // 2 :], rows],
        [rows[n // 2 :], rows[: n // 2], rows[:0]],
        "mse",
    )
    make = make or (lambda: nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 1)))
    return Engine(make, pb, tp.L2(1.0), epochs=epochs, batch_size=batch, optimizer="adam",
                  lr=0.01, mode="grad", seed=0, early_stopping=None)  # fmt: skip


@pytest.mark.parametrize("bias", [True, False])
def test_stacked_linear_gradients_equal_autograd_of_baddbmm(bias):
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(_StackedLinear.apply, (x, w, b))
    out = _StackedLinear.apply(x, w, b)
    ref = torch.bmm(x, w.transpose(1, 2)) + (b.unsqueeze(1) if bias else 0)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, w, *([b] if bias else [])], g)
    want = torch.autograd.grad(ref, [x, w, *([b] if bias else [])], g)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)
    (gw,) = torch.autograd.grad(_StackedLinear.apply(x.detach(), w, b), [w], g)
    assert gw.is_contiguous()  # stored as is by autograd, no layout copy


@pytest.mark.parametrize("before", [False, True])
def test_flush_denormal_is_on_inside_and_restored(before):
    torch.set_flush_denormal(before)
    try:
        assert denormals_flushed() is before
        with flush_denormal("cpu"):
            assert denormals_flushed()
            assert float(torch.tensor([1e-38]) * 0.5) == 0.0
        assert denormals_flushed() is before
        with pytest.raises(RuntimeError), flush_denormal("cpu"):
            raise RuntimeError("boom")
        assert denormals_flushed() is before
    finally:
        torch.set_flush_denormal(False)


def test_training_runs_with_subnormals_flushed():
    eng = engine()
    seen = []
    eng.run([Task(0, 0, 0.1)], on_epoch=lambda e, snap: seen.append(denormals_flushed()))
    assert seen == [True, True]
    assert not denormals_flushed()


def test_sweep_restores_the_denormal_mode():
    X, y = torch.randn(40, 3), torch.randn(40)
    make = lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))  # noqa: E731
    tp.sweep(make, (X, y), strengths=[0.1], folds=2, epochs=1, progress=False, refit=False)
    assert not denormals_flushed()


def test_unused_regularized_parameter_gets_a_zero_gradient():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 1), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    eng = engine(make=Net)
    recs, final = eng.run([Task(0, 0, 1.0), Task(1, 1, 1.0)])
    assert all(math.isfinite(r.val_loss) for r in recs)
    assert torch.isfinite(final["unused.weight"]).all()


@pytest.mark.parametrize(
    "mask, kept",
    [
        ([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], 4),  # padding of every model dropped
        ([[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]], 2),  # one model alone: its rows exactly
        ([[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]], 1),  # one row (batches() never makes one)
        ([[1, 1, 1], [1, 1, 1]], 3),  # no padding: unchanged
        ([[0, 0, 0], [0, 0, 0]], 1),  # all padding (chunks mixing batch counts only)
    ],
)
def test_trimmed_batches_drop_the_padding_every_model_shares(mask, kept):
    from torchpenalty.sweep.engine import _trimmed

    mask = torch.tensor(mask, dtype=torch.bool)
    idx = torch.arange(mask.numel()).view(mask.shape)
    rows, mk = _trimmed(idx, mask)
    assert rows.shape == (2, kept)
    torch.testing.assert_close(rows, idx[:, -kept:])  # padding sits at the front
    if mask[:, -kept:].all():
        assert mk is None
    else:
        torch.testing.assert_close(mk, mask[:, -kept:])


def test_a_model_alone_trains_on_exactly_its_rows_like_a_plain_loop():
    """One model, one fold: the engine's epoch equals a hand-written loop over the same
    shuffled rows (no padding rows in the first batch)."""
    eng = engine(n=45, batch=8, epochs=1)
    task = Task(0, 2, 0.0)  # the all-rows fold: 45 rows, 6 batches, 3 padding slots
    _, final = eng.run([task])
    model = eng.build_model(2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    idx, mask = eng.batches([task], 0)
    X, Y = eng.problem.X[2], eng.problem.Y[2]
    for b in range(idx.shape[1]):
        rows = idx[0, b][mask[0, b]]
        opt.zero_grad()
        nn.functional.mse_loss(model(X[rows]), Y[rows]).backward()
        opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(final[n][0], p.detach(), rtol=1e-5, atol=1e-6)


def test_time_steps_restores_the_random_state():
    eng = engine(make=lambda: nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 1)))
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    eng.time_steps([Task(0, 0, 1.0), Task(0, 1, 1.0)], steps=2)
    torch.testing.assert_close(torch.rand(3), a)


def test_sweep_auto_vectorize_records_its_plan_and_matches_the_forced_path():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(60, 4, generator=g)
    y = X @ torch.randn(4, generator=g) + 0.1 * torch.randn(60, generator=g)
    make = lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))  # noqa: E731
    kw = dict(strengths=[1e-3, 0.1, 1.0], folds=3, epochs=3, progress=False, refit=False)
    auto = tp.sweep(make, (X, y), **kw)
    plan = auto.settings["vectorize_plan"]
    assert plan["choice"] in ("stacked", "one at a time") and plan["source"] == "cost model"
    assert plan["stacked_s"] > 0 and plan["single_s"] > 0 and plan["reasons"]
    assert plan["vectorize"] == (plan["stacked_s"] < STACK_MARGIN * plan["single_s"])
    assert auto.settings["chunk_size"] == (plan["chunk_size"] if plan["vectorize"] else 1)
    forced = tp.sweep(make, (X, y), vectorize=plan["vectorize"], **kw)
    assert "vectorize_plan" not in forced.settings
    np.testing.assert_allclose(
        [r.val_loss for r in auto.records], [r.val_loss for r in forced.records], rtol=1e-5
    )
    assert '"vectorize_plan"' in auto.to_json()


# ---------------------------------------------------------------------------- any data, any loss
def image_problem(loss, n=40, k=3):
    """Digit-like 1x6x6 images (no standardization: one copy per fold is a view)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % k
    X = torch.randn(n, 1, 6, 6, generator=g) + labels.view(n, 1, 1, 1).float()
    rows = np.arange(n)
    half = [rows[rows % 2 == 0], rows[rows % 2 == 1]]
    return Problem(X.unsqueeze(0).expand(3, *X.shape), labels, torch.ones(3, 1),
                   [half[0], half[1], rows], [half[1], half[0], rows[:0]], loss)  # fmt: skip


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def image_engine(loss, **kw):
    return Engine(cnn, image_problem(loss), tp.L2(1.0), epochs=3, batch_size=8,
                  optimizer="adam", lr=0.01, mode="grad", seed=0, early_stopping=None, **kw)  # fmt: skip


TASKS = [Task(i, k, s) for i, s in enumerate([1e-3, 0.1, 1.0]) for k in range(2)]


def test_images_vectorized_equal_one_at_a_time():
    eng = image_engine("cross_entropy")
    assert eng.forward_kind == "vmap"
    together, _ = eng.run(TASKS)
    alone = [eng.run([t])[0][0] for t in TASKS]
    np.testing.assert_allclose([r.val_loss for r in together], [r.val_loss for r in alone],
                               rtol=1e-4)  # fmt: skip
    assert all(r.val_accuracy is not None for r in together)


def test_callable_loss_equals_the_named_one():
    """``loss=F.cross_entropy`` (a callable returning the mean) gives the same models and
    validation losses as ``loss="cross_entropy"``, padding rows masked in both."""
    named, _ = image_engine("cross_entropy").run(TASKS)
    given, _ = image_engine(nn.functional.cross_entropy).run(TASKS)
    np.testing.assert_allclose([r.val_loss for r in given], [r.val_loss for r in named],
                               rtol=1e-5)  # fmt: skip
    assert all(r.val_accuracy is None for r in given)


def test_callable_loss_multi_output_regression():
    g = torch.Generator().manual_seed(0)
    n = 30
    X = torch.randn(n, 4, generator=g)
    Y = X @ torch.randn(4, 2, generator=g)
    rows = np.arange(n)
    folds = [rows[:15], rows[15:], rows]
    vals = [rows[15:], rows[:15], rows[:0]]

    def problem(loss, y):
        return Problem(X.unsqueeze(0).expand(3, n, 4), y, torch.ones(3, 2), folds, vals, loss)

    make = lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))  # noqa: E731
    kw = dict(epochs=3, batch_size=8, optimizer="adam", lr=0.01, mode="grad", seed=0,
              early_stopping=None)  # fmt: skip
    named, _ = Engine(make, problem("mse", Y.unsqueeze(0).expand(3, n, 2)), tp.L2(1.0),
                      **kw).run(TASKS)  # fmt: skip
    given, _ = Engine(make, problem(nn.functional.mse_loss, Y), tp.L2(1.0), **kw).run(TASKS)
    np.testing.assert_allclose([r.val_loss for r in given], [r.val_loss for r in named],
                               rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("sizes, bs", [((30, 30), 8), ((30, 12), 8), ((45, 3), 4), ((7, 7), 7)])
def test_every_model_trains_on_its_own_batches_as_a_plain_loop(sizes, bs):
    """A fold's model takes ceil(n_train / bs) steps, every one with data, padding only at
    the front of the first (whatever fold the refit or other chunks hold); folds that
    need different numbers of steps are spread when forced into one chunk."""
    n = sum(sizes)
    rows = np.arange(n)
    parts = [rows[: sizes[0]], rows[sizes[0] :]]
    X = torch.randn(n, 3).unsqueeze(0).expand(3, n, 3)
    pb = Problem(X, torch.zeros(3, n, 1), torch.ones(3, 1), [parts[1], parts[0], rows],
                 [parts[0], parts[1], rows[:0]], "mse")  # fmt: skip
    eng = Engine(lambda: nn.Linear(3, 1), pb, tp.L2(1.0), epochs=1, batch_size=bs,
                 optimizer="adam", lr=0.01, mode="grad", seed=0, early_stopping=None)  # fmt: skip
    for fold in range(3):
        task = [Task(0, fold, 1.0)]
        idx, mask = eng.batches(task, 0)
        n_f = len(pb.train_idx[fold])
        assert eng.batch_counts(task) == [idx.shape[1]] == [math.ceil(n_f / bs)]
        nb, first = idx.shape[1], n_f - (idx.shape[1] - 1) * bs
        # full batches but the first (a first batch of one row takes one of the second's)
        want = [first, *[bs] * (nb - 1)] if first > 1 or nb == 1 else [2, bs - 1, *[bs] * (nb - 2)]
        assert mask[0].sum(1).tolist() == want
        assert all(m[: bs - k].logical_not().all() for m, k in zip(mask[0], want))  # at front
        assert sorted(idx[0][mask[0]].tolist()) == sorted(pb.train_idx[fold].tolist())
    idx, mask = eng.batches([Task(0, 0, 1.0), Task(0, 1, 1.0)], 0)  # forced together
    assert idx.shape[1] == math.ceil(max(sizes) / bs)
    if min(sizes) >= idx.shape[1]:
        assert mask.any(2).all()  # spread: data in every batch


# ---------------------------------------------------------------------------- hand backward
ACTS = [nn.ReLU(), nn.ReLU(inplace=True), nn.Tanh(), nn.Sigmoid(), nn.Identity(), nn.GELU(),
        nn.SiLU(), nn.LeakyReLU(0.1), nn.ELU(), nn.Softplus()]  # fmt: skip


@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
@pytest.mark.parametrize(("bias", "padded", "frozen"), [(True, False, False), (False, True, False),
                                                        (True, True, True)])  # fmt: skip
def test_hand_backward_equals_autograd_of_each_model_alone(act, bias, padded, frozen):
    """The bmm path's gradients (forward without autograd, backward by hand) equal, model
    by model, autograd's gradients of a plain nn.Sequential holding that model's weights
    on its rows (padding rows masked out; a frozen first layer gets no gradient)."""
    d, m, bs = 3, 4, 6

    def make():
        net = nn.Sequential(nn.Linear(d, 5, bias=bias), act, nn.Linear(5, 5, bias=bias),
                            act, nn.Linear(5, 2, bias=bias))  # fmt: skip
        if frozen:
            net[0].requires_grad_(False)
        return net

    eng = engine(make=make, d=d)
    assert eng.forward_kind == "bmm"
    tasks = [Task(i, i % 2, 0.1) for i in range(m)]
    _, _, params, _ = eng._stacked(tasks)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    x, y = torch.randn(m, bs, d, generator=g), torch.randn(m, bs, 2, generator=g)
    mk = None
    if padded:
        mk = torch.ones(m, bs, dtype=torch.bool)
        mk[0, :2] = mk[3, :1] = False
    rows = eng._mlp_step_grads(params, x, y, mk)
    for j in range(m):
        net = make()
        with torch.no_grad():
            for n_, p in net.named_parameters():
                p.copy_(params[n_][j])
        keep = slice(None) if mk is None else mk[j]
        out = net(x[j][keep])
        per_row = (out - y[j][keep]).pow(2).mean(1)
        per_row.mean().backward()
        torch.testing.assert_close(rows[j][keep], per_row.detach(), rtol=1e-6, atol=1e-6)
        for n_, p in net.named_parameters():
            if p.grad is None:
                assert params[n_].grad is None and frozen
                continue
            torch.testing.assert_close(params[n_].grad[j], p.grad, rtol=1e-5, atol=1e-6)


def test_a_linear_used_twice_takes_the_vmap_path():
    from torchpenalty.sweep.engine import _is_stackable_mlp

    lin = nn.Linear(4, 4)
    assert not _is_stackable_mlp(nn.Sequential(lin, nn.ReLU(), lin))
    relu = nn.ReLU()  # an activation used twice is fine (no weights)
    assert _is_stackable_mlp(nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu))


# ------------------------------------------------------------- written-out loss gradients
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "huber"])
@pytest.mark.parametrize("padded", [False, True])
def test_loss_gradient_equals_autograd_of_the_models_mean_losses(loss, padded):
    """``Engine._loss_grad`` (the loss's own ``rows_grad`` where it has one, autograd
    otherwise) = autograd of the sum over models of each model's mean loss over its real
    rows, in float64; padding rows get loss 0 and gradient 0."""
    from torchpenalty.sweep.losses import get_loss

    g = torch.Generator().manual_seed(3)
    m, b, c = 3, 5, 4
    out = torch.randn(m, b, c, generator=g, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, c, (m, b), generator=g)
    else:
        y = torch.randn(m, b, c, generator=g, dtype=torch.float64)
    mk = None
    if padded:
        mk = torch.ones(m, b, dtype=torch.bool)
        mk[0, :2] = mk[2, :4] = False
    eng = engine()
    eng.problem.objective = get_loss(loss)
    rows, grad = eng._loss_grad(out.clone(), y, mk)
    ref_out = out.clone().requires_grad_()
    ref_rows = get_loss(loss).rows(ref_out, y)
    weight = torch.ones(m, b, dtype=torch.float64) if mk is None else mk.double()
    ((ref_rows * weight).sum(1) / weight.sum(1)).sum().backward()
    torch.testing.assert_close(rows, (ref_rows * weight).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_out.grad, rtol=1e-12, atol=1e-12)
    assert (loss == "huber") == (get_loss(loss).rows_grad(out, y, 1.0) is None)


@pytest.mark.parametrize("loss", ["cross_entropy", "huber"])
def test_hand_backward_equals_autograd_for_other_losses(loss):
    """The bmm path's gradients under cross-entropy (written-out gradient) and Huber
    (autograd's) equal autograd of each model alone."""
    from torchpenalty.sweep.losses import get_loss

    d, m, bs, k = 3, 4, 6, 3

    def make():
        return nn.Sequential(nn.Linear(d, 5), nn.ReLU(), nn.Linear(5, k))

    eng = engine(make=make, d=d)
    eng.problem.objective = get_loss(loss)
    tasks = [Task(i, i % 2, 0.1) for i in range(m)]
    _, _, params, _ = eng._stacked(tasks)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(m, bs, d, generator=g)
    if loss == "cross_entropy":
        y = torch.randint(0, k, (m, bs), generator=g)
    else:
        y = torch.randn(m, bs, k, generator=g)
    with torch.no_grad():
        rows = eng._mlp_step_grads(params, x, y, None)
    for j in range(m):
        net = make()
        with torch.no_grad():
            for n_, p in net.named_parameters():
                p.copy_(params[n_][j])
        per_row = get_loss(loss).rows(net(x[j])[None], y[j][None])[0]
        per_row.mean().backward()
        torch.testing.assert_close(rows[j], per_row.detach(), rtol=1e-6, atol=1e-6)
        for n_, p in net.named_parameters():
            torch.testing.assert_close(params[n_].grad[j], p.grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ direct optimizer step
@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_step_equals_torch_optimizer_step(kind, dtype):
    """``_direct_step`` (the fused kernel called on the optimizer's state after the first
    step) gives bit for bit what ``opt.step()`` gives, over 30 steps of new gradients, after
    a ``load_state_dict`` resume, and with a frozen tensor that later gets a gradient (it
    falls back to ``opt.step()``); ``state_dict()`` reads the same state."""
    from torchpenalty.sweep.engine import _direct_step

    def make(frozen_grad_at=None):
        g = torch.Generator().manual_seed(0)
        ps = [torch.randn(4, 3, 2, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]
        cls = torch.optim.Adam if kind == "adam" else torch.optim.SGD
        extra = {} if kind == "adam" else {"momentum": 0.9}
        return ps, cls(ps, lr=0.01, fused=True, **extra)

    ours, opt_a = make()
    ref, opt_b = make()
    g = torch.Generator().manual_seed(1)
    late = 10 if kind == "adam" else 0  # (torch's fused SGD itself fails on a late gradient)
    for step in range(30):
        grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in ours]
        for p, q, gr in zip(ours, ref, grads, strict=True):
            q.grad = gr.clone()
            p.grad = gr.clone()
        if step < late:  # no gradient at first for the last tensor
            ours[2].grad = ref[2].grad = None
        _direct_step(opt_a)
        opt_b.step()
        for p, q in zip(ours, ref, strict=True):
            assert torch.equal(p, q), step
        if step == 15:  # a resume: a new optimizer from the state dict
            state = opt_a.state_dict()
            opt_a = type(opt_a)(ours, **{k: v for k, v in opt_a.defaults.items()})
            opt_a.load_state_dict(state)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    for k in sb:
        for name in sb[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name]))


# ------------------------------------------------- review of the stacked step (issue #17)
INPLACE_ACTS = [nn.LeakyReLU(0.1, inplace=True), nn.ELU(inplace=True), nn.SiLU(inplace=True)]


@pytest.mark.parametrize("act", INPLACE_ACTS, ids=lambda a: repr(a))
@pytest.mark.parametrize(("bias", "padded", "frozen"), [(True, False, False), (False, True, True)])
def test_hand_backward_of_inplace_activations_without_a_backward_kernel(act, bias, padded, frozen):
    """``inplace=True`` activations whose derivative autograd finds (LeakyReLU, ELU, SiLU)
    give autograd's gradients of each model alone (they raised "a leaf Variable that
    requires grad is being used in an in-place operation")."""
    test_hand_backward_equals_autograd_of_each_model_alone(act, bias, padded, frozen)


def _seq(*mods):
    """``make_model`` for an nn.Sequential of ``mods``: Linear layers given as (in, out) or
    (in, out, bias) and built at each call, activations used as given (one instance
    given twice is used twice)."""

    def make():
        return nn.Sequential(*(nn.Linear(*m) if isinstance(m, tuple) else m for m in mods))

    return make


def _frozen(make, i):
    def frozen():
        net = make()
        net[i].requires_grad_(False)
        return net

    return frozen


_RELU = nn.ReLU()
_F64 = {"dtype": torch.float64}
# name: (make_model, problem options, optimizer, mode)
MODELS = {
    "frozen first layer": (_frozen(_seq((3, 5), nn.ReLU(), (5, 1)), 0), {}, "adam", "grad"),
    "frozen last layer": (_frozen(_seq((3, 5), nn.ReLU(), (5, 1)), 2), {}, "sgd", "decoupled"),
    "no bias": (_seq((3, 5, False), nn.Tanh(), (5, 1, False)), {}, "adam", "proximal"),
    "activation first": (_seq(nn.Tanh(), (3, 5), nn.ReLU(), (5, 1)), {}, "sgd", "grad"),
    "inplace activation first": (
        _seq(nn.ReLU(inplace=True), (3, 5), nn.Sigmoid(), (5, 1)),
        {},
        "adam",
        "decoupled",
    ),
    "two activations in a row": (
        _seq((3, 5), nn.ReLU(), nn.Tanh(), (5, 1), nn.Identity()),
        {},
        "adam",
        "grad",
    ),
    "one activation used twice": (
        _seq((3, 5), _RELU, (5, 5), _RELU, (5, 1)),
        {},
        "sgd",
        "proximal",
    ),
    "gelu and silu": (_seq((3, 5), nn.GELU(), (5, 1), nn.SiLU()), {}, "adam", "grad"),
    "inplace leaky relu": (_seq((3, 5), nn.LeakyReLU(0.1, True), (5, 1)), {}, "adam", "grad"),
    "single linear": (lambda: nn.Linear(3, 1), {}, "adam", "proximal"),
    "multi-output target": (_seq((3, 5), nn.ReLU(), (5, 4)), {"k": 4}, "adam", "grad"),
    "cross-entropy, 50 classes": (
        _seq((3, 5), nn.ReLU(), (5, 50)),
        {"classes": 50},
        "adam",
        "decoupled",
    ),
    "huber (autograd's loss gradient)": (
        _seq((3, 5), nn.ReLU(), (5, 2)),
        {"loss": "huber", "k": 2},
        "sgd",
        "grad",
    ),
    "float64": (lambda: _seq((3, 5), nn.ReLU(), (5, 1))().double(), _F64, "adam", "proximal"),
}


def _problem(n=45, d=3, k=1, loss="mse", classes=0, dtype=torch.float32):
    """Folds of 20, 25 and 45 training rows: 3, 4 and 6 batches of 8 (one chunk mixes
    them: padded and spread batches, a first batch of padding for the shorter folds)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    rows = np.arange(n)
    if classes:
        loss, Y = "cross_entropy", torch.randint(0, classes, (n,), generator=g)
    else:
        Y = X @ torch.randn(d, k, generator=g, dtype=dtype)
        Y = Y if loss == "huber" else Y.unsqueeze(0).expand(3, n, k).contiguous()
    return Problem(X.unsqueeze(0).expand(3, n, d).contiguous(), Y, torch.ones(3, k, dtype=dtype),
                   [rows[:20], rows[20:], rows], [rows[20:], rows[:20], rows[:0]], loss)  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
def test_bmm_path_trains_as_autograd_through_the_modules(name):
    """Three epochs of a chunk that mixes folds of 3, 4 and 6 batches: the bmm path (hand
    backward, written-out loss gradients, direct fused step) gives the vmap path's
    (autograd through the real modules) validation losses and parameters."""
    make, options, optimizer, mode = MODELS[name]
    pb = _problem(**options)
    penalty = tp.L1(0.1) if mode == "proximal" else tp.L2(0.1)
    tasks = [Task(0, 0, 0.1), Task(1, 1, 1.0), Task(2, 2, 0.01)]
    out = {}
    for forward in ("bmm", "vmap"):
        eng = Engine(make, pb, penalty, epochs=3, batch_size=8, optimizer=optimizer, lr=0.01,
                     mode=mode, seed=0, early_stopping=None, forward=forward)  # fmt: skip
        out[forward] = eng.run(tasks)
    (recs, final), (ref_recs, ref_final) = out["bmm"], out["vmap"]
    for r, e in zip(recs, ref_recs, strict=True):
        assert r.val_loss == pytest.approx(e.val_loss, rel=1e-5, nan_ok=True)  # (fold 2: none)
        assert r.history["train"] == pytest.approx(e.history["train"], rel=1e-5)
    for n in ref_final:
        torch.testing.assert_close(final[n], ref_final[n], rtol=1e-5, atol=1e-6)
        frozen = not dict(make().named_parameters())[n].requires_grad
        init = torch.stack([eng.init(t.fold)[n] for t in tasks])
        assert torch.equal(final[n], init) == frozen, n  # frozen: never moved


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("mode", ["grad", "proximal"])
def test_resume_from_a_saved_snapshot_equals_the_uninterrupted_run(optimizer, mode, tmp_path):
    """A snapshot after epoch 2 (Adam's step counts live as views of one tensor in the
    optimizer), saved with torch.save and loaded with weights_only=True, or split into
    one-model states and joined again, resumes to the uninterrupted run bit for bit; the
    snapshot does not change while the run it came from trains on."""
    from torchpenalty.sweep.engine import join_states, split_state

    penalty = tp.L1(0.1) if mode == "proximal" else tp.L2(0.1)

    def run(**kw):
        eng = Engine(lambda: nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1)),
                     _problem(), penalty, epochs=4, batch_size=8, optimizer=optimizer,
                     lr=0.01, mode=mode, seed=0, early_stopping=None)  # fmt: skip
        return eng.run([Task(0, 0, 0.1), Task(1, 0, 1.0), Task(2, 1, 0.01)], **kw)[1]

    snaps = []
    full = run(on_epoch=lambda e, snap: snaps.append((s := snap(), _clone(s))) if e == 1 else None)
    snap, at_the_time = snaps[0]
    assert snap["epoch"] == 2 and _equal(snap, at_the_time)
    kept = torch.load(_saved(snap, tmp_path), weights_only=True)
    assert _equal(kept, snap)
    if optimizer == "adam":  # 2 epochs of 4 batches (fold 1's 4; fold 0's 3 spread)
        assert {float(s["step"]) for s in snap["opt"]["state"].values()} == {8.0}
    for state in (kept, join_states(split_state(snap, 3))):
        resumed = run(state=state)
        assert all(torch.equal(resumed[n], full[n]) for n in full)


def _saved(obj, folder):
    path = folder / "snap.pt"
    torch.save(obj, path)
    return path


def _equal(a, b) -> bool:
    if isinstance(a, Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_direct_step_follows_a_load_state_dict_after_it_started(kind):
    """``load_state_dict`` on an optimizer that ``_direct_step`` already stepped: the next
    steps update the loaded state, as ``opt.step()`` does (the cached kernel held the old
    state's tensors and the old parameter group)."""
    from torchpenalty.sweep.engine import _direct_step

    def make():
        p = torch.linspace(-1, 1, 12).reshape(2, 3, 2).requires_grad_()
        cls = torch.optim.Adam if kind == "adam" else torch.optim.SGD
        return p, cls([p], lr=0.05, fused=True, **({} if kind == "adam" else {"momentum": 0.9}))

    (p, opt), (q, ref) = make(), make()
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        if step == 2:
            saved = _clone(opt.state_dict())
        if step == 4:  # back to the state of step 2, on the same optimizer
            opt.load_state_dict(_clone(saved))
            ref.load_state_dict(_clone(saved))
            opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.2
            with torch.no_grad():
                q.copy_(p)
        grad = torch.randn(p.shape, generator=g)
        p.grad, q.grad = grad.clone(), grad.clone()
        _direct_step(opt)
        ref.step()
        assert torch.equal(p, q), step
    for name, t in ref.state[q].items():
        assert torch.equal(opt.state[p][name], t), name


def _clone(v):
    if isinstance(v, Tensor):
        return v.clone()
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clone(x) for x in v]
    return v


@pytest.mark.parametrize("parent", ["mse", "cross_entropy"])
def test_a_loss_subclass_with_its_own_rows_gets_its_own_gradient(parent):
    """A registered subclass of a loss with a written-out gradient that changes ``rows``
    only: the bmm path differentiates its rows (autograd), not the parent's formula."""
    from torchpenalty.sweep.losses import LOSSES

    class Tripled(LOSSES[parent]):
        name = f"tripled_{parent}"

        def rows(self, out, y):
            return 3.0 * super().rows(out, y)

    pb = _problem(classes=3 if parent == "cross_entropy" else 0, k=1 if parent == "mse" else 3)
    pb.objective = Tripled()
    k = 3 if parent == "cross_entropy" else 1
    eng = engine(make=lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, k)))
    eng.problem = pb
    tasks = [Task(i, i % 2, 0.1) for i in range(2)]
    _, _, params, _ = eng._stacked(tasks)
    x, y = eng._gather(torch.tensor([0, 1]), torch.arange(8).expand(2, 8))
    eng._mlp_step_grads(params, x, y, None)
    ref = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    rows = pb.objective.rows(eng.forward(ref, x), y)
    rows.mean(1).sum().backward()
    for n, p in params.items():
        torch.testing.assert_close(p.grad, ref[n].grad, rtol=1e-5, atol=1e-7)


class _DoubledLinear(nn.Linear):
    def forward(self, x):
        return 2.0 * super().forward(x)


class _Residual(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


def _hooked(hook_on: int, pre: bool = False):
    def make():
        net = _seq((3, 3), nn.Tanh(), (3, 1))()
        if pre:
            net[hook_on].register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
        else:
            net[hook_on].register_forward_hook(lambda m, args, out: out * 0.5)
        return net

    return make


def _backward_hooked():
    net = _seq((3, 3), nn.Tanh(), (3, 1))()
    net[0].register_full_backward_hook(lambda m, gin, gout: (gin[0] * 0,))
    return net


def _sequential_hooked():
    net = _seq((3, 3), nn.Tanh(), (3, 1))()
    net.register_forward_hook(lambda m, args, out: out + 1.0)
    return net


# name: (make_model, whether the bmm path may train it)
STACKABLE = {
    "plain": (_seq((3, 3), nn.Tanh(), (3, 1)), True),
    "Linear subclass without its own forward": (
        lambda: nn.Sequential(nn.modules.linear.NonDynamicallyQuantizableLinear(3, 1)),
        True,
    ),
    "Linear subclass with its own forward": (
        lambda: nn.Sequential(_DoubledLinear(3, 3), nn.Tanh(), nn.Linear(3, 1)),
        False,
    ),
    "Sequential subclass with its own forward": (
        lambda: _Residual(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)),
        False,
    ),
    "forward hook on a Linear": (_hooked(0), False),
    "forward pre-hook on a Linear": (_hooked(2, pre=True), False),
    "forward hook on an activation": (_hooked(1), False),
    "forward hook on the Sequential": (_sequential_hooked, False),
    "backward hook on a Linear": (_backward_hooked, False),
}


@pytest.mark.parametrize("name", list(STACKABLE))
def test_auto_forward_takes_the_bmm_path_only_for_what_it_computes(name):
    """The bmm path computes Linear (x W^T + b) and the activations' own functions: a
    module with a forward of its own, or a hook, takes the vmap path, whose outputs are
    the module's (they were silently replaced by the plain Linear stack's)."""
    _check_forward_of(*STACKABLE[name])


def _check_forward_of(make, stackable: bool) -> None:
    """The engine's forward kind, and its stacked outputs equal each model's own."""
    eng = engine(make=make, d=3)
    assert (eng.forward_kind == "bmm") is stackable
    tasks = [Task(0, 0, 0.1), Task(1, 1, 0.1)]
    _, _, params, _ = eng._stacked(tasks)
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = eng.forward(params, x)
    for j in range(2):
        net = make()
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(params[n][j])
            torch.testing.assert_close(got[j], net(x[j]))


@pytest.mark.parametrize("kind", ["forward", "forward_pre", "full_backward"])
def test_a_global_module_hook_takes_the_vmap_path(kind):
    """``register_module_forward_hook`` and its kin apply to every module's call: the bmm
    path, which calls no module, would skip them; with one registered the stack takes the
    vmap path (whose outputs are the hooked modules'), and the bmm path once it is gone."""
    module = nn.modules.module
    half = {
        "forward": lambda m, args, out: 0.5 * out if isinstance(m, nn.Linear) else None,
        "forward_pre": lambda m, args: (0.5 * args[0],) if isinstance(m, nn.Linear) else None,
        "full_backward": lambda m, gin, gout: None,
    }[kind]
    handle = getattr(module, f"register_module_{kind}_hook")(half)
    try:
        _check_forward_of(_seq((3, 3), nn.Tanh(), (3, 1)), stackable=False)
    finally:
        handle.remove()
    _check_forward_of(_seq((3, 3), nn.Tanh(), (3, 1)), stackable=True)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # (vmap's)
def test_a_parametrized_linear_trains_on_the_vmap_path_with_its_penalty():
    """A weight-normed Linear (``torch.nn.utils.parametrizations.weight_norm``): its
    tensors are ``0.parametrizations.weight.original0/1`` in ``named_parameters`` but
    ``0.weight.original0/1`` in :func:`tp.select`; the engine regularizes the selected
    tensors under their parameter names (it raised KeyError), and the stack is not
    treated as a plain Linear's (``0.weight`` does not exist)."""
    from torch.nn.utils.parametrizations import weight_norm

    def make():
        return nn.Sequential(weight_norm(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 1))

    eng = engine(make=make, d=3, epochs=3)
    assert eng.forward_kind == "vmap"
    net = make()
    names = {id(p): n for n, p in net.named_parameters()}
    assert eng.selected == [names[id(p)] for _, p in tp.select(net)]
    assert eng.selected[:2] == [f"0.parametrizations.weight.original{i}" for i in (0, 1)]
    _, final = eng.run([Task(0, 0, 1e-4), Task(1, 0, 1.0)])
    norms = sum(final[n].pow(2).flatten(1).sum(1) for n in eng.selected)
    assert norms[1] < norms[0]  # the strong penalty shrinks the selected tensors
