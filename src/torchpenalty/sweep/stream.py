"""Sweeping a map-style ``Dataset`` that does not fit ``max_memory_mb``: rows are read from
the Dataset batch by batch, never all of ``X`` at once.

Three parts, used by :mod:`torchpenalty.sweep.core` and the engine:

- :func:`scan`, the validation pass: reads every item once, checks it (a pair, one row
  shape, finite inputs), keeps the targets ``y`` (small) and the first two rows (the model
  check), hashes the rows as it goes (the same sha256 as the stacked array) and drops them;
- :func:`fold_moments`, the standardization pass (tabular features only): every row is in
  the validation part of exactly one fold, so per-part counts, means and sums of squared
  deviations (float64, merged with Chan et al.'s pairwise update) give each training fold's
  mean and population std as "all parts but one", and the refit's as all parts;
- :class:`StreamedRows`, what the engine reads inputs through: the rows a training step or
  an evaluation batch needs, loaded once each, standardized with each model's fold and
  moved to the device.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> ds = TensorDataset(torch.arange(12.0).view(6, 2), torch.tensor([0, 1, 0, 1, 0, 1]))
>>> data, y = scan(ds)
>>> len(data), data.shape, y.tolist()
(6, (6, 2), [0, 1, 0, 1, 0, 1])
>>> m = fold_moments(data, np.array([0, 0, 0, 1, 1, 1]), 2)  # parts: rows 0-2, rows 3-5
>>> m[0].mean.tolist(), m[2].mean.tolist()  # fold 0 trains on part 1; the refit on all
([8.0, 9.0], [5.0, 6.0])
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import described_error

__all__ = [
    "READ_ROWS",
    "Moments",
    "StreamedData",
    "StreamedRows",
    "fold_moments",
    "merge",
    "part_scatter",
    "scan",
]

#: Items asked of the Dataset at once in the passes over it (validation, statistics).
READ_ROWS = 1024


def read_items(ds: Any, indices: Sequence[int], threads: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Items ``indices`` of ``ds`` as ``(x, y)`` tensor pairs: one ``__getitems__`` call
    when the Dataset has one (torch's batched-fetch protocol), else one ``ds[i]`` each;
    with ``threads > 1``, that many threads read consecutive slices of ``indices``."""
    indices = [int(i) for i in indices]
    items = _fetch(ds, indices, threads)
    return [_pair(i, item) for i, item in zip(indices, items, strict=True)]


def _fetch(ds: Any, indices: list[int], threads: int = 0) -> list[Any]:
    if threads > 1 and len(indices) > 1:  # slices in order: the same items as one thread
        step = -(-len(indices) // threads)
        slices = [indices[j : j + step] for j in range(0, len(indices), step)]
        return [it for part in _pool(threads).map(lambda r: _fetch(ds, r), slices) for it in part]
    getitems = getattr(ds, "__getitems__", None)
    return getitems(indices) if getitems is not None else [ds[i] for i in indices]


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count, kept for the process (reused by every sweep)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="torchpenalty-read")


def _pair(i: int, pair: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise described_error("data", "a Dataset of (x, y) pairs", f"item {i}: {pair!r:.80}")
    return _as_tensor(pair[0]), _as_tensor(pair[1])


def _as_tensor(v: Any) -> Tensor:
    """``v`` as a tensor (as ``torch.as_tensor(np.asarray(v))``; a tensor as it is)."""
    return v.detach().cpu() if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))


@dataclass
class StreamedData:
    """A Dataset read by :func:`scan`, standing in for ``X`` in a sweep's checks: its
    length, row shape and dtype, the first two rows, and the sha256 of all rows."""

    dataset: Any
    n: int
    row_shape: tuple[int, ...]
    dtype: torch.dtype  # the first item's (every row is cast to it)
    head: np.ndarray  # the first two rows, for the model check
    x_hash: Any  # hashlib.sha256 of the header and every row, in order
    mb: float = 0.0  # the stacked size the budget refused
    block: int = READ_ROWS  # items per request in the passes over the Dataset
    threads: int = 0  # threads reading the Dataset (0 or 1: the calling thread)

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)


def scan(
    ds: Any, mb: float = 0.0, block: int = READ_ROWS, threads: int = 0
) -> tuple[StreamedData, Tensor]:
    """One pass over ``ds``, ``block`` items per request: every item an ``(x, y)`` pair,
    every ``x`` of the first item's shape (cast to its dtype) and finite; returns the
    :class:`StreamedData` and the stacked targets. ``x`` is hashed and dropped (the
    sweep's ``_fingerprint`` of the stacked array gives the same digest)."""
    n = len(ds)
    x0, _ = read_items(ds, [0])[0]
    shape, dtype = tuple(x0.shape), x0.dtype
    h = hashlib.sha256(f"{x0.numpy().dtype.str}{(n, *shape)}".encode())
    head, ys = [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        for i, (x, y) in enumerate(read_items(ds, range(start, stop), threads), start):
            if tuple(x.shape) != shape:
                raise described_error("data", "a Dataset whose items all have one shape",
                                      f"item {i} of shape {tuple(x.shape)}, item 0 {shape}")  # fmt: skip
            x = x.to(dtype)
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise described_error("data", "finite inputs x (no NaN or inf)",
                                      f"non-finite values in item {i}")  # fmt: skip
            h.update(np.ascontiguousarray(x.numpy()).tobytes())
            if i < 2:
                head.append(x)
            ys.append(y)
    try:
        y = torch.stack(ys)
    except RuntimeError as e:
        got = str(e).splitlines()[0]
        raise described_error("data", "a Dataset whose items all have one shape", got) from None
    data = StreamedData(ds, n, shape, dtype, torch.stack(head).numpy(), h, mb, block, threads)
    return data, y


@dataclass
class Moments:
    """Column means and population standard deviations (std 0 -> 1), like
    :class:`~torchpenalty.sweep.folds.Standardizer`, from streamed sums."""

    mean: np.ndarray
    std: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x) * self.std + self.mean


def merge(a: tuple, b: tuple) -> tuple:
    """Chan, Golub and LeVeque's pairwise update of (count, mean, M2): M2 the per-column
    sums of squared deviations from the mean, ``Sa + Sb + delta**2 na nb / n``, or the
    scatter matrix, ``Ca + Cb + delta delta^T na nb / n``."""
    na, ma, sa = a
    nb, mb, sb = b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    delta = mb - ma
    sq = np.outer(delta, delta) if np.ndim(sa) == 2 else delta**2
    return n, ma + delta * (nb / n), sa + sb + sq * (na * nb / n)


def fold_moments(data: StreamedData, part: np.ndarray, k: int) -> list[Moments]:
    """Standardization statistics of every training fold and of all rows (``k + 1``
    entries) in one pass over ``data``'s Dataset. ``part[i]`` is the fold whose validation
    part holds row ``i``; fold ``f`` trains on every other part."""
    d = int(np.prod(data.row_shape))
    parts = [(0, np.zeros(d), np.zeros(d)) for _ in range(k)]
    big = np.zeros(d)
    for start in range(0, data.n, data.block):
        stop = min(data.n, start + data.block)
        items = read_items(data.dataset, range(start, stop), data.threads)
        x = torch.stack([xi.to(data.dtype).to(torch.float64).reshape(d) for xi, _ in items])
        x = x.numpy()
        with np.errstate(over="ignore", invalid="ignore"):
            big = np.maximum(big, np.abs(x).max(0))
            for f in np.unique(part[start:stop]):
                rows = x[part[start:stop] == f]
                mean = rows.mean(0)
                parts[f] = merge(parts[f], (len(rows), mean, ((rows - mean) ** 2).sum(0)))
    out = []
    for f in range(k + 1):
        acc = (0, np.zeros(d), np.zeros(d))
        for g in range(k):
            if g != f:
                acc = merge(acc, parts[g])
        n, mean, m2 = acc
        with np.errstate(over="ignore", invalid="ignore"):
            std = np.sqrt(m2 / n)
        bad = np.flatnonzero(~np.isfinite(std))
        if len(bad):
            raise ValueError(f"X column {bad[0]}: values as large as {big[bad[0]]:.3g} overflow "
                             "its variance in float64; rescale it")  # fmt: skip
        out.append(Moments(mean, np.where(std > 0, std, 1.0)))
    return out


def part_scatter(
    data: StreamedData, part: np.ndarray, k: int, y: np.ndarray
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Per validation part ``f < k``: the count, mean and scatter matrix (sum of outer
    products of deviations from the mean, float64) of the rows ``u = [x, y]`` (x
    flattened, ``y`` of shape ``(n, k_out)`` in memory), in one pass over the Dataset.
    What a ridge solution and its losses need (:mod:`~torchpenalty.sweep.closed_form`)."""
    d = int(np.prod(data.row_shape)) + y.shape[1]
    parts = [(0, np.zeros(d), np.zeros((d, d))) for _ in range(k)]
    for start in range(0, data.n, data.block):
        stop = min(data.n, start + data.block)
        items = read_items(data.dataset, range(start, stop), data.threads)
        x = torch.stack([xi.to(data.dtype).to(torch.float64).reshape(-1) for xi, _ in items])
        u = np.concatenate([x.numpy(), y[start:stop]], axis=1)
        for f in np.unique(part[start:stop]):
            rows = u[part[start:stop] == f]
            mean = rows.mean(0)
            dev = rows - mean
            parts[f] = merge(parts[f], (len(rows), mean, dev.T @ dev))
    return parts


class StreamedRows:
    """The inputs of a streamed sweep as the engine sees them: a virtual ``(K+1, n, ...)``
    array (``X[f]``: all rows standardized with fold ``f``'s statistics) whose rows are
    read from the Dataset only when a step or an evaluation batch asks for them.

    ``moments`` (one :class:`Moments` per fold, or None: no standardization) are applied
    in float64 and the result cast to ``x_dtype``, as the in-memory path does.
    ``requested`` counts the rows read so far (a diagnostic)."""

    def __init__(
        self,
        data: StreamedData,
        k1: int,
        x_dtype: torch.dtype,
        moments: list[Moments] | None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.data = data
        self.shape = (k1, data.n, *data.row_shape)
        self.ndim = len(self.shape)
        self.x_dtype = x_dtype
        self.device = torch.device(device)
        self.mean = self.std = None
        if moments is not None:
            f64 = dict(dtype=torch.float64, device=self.device)
            self.mean = torch.tensor(np.stack([m.mean for m in moments]), **f64)
            self.std = torch.tensor(np.stack([m.std for m in moments]), **f64)
        self.requested = 0

    def __len__(self) -> int:
        return self.shape[0]

    def to(self, device: torch.device | str) -> StreamedRows:
        """Read rows to ``device`` from now on (the statistics move there too)."""
        self.device = torch.device(device)
        if self.mean is not None:
            self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        return self

    def load(self, rows: Tensor) -> Tensor:
        """The raw rows ``rows`` (1-D indices) stacked, on the device."""
        items = _fetch(self.data.dataset, rows.tolist(), self.data.threads)  # (x, y): scanned
        self.requested += len(items)
        raw = torch.stack([_as_tensor(item[0]).to(self.data.dtype) for item in items])
        kind = torch.float64 if self.mean is not None else self.x_dtype
        return raw.to(self.device, kind)

    def take(self, folds: Tensor, idx: Tensor) -> Tensor:
        """``X[folds[:, None], idx]``: ``(M, r, ...)`` inputs of M models (model ``j`` of
        fold ``folds[j]``) on rows ``idx`` ``(M, r)``; each distinct row is read once."""
        uniq, inv = torch.unique(idx.reshape(-1).cpu(), return_inverse=True)
        x = self.load(uniq)[inv.to(self.device)].view(*idx.shape, *self.shape[2:])
        if self.mean is None:
            return x
        f = folds.to(self.device)
        mean, std = self.mean[f][:, None], self.std[f][:, None]
        return ((x - mean) / std).to(self.x_dtype)
