"""The parameter rule: defaults, overrides, explain(), and the cases the tutorial misses."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import torchpenalty as tp


class MyRMSNorm(nn.Module):  # a user-defined norm, recognised by its class name
    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, d))  # 2-D on purpose


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm1d(4, affine=True)
        self.rms = nn.RMSNorm(4)
        self.mine = MyRMSNorm(4)
        self.pos = nn.Parameter(torch.zeros(1, 5, 4))
        self.head = nn.Linear(4, 10)

    def no_weight_decay(self):
        return {"pos"}


def names(model, **kw):
    return [n for n, _ in tp.select(model, **kw)]


def test_default_rule_on_every_norm_kind():
    m = Block()
    assert names(m) == ["emb.weight", "conv.weight", "head.weight"]
    reasons = {r.name: r.reason for r in tp.explain(m)}
    assert reasons["bn.weight"] == "normalization module (BatchNorm1d)"
    assert reasons["inorm.weight"] == "normalization module (InstanceNorm1d)"
    assert reasons["rms.weight"] == "normalization module (RMSNorm)"
    assert reasons["mine.scale"] == "normalization module (MyRMSNorm)"
    assert reasons["pos"] == "listed by no_weight_decay()"
    assert reasons["head.bias"] == "bias"


def test_no_weight_decay_in_a_submodule_with_patterns():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(3, 3))
            self.proj = nn.Linear(3, 3)

        def no_weight_decay(self):
            return ["tab*"]

    m = nn.Sequential(Inner())
    assert names(m) == ["0.proj.weight"]


def test_tied_weights_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    m = Tied()
    assert names(m) == ["emb.weight"]
    row = next(r for r in tp.explain(m) if r.name == "out.weight")
    assert not row.regularized and row.reason == "tied to 'emb.weight' (counted once)"
    # the penalty counts the tied tensor once
    reg = tp.Regularizer(m, tp.L2(2.0))
    assert reg().item() == pytest.approx(m.emb.weight.detach().pow(2).sum().item(), rel=1e-6)
    # param_groups lists it once
    groups = tp.param_groups(m, 0.1)
    assert sum(len(g["params"]) for g in groups) == 1


def test_frozen_and_integer_buffers_skipped():
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    m[0].weight.requires_grad_(False)
    assert names(m) == ["1.weight"]
    assert next(r for r in tp.explain(m) if r.name == "0.weight").reason.startswith("frozen")
    groups = tp.param_groups(m, 0.1)
    assert [g["names"] for g in groups] == [["1.weight"], ["0.bias", "1.bias"]]


def test_parametrized_weight_matched_by_visible_name():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    parametrizations.orthogonal(m[0])
    sel = tp.select(m)
    assert [n for n, _ in sel] == ["0.weight", "1.weight"]
    assert sel[0][1] is m[0].parametrizations.weight.original
    assert names(m, exclude="0.weight") == ["1.weight"]


def test_weight_norm_originals_keep_distinct_names():
    m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    parametrizations.weight_norm(m[0])
    assert names(m) == ["0.weight.original0", "0.weight.original1"]
    assert names(m, exclude="0.weight.original0") == ["0.weight.original1"]
    assert names(m, include=nn.Linear) == ["0.bias", "0.weight.original0", "0.weight.original1"]


def test_lazy_module_is_a_clear_error():
    m = nn.Sequential(nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"uninitialized '0.weight'.*forward pass"):
        tp.select(m)
    with pytest.raises(ValueError, match="forward pass"):
        tp.Regularizer(m, tp.L2(1e-3))
    m(torch.randn(2, 5))
    assert names(m) == ["0.weight"]


def test_meta_device_model():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert names(m) == ["0.weight"]
    v = tp.Regularizer(m, tp.L2(1.0))()
    assert v.device.type == "meta"


def test_include_replaces_the_default_and_exclude_removes():
    m = Block()
    assert names(m, include="*") == [r.name for r in tp.explain(m) if r.reason != "frozen"]
    assert names(m, include="head.*") == ["head.weight", "head.bias"]
    assert names(m, include=nn.LayerNorm) == ["ln.weight", "ln.bias"]
    assert names(m, include=lambda n, p, mod: p.ndim == 1 and "conv" in n) == ["conv.bias"]
    assert names(m, exclude=["emb.*", nn.Conv1d]) == ["head.weight"]
    assert names(m, include="*", exclude="*.bias")[:3] == ["pos", "emb.weight", "conv.weight"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"include": "encoder.*"}, ValueError, r"include must match at least one parameter of the model, got 'encoder.\*'"),
        ({"exclude": nn.LSTM}, ValueError, r"exclude must match at least one parameter .*got 'LSTM'"),
        ({"include": 3}, TypeError, r"include must be a pattern, a module class, a predicate or a list, got 3"),
        ({"exclude": [3.5]}, TypeError, r"exclude must be a pattern, .*got 3.5"),
    ],
)  # fmt: skip
def test_matcher_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        tp.select(Block(), **kwargs)


def test_model_type_error():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got 'net'"):
        tp.select("net")


def test_explain_table_lists_every_parameter():
    m = Block()
    rows = tp.explain(m)
    assert len(rows) == len(list(m.named_parameters()))
    text = str(rows)
    assert text.splitlines()[0].split() == ["name", "shape", "regularized", "reason"]
    assert "head.weight" in text and "(10, 4)" in text


def test_param_groups_options_and_errors():
    m = Block()
    groups = tp.param_groups(m, 0.05, lr=1e-3, betas=(0.9, 0.95))
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert all(g["lr"] == 1e-3 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    with pytest.raises(TypeError, match="group_opts must not set 'params'"):
        tp.param_groups(m, 0.1, params=[])
    # the empty group is dropped
    only_bias = nn.Sequential(nn.LayerNorm(3))
    assert [g["weight_decay"] for g in tp.param_groups(only_bias, 0.1)] == [0.0]


@pytest.mark.parametrize("fused", [False, True])
def test_param_groups_work_with_fused_and_foreach_optimizers(fused):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(tp.param_groups(m, 0.1), lr=1e-2, fused=fused)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only the decay moves weights
    opt.step()
    decayed = {"0.weight", "2.weight"}
    for n, p in m.named_parameters():
        expected = before[n] * (1 - 1e-2 * 0.1) if n in decayed else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)
