"""One training step of the sweep engine against the step of a plain loop.

diabetes, MLP 10 -> W -> W -> 1, batch 64, Adam lr 1e-2 with L2 on the weights. The plain
step is what a user writes (``model(x)``, ``mse_loss``, ``zero_grad``, ``backward``,
``Adam(weight_decay=s).step()``); the engine's is ``Engine.time_steps`` for one model (the
one-at-a-time path) and for 65 stacked models (per model). Interleaved, median of
``--repeats`` x ``--steps`` steps, with ``torch.set_num_threads(1)`` and with the default.

Run: ``python benchmarks/engine_step.py`` (``--quick``: widths 32 and 256, few steps).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sklearn.datasets import load_diabetes
from torch import nn

from torchpenalty.sweep import core, run


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(10, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
    )


def plain_step_time(X, y, width, steps):
    model = mlp(width)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.Adam(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-2
    )
    times = []
    for _ in range(steps + 1):
        i = torch.randperm(len(X))[:64]
        t0 = time.perf_counter()
        loss = nn.functional.mse_loss(model(X[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--widths", default="32,256,1024")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    repeats, steps = args.repeats, args.steps
    if args.quick:
        widths, repeats, steps = [32, 256], 1, 3
    Xn, yn = load_diabetes(return_X_y=True)
    X = torch.tensor((Xn - Xn.mean(0)) / Xn.std(0), dtype=torch.float32)
    y = torch.tensor((yn - yn.mean()) / yn.std(), dtype=torch.float32)[:, None]
    default = torch.get_num_threads()
    print(f"torch {torch.__version__}; ms per step (median of {repeats} x {steps}), batch 64")
    for n in dict.fromkeys([1, default]):
        torch.set_num_threads(n)
        for w in widths:
            v = core.validate(lambda w=w: mlp(w), (Xn, yn), vectorize=True, solver="train")
            plan = run._plan(lambda w=w: mlp(w), v)
            tasks = plan.tasks[: min(65, plan.chunk_size)]
            res = {"plain": [], "one": [], "stacked": []}
            for _ in range(repeats):
                res["plain"].append(plain_step_time(X, y, w, steps))
                res["one"].append(plan.engine.time_steps(tasks[:1], steps))
                res["stacked"].append(plan.engine.time_steps(tasks, steps) / len(tasks))
            med = {k: 1e3 * statistics.median(v) for k, v in res.items()}
            print(f"  [{n} thread(s)] width {w:5d}: plain loop {med['plain']:8.3f}  engine, one "
                  f"model {med['one']:8.3f} ({med['plain'] / med['one']:4.2f}x the loop's "
                  f"speed)  stacked, per model {med['stacked']:8.3f} ({len(tasks)} models, "
                  f"{med['plain'] / med['stacked']:5.2f}x)")  # fmt: skip
    torch.set_num_threads(default)


if __name__ == "__main__":
    main()
