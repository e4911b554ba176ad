"""The Lightning callback against the same training written by hand with a Regularizer.

Every case trains a tiny LightningModule for a few optimizer steps on CPU and checks that
its weights equal (to 1e-6) those of a plain loop that attaches ``tp.Regularizer`` to the
same optimizer, under gradient accumulation, mixed precision, manual optimization, strength
schedules and a checkpoint round trip.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import torchpenalty as tp
from torchpenalty.integrations.lightning import Regularize

BATCH, N = 4, 24  # 6 batches per epoch


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=g)
    return x, torch.tanh(x @ torch.randn(4, 2, generator=g)) + 0.1 * torch.randn(N, 2, generator=g)


def loader():
    return DataLoader(TensorDataset(*data()), batch_size=BATCH, shuffle=False)


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))


def make_opt(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.Adam(params, lr=0.05)


class Module(pl.LightningModule):
    def __init__(self, opt="sgd", manual=False):
        super().__init__()
        self.net = build()
        self.opt = opt
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def configure_optimizers(self):
        return make_opt(self.opt, self.parameters())


def fit(callback, *, steps, opt="sgd", manual=False, ckpt=None, **trainer_kw):
    module = Module(opt, manual)
    kw = dict(max_steps=steps, max_epochs=-1) if steps else {}
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
        **kw, **trainer_kw,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        trainer.fit(module, loader(), ckpt_path=ckpt)
    return module, trainer


def by_hand(penalty, mode, *, steps, opt="sgd", accumulate=1, autocast=None, scaler=None):
    net = build()
    reg = tp.Regularizer(net, penalty)
    optimizer = make_opt(opt, net.parameters())
    reg.attach(optimizer, mode)
    batches = itertools.cycle(list(loader()))
    for _ in range(steps):
        for _ in range(accumulate):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                loss = F.mse_loss(net(x), y) / accumulate
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad()
    return net, reg


def assert_same(module, net):
    for (name, a), b in zip(module.net.state_dict().items(), net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def schedule(step):
    return 0.05 * (1 + step)


CASES = [  # (id, penalty factory, mode, optimizer, trainer kwargs, hand-loop kwargs)
    ("l2-grad-sgd", lambda: tp.L2(0.05), "grad", "sgd", {}, {}),
    ("l2-decoupled-adam", lambda: tp.L2(0.05), "decoupled", "adam", {}, {}),
    ("l1-proximal-adam", lambda: tp.L1(0.02), "proximal", "adam", {}, {}),
    ("grouplasso-proximal-sgd", lambda: tp.GroupLasso(0.05), "proximal", "sgd", {}, {}),
    ("l2-independent-sgd", lambda: tp.L2(0.05), "independent", "sgd", {}, {}),
    ("schedule-grad-sgd", lambda: tp.L2(schedule), "grad", "sgd", {}, {}),
    (
        "accumulate-3",
        lambda: tp.L2(0.05),
        "grad",
        "sgd",
        {"accumulate_grad_batches": 3},
        {"accumulate": 3},
    ),
    (
        "accumulate-2-decoupled",
        lambda: tp.L2(schedule),
        "decoupled",
        "adam",
        {"accumulate_grad_batches": 2},
        {"accumulate": 2},
    ),
    (
        "bf16-mixed",
        lambda: tp.L2(0.05),
        "grad",
        "sgd",
        {"precision": "bf16-mixed"},
        {"autocast": torch.bfloat16},
    ),
]


@pytest.mark.parametrize(("penalty", "mode", "opt", "trainer_kw", "hand_kw"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_equals_hand_written_loop(penalty, mode, opt, trainer_kw, hand_kw):
    steps = 4
    cb = Regularize(penalty(), mode)
    module, _ = fit(cb, steps=steps, opt=opt, **trainer_kw)
    net, reg = by_hand(penalty(), mode, steps=steps, opt=opt, **hand_kw)
    assert_same(module, net)
    assert cb.regularizer.step_count == reg.step_count == steps
    assert cb.regularizer.names == ["net.0.weight", "net.3.weight"]
    # the penalty mattered: without it the weights differ
    module0, _ = fit(Regularize(tp.L2(0.0), mode), steps=steps, opt=opt, **trainer_kw)
    assert (module0.net[0].weight - module.net[0].weight).abs().max() > 1e-4


def test_float16_mixed_precision_with_grad_scaler():
    # Lightning turns precision="16-mixed" into bf16 on CPU; a float16 plugin with a CPU
    # GradScaler exercises the scaler path (unscale before the step, skipped steps).
    steps = 5
    plugin = MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**20)
    )
    cb = Regularize(tp.L2(schedule), "grad")
    module, _ = fit(cb, steps=steps, plugins=[plugin])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    net, reg = by_hand(tp.L2(schedule), "grad", steps=steps, autocast=torch.float16, scaler=scaler)
    assert_same(module, net)
    # the schedule advanced only on the steps the scaler did not skip, in both
    assert cb.regularizer.step_count == reg.step_count
    assert 0 < reg.step_count < steps  # some steps were skipped (inf/NaN), some taken
    assert plugin.scaler.get_scale() == scaler.get_scale()


def test_manual_optimization():
    steps = 5
    cb = Regularize(tp.L2(schedule), "decoupled")
    module, _ = fit(cb, steps=steps, manual=True, opt="adam")
    net, _ = by_hand(tp.L2(schedule), "decoupled", steps=steps, opt="adam")
    assert_same(module, net)
    assert cb.regularizer.step_count == steps


def test_logs_the_penalty_value():
    cb = Regularize(tp.L2(0.05), "grad", name="penalty/l2")
    _, trainer = fit(cb, steps=3)
    logged = trainer.callback_metrics["penalty/l2"]
    assert float(logged) == pytest.approx(cb.regularizer.value(), rel=1e-6)
    assert float(logged) > 0
    cb_off = Regularize(tp.L2(0.05), "grad", log=False, name="quiet")
    _, trainer = fit(cb_off, steps=2)
    assert "quiet" not in trainer.callback_metrics


def test_checkpoint_restores_the_schedule(tmp_path):
    # One epoch, save, resume for a second: the same weights as two epochs in one go.
    cb = Regularize(tp.L2(schedule), "grad")
    _, trainer = fit(cb, steps=None, max_epochs=1)
    path = tmp_path / "one.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"]["Regularize[reg]"]
    assert saved == {"regularizer": {"step": 6}}

    resumed_cb = Regularize(tp.L2(schedule), "grad")
    resumed, _ = fit(resumed_cb, steps=None, max_epochs=2, ckpt=str(path))
    straight, _ = fit(Regularize(tp.L2(schedule), "grad"), steps=None, max_epochs=2)
    assert resumed_cb.regularizer.step_count == 12
    for a, b in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    net, _ = by_hand(tp.L2(schedule), "grad", steps=12)
    assert_same(resumed, net)


def test_a_second_fit_goes_on_counting():
    cb = Regularize(tp.L2(schedule), "grad")
    module = Module()
    for max_steps in (2, 5):
        trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[cb])  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, loader())
    assert cb.regularizer.step_count == 2 + 5
    assert cb.handles == []  # detached at fit end


class TwoOptimizers(Module):
    """A GAN-like module: only the second optimizer holds regularized parameters."""

    def __init__(self):
        super().__init__(manual=True)
        self.scale = nn.Parameter(torch.ones(2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        o1, o2 = self.optimizers()
        for opt in (o1, o2):
            opt.zero_grad()
            self.manual_backward(F.mse_loss(self.net(x) * self.scale, y))
            opt.step()

    def configure_optimizers(self):
        return [
            torch.optim.SGD([self.scale], lr=0.1),
            torch.optim.SGD(self.net.parameters(), lr=0.1),
        ]


def test_attaches_only_to_optimizers_holding_regularized_parameters():
    cb = Regularize(tp.L2(schedule), "grad")
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TwoOptimizers(), loader())
    # Lightning counts both optimizers' steps; the schedule counts those of the one attached
    assert cb.regularizer.step_count == trainer.global_step // 2 == 3


def test_no_regularized_parameter_in_any_optimizer_is_an_error():
    class Frozen(Module):
        def configure_optimizers(self):
            return torch.optim.SGD(self.net[1].parameters(), lr=0.1)  # LayerNorm only

    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Regularize(tp.L2(0.1))])  # fmt: skip
    with pytest.raises(ValueError, match=r"trainer.optimizers must hold .*net.0.weight"):
        trainer.fit(Frozen(), loader())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"penalty": 0.1}, TypeError, "penalty must be a Penalty or a dict .*got 0.1"),
        ({"mode": "sideways"}, ValueError, "mode must be one of .*got 'sideways'"),
        ({"rounding": "up"}, ValueError, "rounding must be one of .*got 'up'"),
        ({"name": ""}, TypeError, "name must be a non-empty string, got ''"),
        ({"log": "yes"}, TypeError, "log must be a bool, got 'yes'"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    kwargs = {"penalty": tp.L2(0.1), **kwargs}
    with pytest.raises(error, match=message):
        Regularize(**kwargs)


def test_bad_checkpoint_state():
    with pytest.raises(ValueError, match="state_dict"):
        Regularize(tp.L2(0.1)).load_state_dict({"steps": 3})


def test_missing_lightning_names_the_extra(monkeypatch):
    for mod in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.delitem(sys.modules, "torchpenalty.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install torchpenalty\[lightning\]"):
        importlib.import_module("torchpenalty.integrations.lightning")


@pytest.mark.parametrize(("mode", "rounding"), [("grad", "nearest"), ("decoupled", "nearest"),
                                                ("decoupled", "compensated"), ("proximal", "compensated")])  # fmt: skip
def test_bf16_true_weights(mode, rounding):
    # precision="bf16-true": bfloat16 weights and inputs; the hand loop does the same
    steps, penalty = 4, (tp.L1(0.02) if mode == "proximal" else tp.L2(0.05))
    cb = Regularize(penalty, mode, rounding=rounding)
    module, _ = fit(cb, steps=steps, precision="bf16-true")
    assert module.net[0].weight.dtype == torch.bfloat16
    net = build().to(torch.bfloat16)
    optimizer = make_opt("sgd", net.parameters())
    tp.Regularizer(net, penalty).attach(optimizer, mode, rounding=rounding)
    batches = itertools.cycle(list(loader()))
    for _ in range(steps):
        x, y = next(batches)
        F.mse_loss(net(x.to(torch.bfloat16)), y.to(torch.bfloat16)).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert_same(module, net)


class LossMode(Module):
    """mode="loss": the module adds the callback's penalty to its loss itself."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        (cb,) = [c for c in self.trainer.callbacks if isinstance(c, Regularize)]
        return F.mse_loss(self.net(x), y) + cb.regularizer()


def test_loss_mode_adds_the_penalty_in_training_step():
    steps = 4
    cb = Regularize(tp.L2(schedule), "loss")
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])  # fmt: skip
    module = LossMode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader())
    net, _ = by_hand(tp.L2(schedule), "grad", steps=steps)  # loss mode == grad mode
    assert_same(module, net)
    assert cb.regularizer.step_count == steps  # the schedule still advanced per step
