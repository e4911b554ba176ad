"""tp.compact: the smaller model computes the original's outputs (eval mode, 1e-6) and has
the widths each rule predicts; what it cannot shrink is kept (and said) or refused."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import torchpenalty as tp
from torchpenalty.compact import CompactReport, compact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomize_bn(model):
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


def rows(layer, idx, *, bias=None):
    """Zero output rows / channels ``idx`` of ``layer`` (group lasso, dim=0); optionally
    set their bias."""
    with torch.no_grad():
        layer.weight[idx] = 0.0
        if bias is not None:
            layer.bias[idx] = bias


def cols(layer, idx):
    """Zero input columns / channels ``idx`` of ``layer`` (group lasso, dim=1)."""
    with torch.no_grad():
        layer.weight[:, idx] = 0.0


def mlp(*mid):
    return nn.Sequential(nn.Linear(5, 8), *mid, nn.Linear(8, 3))


def cnn(pad1=1, pad2=1, pool=None):
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=pad1), nn.ReLU(), pool or nn.Identity(),
                         nn.Conv2d(6, 4, 3, padding=pad2))  # fmt: skip


def conv_to_linear():
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))  # fmt: skip


X_VEC, X_IMG = (8, 5), (4, 2, 8, 8)

CASES = [
    # id, model builder, zeroing, input shape, expected widths after (per weight layer)
    ("rows-zero-bias", lambda: mlp(nn.ReLU()), lambda m: rows(m[0], [1, 5], bias=0.0), X_VEC, [6, 3]),
    ("rows-bias-folded-relu", lambda: mlp(nn.ReLU()), lambda m: rows(m[0], [0, 2, 7], bias=0.7), X_VEC, [5, 3]),
    ("rows-bias-folded-sigmoid", lambda: mlp(nn.Sigmoid()), lambda m: rows(m[0], [3], bias=0.0), X_VEC, [7, 3]),
    ("rows-bias-batchnorm", lambda: randomize_bn(mlp(nn.BatchNorm1d(8), nn.GELU(), nn.Dropout(0.3))),
     lambda m: rows(m[0], [1, 6], bias=-0.4), X_VEC, [6, 3]),
    ("columns-of-next-layer", lambda: mlp(nn.Tanh()), lambda m: cols(m[2], [0, 4]), X_VEC, [6, 3]),
    ("rows-and-columns", lambda: mlp(nn.ReLU()), lambda m: (rows(m[0], [1], bias=2.0), cols(m[2], [1, 3])), X_VEC, [6, 3]),
    ("all-dead-keeps-one", lambda: mlp(nn.ReLU()), lambda m: rows(m[0], list(range(8)), bias=0.1), X_VEC, [1, 3]),
    ("conv-padded-keeps-biased-rows", lambda: cnn(), lambda m: (rows(m[0], [0, 1], bias=0.0), rows(m[0], [4], bias=0.5)), X_IMG, [4, 4]),
    ("conv-unpadded-folds-biased-rows", lambda: cnn(pad2=0), lambda m: rows(m[0], [0, 4], bias=0.5), X_IMG, [4, 4]),
    ("conv-avgpool-padded", lambda: cnn(pad2=0, pool=nn.AvgPool2d(3, stride=1, padding=1)),
     lambda m: (rows(m[0], [2], bias=0.3), rows(m[0], [3], bias=-1.0)), X_IMG, [5, 4]),  # ReLU(-1) = 0 is removable
    ("conv-reflect-padding", lambda: nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect")),
     lambda m: rows(m[0], [1, 2], bias=0.8), X_IMG, [4, 4]),
    ("conv-bn-pool-flatten-linear", lambda: randomize_bn(conv_to_linear()),
     lambda m: rows(m[0], [0, 5], bias=0.9), X_IMG, [4, 3]),
    ("flatten-dead-blocks", conv_to_linear, lambda m: cols(m[5], list(range(16, 32))), X_IMG, [5, 3]),
    ("no-bias-layers", lambda: nn.Sequential(nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)),
     lambda m: rows(m[0], [2, 3]), X_VEC, [6, 3]),
]  # fmt: skip


@pytest.mark.parametrize(("build", "zero", "shape", "widths"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_outputs_equal_and_widths(build, zero, shape, widths):
    torch.manual_seed(0)
    model = build()
    zero(model)
    model.eval()
    original = copy.deepcopy(model.state_dict())
    x = torch.randn(*shape)
    small, report = compact(model, example_input=x)
    assert [w[3] for w in report.widths] == widths
    assert [
        m.weight.shape[0] for m in small if hasattr(m, "weight") and m.weight.ndim > 1
    ] == widths
    assert report.max_rel_diff <= 1e-6
    small.eval()
    x2 = torch.randn(*shape) * 3  # inputs the check did not see
    torch.testing.assert_close(small(x2), model(x2), rtol=0, atol=1e-5)
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, original[k])
    assert report.params_after == sum(p.numel() for p in small.parameters())
    assert report.params_after <= report.params_before


def test_cascade_through_three_layers():
    # layer 1's row 3 only reads unit 0 of layer 0, which is removed: row 3 becomes dead too
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    rows(model[0], [0], bias=0.0)
    with torch.no_grad():
        model[2].weight[3] = 0.0
        model[2].weight[3, 0] = 1.0
        model[2].bias[3] = 0.0
    x = torch.randn(10, 4)
    _small, report = compact(model, example_input=x)
    assert [w[3] for w in report.widths] == [4, 5, 2]
    assert report.max_rel_diff <= 1e-6


def test_report_counts_parameters_and_flops():
    model = mlp(nn.ReLU())
    rows(model[0], [0, 1], bias=0.0)
    _small, report = compact(model)
    assert isinstance(report, CompactReport)
    assert (report.params_before, report.params_after) == (
        5 * 8 + 8 + 8 * 3 + 3,
        5 * 6 + 6 + 6 * 3 + 3,
    )
    assert (report.flops_before, report.flops_after) == (2 * (5 * 8 + 8 * 3), 2 * (5 * 6 + 6 * 3))
    assert report.max_abs_diff is None
    text = str(report)
    assert "parameters: 75 -> 57" in text and "FLOPs per sample: 128 -> 96" in text
    # convolutions need an input for FLOPs: out positions * 2 * in_channels * kernel size
    conv = cnn(pad2=0)
    rows(conv[0], [0], bias=0.0)
    assert compact(conv)[1].flops_before is None
    _, rep = compact(conv, example_input=torch.randn(*X_IMG))
    assert rep.flops_before == 2 * (6 * 8 * 8 * 2 * 9 + 4 * 6 * 6 * 6 * 9)
    assert rep.flops_after == 2 * (5 * 8 * 8 * 2 * 9 + 4 * 6 * 6 * 5 * 9)


def test_layernorm_pair_is_kept_whole_and_reported():
    model = mlp(nn.LayerNorm(8), nn.ReLU())
    rows(model[0], [0, 1], bias=0.0)
    _small, report = compact(model, example_input=torch.randn(*X_VEC))
    assert [w[3] for w in report.widths] == [8, 3]
    assert report.kept == ["units of model[0] (Linear): LayerNorm mixes the features"]
    assert "kept whole: units of model[0]" in str(report)


def test_grouped_convolution_is_kept_whole():
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=3))
    rows(model[0], [0], bias=0.0)
    _, report = compact(model)
    assert report.kept == ["units of model[0] (Conv2d): grouped convolution (Conv2d, groups=3)"]


def test_nested_sequential_blocks():
    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU())  # noqa: E731
    model = randomize_bn(
        nn.Sequential(block(5, 8), nn.Sequential(block(8, 8), nn.Dropout(0.1)), nn.Linear(8, 2))
    )
    rows(model[0][0], [0, 3], bias=0.5)
    cols(model[1][0][0], [5])
    rows(model[1][0][0], [7], bias=-2.0)
    model.eval()
    x = torch.randn(16, 5)
    small, report = compact(model, example_input=x)
    assert report.widths == [
        ("0.0", "Linear", 8, 5),
        ("1.0.0", "Linear", 8, 7),
        ("2", "Linear", 2, 2),
    ]
    assert small[0][1].num_features == 5 and small[1][0][1].num_features == 7
    assert report.max_rel_diff <= 1e-6
    assert "1.0.0: Linear" in str(report)


def test_tp_compact_is_exported():
    model = mlp(nn.ReLU())
    rows(model[0], [0], bias=0.0)
    small, _ = tp.compact(model)
    assert small[0].out_features == 7


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return x + self.fc(x)


SHARED = nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("model", "kwargs", "error", "message"),
    [
        (nn.Linear(2, 2), {}, TypeError, "model must be an nn.Sequential of Linear/Conv layers, got 'Linear'"),
        (nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), Residual())), {}, ValueError,
         r"model\[1\]\[1\] must be a Linear/Conv layer.*got Residual"),
        (nn.Sequential(SHARED, nn.ReLU(), SHARED), {}, ValueError,
         r"model\[2\] must be a module of its own, got the same Linear as model\[0\]"),
        (nn.Sequential(nn.Linear(2, 2), nn.MultiheadAttention(2, 1)), {}, ValueError,
         r"model\[1\] must be .*got MultiheadAttention"),
        (nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(2, 2)), nn.Linear(2, 1)), {},
         ValueError, r"model\[0\] must not be parametrized"),
        (nn.Sequential(nn.Linear(2, 2)), {"example_input": [[1.0, 2.0]]}, TypeError,
         r"example_input must be a tensor \(a batch of inputs\), got \[\[1.0, 2.0\]\]"),
    ],
)  # fmt: skip
def test_refuses_what_it_cannot_shrink(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        compact(model, **kwargs)


def test_group_lasso_training_then_compact():
    # proximal group lasso drives whole rows to exact zero; compact removes them
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = x[:, :2].sum(dim=1, keepdim=True)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    reg = tp.Regularizer(model, {"0.weight": tp.GroupLasso(0.05, dim=0)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode="proximal")
    for _ in range(300):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    dead = int(model[0].weight.eq(0).all(dim=1).sum())
    assert dead >= 4
    small, report = compact(model, example_input=x)
    assert small[0].out_features == 16 - dead
    assert report.max_rel_diff <= 1e-6


def test_example_script():
    out = subprocess.run([sys.executable, "examples/compact_group_lasso.py"], cwd=ROOT, text=True,
                         capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    accs = [line for line in lines if "test accuracy" in line]
    assert len(accs) == 3
    for line in accs:  # compaction keeps the predictions
        full, small = re.findall(r"(?:full|compacted) (\d\.\d+)", line)
        assert full == small
    params = [tuple(map(int, m)) for m in re.findall(r"parameters: (\d+) -> (\d+)", out.stdout)]
    assert params[0][0] == params[0][1]  # no penalty, nothing to remove
    assert params[2][1] < params[1][1] < params[1][0] / 1.5  # stronger penalty, smaller model
    diffs = re.findall(r"on example_input: (\S+) \(largest \|output\| (\S+)\)", out.stdout)
    assert len(diffs) == 3
    for diff, scale in diffs:  # float32: equal up to the rounding of the outputs' size
        assert float(diff) <= 1e-6 * max(1.0, float(scale))
