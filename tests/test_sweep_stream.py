"""``tp.sweep`` on a Dataset that does not fit ``max_memory_mb``: streamed by batch.

The oracle is the same Dataset materialized (``max_memory_mb`` high): with the same seed a
streamed sweep gives the same folds, models and numbers, up to float rounding (the
per-fold statistics are merged from streamed sums, and losses evaluated in batches are
summed in float64): ``RTOL`` below.
"""

from __future__ import annotations

import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import torchpenalty as tp
from torchpenalty.sweep import run, validate
from torchpenalty.sweep.engine import Engine, Problem, Task
from torchpenalty.sweep.folds import Standardizer, group_kfold, kfold, stratified_kfold
from torchpenalty.sweep.result import StandardizedModel
from torchpenalty.sweep.stream import Moments, StreamedData, StreamedRows, fold_moments, scan

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop because")
RTOL = 1e-5  # streamed vs materialized: float32 rounding carried through a few epochs
FAST = dict(folds=3, epochs=3, batch_size=16, lr=1e-2, progress=False)
LOW, HIGH = 1e-4, 2048.0  # max_memory_mb: streamed, materialized


class Watched(Dataset):
    """(x, y) pairs served by torch's batched-fetch protocol (``__getitems__``), recording
    every request; a request for more than ``limit`` rows raises: the whole X is never
    asked for at once. ``interrupt_at``: raise KeyboardInterrupt at that request."""

    def __init__(self, X, y, limit=None, interrupt_at=None):
        self.X, self.y = X, y
        self.limit = limit
        self.interrupt_at = interrupt_at
        self.requests: list[int] = []

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, rows):
        self.requests.append(len(rows))
        if self.limit is not None and len(rows) > self.limit:
            raise AssertionError(f"{len(rows)} rows requested at once (limit {self.limit})")
        if self.interrupt_at is not None and len(self.requests) == self.interrupt_at:
            raise KeyboardInterrupt
        return [(self.X[i], self.y[i]) for i in rows]


def tabular(n=240, d=5, classes=False, seed=0):
    """Features on different scales and offsets (float64); a linear target, or 3 classes."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.linspace(0.5, 20, d) + np.linspace(-50, 100, d)
    z = (X - X.mean(0)) / X.std(0) @ rng.normal(size=d)
    if classes:
        return torch.tensor(X), torch.tensor(np.digitize(z, np.quantile(z, [1 / 3, 2 / 3])))
    return torch.tensor(X), torch.tensor(3 * z + 0.5 * rng.normal(size=n) + 10)


def images(n=90, seed=0):
    """1x6x6 images whose brightness depends on the class (float32); targets 0, 1, 2."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    return torch.randn(n, 1, 6, 6, generator=g) + labels.view(n, 1, 1, 1).float(), labels


def tokens(n=90, length=5, vocab=20, seed=0):
    """Token ids ``(n, length)`` as NumPy int32 rows (the Dataset serves NumPy arrays);
    class c's documents start with word c."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.integers(3, vocab, (n, length)).astype(np.int32)
    X[:, 0] = y
    return X, y


def bag():
    return nn.Sequential(nn.EmbeddingBag(20, 6, mode="mean"), nn.Linear(6, 3))


def mlp(d=5, out=1):
    return lambda: nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, out))


def cnn(out=3):
    return lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, out))


@pytest.fixture
def chunks_of(monkeypatch):
    """Fix the chunk size (a tiny budget alone would give chunks of one model)."""

    def fix(size):
        monkeypatch.setattr(run, "_chunk_size", lambda *a, **k: size)

    return fix


def assert_same(streamed, stacked, X):
    """Same grid, records, choice and refit predictions; settings differ only by what
    says the data was streamed (and the chunking)."""
    assert streamed.settings["data"] == "streamed" and "data" not in stacked.settings
    skip = {"data", "data_mb", "chunk_size", "chunks", "vectorize_plan"}
    same = {k: v for k, v in streamed.settings.items() if k not in skip}
    assert same == {k: v for k, v in stacked.settings.items() if k not in skip}
    a, b = streamed.records, stacked.records
    assert [(r.i, r.fold) for r in a] == [(r.i, r.fold) for r in b]
    for field in ("val_loss", "train_loss", "param_norm", "val_accuracy"):
        got, want = ([getattr(r, field) for r in recs] for recs in (a, b))
        np.testing.assert_allclose(np.array(got, float), np.array(want, float), rtol=RTOL)
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose(ra.history["val"], rb.history["val"], rtol=RTOL)
    assert streamed.best_strength == stacked.best_strength
    assert type(streamed.model) is type(stacked.model)
    np.testing.assert_allclose(streamed.predict(X), stacked.predict(X), rtol=RTOL, atol=1e-5)


CASES = {  # name: (data, make_model, extra options)
    "tabular-mse": (lambda: tabular(), mlp(), {}),
    "tabular-mse-raw": (lambda: tabular(), mlp(), {"standardize": False, "lr": 1e-3}),
    "tabular-cross-entropy": (lambda: tabular(classes=True), mlp(out=3), {}),
    "tabular-callable-loss": (lambda: (tabular()[0], tabular()[1][:, None]), mlp(), {"loss": nn.functional.huber_loss}),
    "tabular-groups-early-stopping": (lambda: tabular(), mlp(),
                                      {"groups": np.arange(240) // 4, "early_stopping": 1}),
    "integer-counts-mse": (lambda: (tabular()[0].round().long() + 60, tabular()[1]), mlp(), {}),
    "token-ids-as-numpy": (lambda: tokens(), bag, {}),
    "images-cross-entropy": (lambda: images(), cnn(), {}),
    "images-mse": (lambda: (images()[0], images()[0].mean((1, 2, 3)) * 10 + 3), cnn(1), {}),
}  # fmt: skip


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_streamed_equals_materialized(name, vectorize, chunks_of):
    make_data, make_model, extra = CASES[name]
    X, y = make_data()
    chunks_of(4)
    kw = {**FAST, "strengths": [1e-3, 0.3], "vectorize": vectorize, **extra}
    stacked = tp.sweep(make_model, Watched(X, y), max_memory_mb=HIGH, **kw)
    streamed = tp.sweep(make_model, Watched(X, y), max_memory_mb=LOW, **kw)
    assert_same(streamed, stacked, X)
    assert streamed.settings["chunk_size"] == (4 if vectorize else 1)
    if name.startswith("tabular") and extra.get("standardize") is not False:
        assert isinstance(streamed.model, StandardizedModel)
        for attr in ("x_mean", "x_std"):  # the refit's statistics: all rows, streamed
            torch.testing.assert_close(getattr(streamed.model, attr),
                                       getattr(stacked.model, attr), rtol=1e-6, atol=0)  # fmt: skip


def test_a_real_budget_streams_and_still_stacks_models():
    """No patching: 3000 rows x 20 features (0.24 MB) over a 0.2 MB budget stream, and
    the budget still holds several models per chunk."""
    X, y = tabular(n=3000, d=20)
    kw = dict(FAST, strengths=[1e-3, 0.1], epochs=2, batch_size=32, vectorize=True)
    make = mlp(20)
    streamed = tp.sweep(make, TensorDataset(X.float(), y.float()), max_memory_mb=0.2, **kw)
    stacked = tp.sweep(make, TensorDataset(X.float(), y.float()), max_memory_mb=HIGH, **kw)
    assert streamed.settings["data_mb"] == pytest.approx(3000 * 84 / 2**20, abs=1e-3)
    assert streamed.settings["chunk_size"] > 1
    assert_same(streamed, stacked, X)


def test_the_whole_x_is_never_requested():
    """Every request to the Dataset is at most what one training step or one evaluation
    batch of a chunk needs (each fold's batch_size rows); the Dataset raises otherwise."""
    X, y = tabular(n=300)
    folds, bs = 3, 16
    ds = Watched(X, y, limit=folds * bs)
    r = tp.sweep(mlp(), ds, strengths=[1e-3, 0.1, 1.0], max_memory_mb=LOW, vectorize=True,
                 **{**FAST, "folds": folds, "batch_size": bs})  # fmt: skip
    assert r.settings["data"] == "streamed" and r.model is not None
    assert max(ds.requests) <= folds * bs < len(X) / 6
    # the passes over the Dataset read every row; training reads each epoch's batches
    assert sum(ds.requests) > 2 * len(X) + 3 * FAST["epochs"] * len(X)


def test_rows_requested_per_epoch():
    """What the sweep needs and no more: with one model at a time, each of the 3 folds
    reads, per epoch, its 80 training rows (batches of 16) and its 40 validation rows (in
    evaluation batches of 16 rows), and again for the final evaluation; the two passes
    (checks, statistics) read each row once; 2 + 2 rows: the budget check and the model's
    activations. 80 rows are 5 full batches of 16: no padding row is read."""
    X, y = tabular(n=120)
    ds = Watched(X, y)
    tp.sweep(mlp(), ds, strengths=[0.1], max_memory_mb=LOW, vectorize=False, refit=False,
             **{**FAST, "epochs": 2})  # fmt: skip
    needed = 2 * 120 + 2 + 2 + 3 * (2 + 1) * (80 + 40)
    assert sum(ds.requests) == needed
    assert max(ds.requests) == 16


def test_streamed_fingerprint_equals_the_stacked_one():
    X, y = images(n=30)
    data, ys = scan(Watched(X, y), block=7)
    assert (len(data), data.shape, data.ndim) == (30, (30, 1, 6, 6), 4)
    torch.testing.assert_close(ys, y)
    assert validate._fingerprint(data, ys.numpy()) == validate._fingerprint(X.numpy(), ys.numpy())


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(6, 60),
    d=st.integers(1, 4),
    k=st.integers(2, 5),
    block=st.integers(1, 17),
    offset=st.sampled_from([0.0, 1e6, -3e8]),
    split=st.sampled_from(["kfold", "stratified", "groups"]),
    seed=st.integers(0, 2**16),
)
def test_fold_moments_equal_the_standardizer(n, d, k, block, offset, split, seed):
    """Per-fold statistics merged from streamed per-part sums == Standardizer fitted on
    each training fold (and all rows), whatever the block size, also far from zero."""
    k = min(k, n // 2)
    rng = np.random.default_rng(seed)
    X = offset + rng.normal(size=(n, d)) * rng.uniform(0.1, 10, d)
    if split == "kfold":
        splits = kfold(n, k, seed)
    elif split == "stratified":
        splits = stratified_kfold(rng.integers(0, 3, n), k, seed)
    else:
        groups = rng.integers(0, max(k, n // 3), n)
        k = min(k, len(np.unique(groups)))
        splits = group_kfold(groups, k, seed)
    part = np.empty(n, dtype=np.int64)
    for f, (_, va) in enumerate(splits):
        part[va] = f
    data, _ = scan(TensorDataset(torch.tensor(X), torch.zeros(n)), block=block)
    got = fold_moments(data, part, k)
    # both are float64 approximations of the exact statistics: each value carries a
    # rounding error of eps * |x|, which bounds how well any method can do
    atol = 8 * np.finfo(np.float64).eps * np.abs(X).max()
    for f, (tr, _) in enumerate([*splits, (np.arange(n), None)]):
        want = Standardizer(X[tr])
        exact_mean = [float(sum(Fraction(v) for v in col) / len(tr)) for col in X[tr].T]
        np.testing.assert_allclose(got[f].mean, exact_mean, rtol=1e-14, atol=atol)
        np.testing.assert_allclose(got[f].mean, want.mean, rtol=1e-14, atol=2 * atol)
        np.testing.assert_allclose(got[f].std, want.std, rtol=1e-12, atol=2 * atol)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 5),
    r=st.integers(1, 12),
    standardize=st.booleans(),
    images_=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_streamed_rows_take_equals_indexing_the_stacked_views(m, r, standardize, images_, seed):
    """``StreamedRows.take(folds, idx)`` == ``X[folds[:, None], idx]`` of the stacked
    per-fold views (``Standardizer.transform`` per fold, float32), repeated rows included."""
    rng = np.random.default_rng(seed)
    n, k = 20, 3
    shape = (1, 2, 3) if images_ else (4,)
    X = rng.normal(size=(n, *shape)) * 5 + 2
    splits = [*kfold(n, k, seed), (np.arange(n), None)]
    part = np.empty(n, dtype=np.int64)
    for f, (_, va) in enumerate(splits[:-1]):
        part[va] = f
    data, _ = scan(TensorDataset(torch.tensor(X), torch.zeros(n)), block=6)
    tab = standardize and not images_
    rows = StreamedRows(data, k + 1, torch.float32, fold_moments(data, part, k) if tab else None)
    if tab:
        views = np.stack([Standardizer(X[tr]).transform(X) for tr, _ in splits])
    else:
        views = np.broadcast_to(X, (k + 1, *X.shape))
    stacked = torch.tensor(views, dtype=torch.float32)
    folds = torch.as_tensor(rng.integers(0, k + 1, m))
    idx = torch.as_tensor(rng.integers(0, n, (m, r)))
    got = rows.take(folds, idx)
    assert got.dtype == torch.float32 and got.shape == (m, r, *shape)
    torch.testing.assert_close(got, stacked[folds[:, None], idx], rtol=1e-6, atol=1e-6)


def test_constant_column_has_std_one_and_overflow_names_the_column():
    X = np.ones((8, 2))
    X[:, 1] = np.arange(8)
    data, _ = scan(TensorDataset(torch.tensor(X), torch.zeros(8)))
    m = fold_moments(data, np.arange(8) % 2, 2)
    assert m[2].std[0] == 1.0 and m[2].mean[0] == 1.0
    np.testing.assert_allclose(m[2].std[1], np.arange(8).std())
    big = np.array([[1.0, 2e160], [2.0, -2e160], [3.0, 1.0], [4.0, 0.0]])
    data, _ = scan(TensorDataset(torch.tensor(big), torch.zeros(4)))
    with pytest.raises(ValueError, match=r"X column 1: values as large as 2e\+160 overflow"):
        fold_moments(data, np.array([0, 1, 0, 1]), 2)
    assert isinstance(m[0], Moments) and isinstance(data, StreamedData)


def test_interrupt_and_resume_a_streamed_sweep():
    """Ctrl-C while rows are read (mid-chunk): the state resumes to the uninterrupted
    result; it belongs to a streamed sweep, not to the same data stacked."""
    X, y = tabular(n=150)
    kw = dict(FAST, strengths=[1e-3, 0.1], max_memory_mb=LOW, vectorize=True)
    full = tp.sweep(mlp(), Watched(X, y), **kw)
    ds = Watched(X, y)
    tp.sweep(mlp(), ds, **kw)
    at = len(ds.requests) * 3 // 4  # inside training (the first requests are the scans)
    with pytest.raises(tp.SweepInterrupted) as info:
        tp.sweep(mlp(), Watched(X, y, interrupt_at=at), **kw)
    state = info.value.state
    assert state["settings"]["data"] == "streamed"
    assert state["snapshot"] is not None or state["records"]
    resumed = tp.sweep(mlp(), Watched(X, y), resume=state, **kw)
    np.testing.assert_allclose([r.val_loss for r in resumed.records],
                               [r.val_loss for r in full.records], rtol=1e-6)  # fmt: skip
    assert resumed.best_strength == full.best_strength
    with pytest.raises(ValueError, match="resume must come from a sweep with the same"):
        tp.sweep(mlp(), Watched(X, y), resume=state, **{**kw, "max_memory_mb": HIGH})


@pytest.mark.parametrize(
    ("outputs", "bias", "standardize", "groups"),
    [(1, True, True, False), (2, True, True, True), (1, False, True, False),
     (2, False, False, False), (1, True, False, True)],
)  # fmt: skip
def test_closed_form_from_streamed_moments_equals_in_memory(outputs, bias, standardize, groups):
    """A linear model with L2 and mse is solved exactly from one pass over the Dataset
    (per-part scatter matrices of [x, y]): the same records and refit as the SVD of the
    stacked data, to 1e-9 relative."""
    X, y = tabular(n=150, d=5)
    Y = torch.stack([y, X[:, 0] - 2 * y], 1)[:, :outputs] if outputs > 1 else y
    make = lambda: nn.Linear(5, outputs, bias=bias)  # noqa: E731
    kw = dict(FAST, strengths=[0.0, 1e-3, 0.1, 10.0], standardize=standardize,
              groups=np.arange(150) // 5 if groups else None)  # fmt: skip
    ds = Watched(X, Y, limit=16)
    streamed = tp.sweep(make, ds, max_memory_mb=LOW, **kw)
    stacked = tp.sweep(make, Watched(X, Y), max_memory_mb=HIGH, **kw)
    assert streamed.settings["solver"] == stacked.settings["solver"] == "closed_form"
    assert streamed.settings["data"] == "streamed" and max(ds.requests) <= 16
    for field in ("val_loss", "train_loss", "param_norm"):
        got, want = ([getattr(r, field) for r in res.records] for res in (streamed, stacked))
        np.testing.assert_allclose(got, want, rtol=1e-9)
    assert streamed.best_strength == stacked.best_strength
    np.testing.assert_allclose(streamed.predict(X), stacked.predict(X), rtol=1e-6, atol=1e-6)
    x = torch.tensor(X[:4].numpy(), dtype=torch.float32)
    torch.testing.assert_close(streamed.model(x), stacked.model(x), rtol=1e-5, atol=1e-5)


def test_streamed_linear_model_trains_when_asked():
    X, y = tabular(n=90)
    r = tp.sweep(lambda: nn.Linear(5, 1), Watched(X, y), strengths=[1e-3], solver="train",
                 max_memory_mb=LOW, **FAST)  # fmt: skip
    assert "solver" not in r.settings and r.settings["data"] == "streamed"
    assert len(r.records[0].history["val"]) == FAST["epochs"]


def test_held_out_test_set_with_streamed_data():
    X, y = images(n=60)
    r = tp.sweep(cnn(), Watched(X[:45], y[:45]), strengths=[1e-3], max_memory_mb=LOW,
                 test=(X[45:], y[45:]), **FAST)  # fmt: skip
    assert r.test["rows"] == 15 and r.settings["data"] == "streamed"
    with torch.no_grad():
        out = r.model(X[45:])
    assert r.test["loss"] == pytest.approx(nn.functional.cross_entropy(out, y[45:]).item())


class Threads(Watched):
    """Records which threads read items."""

    def __init__(self, X, y):
        super().__init__(X, y)
        self.readers: set[int] = set()

    def __getitems__(self, rows):
        self.readers.add(threading.get_ident())
        return super().__getitems__(rows)


def test_read_threads_read_the_same_items():
    X, y = images(n=60)
    kw = dict(FAST, strengths=[1e-3, 0.1], max_memory_mb=LOW, vectorize=True)
    one = tp.sweep(cnn(), Threads(X, y), **kw)
    ds = Threads(X, y)
    three = tp.sweep(cnn(), ds, read_threads=3, **kw)
    assert len(ds.readers - {threading.get_ident()}) >= 2  # read by the pool's threads
    assert [r.val_loss for r in three.records] == [r.val_loss for r in one.records]
    assert three.settings == one.settings  # not a setting: the numbers do not change


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [(-1, ValueError, r"read_threads must be an integer >= 0, got -1"),
     (2.5, TypeError, r"read_threads must be an integer")],
)  # fmt: skip
def test_read_threads_is_checked(value, error, match):
    X, y = images(n=30)
    with pytest.raises(error, match=match):
        tp.sweep(cnn(), Threads(X, y), read_threads=value, **FAST)


class NaNAt(Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.full((3,), float("nan") if i == 7 else float(i)), i % 2


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (NaNAt(), r"data must be finite inputs x \(no NaN or inf\), got non-finite values in item 7"),
        (TensorDataset(torch.zeros(10, 3, dtype=torch.complex64), torch.zeros(10)),
         r"X must be real \(not complex\), got dtype complex64"),
        (TensorDataset(torch.randn(20, 3), torch.randn(20)),
         r"batch_size must be an integer for a Dataset streamed by batch \(about 0.000305 MB > "
         r"max_memory_mb: a full batch reads every row\), got None"),
    ],
)  # fmt: skip
def test_streamed_bad_items_name_the_item(data, match):
    with pytest.raises(ValueError, match=match):
        tp.sweep(mlp(3), data, max_memory_mb=1e-6, **{**FAST, "batch_size": None})


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_batched_evaluation_equals_one_forward_pass(loss):
    """``Problem.eval_rows``: the same means and accuracies in batches of rows."""
    X, y = tabular(n=50, classes=loss == "cross_entropy")
    Xs = torch.tensor(Standardizer(X.numpy()).transform(X.numpy()), dtype=torch.float32)
    splits = [*kfold(50, 3, 0), (np.arange(50), np.arange(0))]
    Y = y if loss == "cross_entropy" else y.float().view(1, 50, 1).expand(4, 50, 1)
    out = 3 if loss == "cross_entropy" else 1
    results = []
    for rows in (None, 7, 1):
        pb = Problem(Xs.expand(4, 50, 5), Y, torch.ones(4, 1) * 2, [s[0] for s in splits],
                     [s[1] for s in splits], loss, eval_rows=rows)  # fmt: skip
        eng = Engine(mlp(out=out), pb, tp.L2(1.0), epochs=1, batch_size=8, optimizer="adam",
                     lr=0.01, mode="grad", seed=0, early_stopping=None)  # fmt: skip
        tasks = [Task(0, f, 0.1) for f in (0, 1, 2, 3)]
        state = {n: torch.stack([eng.init(t.fold)[n] for t in tasks]) for n in eng.names}
        results.append(eng.evaluate(state, tasks, torch.tensor([0, 1, 2, 3])))
    for other in results[1:]:
        assert set(other) == set(results[0])
        for key in results[0]:
            torch.testing.assert_close(other[key], results[0][key], rtol=1e-6, atol=0,
                                       equal_nan=True)  # fmt: skip
    assert torch.isnan(results[0]["val"][3])  # the refit "fold" has no validation rows
