"""``tp.sweep`` on any data and any loss: images, token ids, callable losses, Datasets."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

import torchpenalty as tp
from torchpenalty.sweep.result import StandardizedModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(folds=3, epochs=3, batch_size=16, lr=1e-2, progress=False)
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop because")


def images(n=60, k=3, seed=0):
    """Digit-like 1x6x6 images whose brightness depends on the class (float32)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    X = torch.randn(n, 1, 6, 6, generator=g) + labels.view(n, 1, 1, 1).float()
    return X, labels


def cnn(outputs=3):
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, outputs))


def tokens(n=90, length=5, vocab=20, seed=0):
    """Token ids ``(n, length)``: class c's documents start with word c."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    X = torch.randint(3, vocab, (n, length), generator=g)
    X[:, 0] = y
    return X, y


def bag():
    return nn.Sequential(nn.EmbeddingBag(20, 6, mode="mean"), nn.Linear(6, 3))


def losses(result):
    return [r["val_loss_mean"] for r in result.table]


class Pairs(Dataset):
    """A map-style Dataset of (x, y) pairs, items as NumPy arrays and Python numbers."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i].numpy(), self.y[i].item()


def test_images_vectorized_equal_one_at_a_time():
    X, y = images()
    grid = [1e-3, 0.1, 1.0]
    together = tp.sweep(cnn, (X, y), strengths=grid, vectorize=True, **FAST)
    alone = tp.sweep(cnn, (X, y), strengths=grid, vectorize=False, **FAST)
    np.testing.assert_allclose(losses(together), losses(alone), rtol=1e-4)
    assert together.settings["forward"] == "vmap"
    assert together.settings["x_shape"] == [1, 6, 6] and "n_features" not in together.settings
    # images are never standardized, whatever standardize says: the same numbers
    raw = tp.sweep(cnn, (X, y), strengths=grid, vectorize=True, standardize=False, **FAST)
    assert losses(raw) == losses(together)


def test_images_refit_is_the_plain_model_and_predicts_labels():
    X, y = images()
    r = tp.sweep(cnn, (X, y.numpy() + 10), strengths=[1e-3], **FAST)  # labels 10, 11, 12
    assert isinstance(r.model, nn.Sequential)  # nothing standardized: no wrapper
    p = r.predict(X.numpy())
    assert p.shape == (60,) and set(p) <= {10, 11, 12}
    proba = r.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    with pytest.raises(
        ValueError, match=r"X must be an array of shape \(rows, 1, 6, 6\), got shape \(60, 36\)"
    ):
        r.predict(X.reshape(60, 36))


def test_image_regression_rescales_outputs_only():
    """mse on images: targets standardized per fold, images not; predictions in y's units."""
    X, _ = images()
    y = 100 + 10 * X.mean((1, 2, 3))
    r = tp.sweep(lambda: cnn(1), (X, y), strengths=[1e-3], **FAST)
    assert isinstance(r.model, StandardizedModel) and r.model.x_mean is None
    p = r.predict(X)
    assert p.shape == (60,) and abs(p.mean() - y.mean().item()) < y.std().item()


def test_token_ids_through_embedding_bag():
    X, y = tokens()
    grid = [1e-4, 1e-2]
    together = tp.sweep(bag, (X, y), strengths=grid, vectorize=True, **FAST)
    alone = tp.sweep(bag, (X, y), strengths=grid, vectorize=False, **FAST)
    np.testing.assert_allclose(losses(together), losses(alone), rtol=1e-4)
    assert together.settings["x_dtype"] == "int64" and together.settings["x_shape"] == [5]
    p = together.predict(X)
    assert p.shape == (90,) and set(p.tolist()) <= {0, 1, 2}
    assert (together.predict(X.numpy().astype(np.int32)) == p).all()  # ids of any int dtype


def test_integer_tabular_features_are_still_standardized_floats():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 50, (60, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=60)
    lin = lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))  # noqa: E731
    as_int = tp.sweep(lin, (X, y), strengths=[1e-3, 1e-1], **FAST)
    as_float = tp.sweep(lin, (X.astype(np.float64), y), strengths=[1e-3, 1e-1], **FAST)
    assert losses(as_int) == losses(as_float)
    assert as_int.settings["n_features"] == 3 and "x_shape" not in as_int.settings


def test_callable_loss_equals_the_named_one_multi_output():
    """``F.mse_loss`` (the mean over outputs of one row) == ``"mse"`` when nothing is
    standardized: same folds (plain K-fold), same models, same table."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    Y = X @ rng.normal(size=(4, 2)) + 0.1 * rng.normal(size=(60, 2))
    mlp = lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))  # noqa: E731
    kw = dict(strengths=[1e-3, 0.1], standardize=False, **FAST)
    named = tp.sweep(mlp, (X, Y), loss="mse", **kw)
    given = tp.sweep(mlp, (X, Y), loss=nn.functional.mse_loss, **kw)
    np.testing.assert_allclose(losses(given), losses(named), rtol=1e-5)
    assert given.loss == "torch.nn.functional.mse_loss" and given.task == "regression"
    np.testing.assert_allclose(given.predict(X), named.predict(X), rtol=1e-4, atol=1e-5)


def test_callable_loss_standardizes_tabular_features_only():
    """Tabular X is standardized for a callable loss too (the refit takes raw X); its
    targets are not (the user's loss sees y as given)."""
    rng = np.random.default_rng(0)
    X = 5 + 3 * rng.normal(size=(60, 4))
    y = X @ rng.normal(size=4)
    r = tp.sweep(lambda: nn.Linear(4, 1), (X, y[:, None]), strengths=[1e-3],
                 loss=nn.functional.l1_loss, **FAST)  # fmt: skip
    assert isinstance(r.model, StandardizedModel) and r.model.y_mean is None
    np.testing.assert_allclose(r.model.x_mean.numpy(), X.mean(0), rtol=1e-6)
    assert r.predict(X).shape == (60,) and r.loss == "torch.nn.functional.l1_loss"


def test_callable_cross_entropy_equals_the_named_one_on_the_same_folds():
    """With groups both use the same folds (the callable is never stratified)."""
    X, y = images()
    groups = np.arange(60) // 2
    kw = dict(strengths=[1e-3, 0.1], groups=groups, refit=False, **FAST)
    named = tp.sweep(cnn, (X, y), loss="cross_entropy", **kw)
    given = tp.sweep(cnn, (X, y), loss=nn.CrossEntropyLoss(), **kw)
    np.testing.assert_allclose(losses(given), losses(named), rtol=1e-5)
    assert given.loss == "CrossEntropyLoss()"


def test_callable_loss_scores_the_test_set():
    X, y = images()
    r = tp.sweep(cnn, (X[:45], y[:45]), strengths=[1e-3], loss=nn.functional.cross_entropy,
                 test=(X[45:], y[45:]), **FAST)  # fmt: skip
    out = r.model(X[45:])
    assert r.test["rows"] == 15
    assert r.test["loss"] == pytest.approx(nn.functional.cross_entropy(out, y[45:]).item())


def test_dataset_equals_tensors():
    X, y = images()
    grid = [1e-3, 0.1]
    # one path for both (vectorize="auto" may time its way to either under load)
    tensors = tp.sweep(cnn, (X, y), strengths=grid, **{**FAST, "vectorize": True})
    for ds in (Pairs(X, y), TensorDataset(X, y)):
        from_ds = tp.sweep(cnn, ds, strengths=grid, **{**FAST, "vectorize": True})
        assert losses(from_ds) == losses(tensors)
        assert from_ds.settings["data_sha256"] == tensors.settings["data_sha256"]


def test_token_dataset_keeps_integer_ids():
    X, y = tokens()
    r = tp.sweep(bag, Pairs(X, y), strengths=[1e-3], refit=False, **FAST)
    assert r.settings["x_dtype"] == "int64"


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(3), 0


class Ragged(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(3 + i % 2), i % 2


def _half(out, target):
    return nn.functional.cross_entropy(out, target, reduction="none")  # not a mean


@pytest.mark.parametrize(
    ("make", "data", "kwargs", "error", "match"),
    [
        (cnn, Ragged(), {"max_memory_mb": 1e-6}, ValueError,  # streamed: checked item by item
         r"data must be a Dataset whose items all have one shape, got item 1 of shape \(4,\), item 0 \(3,\)"),
        (cnn, Stream(), {}, TypeError, r"data must be a map-style Dataset"),
        (cnn, Ragged(), {}, ValueError, r"data must be a Dataset whose items all have one shape"),
        (cnn, images(), {"loss": 3}, TypeError,
         r"loss must be 'mse', 'cross_entropy', 'huber' or a callable \(output, target\) -> mean loss, got 3"),
        (cnn, images(), {"loss": "hinge"}, ValueError, r"loss must be one of 'mse', 'cross_entropy', 'huber', got 'hinge'"),
        (cnn, images(), {"loss": _half}, ValueError, r"loss must be a callable .* returning torch.Size\(\[2\]\)"),
        (cnn, images(), {"loss": lambda o, t: o.sum() + t.sum() + "a"}, ValueError, r"loss must be a callable .*failing on the model's output \(2, 3\)"),
        (cnn, (images()[0], images()[1][:50]), {}, ValueError, r"y must be of the same length as X \(60 rows\), got 50 rows"),
        (cnn, (images()[0][:, :, :4], images()[1]), {}, ValueError, r"X must be of a row shape the model accepts, got rows of shape \(1, 4, 6\)"),
        (bag, (tokens()[0].float(), tokens()[1]), {}, ValueError, r"X must be of a width the model accepts, got 5 columns"),
        (cnn, images(), {"solver": "closed_form"}, ValueError, r"solver='closed_form' needs 2-D float features"),
        (cnn, (images()[0], images()[1]), {"test": (torch.zeros(3, 1, 5, 5), torch.zeros(3))}, ValueError,
         r"test must be \(X_test, y_test\) with X_test of shape \(rows, 1, 6, 6\), got X_test of shape \(3, 1, 5, 5\)"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_argument(make, data, kwargs, error, match):
    with pytest.raises(error, match=match):
        tp.sweep(make, data, **{**FAST, **kwargs})


@pytest.mark.parametrize("name", ["sweep_images.py", "sweep_text.py"])
def test_example(name):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, os.path.join("examples", name)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "best strength: " in res.stdout and "held-out accuracy" in res.stdout
