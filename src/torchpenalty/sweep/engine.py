"""Training many copies of one model at once: stacked parameters, one optimizer.

Every (strength, fold) pair is one model. The models of a chunk are stacked along a new
dim 0 (``torch.func.stack_module_state``) and trained together: the forward pass is a
batched matmul (``baddbmm``) for ``nn.Sequential`` stacks of ``nn.Linear`` and elementwise
activations, and ``torch.func.vmap(functional_call)`` for any other module. Adam and SGD
are elementwise, so one optimizer over the stacked tensors is M independent optimizers;
penalties use per-model strengths (``torchpenalty.functional`` with a 1-D strength).

Determinism: a model's initialization depends on (seed, fold) only, and its mini-batches
on (seed, fold, epoch) only, so a model gets the same numbers whatever chunk it is
trained in (``vectorize=False`` is the same code with chunks of one model), and in
whatever thread or process. Random numbers drawn in a training forward pass (dropout)
come from the chunk's own generator (:func:`chunk_seed`: seed, the chunk's models and its
first epoch), never from torch's global one, which threads of one process share: the
same chunks give the same table in any executor (with dropout, a different chunking
gives models that agree in distribution, not bit for bit).
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..penalties import Penalty, names
from ..select import select
from .losses import SweepLoss, get_loss, rows_grad_fits
from .mlp import ACTIVATIONS, MlpStep, layers_of, stacked_forward
from .mlp import is_stackable_mlp as _is_stackable_mlp

__all__ = [
    "ACTIVATIONS",
    "Engine",
    "Problem",
    "Task",
    "chunk_seed",
    "denormals_flushed",
    "flush_denormal",
    "join_states",
    "split_state",
]


_RNG_LOCK = threading.RLock()
"""Held while torch's global generator is seeded or swapped (model initialization, a
random training forward pass): threads of one process share that generator."""


def chunk_seed(seed: int, tasks: list[Task], epoch: int) -> int:
    """The seed of the generator of a chunk of ``tasks`` that starts at ``epoch``: a
    function of the sweep's ``seed``, the chunk's (strength index, fold) pairs and the
    epoch only (63 bits, from NumPy's ``SeedSequence``).

    >>> chunk_seed(0, [Task(0, 1, 0.1)], 0) == chunk_seed(0, [Task(0, 1, 0.5)], 0)
    True
    >>> chunk_seed(0, [Task(0, 1, 0.1)], 0) == chunk_seed(0, [Task(0, 1, 0.1)], 4)
    False
    """
    keys = [v for t in tasks for v in (t.i, t.fold)]
    words = np.random.SeedSequence([seed, epoch, len(tasks), *keys]).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])


@contextlib.contextmanager
def drawing_from(gen: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Inside the block, torch's global generator of ``device`` (the CPU's or the CUDA
    device's) draws from ``gen``'s state; afterwards ``gen`` holds the advanced state and
    the global generator is as before. torch.func's ``vmap`` and ``F.dropout`` read only
    the global generator: this gives each chunk its own stream, under a lock shared by
    the threads of this process. ``gen=None``: nothing changes."""
    if gen is None:
        yield
        return
    cuda = device.type == "cuda"
    get = (lambda: torch.cuda.get_rng_state(device)) if cuda else torch.get_rng_state
    put = (lambda s: torch.cuda.set_rng_state(s, device)) if cuda else torch.set_rng_state
    with _RNG_LOCK:
        saved = get()
        put(gen.get_state())
        try:
            yield
        finally:
            gen.set_state(get())
            put(saved)


def _generator(seed: int, device: torch.device, state: Tensor | None = None) -> torch.Generator:
    """A generator for ``device`` seeded with ``seed``, or set to ``state``."""
    gen = torch.Generator(device=device)
    if state is None:
        gen.manual_seed(seed)
    else:
        gen.set_state(state.cpu())
    return gen


@dataclass
class Problem:
    """Data prepared once: ``X[f]`` is the whole data standardized with fold ``f``'s
    training statistics (fold ``K`` = all rows, for the refit).

    ``X`` is a tensor, or for a streamed Dataset a row source with ``shape``, ``ndim``
    and ``take(folds, idx)`` (:class:`~torchpenalty.sweep.stream.StreamedRows`) that reads
    only the rows asked for. ``eval_rows``: evaluate at most this many rows per model in
    one forward pass (None: all of a fold's rows at once)."""

    X: Any  # (K+1, n, ...): rows of any shape (tabular, images, token ids)
    Y: Tensor  # (K+1, n, out) float for mse; (n,) long for cross_entropy; (n, ...) else
    y_scale: Tensor  # (K+1, out): multiply standardized errors back to the data's units
    train_idx: list[np.ndarray]  # K+1 entries
    val_idx: list[np.ndarray]  # K+1 entries (the refit's is empty)
    loss: str | Callable[[Tensor, Tensor], Tensor]  # or (output, target) -> mean loss
    n_max: int = 0
    eval_rows: int | None = None
    objective: SweepLoss = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.n_max = max(len(t) for t in self.train_idx)
        self.objective = get_loss(self.loss)

    def inputs(self, folds: Tensor, idx: Tensor) -> Tensor:
        """``X[folds[:, None], idx]``: the inputs ``(M, r, ...)`` of M models (model ``j``
        reads fold ``folds[j]``'s view) on the rows ``idx`` ``(M, r)``."""
        if isinstance(self.X, Tensor):
            return _rows_of(self.X, folds, idx)
        return self.X.take(folds, idx)

    def targets(self, folds: Tensor, idx: Tensor) -> Tensor:
        """The targets of ``inputs(folds, idx)``: per fold for standardized targets
        (``Y[folds[:, None], idx]``), else shared by every fold (``Y[idx]``)."""
        if not self.objective.standardized:
            return _take(self.Y, idx)
        return _rows_of(self.Y, folds, idx)


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """``t[idx]`` as one ``index_select`` (torch's advanced indexing costs more here)."""
    return t.index_select(0, idx.reshape(-1)).view(*idx.shape, *t.shape[1:])


def _rows_of(t: Tensor, folds: Tensor, idx: Tensor) -> Tensor:
    """``t[folds[:, None], idx]`` for ``t`` of shape ``(folds, rows, ...)``: one
    ``index_select`` on the folds' rows laid end to end, or on fold 0's rows when every
    fold is the same view (stride 0: one copy shared by all folds).

    >>> t = torch.arange(12.0).view(2, 3, 2)
    >>> folds, idx = torch.tensor([1, 0]), torch.tensor([[2, 0], [1, 1]])
    >>> torch.equal(_rows_of(t, folds, idx), t[folds[:, None], idx])
    True
    """
    if t.stride(0) == 0 or t.shape[0] == 1:
        return _take(t[0], idx)
    if not t.is_contiguous():
        return t[folds[:, None], idx]
    flat = t.view(-1, *t.shape[2:])
    return _take(flat, folds[:, None] * t.shape[1] + idx)


@dataclass
class Task:
    """One model: strength ``strengths[i]`` trained on fold ``fold``."""

    i: int
    fold: int
    strength: float


@dataclass
class Record:
    i: int
    fold: int
    strength: float
    val_loss: float
    train_loss: float
    param_norm: float
    zero_fraction: float
    best_epoch: int
    val_accuracy: float | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    stopped_epoch: int | None = None  # successive halving: the epochs it trained, if stopped

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _StackedLinear(torch.autograd.Function):
    """``x @ w^T + b`` for M stacked models: ``x`` (M, rows, in), ``w`` (M, out, in),
    ``b`` (M, out) or None. The backward writes the weight's gradient in the weight's own
    layout (``g^T @ x``), so autograd stores it without the copy that the transposed
    gradient of ``baddbmm(b, x, w.transpose(1, 2))`` costs."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        wt = w.transpose(1, 2)
        return torch.bmm(x, wt) if b is None else torch.baddbmm(b.unsqueeze(1), x, wt)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        gx = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class Engine:
    def __init__(
        self,
        make_model: Callable[[], nn.Module],
        problem: Problem,
        penalty: Penalty,
        *,
        epochs: int,
        batch_size: int | None,
        optimizer: str,
        lr: float,
        mode: str,
        seed: int,
        early_stopping: int | None,
        forward: str = "auto",
        device: torch.device | None = None,
    ) -> None:
        if not penalty.stackable or penalty.is_constraint:
            raise ValueError(
                f"penalty must be one of {names(sweepable=True)} for a sweep, got {penalty.name!r}"
            )
        self.make_model = make_model
        self.problem = problem
        self.penalty = penalty
        self.epochs = epochs
        self.batch_size = min(batch_size or problem.n_max, problem.n_max)
        self.optimizer = optimizer
        self.lr = lr
        self.mode = mode
        self.seed = seed
        self.early_stopping = early_stopping
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._inits: dict[int, dict[str, Tensor]] = {}
        base = self._module(0).to(self.device)
        self.base = base
        self.names = [n for n, _ in base.named_parameters()]
        self.frozen = {n for n, p in base.named_parameters() if not p.requires_grad}
        named = {id(p): n for n, p in base.named_parameters()}  # (select's names may differ:
        self.selected = [named[id(p)] for _, p in select(base)]  # a parametrization's tensors)
        self.buffers = {n: b for n, b in base.named_buffers()}
        self.couples_rows = any(isinstance(m, _BatchNorm) for m in base.modules())
        if forward == "auto":
            tabular = problem.X.ndim == 3  # (folds, rows, features)
            forward = "bmm" if _is_stackable_mlp(base) and not self.buffers and tabular else "vmap"
        if forward == "bmm" and not _is_stackable_mlp(base):
            raise ValueError("forward='bmm' needs an nn.Sequential of Linear and activations")
        self.forward_kind = forward

    # ------------------------------------------------------------------ models
    def _module(self, fold: int) -> nn.Module:
        with _RNG_LOCK, torch.random.fork_rng(devices=[]):  # threads share the generator
            torch.manual_seed(self.seed * 1_000_003 + fold)
            model = self.make_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"make_model must return an nn.Module, got {model!r}")
        return model

    build_model = _module  # public name for sweep/run.py: the model of ``fold``, on the CPU

    def init(self, fold: int) -> dict[str, Tensor]:
        """Initial parameters and buffers of every model of ``fold`` (the same for every
        strength)."""
        if fold not in self._inits:
            m = self._module(fold)
            named = [*m.named_parameters(), *m.named_buffers()]
            self._inits[fold] = {n: t.detach().to(self.device, copy=True) for n, t in named}
        return self._inits[fold]

    @contextlib.contextmanager
    def _mode(self, training: bool) -> Iterator[None]:
        """Dropout and batch norm behave as in training or as in evaluation."""
        was = self.base.training
        self.base.train(training)
        try:
            yield
        finally:
            self.base.train(was)

    train_mode = _mode  # public name for sweep/run.py

    def forward(self, state: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs ``(M, rows, ...)`` of the M stacked models in ``state`` (parameters and
        buffers) on their inputs ``x`` of shape ``(M, rows, ...)``."""
        params = {n: state[n] for n in self.names}
        if self.forward_kind == "bmm" and not torch.is_grad_enabled():
            return stacked_forward(self._layers(), state, x)[-1]  # (no autograd needed)
        if self.forward_kind == "bmm":
            h = x
            for mod, pre in self._layers():
                if pre is not None:
                    h = _StackedLinear.apply(h, params[pre + "weight"], params.get(pre + "bias"))
                else:
                    h = mod(h)
            return h
        from torch.func import functional_call, vmap

        buffers = {n: state[n] for n in self.buffers}

        def one(p, b, xi):
            return functional_call(self.base, (p, b), (xi,))

        # each model draws its own dropout masks ("different"): with dropout, vectorized
        # and one-at-a-time runs agree in distribution, not bit for bit
        return vmap(one, randomness="different")(params, buffers, x)

    # ------------------------------------------------------------------ batches
    def batches(self, tasks: list[Task], epoch: int) -> tuple[Tensor, Tensor]:
        """Row indices ``(M, n_batches, bs)`` and a mask of real rows, for one epoch.

        Each fold's training rows are shuffled by (seed, fold, epoch) and cut into
        ``ceil(n_fold / bs)`` batches, padded at the front: every batch full but the first,
        as a plain loop has them (a first batch of one row takes one row of the second:
        batch norm cannot train on one row). Tasks whose folds need different numbers of
        batches should not share a chunk (:meth:`chunk_keys` tells; the sweep groups its
        chunks by it): if they do, the shorter folds are spread evenly over the longest's
        batches. A step drops the padding columns that every model of its chunk shares
        (:func:`_trimmed`), so a model alone trains on exactly its rows."""
        bs = self.batch_size
        train = self.problem.train_idx
        nb = max(self.batch_counts(tasks))
        per_fold = {}
        for f in {t.fold for t in tasks}:
            perm = np.random.default_rng([self.seed, f, epoch]).permutation(train[f])
            per_fold[f] = _layout(perm, nb, bs)
        idx = torch.as_tensor(np.stack([per_fold[t.fold] for t in tasks])).to(self.device)
        idx = idx.view(len(tasks), nb, bs)
        mask = idx >= 0
        return idx.clamp_min(0), mask

    def batch_counts(self, tasks: list[Task]) -> list[int]:
        """Mini-batches per epoch of each task's model: ``ceil(n_train / batch_size)``."""
        return [math.ceil(len(self.problem.train_idx[t.fold]) / self.batch_size) for t in tasks]

    def chunk_keys(self, tasks: list[Task]) -> list[tuple[int, ...]]:
        """Tasks with equal keys may share a chunk and train there as they would alone:
        the number of batches, and for a model whose training forward pass mixes rows
        (batch norm), also the rows of its first batch, so that no padding row (its
        padding, masked out of the loss, would enter the batch statistics) ever reaches
        the forward pass."""
        counts = self.batch_counts(tasks)
        if not self.couples_rows:
            return [(c,) for c in counts]
        sizes = [len(self.problem.train_idx[t.fold]) for t in tasks]
        return [(c, n - (c - 1) * self.batch_size) for c, n in zip(counts, sizes, strict=True)]

    def padded_rows(self, tasks: list[Task], which: str) -> tuple[Tensor, Tensor]:
        """Each task's ``"train"`` or ``"val"`` rows, padded to one length, and a mask."""
        rows = [getattr(self.problem, which + "_idx")[t.fold] for t in tasks]
        n = max(1, max(len(r) for r in rows))
        idx = torch.zeros(len(tasks), n, dtype=torch.long)
        mask = torch.zeros(len(tasks), n, dtype=torch.bool)
        for j, r in enumerate(rows):
            idx[j, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[j, : len(r)] = True
        return idx.to(self.device), mask.to(self.device)

    def _row_losses(self, out: Tensor, y: Tensor) -> Tensor:
        """Loss of every row ``(M, rows)`` (:meth:`~torchpenalty.sweep.losses.SweepLoss.rows`)."""
        return self.problem.objective.rows(out, y)

    def _gather(self, folds: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        return self.problem.inputs(folds, idx), self.problem.targets(folds, idx)

    # ------------------------------------------------------------------ evaluation
    def _masked_loss(self, state, folds, idx, mask) -> tuple[Tensor, Tensor | None]:
        """Mean loss (in the data's units) over the masked rows, and accuracy, with the
        models in evaluation mode: in one forward pass, or with ``problem.eval_rows`` set
        and more rows than that, in batches of ``eval_rows`` rows per model whose sums are
        accumulated in float64 (the same means up to float rounding)."""
        block = self.problem.eval_rows
        n = idx.shape[1]
        if block is None or n <= block:
            rows, hits = self._eval_rows(state, folds, idx)
            acc = None if hits is None else _masked_mean(hits.float(), mask)
            return _masked_mean(rows, mask), acc
        f64 = torch.float64
        total = torch.zeros(len(folds), dtype=f64, device=idx.device)
        right = None
        for j in range(0, n, block):
            mk = mask[:, j : j + block]
            rows, hits = self._eval_rows(state, folds, idx[:, j : j + block])
            total += (rows * mk).sum(1, dtype=f64)
            if hits is not None:
                right = (hits & mk).sum(1, dtype=f64) + (0 if right is None else right)
        cnt = mask.sum(1)

        def mean(s: Tensor) -> Tensor:
            return torch.where(cnt > 0, s / cnt.clamp_min(1), float("nan")).float()

        return mean(total), None if right is None else mean(right)

    def _eval_rows(self, state, folds, idx) -> tuple[Tensor, Tensor | None]:
        """Loss of every row ``(M, r)`` in the data's units and, for cross-entropy,
        whether the predicted class is right, with the models in evaluation mode."""
        x, y = self._gather(folds, idx)
        if self.forward_kind == "bmm":  # Linear and activations: no train/eval difference
            out = self.forward(state, x)
        else:
            with self._mode(False):
                out = self.forward(state, x)
        objective = self.problem.objective
        if objective.standardized:  # errors scaled back to the data's units
            o = out if out.ndim == 3 else out.unsqueeze(-1)
            scale = self.problem.y_scale[folds].unsqueeze(1)
            return objective.rows(o * scale, y * scale), None
        return objective.rows(out, y), objective.hits(out, y)

    @torch.no_grad()
    def evaluate(
        self, state: dict[str, Tensor], tasks: list[Task], folds: Tensor
    ) -> dict[str, Tensor]:
        """Validation and training loss (and accuracy), parameter norm and fraction of
        exact zeros of every model."""
        res = {}
        for which in ("train", "val"):
            loss, acc = self._masked_loss(state, folds, *self.padded_rows(tasks, which))
            res[which] = loss
            if acc is not None:
                res[which + "_acc"] = acc
        sel = [state[nm].detach() for nm in self.selected]
        if sel:
            res["norm"] = torch.sqrt(sum(p.pow(2).flatten(1).sum(1) for p in sel))
            total = sum(p[0].numel() for p in sel)
            res["zeros"] = sum((p == 0).flatten(1).sum(1) for p in sel) / total
        else:
            res["norm"] = torch.zeros(len(tasks), device=self.device)
            res["zeros"] = torch.zeros(len(tasks), device=self.device)
        return res

    # ------------------------------------------------------------------ training
    def _optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        """Adam or SGD (momentum 0.9) over the stacked tensors, fused (one kernel per
        tensor: the same update as torch's loop, 20-40 % less time per step here) where
        torch supports it for these tensors, else multi-tensor (foreach)."""
        fast = {"fused": True} if _fused_ok(params) else {"foreach": True}
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, **fast)
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9, **fast)

    def _step(self, live, opt, sel, strengths, x, y, mk, gen=None, mlp=None) -> Tensor:
        """One optimizer step of the stacked models on the batch ``x``, ``y`` (M, bs, ...)
        with mask ``mk`` (None: no padding in this batch); returns the detached summed loss
        of each model's real rows. The forward pass draws its random numbers from ``gen``
        (:func:`drawing_from`); ``mlp``: the run's :class:`~torchpenalty.sweep.mlp.MlpStep`
        (the bmm path)."""
        if self.forward_kind == "bmm":  # Linear and activations: no train/eval difference
            with torch.no_grad():  # (one context for the step's many operations)
                mlp = mlp or MlpStep(self._layers(), live, self._loss_grad)
                rows = mlp(x, y, mk)
        else:
            # None: backward writes the gradients instead of adding them to zeros (the
            # in-place adds were most of a wide model's step); what
            # opt.zero_grad(set_to_none=True) does without its profiler and hook bookkeeping
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = None
            with self._mode(True), drawing_from(gen, self.device):
                rows = self._row_losses(self.forward(live, x), y)
            rows = rows if mk is None else rows * mk
            _per_model(rows, mk).sum().backward()
        _fill_missing_grads(sel)
        self._penalty_step(opt, sel, strengths)
        return rows.detach().sum(1)

    def _mlp_step_grads(self, live, x, y, mk) -> Tensor:
        """The gradients of one step of the stacked Linear/activation models ``live`` on
        ``x``, ``y`` with mask ``mk``, written to their ``.grad``, without autograd
        (:class:`~torchpenalty.sweep.mlp.MlpStep`); each row's loss (zero on padding)."""
        with torch.no_grad():
            return MlpStep(self._layers(), live, self._loss_grad)(x, y, mk)

    def _mlp(self, live: dict[str, Tensor]) -> MlpStep | None:
        """The run's bmm-path step over the parameters ``live`` (None on the vmap path)."""
        if self.forward_kind != "bmm":
            return None
        return MlpStep(self._layers(), live, self._loss_grad)

    def _loss_grad(self, out: Tensor, y: Tensor, mk: Tensor | None) -> tuple[Tensor, Tensor]:
        """Each row's loss (zero on padding) and the gradient of the models' summed mean
        losses with respect to ``out``: written out by the loss where it can
        (:meth:`~torchpenalty.sweep.losses.SweepLoss.rows_grad`), else by autograd."""
        if mk is None:
            w: float | Tensor = 1.0 / out.shape[1]
        else:
            w = mk.to(out.dtype)
            w = w / w.sum(1, keepdim=True).clamp_min(1)
        objective = self.problem.objective
        found = objective.rows_grad(out, y, w) if rows_grad_fits(type(objective)) else None
        if found is not None:
            rows, g = found
            return (rows if mk is None else rows * mk), g
        out = out.requires_grad_()
        with torch.enable_grad():
            rows = self._row_losses(out, y)
            rows = rows if mk is None else rows * mk
            (g,) = torch.autograd.grad(_per_model(rows, mk).sum(), out)
        return rows, g

    def _layers(self) -> list[tuple[nn.Module, str | None]]:
        """The stack's modules in order, each with its parameter prefix (None: an
        activation). Every position counts: an activation instance used twice appears
        twice (``named_children`` would list it once)."""
        found = self.__dict__.get("_layer_list")
        if found is None:
            found = self._layer_list = layers_of(self.base)
        return found

    def _stacked(self, tasks: list[Task]) -> tuple[Tensor, Tensor, dict, dict]:
        """Folds, strengths, and the stacked initial parameters (trainable unless frozen)
        and buffers of ``tasks``, one slice per task."""
        dev = self.device
        folds = torch.tensor([t.fold for t in tasks], device=dev)
        strengths = torch.tensor([t.strength for t in tasks], dtype=torch.float32, device=dev)
        inits = [self.init(t.fold) for t in tasks]
        params = {
            n: torch.stack([i[n] for i in inits]).requires_grad_(n not in self.frozen)
            for n in self.names
        }
        buffers = {n: torch.stack([i[n] for i in inits]) for n in self.buffers}
        return folds, strengths, params, buffers

    def time_steps(self, tasks: list[Task], steps: int = 3) -> float:
        """Median seconds of one training step of ``tasks`` stacked together, over
        ``steps`` steps after one warm-up step, on copies (nothing is kept, the random
        state is restored)."""
        with self.timed_stepper(tasks) as step:
            step()  # warm-up
            return statistics.median(step() for _ in range(steps))

    @contextlib.contextmanager
    def timed_stepper(self, tasks: list[Task]) -> Iterator[Callable[[], float]]:
        """A function that takes one training step of ``tasks`` stacked together and
        returns its seconds, valid inside the block. It trains copies (nothing is kept)
        and the random state is restored on leaving. Two steppers open at once can be
        called in turn (:mod:`torchpenalty.sweep.calibration` times its steps so)."""
        dev = self.device
        folds, strengths, params, buffers = self._stacked(tasks)
        live = {**params, **buffers}
        opt = self._optimizer(list(params.values()))
        sel = [params[n] for n in self.selected]
        idx, mask = self.batches(tasks, 0)
        count = iter(range(2**62))
        gen = _generator(0, dev)
        mlp = self._mlp(live)

        def step() -> float:
            b = next(count) % idx.shape[1]
            rows, mk = _trimmed(idx[:, b], mask[:, b])
            with flush_denormal(dev):
                _sync(dev)
                t0 = time.perf_counter()
                x, y = self._gather(folds, rows)
                self._step(live, opt, sel, strengths, x, y, mk, gen, mlp)
                _sync(dev)
            return time.perf_counter() - t0

        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            yield step

    def run(
        self,
        tasks: list[Task],
        *,
        epochs: int | None = None,
        early_stopping: bool = True,
        state: dict[str, Any] | None = None,
        on_epoch: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
    ) -> tuple[list[Record], dict[str, Tensor]]:
        """Train ``tasks`` together; return their records and final stacked state
        (parameters and buffers).

        ``epochs`` overrides the engine's; ``early_stopping=False`` turns the engine's
        patience off for this run (the refit). ``state`` resumes from a snapshot taken by
        ``on_epoch(epoch, snapshot)``, which is called after every epoch with a function
        that copies the training state. On the CPU, subnormal floats are flushed to zero
        while training (see :func:`flush_denormal`)."""
        with flush_denormal(self.device):
            return self._run(tasks, epochs, early_stopping, state, on_epoch)

    def _run(self, tasks, epochs, early_stopping, state, on_epoch):
        epochs = self.epochs if epochs is None else epochs
        patience = self.early_stopping if early_stopping else None
        m = len(tasks)
        dev = self.device
        folds, strengths, params, buffers = self._stacked(tasks)
        live = {**params, **buffers}  # what the forward pass reads
        opt = self._optimizer(list(params.values()))
        sel = [params[n] for n in self.selected]
        history: dict[str, list[list[float]]] = {"train": [], "val": []}
        best_val = torch.full((m,), float("inf"), device=dev)
        best_epoch = torch.full((m,), -1, dtype=torch.long, device=dev)
        stopped = torch.zeros(m, dtype=torch.bool, device=dev)
        best = {n: t.detach().clone() for n, t in live.items()} if patience else None
        start = 0 if state is None else state["epoch"]
        rng = None if state is None else state.get("rng")  # a repacked chunk: a new stream
        gen = _generator(chunk_seed(self.seed, tasks, start), dev, rng)
        if state is not None:
            with torch.no_grad():
                for n, t in live.items():
                    t.copy_(state["params"][n])
            opt.load_state_dict(_clone_state(state["opt"]))  # the caller's state stays as is
            history = {k: [list(r) for r in v] for k, v in state["history"].items()}
            best_val, best_epoch, stopped = (
                state[k].to(dev, copy=True) for k in ("best_val", "best_epoch", "stopped")
            )
            if best is not None:
                best = {n: t.clone() for n, t in state["best"].items()}

        mlp = self._mlp(live)
        val_rows = self.padded_rows(tasks, "val")
        no_val = torch.full((m,), float("nan"), device=dev)  # a chunk without validation
        has_val = bool(val_rows[1].any())  # rows (the refit's): its loss, with no forward
        scale2 = self.problem.y_scale[folds].pow(2).mean(-1)  # standardized -> data units
        if not self.problem.objective.standardized:
            scale2 = torch.ones_like(scale2)
        for epoch in range(start, epochs):
            train_loss = self._epoch(tasks, epoch, live, opt, sel, (strengths, folds, gen, mlp))
            train_loss = train_loss * scale2
            with torch.no_grad():
                val_loss = self._masked_loss(live, folds, *val_rows)[0] if has_val else no_val
            history["train"].append(train_loss.tolist())
            history["val"].append(val_loss.tolist())
            if patience:
                improved = (val_loss < best_val) & ~stopped
                best_val = torch.where(improved, val_loss, best_val)
                best_epoch = torch.where(improved, epoch, best_epoch)
                for n, t in live.items():
                    best[n][improved] = t.detach()[improved]
                stopped |= (epoch - best_epoch) >= patience
            if on_epoch is not None:
                tracked = (best_val, best_epoch, stopped, best, gen)
                on_epoch(epoch, functools.partial(_snapshot, epoch, live, opt, history, tracked))
            if patience and bool(stopped.all()):
                break

        final = {n: t.detach() for n, t in live.items()}
        if best is not None:
            final = best
        else:
            best_epoch = torch.full((m,), len(history["val"]) - 1, dtype=torch.long, device=dev)
        return self._records(tasks, folds, final, best_epoch, history), final

    def _epoch(self, tasks, epoch, live, opt, sel, models) -> Tensor:
        """One epoch of training steps; the mean training loss per model (standardized).
        ``models``: the chunk's strengths, folds, generator and bmm-path step."""
        strengths, folds, gen, mlp = models
        idx, mask = self.batches(tasks, epoch)
        seen = mask.sum((1, 2))
        padded = (~mask).any(2).any(0).tolist()  # per batch: any padding row
        total = torch.zeros(len(tasks), device=self.device)
        m, nb, bs = idx.shape
        whole = None  # the epoch's rows gathered at once (tensor data, bmm path)
        if self.forward_kind == "bmm" and isinstance(self.problem.X, Tensor):
            whole = self._gather(folds, idx.view(m, nb * bs))
        for b in range(nb):
            keep, mk = _trimmed_columns(mask[:, b]) if padded[b] else (None, None)
            if whole is None:
                x, y = self._gather(folds, idx[:, b] if keep is None else idx[:, b, keep])
            else:
                x, y = (t[:, b * bs : (b + 1) * bs] for t in whole)
                x, y = (x, y) if keep is None else (x[:, keep], y[:, keep])
            total += self._step(live, opt, sel, strengths, x, y, mk, gen, mlp)
        return total / seen.clamp_min(1)

    def _records(self, tasks, folds, final, best_epoch, history) -> list[Record]:
        """One :class:`Record` per task from the final (or best) state and the history."""
        ev = self.evaluate(final, tasks, folds)
        return [
            Record(
                i=t.i,
                fold=t.fold,
                strength=t.strength,
                val_loss=float(ev["val"][j]),
                train_loss=float(ev["train"][j]),
                param_norm=float(ev["norm"][j]),
                zero_fraction=float(ev["zeros"][j]),
                best_epoch=int(best_epoch[j]),
                val_accuracy=float(ev["val_acc"][j]) if "val_acc" in ev else None,
                history={k: [r[j] for r in v] for k, v in history.items()},
            )
            for j, t in enumerate(tasks)
        ]

    @torch.no_grad()
    def _penalty_step(self, opt: torch.optim.Optimizer, sel: list[Tensor], s: Tensor) -> None:
        """The optimizer step with the penalty applied by the same update rule as
        ``Regularizer.attach(opt, mode=self.mode)`` (per-model strengths ``s``)."""
        from ..updates import Batch, make_rule

        rule = self.__dict__.get("_rule")
        if rule is None:
            rule = self._rule = make_rule(self.mode, rounding="nearest")
            rule.check(self.penalty)
        batch = opt.__dict__.get("_tp_batch")  # the same while the gradient tensors are
        if (
            batch is None
            or batch.strength is not s
            or any(g is not p.grad for g, p in zip(batch.grads, sel, strict=True))
        ):
            grads = [p.grad for p in sel]
            batch = Batch(self.penalty, sel, grads, list(self.selected), sel, opt,
                          opt.param_groups[0], strength=s, lr0=self.lr)  # fmt: skip
            opt.__dict__["_tp_batch"] = batch
        rule.pre(batch)
        _direct_step(opt)
        rule.post(batch)


def denormals_flushed() -> bool:
    """Whether this thread's CPU flushes subnormal floats to zero (there is no getter for
    ``torch.set_flush_denormal``: a subnormal product tells)."""
    tiny = torch.tensor([1e-38], dtype=torch.float32)
    return bool((tiny * 0.5)[0] == 0)


@contextlib.contextmanager
def flush_denormal(device: torch.device | str = "cpu") -> Iterator[None]:
    """Flush subnormal floats to zero on the CPU inside the block, restored afterwards.

    Weights and Adam's moment estimates that decay towards zero (strong penalties, long
    runs) turn subnormal, and x86 CPUs compute on subnormals tens of times more slowly:
    epoch times then grow with every epoch. Flushing changes values below 1.2e-38 only.

    >>> with flush_denormal("cpu"):
    ...     inside = denormals_flushed()
    >>> inside, denormals_flushed()
    (True, False)
    """
    if torch.device(device).type != "cpu":
        yield
        return
    was = denormals_flushed()
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(was)


def _direct_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` for the engine's own optimizers: the first call is ``opt.step()``
    itself (it creates the state); later calls run torch's fused Adam / SGD kernel
    directly on that state where :func:`_direct_update` can (the same kernel with the
    same arguments, so the same numbers, without ``step()``'s per-call bookkeeping:
    hooks, profiler records, state lookups -- 0.15 ms a step on the CPU, a tenth of a
    stacked width-32 step). The optimizer's state stays the one ``state_dict()`` reads;
    after ``load_state_dict`` (a new state and new groups) the kernel is set up again."""
    state, groups = opt.state, opt.param_groups
    found = opt.__dict__.get("_tp_direct")  # (state, groups, number of groups, call)
    if found is not None and found[0] is state and found[1] is groups and found[2] == len(groups):
        found[3]()
        return
    opt.step()
    opt.__dict__["_tp_direct"] = (state, groups, len(groups), _direct_update(opt) or opt.step)


def _direct_update(opt: torch.optim.Optimizer) -> Callable[[], None] | None:
    """The fused kernel call equal to ``opt.step()`` for a one-group fused ``Adam`` or
    ``SGD`` (momentum, no weight decay, no nesterov, amsgrad or maximize) whose state
    exists; None otherwise (``opt.step()`` is used). A call with a missing gradient
    falls back to ``opt.step()`` (it skips that parameter)."""
    if len(opt.param_groups) != 1:
        return None
    g = opt.param_groups[0]
    params = [p for p in g["params"] if p.grad is not None]
    state = [opt.state.get(p, {}) for p in params]
    plain = g.get("fused") and not g.get("maximize") and not g.get("weight_decay")
    if not params or not plain or not isinstance(g["lr"], float):
        return None
    if type(opt) is torch.optim.Adam and not g["amsgrad"] and not g["capturable"]:
        if not all("exp_avg" in s for s in state) or g.get("decoupled_weight_decay"):
            return None
        m, v, steps = ([s[k] for s in state] for k in ("exp_avg", "exp_avg_sq", "step"))
        if any(t.shape != () or t.dtype != torch.float32 or t.device != steps[0].device
               for t in steps) or any(not torch.equal(t, steps[0]) for t in steps):  # fmt: skip
            return None
        # every tensor's step count: a view of one tensor, counted with one addition
        counts = torch.stack(steps)
        steps = list(counts.unbind())
        for s, t in zip(state, steps, strict=True):
            s["step"] = t
        (b1, b2), eps = g["betas"], g["eps"]

        def kernel(grads: list[Tensor]) -> None:
            counts.add_(1)
            torch._fused_adam_(params, grads, m, v, [], steps, amsgrad=False, lr=g["lr"],
                               beta1=b1, beta2=b2, weight_decay=0.0, eps=eps,
                               maximize=False, grad_scale=None, found_inf=None)  # fmt: skip
    elif type(opt) is torch.optim.SGD and not g["nesterov"] and not g["dampening"]:
        if not g["momentum"] or not all("momentum_buffer" in s for s in state):
            return None
        bufs, mom = [s["momentum_buffer"] for s in state], g["momentum"]

        def kernel(grads: list[Tensor]) -> None:
            torch._fused_sgd_(params, grads, bufs, weight_decay=0.0, momentum=mom,
                              lr=g["lr"], dampening=0.0, nesterov=False, maximize=False,
                              is_first_step=False, grad_scale=None, found_inf=None)  # fmt: skip
    else:
        return None
    others = [p for p in g["params"] if p.grad is None]  # frozen: no gradient

    def call() -> None:
        grads = [p.grad for p in params]
        if any(x is None for x in grads) or any(p.grad is not None for p in others):
            opt.step()
            return
        kernel(grads)

    return call


def _fused_ok(params: list[Tensor]) -> bool:
    """torch's fused Adam/SGD take floating tensors on the CPU or CUDA, all on one device."""
    devs = {p.device.type for p in params}
    return len(devs) == 1 and devs <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def _layout(perm: np.ndarray, nb: int, bs: int) -> np.ndarray:
    """``perm`` laid out in ``nb`` batches of ``bs`` slots (``-1``: padding), flattened:
    padded at the front when every batch but the first can be full (a first batch of one
    row takes one of the second's), else spread evenly (each batch gets ``len(perm) // nb``
    or one more rows, at its end).

    >>> _layout(np.arange(5), 2, 3).tolist()
    [-1, 0, 1, 2, 3, 4]
    >>> _layout(np.arange(4), 3, 3).tolist()
    [-1, -1, 0, -1, -1, 1, -1, 2, 3]
    >>> _layout(np.arange(7), 3, 3).tolist()  # not a first batch of one row
    [-1, 0, 1, -1, 2, 3, 4, 5, 6]
    """
    n = len(perm)
    if n == (nb - 1) * bs + 1 and nb > 1 and bs > 1:  # first batch of one row: two
        out = np.full((nb, bs), -1, dtype=np.int64)
        out[0, -2:], out[1, 1:], out[2:] = (
            perm[:2],
            perm[2 : bs + 1],
            perm[bs + 1 :].reshape(-1, bs),
        )
        return out.reshape(-1)
    if n > (nb - 1) * bs:
        return np.concatenate([np.full(nb * bs - n, -1), perm])
    out = np.full((nb, bs), -1, dtype=np.int64)
    sizes = [n // nb + (j >= nb - n % nb) for j in range(nb)]
    start = 0
    for j, r in enumerate(sizes):
        out[j, bs - r :] = perm[start : start + r]
        start += r
    return out.reshape(-1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trimmed(idx: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """A batch's row indices ``(M, bs)`` without the columns that are padding for every
    model (they would cost arithmetic and add nothing: one model alone trains on exactly
    its rows, as a plain loop does), and the mask of what padding remains (None: none)."""
    keep, mk = _trimmed_columns(mask)
    return (idx if keep is None else idx[:, keep]), mk


def _trimmed_columns(mask: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The columns of a batch's mask ``(M, bs)`` to keep (None: all) and the mask of the
    padding that remains in them (None: none), for :func:`_trimmed`."""
    keep = mask.any(0)
    keep[-1] = True  # (a batch of padding alone: only where chunks mix batch counts)
    if bool(keep.all()):
        keep = None
    else:
        mask = mask[:, keep]
    return keep, None if bool(mask.all()) else mask


def _per_model(rows: Tensor, mk: Tensor | None) -> Tensor:
    """Each model's mean loss over its real rows (``rows`` already zero on padding)."""
    return rows.mean(1) if mk is None else rows.sum(1) / mk.sum(1).clamp_min(1)


def _fill_missing_grads(params: list[Tensor]) -> None:
    """Zero gradients for regularized parameters the forward pass did not use."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _snapshot(epoch, live, opt, history, tracked) -> dict[str, Any]:
    """A copy of the training state after ``epoch`` (what a resume continues from);
    ``tracked`` is (best_val, best_epoch, stopped, best) of early stopping and the chunk's
    generator (its state continues the chunk's random stream)."""
    best_val, best_epoch, stopped, best, gen = tracked
    return {
        "epoch": epoch + 1,
        "params": {n: t.detach().clone() for n, t in live.items()},
        "opt": _clone_state(opt.state_dict()),
        "history": {k: [list(r) for r in v] for k, v in history.items()},
        "best_val": best_val.clone(),
        "best_epoch": best_epoch.clone(),
        "stopped": stopped.clone(),
        "best": {n: t.clone() for n, t in best.items()} if best is not None else None,
        "rng": gen.get_state(),
    }


def _map_models(v: Any, fn: Callable[[Tensor], Any], m: int) -> Any:
    """``fn`` applied to every tensor in ``v`` whose dim 0 runs over the ``m`` models (a
    scalar such as Adam's step count is shared by the chunk and kept as is)."""
    if isinstance(v, Tensor):
        return fn(v) if v.ndim and v.shape[0] == m else v
    if isinstance(v, dict):
        return {k: _map_models(x, fn, m) for k, x in v.items()}
    if isinstance(v, list):
        return [_map_models(x, fn, m) for x in v]
    return v


def split_state(snap: dict[str, Any], m: int) -> list[dict[str, Any]]:
    """A snapshot of a chunk of ``m`` models (what ``Engine.run``'s ``on_epoch`` copies) as
    ``m`` snapshots of one model each, to be repacked with :func:`join_states` (without
    the chunk's generator state: a repacked chunk draws from its own new stream)."""
    out = []
    for j in range(m):
        one = {k: _map_models(v, lambda t, j=j: t[j : j + 1].clone(), m)
               for k, v in snap.items() if k not in ("history", "rng")}  # fmt: skip
        one["history"] = {k: [[row[j]] for row in v] for k, v in snap["history"].items()}
        out.append(one)
    return out


def join_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot of a chunk from the one-model snapshots ``states`` (all after the same
    epoch, from chunks with the same batches per epoch: shared scalars agree)."""
    first = states[0]
    if any(s["epoch"] != first["epoch"] for s in states):
        raise ValueError("join_states needs snapshots taken after the same epoch")

    def join(path: list[Any]) -> Any:
        vs = [_at(s, path) for s in states]
        v = vs[0]
        if isinstance(v, Tensor):
            return torch.cat(vs) if v.ndim and v.shape[0] == 1 else v
        if isinstance(v, dict):
            return {k: join([*path, k]) for k in v}
        if isinstance(v, list):
            return [join([*path, i]) for i in range(len(v))]
        return v

    out = {k: join([k]) for k in first if k != "history"}
    out["history"] = {k: [[row[0] for row in (s["history"][k][e] for s in states)]
                          for e in range(len(v))] for k, v in first["history"].items()}  # fmt: skip
    return out


def _at(v: Any, path: list[Any]) -> Any:
    for k in path:
        v = v[k]
    return v


def _clone_state(sd: dict[str, Any]) -> dict[str, Any]:
    def clone(v):
        if isinstance(v, Tensor):
            return v.clone()
        if isinstance(v, dict):
            return {k: clone(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clone(x) for x in v]
        return v

    return clone(sd)


def _masked_mean(rows: Tensor, mask: Tensor) -> Tensor:
    cnt = mask.sum(1)
    return torch.where(cnt > 0, (rows * mask).sum(1) / cnt.clamp_min(1), float("nan"))
