"""How fast is ``tp.sweep`` against what a user would write instead?

One run, the same setting for everyone: scikit-learn's diabetes data (442 rows, 10
features), an MLP 10 -> W -> W -> 1 (W = 32, then 256 and 1024), 13 strengths x 5 folds,
Adam (lr 1e-2), mini-batches of 64, 100 epochs, L2 on the weights (not the biases), the
best strength by mean validation MSE, and the refit on all rows at that strength. Timed
contenders, interleaved (one repetition of each, then the next), median of ``--repeats``:

- ``tp.sweep``: the library's default (``vectorize="auto"``: the cost-model plan, whose
  calibration is measured once before any timing, as a user's first sweep on a machine
  caches it);
- ``tp.sweep`` forced: ``vectorize=True`` (every model stacked, chunks of the memory
  budget) and ``vectorize=False`` (one at a time): the default should be within 1.25x of
  the better of the two;
- plain loop: a loop over strengths and folds, one model at a time, written as a user
  would (StandardScaler, ``torch.randperm`` mini-batches, ``Adam(weight_decay=s)`` on the
  weights) -- not our own ``vectorize=False`` path;
- torch.func recipe, the strongest a user would write: all (strength, fold) models stacked
  at once with ``torch.func.stack_module_state`` and run with ``vmap(functional_call)``,
  each model reading its own fold's mini-batch (folds standardized on their own training
  rows), one Adam over the stacked parameters (equal to one Adam per model: Adam is
  elementwise), the L2 term in the loss;
- skorch + GridSearchCV (when skorch is installed): ``NeuralNetRegressor`` in a pipeline
  after ``StandardScaler``, ``optimizer__weight_decay`` on the grid (timed once unless
  ``--skorch-repeats`` says otherwise: it is the slowest by far).

Widths 256 and 1024 are compared with the plain loop and the forced plans, for
``--wide-epochs`` epochs (default 10: the per-epoch cost is what scales); the digits CNN
(8x8 images, conv 8 -> pool -> conv 16 -> pool -> linear, cross-entropy) likewise for
``--cnn-epochs``. Cost follows work: the default ``tp.sweep`` at width 32 with
``--grid-sizes`` strengths (default 5, 13 and 40, log-spaced over the default range),
seconds per trained model (folds x strengths, plus the refit) should not grow with the
grid. ``--load N`` starts N busy processes for the whole run (a loaded
machine); ``--threads`` picks the thread counts. Printed: seconds (median) and each
contender's time divided by ``tp.sweep``'s (> 1 means ``tp.sweep`` is faster). The last
table times the closed form (``solver="closed_form"``) against training a linear model.

Run: ``python benchmarks/sweep_speed.py`` (``--quick`` for a smoke run of a few seconds).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import core as _core
from torchpenalty.sweep import default_strengths

SWEEP_PARAMS = inspect.signature(_core.sweep).parameters


def mlp(d: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
    )


# ---------------------------------------------------------------------------- contenders
def run_tp(X, y, cfg, vectorize="auto"):
    kw = {}
    if "vectorize" in SWEEP_PARAMS:
        kw["vectorize"] = vectorize
    make = cfg.get("make") or (lambda: mlp(X.shape[1], cfg["width"]))
    r = tp.sweep(
        make,
        (X, y),
        strengths=cfg["strengths"],
        folds=cfg["folds"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch"],
        lr=cfg["lr"],
        seed=0,
        progress=False,
        refit="best",
        **kw,
    )
    plan = r.settings.get("vectorize_plan")
    how = plan and f"{plan['choice']}, chunks of {r.settings['chunk_size']}"
    return r.best_strength, how


def run_tp_stacked(X, y, cfg):
    return run_tp(X, y, cfg, vectorize=True)


def run_tp_single(X, y, cfg):
    return run_tp(X, y, cfg, vectorize=False)


def _scaled(X, y, tr):
    sx, sy = StandardScaler().fit(X[tr]), StandardScaler().fit(y[tr, None])
    return (
        torch.tensor(sx.transform(X), dtype=torch.float32),
        torch.tensor(sy.transform(y[:, None]), dtype=torch.float32),
        float(sy.scale_[0]),
    )


def _train_one(model, Xt, Yt, s, cfg, loss=nn.functional.mse_loss):
    """The loop a user writes: Adam with weight decay on the weights, shuffled batches."""
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.Adam(
        [{"params": decay, "weight_decay": s}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg["lr"],
    )
    n = len(Xt)
    for _ in range(cfg["epochs"]):
        perm = torch.randperm(n)
        for b in range(0, n, cfg["batch"]):
            i = perm[b : b + cfg["batch"]]
            value = loss(model(Xt[i]), Yt[i])
            opt.zero_grad()
            value.backward()
            opt.step()
    return model


def run_loop(X, y, cfg):
    torch.manual_seed(0)
    splits = list(KFold(cfg["folds"], shuffle=True, random_state=0).split(X))
    scores = []
    for s in cfg["strengths"]:
        fold_mse = []
        for tr, va in splits:
            Xs, Ys, scale = _scaled(X, y, tr)
            model = _train_one(mlp(X.shape[1], cfg["width"]), Xs[tr], Ys[tr], s, cfg)
            with torch.no_grad():
                fold_mse.append(float(((model(Xs[va]) - Ys[va]) * scale).pow(2).mean()))
        scores.append(np.mean(fold_mse))
    best = cfg["strengths"][int(np.argmin(scores))]
    Xs, Ys, _ = _scaled(X, y, np.arange(len(X)))
    _train_one(mlp(X.shape[1], cfg["width"]), Xs, Ys, best, cfg)  # refit
    return best, None


def run_func(X, y, cfg):
    """The torch.func model-ensembling recipe, all (strength, fold) models at once: stacked
    with ``stack_module_state``, ``vmap(functional_call)`` over models, each model on its
    own fold's mini-batch, one Adam over the stacked parameters, L2 in the loss."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    splits = list(KFold(cfg["folds"], shuffle=True, random_state=0).split(X))
    k = len(splits)
    scaled = [_scaled(X, y, tr) for tr, _ in splits]
    Xf = torch.stack([a for a, _, _ in scaled])  # (folds, rows, features)
    Yf = torch.stack([b for _, b, _ in scaled])
    scale = torch.tensor([c for _, _, c in scaled])
    m = len(cfg["strengths"]) * k  # model j: strength j // k, fold j % k
    fold = torch.arange(m) % k
    s = torch.tensor(cfg["strengths"], dtype=torch.float32).repeat_interleave(k)
    params, buffers = stack_module_state([mlp(X.shape[1], cfg["width"]) for _ in range(m)])
    base = mlp(X.shape[1], cfg["width"]).to("meta")

    def fmodel(p, b, x):
        return functional_call(base, (p, b), (x,))

    ensemble = vmap(fmodel)
    weights = [w for n, w in params.items() if n.endswith("weight")]
    opt = torch.optim.Adam(list(params.values()), lr=cfg["lr"])
    train = [torch.as_tensor(tr) for tr, _ in splits]
    n = min(len(t) for t in train)  # equal batches for every fold (drops <= 1 row per epoch)
    for _ in range(cfg["epochs"]):
        rows = torch.stack([t[torch.randperm(len(t))[:n]] for t in train])[fold]  # (m, n)
        for b in range(0, n, cfg["batch"]):
            i = rows[:, b : b + cfg["batch"]]
            out = ensemble(params, buffers, Xf[fold[:, None], i])  # (models, batch, 1)
            data = (out - Yf[fold[:, None], i]).pow(2).mean((1, 2))
            l2 = sum(w.pow(2).sum((1, 2)) for w in weights)
            opt.zero_grad()
            (data + s / 2 * l2).sum().backward()
            opt.step()
    scores = torch.zeros(len(cfg["strengths"]))
    with torch.no_grad():
        for f, (_, va) in enumerate(splits):
            sel = fold == f
            out = vmap(fmodel, in_dims=(0, 0, None))(
                {n_: p[sel] for n_, p in params.items()}, {}, Xf[f, va]
            )
            scores += ((out - Yf[f, va]) * scale[f]).pow(2).mean((1, 2)) / k
    best = cfg["strengths"][int(scores.argmin())]
    Xs, Ys, _ = _scaled(X, y, np.arange(len(X)))
    _train_one(mlp(X.shape[1], cfg["width"]), Xs, Ys, best, cfg)  # refit
    return best, None


def run_skorch(X, y, cfg):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from skorch import NeuralNetRegressor

    net = NeuralNetRegressor(
        _SkorchMLP,
        module__d=X.shape[1],
        module__width=cfg["width"],
        optimizer=torch.optim.Adam,
        lr=cfg["lr"],
        max_epochs=cfg["epochs"],
        batch_size=cfg["batch"],
        train_split=None,
        verbose=0,
    )
    pipe = make_pipeline(StandardScaler(), net)
    grid = GridSearchCV(
        pipe,
        {"neuralnetregressor__optimizer__weight_decay": list(cfg["strengths"])},
        cv=KFold(cfg["folds"], shuffle=True, random_state=0),
        scoring="neg_mean_squared_error",
        refit=True,
    )
    ys = (y - y.mean()) / y.std()
    grid.fit(X.astype(np.float32), ys.astype(np.float32)[:, None])
    return grid.best_params_["neuralnetregressor__optimizer__weight_decay"], None


class _SkorchMLP(nn.Module):
    def __init__(self, d: int = 10, width: int = 32) -> None:
        super().__init__()
        self.net = mlp(d, width)

    def forward(self, x):
        return self.net(x)


def run_closed(X, y, cfg):
    r = tp.sweep(
        lambda: nn.Linear(X.shape[1], 1),
        (X, y),
        strengths=cfg["strengths"],
        folds=cfg["folds"],
        progress=False,
        solver="closed_form",
    )
    return r.best_strength, None


def run_linear_train(X, y, cfg):
    kw = {"solver": "train"} if "solver" in SWEEP_PARAMS else {}
    r = tp.sweep(
        lambda: nn.Linear(X.shape[1], 1),
        (X, y),
        strengths=cfg["strengths"],
        folds=cfg["folds"],
        epochs=cfg["epochs"],
        batch_size=None,
        lr=0.1,
        progress=False,
        **kw,
    )
    return r.best_strength, None


# ---------------------------------------------------------------------------- timing
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def race(contenders, X, y, cfg, repeats, once=()):
    """Median seconds of each contender, run interleaved; and the best strength each chose.
    Contenders named in ``once`` run in the first repetition only (the slowest ones).
    Seconds by ``clock``: wall time, or with ``--clock cpu`` this process's CPU time (with
    one thread, what the work costs whatever else the machine runs)."""
    times = {name: [] for name in contenders}
    chosen = {}
    for rep in range(repeats):
        for name, fn in contenders.items():
            if rep and name in once:
                continue
            t0 = clock()
            chosen[name] = fn(X, y, cfg)
            times[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, chosen


def table(title, med, chosen, ref="tp.sweep"):
    print(f"\n{title}")
    for name, t in med.items():
        best, choice = chosen[name]
        extra = f"  ({choice})" if choice else ""
        ratio = t / med[ref]
        print(f"  {name:34s} {t:8.3f} s   {ratio:7.2f}x tp.sweep's time   best {best:g}{extra}")


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    )  # fmt: skip


def run_cnn_loop(X, y, cfg):
    """The plain loop for the digits CNN: one model per (strength, fold), Adam with weight
    decay on the weights, shuffled batches, cross-entropy."""
    from sklearn.model_selection import StratifiedKFold

    torch.manual_seed(0)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    splits = list(StratifiedKFold(cfg["folds"], shuffle=True, random_state=0).split(X, y))
    scores = []
    for s in cfg["strengths"]:
        losses = []
        for tr, va in splits:
            model = _train_one(cnn(), Xt[tr], yt[tr], s, cfg, loss=nn.functional.cross_entropy)
            with torch.no_grad():
                losses.append(float(nn.functional.cross_entropy(model(Xt[va]), yt[va])))
        scores.append(np.mean(losses))
    best = cfg["strengths"][int(np.argmin(scores))]
    _train_one(cnn(), Xt, yt, best, cfg, loss=nn.functional.cross_entropy)  # refit
    return best, None


def run_cnn_tp(X, y, cfg, vectorize="auto"):
    return run_tp(X, y, dict(cfg, make=cnn), vectorize)


def busy(n: int) -> list:
    """``n`` processes that keep a core busy each (a loaded machine), until killed."""
    import subprocess
    import sys

    code = "while True:\n    pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def _contenders(skorch_ok: bool, args) -> dict:
    out = {
        "tp.sweep": run_tp,
        "tp.sweep vectorize=True": run_tp_stacked,
        "tp.sweep vectorize=False": run_tp_single,
        "plain loop": run_loop,
        "torch.func recipe (all models, vmap)": run_func,
    }
    if skorch_ok and not args.no_skorch:
        out["skorch + GridSearchCV"] = run_skorch
    return out


def _tables(cfg, widths, repeats, args, skorch_ok, tag, out):
    """The tables of one thread setting: width 32 (every contender), wide MLPs and the
    digits CNN (the library's plans and the plain loop), the closed form."""
    X, y = load_diabetes(return_X_y=True)
    if not args.only_wide:
        once = () if args.skorch_repeats > 1 else ("skorch + GridSearchCV",)
        med, chosen = race(_contenders(skorch_ok, args), X, y, cfg, repeats, once)
        table(f"[{tag}] MLP 10-32-32-1, {cfg['epochs']} epochs", med, chosen)
        out[(tag, 32)] = med
        if args.grid_sizes:
            out[(tag, "grid")] = _grid_table(X, y, cfg, args.grid_sizes, repeats, tag)
    pair = {"tp.sweep": run_tp, "tp.sweep vectorize=True": run_tp_stacked,
            "tp.sweep vectorize=False": run_tp_single, "plain loop": run_loop}  # fmt: skip
    for w in widths:
        wcfg = dict(cfg, width=w, epochs=args.wide_epochs)
        med, chosen = race(pair, X, y, wcfg, repeats)
        table(f"[{tag}] MLP 10-{w}-{w}-1, {wcfg['epochs']} epochs", med, chosen)
        out[(tag, w)] = med
    if args.cnn_epochs:
        from sklearn.datasets import load_digits

        Xg, yg = load_digits(return_X_y=True)
        images = (Xg / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
        ccfg = dict(cfg, epochs=args.cnn_epochs)
        quad = {"tp.sweep": run_cnn_tp,
                "tp.sweep vectorize=True": lambda X, y, c: run_cnn_tp(X, y, c, True),
                "tp.sweep vectorize=False": lambda X, y, c: run_cnn_tp(X, y, c, False),
                "plain loop": run_cnn_loop}  # fmt: skip
        med, chosen = race(quad, images, yg, ccfg, repeats)
        table(f"[{tag}] digits CNN, {ccfg['epochs']} epochs", med, chosen)
        out[(tag, "cnn")] = med
    if "solver" in SWEEP_PARAMS and not args.no_linear:
        lcfg = dict(cfg, epochs=20 if args.quick else 1000)
        lin = {"tp.sweep": run_closed, f"trained ({lcfg['epochs']} full-batch epochs)":
               run_linear_train}  # fmt: skip
        med, chosen = race(lin, X, y, lcfg, repeats)
        table(f"[{tag}] linear model, L2, MSE: closed form vs training", med, chosen)
        out[(tag, "linear")] = med


def _grid_table(X, y, cfg, sizes, repeats, tag):
    """The default sweep at width 32 on grids of ``sizes`` strengths, interleaved:
    seconds per trained model (strengths x folds + the refit) should not grow."""
    grids = {n: [float(v) for v in np.logspace(-5, 1, n)] for n in sizes}
    runs = {f"{n} strengths": lambda X, y, c, g=g: run_tp(X, y, dict(c, strengths=g))
            for n, g in grids.items()}  # fmt: skip
    med, chosen = race(runs, X, y, cfg, repeats)
    print(f"\n[{tag}] cost follows work: MLP 10-32-32-1, {cfg['epochs']} epochs, default plan")
    per = {}
    for (name, t), n in zip(med.items(), sizes):
        models = n * cfg["folds"] + 1
        per[n] = t / models
        _, how = chosen[name]
        print(
            f"  {name:14s} {models:4d} models {t:8.3f} s  {1e3 * per[n]:7.2f} ms per model  ({how})"
        )
    return per


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny grid, 2 epochs")
    ap.add_argument("--repeats", type=int, default=3, help="timings per contender (median)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--wide-epochs", type=int, default=10, help="epochs at widths 256, 1024")
    ap.add_argument("--cnn-epochs", type=int, default=10, help="digits CNN epochs (0: none)")
    ap.add_argument("--widths", default="256,1024", help="wide MLPs against the plain loop")
    ap.add_argument("--no-skorch", action="store_true", help="leave skorch out (slow)")
    ap.add_argument("--skorch-repeats", type=int, default=1, help="skorch runs (1 or repeats)")
    ap.add_argument("--only-wide", action="store_true", help="only the wide MLPs and the CNN")
    ap.add_argument("--no-linear", action="store_true", help="leave out the closed-form table")
    ap.add_argument(
        "--grid-sizes",
        default="5,13,40",
        help="strength counts for the cost-follows-work table ('': none)",
    )
    ap.add_argument("--threads", default="1,default", help="thread settings to time")
    ap.add_argument("--load", type=int, default=0, help="busy processes during the run")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall time (default) or this process's CPU time (one thread)")  # fmt: skip
    args = ap.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    cfg = dict(width=32, strengths=default_strengths(), folds=5, epochs=args.epochs,
               batch=64, lr=1e-2)  # fmt: skip
    widths = [int(w) for w in args.widths.split(",") if w]
    args.grid_sizes = [int(n) for n in args.grid_sizes.split(",") if n]
    repeats = args.repeats
    if args.quick:
        cfg.update(strengths=[1e-3, 1e-1, 10.0], folds=3, epochs=2)
        widths, repeats, args.wide_epochs, args.cnn_epochs = [256], 1, 1, 1
        args.grid_sizes = [2, 4]
        args.threads = "1"
    try:
        import skorch  # noqa: F401

        skorch_ok = True
    except ImportError:
        skorch_ok = False
        print("note: skorch is not installed; its row is skipped (pip install skorch)")
    default_threads = torch.get_num_threads()
    counts = [default_threads if th == "default" else int(th) for th in args.threads.split(",")]
    print(f"torch {torch.__version__}; {len(cfg['strengths'])} strengths x {cfg['folds']} "
          f"folds, Adam lr {cfg['lr']}, batch {cfg['batch']}, refit included; median of "
          f"{repeats}; {args.load} busy processes; {args.clock} clock")  # fmt: skip
    procs = busy(args.load)
    try:
        out = {}
        for n in dict.fromkeys(counts):  # in order, without repeats
            torch.set_num_threads(n)
            _warm_up(cfg)
            _tables(cfg, widths, repeats, args, skorch_ok, f"{n} thread{'s' * (n > 1)}", out)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        torch.set_num_threads(default_threads)
    return out


def _warm_up(cfg):
    """torch's one-time costs and the plan's calibration for this thread count (a user's
    first sweep on a machine measures and caches it), outside every timing."""
    from torchpenalty.sweep.calibration import calibrate

    X, y = load_diabetes(return_X_y=True)
    calibrate("cpu")
    small = dict(cfg, strengths=cfg["strengths"][:2], epochs=1)
    run_tp(X, y, small)
    run_func(X, y, small)
    images = torch.zeros(40, 1, 8, 8)
    run_cnn_tp(images, np.arange(40) % 4, small)  # vmap's first use


if __name__ == "__main__":
    main()
