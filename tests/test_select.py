"""The parameter rule: defaults, overrides, explain(), and the cases the tutorial misses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
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


def test_no_weight_decay_entry_naming_a_submodule_covers_its_parameters():
    class Attn(nn.Module):  # timm's Swin V2 lists module names such as "layers.0.attn.cpb_mlp"
        def __init__(self):
            super().__init__()
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
            self.cpb_mlp_out = nn.Linear(2, 2)  # a sibling whose name only starts alike
            self.qkv = nn.Linear(2, 6)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Attn()])

        def no_weight_decay(self):
            return {"layers.0.cpb_mlp"}

    assert names(Net()) == ["layers.0.cpb_mlp_out.weight", "layers.0.qkv.weight"]
    reasons = {r.name: r.reason for r in tp.explain(Net())}
    assert reasons["layers.0.cpb_mlp.2.weight"] == "listed by no_weight_decay()"


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


# --- issue 7, part 2: the rule on real architectures' corner cases ---------------------


class Named(nn.Module):
    """One parameter under a chosen attribute name and shape."""

    def __init__(self, attr, shape):
        super().__init__()
        self.register_parameter(attr, nn.Parameter(torch.zeros(shape)))


@pytest.mark.parametrize(
    ("attr", "shape", "regularized", "reason"),
    [
        ("relative_position_bias_table", (9, 2), False, "bias by its name ('relative_position_bias_table'), whatever its shape"),
        ("attention_biases", (2, 16), False, "bias by its name ('attention_biases'), whatever its shape"),
        ("rel_bias", (3, 3), False, "bias by its name ('rel_bias'), whatever its shape"),
        ("q_bias", (4,), False, "bias by its name ('q_bias'), whatever its shape"),
        ("bias_k", (1, 1, 4), False, "bias by its name ('bias_k'), whatever its shape"),
        ("Bias", (2, 2), False, "bias by its name ('Bias'), whatever its shape"),
        ("bias", (2, 2), False, "bias"),
        ("biased_proj", (2, 2), True, "weight (ndim >= 2)"),
        ("unbiased", (2,), False, "ndim 1 < 2 (bias or scale)"),
        ("weight", (2, 2), True, "weight (ndim >= 2)"),
        ("gamma", (4,), False, "ndim 1 < 2 (bias or scale)"),
    ],
)  # fmt: skip
def test_a_bias_by_name_is_a_bias_whatever_its_shape(attr, shape, regularized, reason):
    m = nn.Sequential(Named(attr, shape))
    (row,) = tp.explain(m)
    assert (row.name, row.regularized, row.reason) == (f"0.{attr}", regularized, reason)
    assert names(m) == ([f"0.{attr}"] if regularized else [])


def test_real_bias_tables_and_multihead_attention():
    class T5Attention(nn.Module):  # T5 keeps its relative-position bias in an Embedding
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4, bias=False)
            self.relative_attention_bias = nn.Embedding(32, 2)

    m = nn.ModuleDict({"t5": T5Attention(), "mha": nn.MultiheadAttention(4, 2, add_bias_kv=True)})
    reasons = {r.name: r.reason for r in tp.explain(m)}
    assert reasons["t5.relative_attention_bias.weight"] == (
        "bias by its module's name ('relative_attention_bias'), whatever its shape"
    )
    assert reasons["mha.in_proj_bias"].startswith("bias by its name ('in_proj_bias')")
    assert reasons["mha.bias_v"].startswith("bias by its name ('bias_v')")
    assert names(m) == ["t5.q.weight", "mha.in_proj_weight", "mha.out_proj.weight"]
    # include= still brings a bias table in
    assert names(m, include="*relative_attention_bias*") == ["t5.relative_attention_bias.weight"]


def test_no_weight_decay_attribute_mamba_convention():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = nn.Linear(4, 8, bias=False)
            self.A_log = nn.Parameter(torch.zeros(8, 3))
            self.A_log._no_weight_decay = True
            self.D = nn.Parameter(torch.ones(8))
            self.D._no_weight_decay = True
            self.other = nn.Parameter(torch.zeros(8, 3))
            self.other._no_weight_decay = False

    m = Mixer()
    reasons = {r.name: r.reason for r in tp.explain(m)}
    assert reasons["A_log"] == reasons["D"] == "marked _no_weight_decay=True (mamba_ssm convention)"
    assert names(m) == ["other", "in_proj.weight"]
    # include replaces the rule
    assert names(m, include="*") == ["A_log", "D", "other", "in_proj.weight"]
    assert [g["names"] for g in tp.param_groups(m, 0.1)] == [
        ["other", "in_proj.weight"],
        ["A_log", "D"],
    ]


def test_lazy_module_is_listed_by_explain_and_select_raises_for_the_same_rows():
    m = nn.Sequential(nn.LazyLinear(3), nn.LazyBatchNorm1d(), nn.Linear(3, 2))
    rows = {r.name: r for r in tp.explain(m)}
    assert rows["0.weight"].shape is None and not rows["0.weight"].regularized
    assert rows["0.weight"].reason == "uninitialized (lazy module): run one forward pass first"
    assert rows["0.bias"].reason == "bias"
    assert rows["1.weight"].reason == "normalization module (LazyBatchNorm1d)"
    assert rows["2.weight"] == ("2.weight", (2, 3), True, "weight (ndim >= 2)")
    text = str(tp.explain(m))
    assert "0.weight  uninitialized" in text
    lazy_rows = [n for n, r in rows.items() if r.reason.startswith("uninitialized")]
    assert lazy_rows == ["0.weight"]
    with pytest.raises(ValueError, match=r"uninitialized '0.weight'.*forward pass"):
        tp.select(m)
    # rows decided without the shape do not raise
    assert names(m, exclude="0.weight") == ["2.weight"]
    assert names(m, exclude=nn.LazyLinear) == ["2.weight"]
    assert names(m, include="2.*") == ["2.weight", "2.bias"]
    for kwargs in [{"include": "0.*"}, {"exclude": lambda n, p, mod: p.ndim == 1}]:
        with pytest.raises(ValueError, match="uninitialized '0.weight'"):
            tp.select(m, **kwargs)  # include takes it, or a predicate cannot be asked
    m(torch.randn(4, 5))
    assert names(m) == ["0.weight", "2.weight"]
    assert all(r.shape is not None for r in tp.explain(m))


@pytest.mark.parametrize("top", [True, False])
def test_weight_norm_visible_name_matches_both_originals(top):
    lin = nn.Linear(4, 3)
    parametrizations.weight_norm(lin)
    m = lin if top else nn.Sequential(lin, nn.LayerNorm(3))
    w = "weight" if top else "0.weight"
    both = [f"{w}.original0", f"{w}.original1"]
    assert names(m) == both
    assert names(m, exclude=w) == []
    assert names(m, exclude=f"{w}.original1") == both[:1]
    assert names(m, include=w) == both
    assert names(m, include=w[:-1] + "?") == both  # a pattern on the visible attribute name
    rows = {r.name: r.reason for r in tp.explain(m, exclude=w)}
    assert rows[both[0]] == rows[both[1]] == f"excluded by exclude={w!r}"
    # the same matching serves a Regularizer's per-pattern penalties
    reg = tp.Regularizer(m, {w: tp.L2(2.0)})
    expected = sum(p.detach().pow(2).sum() for p in lin.parametrizations.weight.parameters())
    assert reg().item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_module_merely_named_parametrizations_is_not_a_parametrization():
    class ScaleNorm(nn.Module):  # a norm (by class name) holding a 2-D parameter "original"
        def __init__(self):
            super().__init__()
            self.original = nn.Parameter(torch.ones(2, 4))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.parametrizations = nn.ModuleDict({"w": ScaleNorm()})
            self.w = nn.Parameter(torch.zeros(4, 4))
            self.real = nn.Linear(4, 4)
            parametrizations.orthogonal(self.real)

    m = Model()
    rows = tp.explain(m)
    assert [r.name for r in rows] == [
        "w",
        "parametrizations.w.original",
        "real.bias",
        "real.weight",
    ]
    reasons = {r.name: r.reason for r in rows}
    assert reasons["parametrizations.w.original"] == "normalization module (ScaleNorm)"
    assert names(m) == ["w", "real.weight"]
    assert tp.select(m)[1][1] is m.real.parametrizations.weight.original
    from torchpenalty.select import visible_name

    assert visible_name("parametrizations.w.original", m) == "parametrizations.w.original"
    assert visible_name("real.parametrizations.weight.original", m) == "real.weight"
    assert visible_name("real.parametrizations.weight.original") == "real.weight"


def _shared_scale(norm_first):
    ln, lin = nn.LayerNorm((4, 4)), nn.Linear(4, 4)
    lin.weight = ln.weight  # one (4, 4) tensor: a norm scale and a linear weight
    return nn.Sequential(ln, lin) if norm_first else nn.Sequential(lin, ln)


@pytest.mark.parametrize("norm_first", [True, False])
def test_a_tensor_shared_by_a_norm_and_a_weight_stays_a_norm_scale(norm_first):
    m = _shared_scale(norm_first)
    assert names(m) == []
    rows = {r.name: r.reason for r in tp.explain(m)}
    via = "" if norm_first else " (through its tied name '1.weight')"
    assert rows["0.weight"] == "normalization module (LayerNorm)" + via
    assert rows["1.weight"] == "tied to '0.weight' (counted once)"
    assert [g["weight_decay"] for g in tp.param_groups(m, 0.1)] == [0.0]


@pytest.mark.parametrize("order", [("emb", "out"), ("out", "emb")])
def test_tied_weights_exclude_and_include_act_through_any_name(order):
    m = nn.Module()
    layers = {"emb": nn.Embedding(10, 4), "out": nn.Linear(4, 10, bias=False)}
    for key in order:
        setattr(m, key, layers[key])
    m.out.weight = m.emb.weight
    first = f"{order[0]}.weight"
    assert names(m) == [first]
    assert names(m, exclude="out.weight") == names(m, exclude="emb.weight") == []
    assert names(m, include="out.weight") == names(m, include="emb.weight") == [first]


@pytest.mark.parametrize("empty", [[], ()])
def test_include_empty_selects_nothing(empty):
    m = Block()
    assert tp.select(m, include=empty) == []
    reasons = {r.reason for r in tp.explain(m, include=empty)}
    assert reasons == {"not matched by include= (include=[] selects nothing)"}
    groups = tp.param_groups(m, 0.1, include=empty)
    assert [g["weight_decay"] for g in groups] == [0.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"include": nn.LayerNorm(4)},
        {"exclude": nn.Sequential(nn.Linear(4, 4))},
        {"include": ["head.*", nn.LayerNorm(4)]},
    ],
)
def test_module_instance_as_matcher_is_a_type_error(kwargs):
    arg, value = next(iter(kwargs.items()))
    cls = type(value[-1] if isinstance(value, list) else value).__name__
    with pytest.raises(
        TypeError,
        match=rf"{arg} must be .*got an instance of {cls}, not a class: pass the class itself \({arg}={cls}\)",
    ):
        tp.select(Block(), **kwargs)
    with pytest.raises(TypeError, match="not a class"):
        tp.Regularizer(Block(), tp.L2(1.0), **kwargs)


def test_no_weight_decay_keywords_swin_convention():
    class WindowAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
            self.logit_scale = nn.Parameter(torch.zeros(2, 1, 1))
            self.qkv = nn.Linear(4, 12)

    class SwinV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([WindowAttention(), WindowAttention()])
            self.head = nn.Linear(4, 3)

        def no_weight_decay_keywords(self):
            return {"cpb_mlp", "logit_scale"}

    m = SwinV2()
    assert names(m) == ["blocks.0.qkv.weight", "blocks.1.qkv.weight", "head.weight"]
    reasons = {r.name: r.reason for r in tp.explain(m)}
    assert reasons["blocks.1.cpb_mlp.2.weight"] == "listed by no_weight_decay_keywords()"
    assert reasons["blocks.0.logit_scale"] == "listed by no_weight_decay_keywords()"
    # keywords are relative to the module that lists them and are not patterns
    m.blocks[0].no_weight_decay_keywords = lambda: ["qkv"]
    del SwinV2.no_weight_decay_keywords
    m.blocks[1].no_weight_decay_keywords = lambda: ["q*v"]
    mlp = ["logit_scale", "cpb_mlp.0.weight", "cpb_mlp.2.weight"]
    expected = [f"blocks.{i}.{n}" for i in (0, 1) for n in mlp]
    assert names(m) == [*expected, "blocks.1.qkv.weight", "head.weight"]


class Holder(nn.Module):
    def __init__(self, attr, param):
        super().__init__()
        self.register_parameter(attr, param)


class HolderNorm(Holder):  # a normalization module by its class name
    pass


OWNERS = {  # kind -> (module class, attribute); "norm" and "table" make the tensor a non-weight
    "linear": (Holder, "weight"),
    "norm": (HolderNorm, "weight"),
    "table": (Holder, "rel_bias_table"),
    "plain": (Holder, "w"),
}


@given(st.permutations(list(OWNERS)), st.integers(1, len(OWNERS)))
def test_a_shared_tensor_is_decided_by_all_its_owners_whatever_the_order(order, k):
    owners = order[:k]
    shared = nn.Parameter(torch.zeros(3, 3))
    m = nn.Module()
    for kind in owners:
        cls, attr = OWNERS[kind]
        setattr(m, kind, cls(attr, shared))
    expected = not ({"norm", "table"} & set(owners))
    assert [p is shared for _, p in tp.select(m)] == ([True] if expected else [])
    rows = tp.explain(m)
    assert [r.regularized for r in rows] == [expected] + [False] * (k - 1)
    assert all(r.reason.startswith("tied to ") for r in rows[1:])
    last = f"{owners[-1]}.{OWNERS[owners[-1]][1]}"
    assert tp.select(m, exclude=last) == []  # any name of the tensor excludes it
