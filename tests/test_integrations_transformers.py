"""The Trainer callback on tiny random-weight bert, llama and gpt2 (CPU, no downloads),
against hand-written loops: torch.optim.AdamW on ``tp.param_groups`` (an independent
reference for decoupled L2 on exactly ``tp.select``) and a Regularizer attached by hand."""

from __future__ import annotations

import copy
import importlib
import logging
import sys

import pytest
import torch
import transformers
from torch.nn import functional as F

import torchpenalty as tp
from torchpenalty.integrations.transformers import (
    Regularize,
    compare_decay_rule,
    trainer_decay_names,
)

transformers.logging.set_verbosity_error()
logging.getLogger("accelerate").setLevel(logging.ERROR)

VOCAB, SEQ, N, BATCH, LR = 40, 8, 8, 2, 1e-2
# Adam's eps well above the rounding noise of gradients that are zero in exact arithmetic
# (GPT-2's key biases): Trainer's loss (sum / token count) and the hand loop's (mean) round
# differently, and a tiny eps would amplify that noise into differences of lr.
EPS = 1e-3


def tiny(arch):
    torch.manual_seed(0)
    if arch == "bert":
        cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=16,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
        return transformers.BertForMaskedLM(cfg)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)  # fmt: skip
        return transformers.LlamaForCausalLM(cfg)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def dataset():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (N, SEQ), generator=g)
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


def train(model, tmp_path, callbacks, *, optim="adamw_torch", steps=3, accumulate=1, **kw):
    kw = {"save_strategy": "no", **kw}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none",
        logging_strategy="no", disable_tqdm=True, max_steps=steps, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=accumulate, learning_rate=LR, lr_scheduler_type="constant",
        optim=optim, adam_epsilon=EPS, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0, **kw,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset(), callbacks=callbacks
    )
    trainer.train()
    return trainer


def by_hand(model, optimizer, *, steps=3, accumulate=1, reg=None, mode=None):
    """Trainer's loop written out: mean token loss, clip to norm 1, step, zero."""
    if reg is not None:
        reg.attach(optimizer, mode)
    data = dataset()
    batches = [data[i : i + BATCH] for i in range(0, N, BATCH)]
    model.train()
    it = iter(batches * 4)
    for _ in range(steps):
        for _ in range(accumulate):
            batch = next(it)
            ids = torch.stack([b["input_ids"] for b in batch])
            (model(input_ids=ids, labels=ids).loss / accumulate).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()


def assert_same(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


ARCHS = ["bert", "llama", "gpt2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_decoupled_l2_equals_adamw_on_param_groups(arch, tmp_path):
    model = tiny(arch)
    ref = copy.deepcopy(model)
    cb = Regularize(tp.L2(0.5), "decoupled")
    train(model, tmp_path, [cb])
    # the decayed set is tp.select's
    assert cb.regularizer.names == [n for n, _ in tp.select(model)]
    opt = torch.optim.AdamW(tp.param_groups(ref, 0.5), lr=LR, betas=(0.9, 0.999), eps=EPS)
    by_hand(ref, opt)
    assert_same(model, ref)


@pytest.mark.parametrize(
    ("arch", "penalty", "mode", "optim", "accumulate"),
    [
        ("bert", lambda: tp.L1(1e-3), "proximal", "adamw_torch", 1),
        ("llama", lambda: tp.L2(lambda step: 0.1 * (step + 1)), "grad", "sgd", 2),
        ("gpt2", lambda: tp.GroupLasso(1e-2), "proximal", "sgd", 1),
        ("gpt2", lambda: tp.ElasticNet(1e-2), "grad", "adamw_torch", 1),
        ("bert", lambda: tp.ElasticNet(1e-2), "grad", "adamw_torch", 2),
    ],
)
# No GPT-2 case with accumulation: transformers 5.24's Trainer does not know that
# GPT2LMHeadModel shifts its labels (loss_type None), so with gradient accumulation it divides
# the summed token loss by 2*8*2 = 32 labels instead of 2*7*2 = 28 predictions: gradients
# 0.875 times the mean loss's, a loss normalization of Trainer's own, not the penalty's.
def test_any_penalty_and_mode_equals_hand_loop(arch, penalty, mode, optim, accumulate, tmp_path):
    model = tiny(arch)
    ref = copy.deepcopy(model)
    cb = Regularize(penalty(), mode)
    trainer = train(model, tmp_path, [cb], optim=optim, accumulate=accumulate)
    assert type(trainer.optimizer.optimizer) in (torch.optim.SGD, torch.optim.AdamW)
    if optim == "sgd":
        opt = torch.optim.SGD(ref.parameters(), lr=LR)
    else:
        opt = torch.optim.AdamW(ref.parameters(), lr=LR, eps=EPS, weight_decay=0.0)
    by_hand(ref, opt, accumulate=accumulate, reg=tp.Regularizer(ref, penalty()), mode=mode)
    assert_same(model, ref)
    assert cb.regularizer.step_count == 3
    assert cb.handle is None  # detached at the end of training


def test_without_the_penalty_the_weights_differ(tmp_path):
    a, b = tiny("gpt2"), tiny("gpt2")
    train(a, tmp_path, [Regularize(tp.L2(0.5))])
    train(b, tmp_path, [Regularize(tp.L2(0.0))])
    assert (
        a.transformer.h[0].mlp.c_fc.weight - b.transformer.h[0].mlp.c_fc.weight
    ).abs().max() > 1e-4


def test_trainer_weight_decay_must_be_off(tmp_path):
    with pytest.raises(ValueError, match=r"args.weight_decay must be 0 .*got 0.01"):
        train(tiny("gpt2"), tmp_path, [Regularize(tp.L2(0.1))], weight_decay=0.01)


@pytest.mark.parametrize("arch", ARCHS)
def test_rules_agree_on_these_architectures(arch, capsys):
    model = tiny(arch)
    diff = compare_decay_rule(model)
    assert diff.only_torchpenalty == [] and diff.only_trainer == []
    assert capsys.readouterr().out.strip() == "torchpenalty and Trainer decay the same parameters"
    assert trainer_decay_names(model) == [n for n, _ in tp.select(model)]


class LayerScaleNet(torch.nn.Module):
    """What Trainer's name-based rule misses: a 1-D layer scale, a norm class whose name
    has no 'norm', a CLIP-style logit scale; and a timm-style no_weight_decay()."""

    class Scale(torch.nn.Module):  # a norm-like module Trainer does not know
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

    class SimpleNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = torch.nn.Parameter(torch.ones(4))

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.gamma = torch.nn.Parameter(torch.ones(4))
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.ln = self.SimpleNorm()
        self.pos = torch.nn.Parameter(torch.zeros(3, 4))

    def no_weight_decay(self):
        return {"pos"}


def test_compare_shows_where_rules_differ(capsys):
    diff = compare_decay_rule(LayerScaleNet())
    assert diff.only_torchpenalty == []
    assert diff.only_trainer == ["gamma", "logit_scale", "pos", "ln.g"]
    assert diff.reasons["ln.g"] == "normalization module (SimpleNorm)"
    assert diff.reasons["pos"] == "listed by no_weight_decay()"
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "torchpenalty", "Trainer"]
    assert out[1].split()[:3] == ["gamma", "no:", "ndim"] and out[1].split()[-1] == "yes"
    # include= is honoured: regularize everything -> only the bias differs the other way
    diff = compare_decay_rule(LayerScaleNet(), include="*", quiet=True)
    assert diff.only_torchpenalty == ["proj.bias"] and diff.only_trainer == []


def test_compare_uses_the_given_trainers_rule(tmp_path):
    class NoDecayTrainer(transformers.Trainer):
        def get_decay_parameter_names(self, model):
            return []

    model = tiny("gpt2")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = NoDecayTrainer(model=model, args=args)
    diff = compare_decay_rule(model, trainer, quiet=True)
    assert diff.only_trainer == [] and diff.only_torchpenalty == [n for n, _ in tp.select(model)]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"penalty": "l2"}, TypeError, "penalty must be a Penalty or a dict .*got 'l2'"),
        ({"mode": "both"}, ValueError, "mode must be one of .*got 'both'"),
        ({"rounding": "down"}, ValueError, "rounding must be one of .*got 'down'"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Regularize(**{"penalty": tp.L2(0.1), **kwargs})


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "torchpenalty.integrations.transformers")
    with pytest.raises(ImportError, match=r"pip install torchpenalty\[transformers\]"):
        importlib.import_module("torchpenalty.integrations.transformers")


def test_closure_passed_to_step_runs_before_the_penalty():
    # accelerate calls optimizer.step(closure) positionally: the penalty acts after it
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ref = copy.deepcopy(net)
    x = torch.randn(5, 3)
    reg = tp.Regularizer(net, tp.L2(0.3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cb = Regularize(tp.L2(0.3), "grad")
    reg.attach(opt, "grad")

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(net(x), torch.zeros(5, 2))
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and cb.mode == "grad"
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=0.3)
    ref_opt.zero_grad()
    F.mse_loss(ref(x), torch.zeros(5, 2)).backward()
    ref_opt.step()
    torch.testing.assert_close(net.weight, ref.weight, rtol=0, atol=1e-7)


def test_resume_from_checkpoint_restores_the_schedule(tmp_path):
    # The schedule follows state.global_step, which Trainer restores before on_train_begin.
    def schedule(step):
        return 0.2 * (step + 1)

    straight = tiny("llama")
    resumed = copy.deepcopy(straight)
    train(straight, tmp_path / "a", [Regularize(tp.L2(schedule))], steps=4)
    train(resumed, tmp_path / "b", [Regularize(tp.L2(schedule))], steps=4,
          save_strategy="steps", save_steps=2)  # fmt: skip
    fresh = tiny("llama")
    cb = Regularize(tp.L2(schedule))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "b"), use_cpu=True, report_to="none", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, max_steps=4, per_device_train_batch_size=BATCH,
        learning_rate=LR, lr_scheduler_type="constant", optim="adamw_torch", adam_epsilon=EPS,
        train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=fresh, args=args, train_dataset=dataset(), callbacks=[cb])
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    assert cb.regularizer.step_count == 4
    assert_same(fresh, straight)
