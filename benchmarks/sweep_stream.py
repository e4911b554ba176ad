"""What streaming a Dataset costs: a sweep on a Dataset read batch by batch against the
same Dataset stacked in memory, as ratios measured in one run.

Both sweeps use the same chunk size (the budget alone would give the streamed sweep
smaller chunks) and ``vectorize=True``, so the ratio is the cost of reading rows from the
Dataset (and standardizing them per batch) instead of indexing stacked tensors. Two
Datasets: ``TensorDataset`` (``dataset[i]`` per row) and one with ``__getitems__`` (one
call per batch, torch's batched-fetch protocol). Then a slow Dataset (each item waits
0.2 ms, like a file read) on a tenth of the rows, streamed with ``read_threads=4`` against
``read_threads=0``. Runs are interleaved round by round; medians are reported, with 1
thread and with torch's default.

Run: ``python benchmarks/sweep_stream.py`` (``--quick`` for a smoke run, ``--rows N``,
``--rounds R``, ``--threads N``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import torchpenalty as tp
from torchpenalty.sweep import run as core


class Batched(Dataset):
    """Rows served a batch at a time (``__getitems__``)."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]

    def __getitems__(self, rows):
        idx = torch.as_tensor(rows)
        return list(zip(self.X[idx], self.y[idx], strict=True))


class Slow(Dataset):
    """Rows that take ``delay`` seconds each to read (a file, a decoder)."""

    def __init__(self, X, y, delay=2e-4):
        self.X, self.y, self.delay = X, y, delay

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.X[i], self.y[i]


def report(title: str, times: dict[str, list[float]], base: str) -> None:
    ref = statistics.median(times[base])
    print(title)
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:22s} {med:7.3f} s  x{med / ref:.2f} of {base}")


def interleaved(variants: dict, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    for run in variants.values():  # warm-up: imports, first optimizer, caches
        run()
    for _ in range(rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    rows, rounds = (600, 1) if a.quick else (a.rows, a.rounds)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(rows, 20, generator=g) * 3 + 1
    y = X @ torch.randn(20, generator=g) + torch.randn(rows, generator=g)
    make = lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 1))  # noqa: E731
    kw = dict(strengths=[1e-4, 1e-3, 1e-2, 1e-1], folds=3, epochs=2, batch_size=64,
              vectorize=True, refit=False, progress=False)  # fmt: skip
    mb = rows * 84 / 2**20  # float32 x (20) and y
    core_chunk = core._chunk_size
    core._chunk_size = lambda *args, **k: 12  # every model in one chunk, both ways
    variants = {
        "stacked": lambda: tp.sweep(make, TensorDataset(X, y), max_memory_mb=4 * mb + 64, **kw),
        "streamed getitem": lambda: tp.sweep(make, TensorDataset(X, y), max_memory_mb=mb / 2, **kw),
        "streamed getitems": lambda: tp.sweep(make, Batched(X, y), max_memory_mb=mb / 2, **kw),
    }  # fmt: skip
    small = rows // 10
    Xs, ys, mbs = X[:small], y[:small], mb / 10
    slow = {
        "read_threads=0": lambda: tp.sweep(make, Slow(Xs, ys), max_memory_mb=mbs / 2, **kw),
        "read_threads=4": lambda: tp.sweep(make, Slow(Xs, ys), max_memory_mb=mbs / 2,
                                           read_threads=4, **kw),
    }  # fmt: skip
    threads = [1, torch.get_num_threads()] if a.threads is None else [a.threads]
    try:
        for n in dict.fromkeys(threads):
            torch.set_num_threads(n)
            head = f"threads={n} (12 models, 2 epochs, batch 64; median of {rounds})"
            report(f"{head}, {rows} rows", interleaved(variants, rounds), "stacked")
            report(f"{head}, {small} rows, 0.2 ms per item", interleaved(slow, rounds),
                   "read_threads=0")  # fmt: skip
    finally:
        core._chunk_size = core_chunk


if __name__ == "__main__":
    main()
