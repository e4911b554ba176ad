"""The table that drives the common checks: penalties x dtypes x tensor shapes x modes.

Each ``PenaltyInfo`` carries an independent NumPy reference (float64 / complex128) for the
value, the gradient and the proximal operator, in the spirit of torch's ``OptimizerInfo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import torchpenalty as tp

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64]
SHAPES = {
    "matrix": [(3, 4)],
    "mixed": [(2, 3, 4), (5, 6), (7,)],
    "tall": [(6, 2), (4, 1, 3)],
}
MODES = ["loss", "grad", "decoupled", "independent", "proximal"]

# value / grad tolerances per dtype (rtol, atol) against the float64 reference computed on
# the very same (rounded) values: accumulation is float32 at least, so only the
# gradient, stored in the parameter dtype, loses precision.
VALUE_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-5, 1e-5),
    torch.bfloat16: (1e-5, 1e-5),
    torch.complex64: (1e-5, 1e-6),
}
GRAD_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.complex64: (1e-5, 1e-6),
}


def _sgn(w):
    a = np.abs(w)
    return np.where(a > 0, w / np.where(a > 0, a, 1), 0)


def _rows(w, dim=0):
    return np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)


def _gram(w):
    m = w.reshape(w.shape[0], -1)
    t = m.shape[0] > m.shape[1]
    return (m.T if t else m), t


def np_orth_value(ws, s):
    total = 0.0
    for w in ws:
        m, _ = _gram(w)
        g = m @ m.conj().T - np.eye(m.shape[0])
        total += np.sum(np.abs(g) ** 2)
    return s * total


def np_orth_grad(ws, s):
    out = []
    for w in ws:
        m, t = _gram(w)
        g = m @ m.conj().T - np.eye(m.shape[0])
        d = 4 * s * g @ m
        out.append((d.T if t else d).reshape(w.shape))
    return out


def _group_factor(w, fn, dim=0):
    n = np.linalg.norm(_rows(w, dim), axis=1)
    shape = [1] * w.ndim
    shape[dim] = w.shape[dim]
    return fn(n).reshape(shape)


def _soft(w, t):
    a = np.abs(w)
    return w * np.where(a > t, 1 - t / np.where(a > 0, a, 1), 0)


@dataclass
class PenaltyInfo:
    name: str
    make: Callable[..., tp.Penalty]  # make(strength, refs) -> Penalty
    value: Callable  # value(ws, s, refs) -> float
    grad: Callable  # grad(ws, s, refs) -> list of arrays
    prox: Callable | None  # prox(ws, t, refs) -> list of arrays
    config_extra: dict = field(default_factory=dict)
    sparse_prox: bool = False  # prox gives exact zeros


R = 0.3  # l1_ratio used in the table

PENALTIES = [
    PenaltyInfo(
        "l2",
        lambda s, refs: tp.L2(s),
        lambda ws, s, refs: 0.5 * s * sum(np.sum(np.abs(w) ** 2) for w in ws),
        lambda ws, s, refs: [s * w for w in ws],
        lambda ws, t, refs: [w / (1 + t) for w in ws],
    ),
    PenaltyInfo(
        "l1",
        lambda s, refs: tp.L1(s),
        lambda ws, s, refs: s * sum(np.sum(np.abs(w)) for w in ws),
        lambda ws, s, refs: [s * _sgn(w) for w in ws],
        lambda ws, t, refs: [_soft(w, t) for w in ws],
        sparse_prox=True,
    ),
    PenaltyInfo(
        "elastic_net",
        lambda s, refs: tp.ElasticNet(s, l1_ratio=R),
        lambda ws, s, refs: (
            s * sum(R * np.sum(np.abs(w)) + (1 - R) / 2 * np.sum(np.abs(w) ** 2) for w in ws)
        ),
        lambda ws, s, refs: [s * (R * _sgn(w) + (1 - R) * w) for w in ws],
        lambda ws, t, refs: [_soft(w, t * R) / (1 + t * (1 - R)) for w in ws],
        config_extra={"l1_ratio": R},
        sparse_prox=True,
    ),
    PenaltyInfo(
        "group_lasso",
        lambda s, refs: tp.GroupLasso(s, dim=0),
        lambda ws, s, refs: s * sum(np.linalg.norm(_rows(w), axis=1).sum() for w in ws),
        lambda ws, s, refs: [
            w * _group_factor(w, lambda n: np.where(n > 0, s / np.where(n > 0, n, 1), 0))
            for w in ws
        ],
        lambda ws, t, refs: [
            w * _group_factor(w, lambda n: np.where(n > t, 1 - t / np.where(n > 0, n, 1), 0))
            for w in ws
        ],
        config_extra={"dim": 0},
        sparse_prox=True,
    ),
    PenaltyInfo(
        "l2sp",
        lambda s, refs: tp.L2SP(s, reference=refs),
        lambda ws, s, refs: 0.5 * s * sum(np.sum(np.abs(w - r) ** 2) for w, r in zip(ws, refs)),
        lambda ws, s, refs: [s * (w - r) for w, r in zip(ws, refs)],
        lambda ws, t, refs: [(w + t * r) / (1 + t) for w, r in zip(ws, refs)],
    ),
    PenaltyInfo(
        "orthogonal",
        lambda s, refs: tp.Orthogonal(s),
        lambda ws, s, refs: np_orth_value(ws, s),
        lambda ws, s, refs: np_orth_grad(ws, s),
        None,
    ),
    PenaltyInfo(
        "berhu",
        lambda s, refs: tp.BerHu(s, delta=0.5),
        lambda ws, s, refs: (
            s
            * sum(
                np.sum(np.where(np.abs(w) <= 0.5, np.abs(w), (np.abs(w) ** 2 + 0.25) / 1.0))
                for w in ws
            )
        ),
        lambda ws, s, refs: [s * np.where(np.abs(w) <= 0.5, _sgn(w), w / 0.5) for w in ws],
        lambda ws, t, refs: [
            np.where(
                np.abs(w) <= t,
                0 * w,
                np.where(np.abs(w) <= 0.5 + t, w - t * _sgn(w), w * 0.5 / (0.5 + t)),
            )
            for w in ws
        ],
        config_extra={"delta": 0.5},
    ),
]
PENALTY_IDS = [p.name for p in PENALTIES]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.to(torch.complex128) if t.is_complex() else t.to(torch.float64)).numpy().copy()


def make_tensors(shapes, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        if dtype.is_complex:
            t = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
        else:
            t = torch.randn(shape, generator=g, dtype=torch.float64)
        out.append((scale * t).to(dtype))
    return out


# ---------------------------------------------------------------------------- error table
@dataclass
class ErrorCase:
    id: str
    call: Callable[[], object]
    error: type[Exception]
    match: str


def _bad_config(cls, cfg):
    return lambda: cls.from_config(cfg)


ERRORS = [
    ErrorCase("negative", lambda: tp.L2(-1.0), ValueError, r"strength must be .*>= 0, got -1.0"),
    ErrorCase("nan", lambda: tp.L1(float("nan")), ValueError, r"strength must be .*got nan"),
    ErrorCase("inf", lambda: tp.ElasticNet(float("inf")), ValueError, r"strength .*got inf"),
    ErrorCase("string", lambda: tp.L2("big"), TypeError, r"strength must be a real number, got 'big'"),
    ErrorCase("bool", lambda: tp.L2(True), TypeError, r"strength must be a real number, got True"),
    ErrorCase("l1_ratio_high", lambda: tp.ElasticNet(0.1, l1_ratio=1.5), ValueError, r"l1_ratio must be a number in \[0, 1\], got 1.5"),
    ErrorCase("l1_ratio_neg", lambda: tp.ElasticNet(0.1, l1_ratio=-0.1), ValueError, r"l1_ratio .*got -0.1"),
    ErrorCase("group_dim", lambda: tp.GroupLasso(0.1, dim=1.5), TypeError, r"dim must be an integer, got 1.5"),
    ErrorCase("unknown_name", lambda: tp.get("lasso2", 0.1), ValueError, r"name must be one of .*got 'lasso2'"),
    ErrorCase("name_type", lambda: tp.get(3, 0.1), TypeError, r"name must be a penalty name.*got 3"),
    ErrorCase("get_no_strength", lambda: tp.get("l2"), TypeError, r"strength must be given"),
    ErrorCase("unknown_key", _bad_config(tp.L2, {"name": "l2", "strength": 0.1, "foo": 1}), ValueError, r"cfg must be a dict with keys .*unknown: \['foo'\]"),
    ErrorCase("missing_key", _bad_config(tp.L1, {"name": "l1"}), ValueError, r"cfg must be .*missing: \['strength'\]"),
    ErrorCase("wrong_name", _bad_config(tp.L1, {"name": "l2", "strength": 1.0}), ValueError, r"cfg\['name'\] must be 'l1' for L1, got 'l2'"),
    ErrorCase("not_dict", _bad_config(tp.L2, [("strength", 1)]), TypeError, r"cfg must be a dict, got \[\('strength', 1\)\]"),
    ErrorCase("bad_cfg_value", _bad_config(tp.L2, {"name": "l2", "strength": -2}), ValueError, r"strength must be .*got -2"),
    ErrorCase("get_cfg_name", lambda: tp.get({"name": "nope", "strength": 1}), ValueError, r"cfg\['name'\] must be one of .*got 'nope'"),
    ErrorCase("l2sp_reference", lambda: tp.L2SP(0.1, reference=[1, 2]), TypeError, r"reference must be an nn.Module or a state dict, got \[1, 2\]"),
    ErrorCase("schedule_cfg", lambda: tp.L2.from_config({"strength": {"schedule": "zigzag"}}), ValueError, r"cfg must be a schedule config .*got \{'schedule': 'zigzag'\}"),
    ErrorCase("schedule_neg", lambda: tp.schedules.Linear(-1.0, 0.0, 10), ValueError, r"start must be a finite number >= 0, got -1.0"),
    ErrorCase("schedule_steps", lambda: tp.schedules.Cosine(1.0, 0.0, 0), ValueError, r"steps must be an integer >= 1, got 0"),
    ErrorCase("lambda_config", lambda: tp.L2(lambda step: 0.1).get_config(), TypeError, r"strength must be a number or a torchpenalty.schedules.Schedule"),
    ErrorCase("param_groups_wd", lambda: tp.param_groups(torch.nn.Linear(2, 2), float("nan")), ValueError, r"weight_decay must be a finite number >= 0, got nan"),
    ErrorCase("conv_alpha", lambda: tp.from_sklearn_ridge(-1.0, 10), ValueError, r"alpha must be a finite number >= 0, got -1.0"),
    ErrorCase("conv_n", lambda: tp.from_sklearn_ridge(1.0, 0), ValueError, r"n_samples must be a finite number > 0, got 0"),
]  # fmt: skip
