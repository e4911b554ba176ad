"""``tp.sweep``: cross-validated strength selection, all models trained at once.

The sweep runs in four steps, each a function: :func:`validate` (every argument checked
once, from :data:`PARAMETER_CONSTRAINTS` and the data), ``_plan`` (folds, the engine, the
(strength, fold) tasks and their chunks), ``_run_chunks`` (train chunk after chunk, keeping
finished models keyed by (strength, fold)) and ``_finish`` (the result and its refit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..distributed import world
from ..penalties import Penalty
from . import closed_form, path
from .engine import Record
from .result import SweepResult
from .run import (
    SweepInterrupted,
    _finish,
    _folds,
    _gather,
    _plan,
    _restore,
    _run_chunks,
    held_out_scores,
)
from .validate import _DEFAULTS, PARAMETER_CONSTRAINTS, check_device, default_strengths, validate

__all__ = [
    "PARAMETER_CONSTRAINTS",
    "SweepInterrupted",
    "check_device",
    "default_strengths",
    "held_out_scores",
    "sweep",
    "validate",
]


def sweep(
    make_model: Callable[[], nn.Module],
    data: tuple[Any, Any],
    *,
    strengths: Sequence[float] | None = None,
    penalty: str | Penalty | dict = "l2",
    loss: str | None = None,
    folds: int = 5,
    epochs: int = 100,
    batch_size: int | None = 64,
    optimizer: str = "adam",
    lr: float = 1e-2,
    mode: str | None = None,
    vectorize: bool | str = "auto",
    solver: str = "auto",
    seed: int = 0,
    progress: bool = True,
    early_stopping: int | None = None,
    standardize: bool = True,
    refit: str | bool = "best",
    max_memory_mb: float = 2048.0,
    resume: dict[str, Any] | None = None,
    forward: str = "auto",
    device: str | torch.device = "cpu",
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    groups: Any = None,
    test: tuple[Any, Any] | None = None,
    read_threads: int = 0,
    halving: bool = False,
    executor: Any = None,
    per_target: bool = False,
) -> SweepResult:
    """Cross-validate the penalty strength: train one model per (strength, fold), all at
    once, and pick the strength.

    Args:
        make_model: returns a fresh ``nn.Module``. Each fold's models start from the same
            initialization (seeded by ``seed`` and the fold) whatever the strength, so
            strengths are compared on equal terms. Parameters with ``requires_grad=False``
            stay frozen.
        data: ``(X, y)``: ``X`` of shape ``(n, d)`` (tabular) or rows of any shape
            ``(n, ...)`` (images ``(n, C, H, W)``, sequences, integer token ids); ``y`` of
            shape ``(n,)`` or ``(n, k)`` (regression) or class labels (numbers, text or
            booleans). Float X goes to the model as float32; integer X as float32 when the
            model accepts it, else as int64 (token ids for ``nn.Embedding``). Or a map-style
            ``torch.utils.data.Dataset`` of ``(x, y)`` pairs: stacked into ``(X, y)`` when
            ``len(dataset)`` times the bytes of its first item fits ``max_memory_mb``, else
            streamed: every model reads its rows from the Dataset batch by batch (its
            ``__getitems__`` when it has one, else ``dataset[i]``), never all of ``X``,
            with the same folds, statistics and numbers as stacked (up to float rounding);
            ``y`` is read once and kept. ``result.settings["data"]`` is then
            ``"streamed"`` (and ``"data_mb"`` the size it would have taken); the closed
            form reads it once for per-fold scatter matrices instead of an SVD. See
            :mod:`torchpenalty.sweep.stream`.
        strengths: the grid (default :func:`default_strengths`: 1e-5 .. 10, 13 values).
        penalty: ``"l2"``, ``"l1"``, ``"elastic_net"``, ``"group_lasso"`` or such a
            penalty object (its strength is ignored) applied by the default parameter rule.
        loss: ``"mse"``, ``"cross_entropy"`` (folds are then stratified), ``"huber"``
            (robust regression, ``delta = 1`` in the target's units; the target is then
            not standardized) or any loss registered in :mod:`torchpenalty.sweep.losses`, or ``None``
            (default): inferred as the command line does, classification for text,
            boolean or at most 10 distinct integer labels; recorded as ``result.loss``.
            ``loss="mse"`` on such labels warns. Or a callable ``(output, target) -> mean
            loss`` (e.g. ``torch.nn.functional.huber_loss``), applied to each row alone with
            ``torch.func.vmap``; it sees ``y`` as given (integers as int64, floats as
            float32, never standardized), folds are plain K-fold (stratified only for
            ``"cross_entropy"``), ``result.loss`` is its ``module.qualname`` and
            ``result.predict`` returns the model's raw outputs.
        folds: K of K-fold cross-validation (shuffled with ``seed``), or ``"loo"``: exact
            leave-one-out for the ridge closed form (one ``nn.Linear``, ``penalty="l2"``,
            ``loss="mse"``), all strengths from one decomposition, equal to scikit-learn's
            ``RidgeCV(alphas=s * (n - 1) / 2)`` on ``X`` standardized with all rows'
            statistics (:func:`~torchpenalty.sweep.closed_form.loo_table`); ``ValueError``
            where it cannot apply.
        per_target: multi-output ridge (the closed form) with one strength per output:
            output ``j`` is solved as the single-output problem of its column
            (``Ridge(alpha=s * n_train / 2)`` on it alone, the strength ``tp.sweep`` on
            ``(X, y[:, j])`` would report), with K folds or ``folds="loo"``
            (``RidgeCV(alpha_per_target=True)``). ``best_strength``, ``strength_1se`` and
            ``chosen_strength`` are then lists (one per output); ``table`` rows add
            ``val_loss_mean_per_target`` / ``val_loss_se_per_target`` and their
            ``val_loss_mean`` is the mean over outputs; ``model`` (and
            ``result.refit(which)``) solves each output at its own strength. ``ValueError``
            naming ``per_target`` where the closed form does not apply.
        epochs, batch_size, optimizer, lr: training (``batch_size=None``: full batch;
            ``optimizer`` ``"adam"`` or ``"sgd"`` with momentum 0.9). Mini-batches are where
            vectorizing pays most: the sequential loop is bound by per-step overhead.
        mode: how the penalty is applied: ``"grad"``, ``"decoupled"`` or ``"proximal"``;
            default ``"proximal"`` for L1, elastic net and group lasso (exact zeros) and
            ``"grad"`` for L2.
        vectorize: ``True``: train the models stacked, as one batched computation;
            ``False``: one model at a time through the same code (same numbers up to float
            rounding); ``"auto"`` (default): stacked in chunks, or one at a time, as a cost
            model of the work predicts faster on this device
            (:func:`torchpenalty.sweep.plan.choose`, calibrated once per device and cached:
            the plan does not depend on the moment's load); the plan, its predicted
            seconds and its reasons are in ``result.settings["vectorize_plan"]``.
        solver: ``"auto"`` (default): exact where it can be -- a model that is one
            ``nn.Linear`` with ``penalty="l2"``, ``loss="mse"`` (``mode="grad"``, no early
            stopping) is solved in closed form per fold
            (:mod:`torchpenalty.sweep.closed_form`, equal to scikit-learn's ``Ridge`` with
            ``alpha = s * n_train / 2``), anything else is trained; ``"closed_form"``
            insists (``ValueError`` if it does not apply). Likewise a model that is one
            ``nn.Linear`` with ``"l1"``, ``"elastic_net"``, ``"group_lasso"`` or ``"l2"``
            under ``"mse"`` or ``"cross_entropy"`` (``mode`` ``"grad"`` or ``"proximal"``)
            is solved along the grid to a stated KKT tolerance
            (:mod:`torchpenalty.sweep.path`, equal to scikit-learn's ``Lasso``,
            ``ElasticNet`` and ``LogisticRegression``); ``"path"`` insists on that solver;
            ``"train"`` always trains.
        seed: an integer in [0, 2**32 - 1] for the folds, initializations and batches.
        early_stopping: patience in epochs; each model keeps its parameters from its best
            validation epoch. ``None`` trains every model for ``epochs``.
        standardize: standardize ``X`` (and ``"mse"`` targets) with statistics of each
            training fold only; losses are reported in the data's units. Only tabular
            features (2-D ``X`` taken as floats) are standardized: images and token ids
            pass through whatever this says.
        refit: ``"best"``, ``"1se"`` or ``False``: retrain on all the data at
            ``best_strength`` / ``strength_1se``; ``result.model`` then takes raw ``X``.
        max_memory_mb: models are trained in chunks that fit this budget; a Dataset larger
            than it is streamed (see ``data``).
        resume: the ``state`` of a :class:`SweepInterrupted` to continue from; it is
            checked against these arguments and the data (a content hash).
        device: where the models train (``"cpu"`` or ``"cuda"``); ``result.model`` comes
            back on the CPU.
        forward: ``"bmm"`` (hand-batched ``baddbmm``, for ``nn.Sequential`` of ``nn.Linear``
            and elementwise activations), ``"vmap"`` (``torch.func.vmap`` of
            ``functional_call``, any module) or ``"auto"`` (``bmm`` where it applies).
        on_chunk: called with the sweep's ``state`` before the first chunk and after each
            finished chunk (the command line saves its checkpoint there).
        groups: one group label per row (repeated measures): every group's rows stay in
            one fold (:func:`~torchpenalty.sweep.folds.group_kfold`).
        read_threads: threads reading a Dataset's items (``data`` a Dataset): ``0``
            (default) reads in the training thread; ``N > 1`` splits each request into N
            slices read at once (for a ``__getitem__`` that waits on files or decodes
            images; the Dataset must allow reads from several threads). The same items in
            the same order: the numbers do not change.
        test: a held-out ``(X_test, y_test)`` scored with the refit model after the sweep:
            ``result.test`` is ``{"rows", "loss"[, "accuracy"]}`` in the units of the CV
            table (see :func:`held_out_scores`).

        halving: successive halving (:mod:`torchpenalty.sweep.halving`): at rungs of 10%,
            20%, 40%, ... of the epochs, strengths whose mean validation loss is more than
            3 standard errors (of the best's mean) above the best, or diverged, stop
            training; the rest are repacked and go on. ``table`` rows get
            ``stopped_epoch`` (None: trained to the end); stopped strengths are never
            chosen. ``result.settings["model_epochs"]`` counts the epochs trained. Off by
            default.
        executor: a ``concurrent.futures``-style executor (``submit(fn, *args) ->
            future``): a ``ProcessPoolExecutor`` that does not fork, Dask's
            ``client.get_executor()``, submitit's executor, ... Each chunk of stacked models
            is one submitted job (:mod:`torchpenalty.sweep.executors`); ``make_model`` must
            then be picklable (a top-level function of an importable module). A chunk
            whose worker dies is submitted once more; if it fails again,
            :class:`~torchpenalty.sweep.executors.SweepIncomplete` carries the state to
            ``resume=``. With ``halving``, every rung's chunks go to the executor (the
            one-model training states travel with them). Not under torchrun.

    Every argument is checked first by :func:`validate`: a bad one raises ``TypeError`` or
    ``ValueError`` naming it, before any training.

    Returns:
        :class:`SweepResult` with ``table``, ``best_strength``, ``strength_1se``, ``model``.

    >>> import torch, torchpenalty as tp
    >>> X = torch.randn(60, 3); y = X @ torch.tensor([1.0, 0.0, -2.0]) + 0.1 * torch.randn(60)
    >>> r = tp.sweep(lambda: torch.nn.Linear(3, 1), (X, y), strengths=[1e-3, 1e-1, 10.0],
    ...              folds=3, epochs=50, lr=0.1, progress=False)
    >>> r.best_strength < 10.0, r.loss
    (True, 'mse')
    """
    options = {k: v for k, v in locals().items() if k in _DEFAULTS}
    v = validate(make_model, data, **options)
    if not v.tabular and v.options["solver"] == "closed_form":
        raise ValueError("solver='closed_form' needs 2-D float features X (rows, features)")
    if v.options["folds"] == "loo":
        result = closed_form.sweep_loo(make_model, v)
    elif v.options["per_target"]:
        o = v.options
        splits, _, _ = _folds(v.y, v.loss, o["folds"], o["seed"], v.groups)
        result = closed_form.sweep_per_target(make_model, v, splits[:-1])
    elif v.tabular and closed_form.chooses_closed_form(make_model, v):
        o = v.options
        splits, _, _ = _folds(v.y, v.loss, o["folds"], o["seed"], v.groups)
        result = closed_form.sweep_closed_form(make_model, v, splits[:-1])
    elif path.chooses_path(make_model, v):
        o = v.options
        splits, _, _ = _folds(v.y, v.loss, o["folds"], o["seed"], v.groups)
        result = path.sweep_path(make_model, v, splits[:-1])
    else:
        if v.options["executor"] is not None and world()[1] > 1:
            raise ValueError("executor runs a sweep outside torchrun (its workers take the "
                             f"ranks' place); got an executor under world size {world()[1]}")  # fmt: skip
        if v.options["halving"] and world()[1] > 1:  # ranks would exchange states each rung
            raise ValueError("halving=True is not supported under torchrun (world size "
                             f"{world()[1]}): run it in one process, or across machines with "
                             "executor= (every rung's chunks go to the executor's workers)")  # fmt: skip
        plan = _plan(make_model, v)
        done: dict[tuple[int, int], Record] = {}
        snap = None
        if v.options["resume"] is not None:
            done, snap = _restore(plan, v.options["resume"])
        _run_chunks(plan, done, snap, v.options["progress"], v.options["on_chunk"])
        if world()[1] > 1:
            _gather(done)
        result = _finish(plan, done, v.options["refit"])
    if v.test is not None and result.model is None:  # every strength diverged (#18)
        result.test = {"rows": len(v.test[0]), "loss": None,
                       "missing": "not scored: every strength diverged, no refit model"}  # fmt: skip
    elif v.test is not None:
        result.test = held_out_scores(result, *v.test, loss=v.loss if callable(v.loss) else None)
    return result
