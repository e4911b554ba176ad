"""The sweep engine on one device (a GPU, or the CPU): models per second against stack size,
the plan's choice, and whether ``torch.compile`` of the stacked step pays.

For each model (MLPs 10-W-W-1 on diabetes-shaped data, W = 32, 256, 1024, and a small
CNN on 8x8 images), the engine's training step is timed with M models stacked, M = 1, 2,
4, ... up to ``--max-stack`` (median of ``--steps`` steps after 3 warm-up steps; the
device is synchronized around each step): printed as model-steps per second, with the
stack size the plan (``torchpenalty.sweep.plan.choose``, from this device's calibration)
picks for 65 tasks marked. ``--compile`` also times the step compiled (``torch.compile``
of the whole hand-written step for Linear stacks, of the forward pass for other models),
and prints the compile time and the number of steps
after which compiling has paid for itself, against the steps of one default sweep (13
strengths x 5 folds, 100 epochs of ``ceil(354 / 64) = 6`` batches: 600 steps per chunk).

Run on a GPU machine: ``python benchmarks/gpu_sweep.py --compile``; on the CPU:
``python benchmarks/gpu_sweep.py --device cpu --quick``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import plan as sweep_plan
from torchpenalty.sweep.calibration import calibrate
from torchpenalty.sweep.engine import Engine, Problem, Task

STEPS_PER_SWEEP = 100 * 6


def mlp(width: int):
    return lambda: nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, 1))  # fmt: skip


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 1),
    )  # fmt: skip


def engine(make, x_shape, device, n=442, batch=64) -> Engine:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, n, *x_shape, generator=g).to(device)
    Y = torch.randn(1, n, 1, generator=g).to(device)
    pb = Problem(X, Y, torch.ones(1, 1, device=device), [np.arange(n)], [np.arange(0)], "mse")
    return Engine(make, pb, tp.L2(1e-3), epochs=1, batch_size=batch, optimizer="adam", lr=1e-2,
                  mode="grad", seed=0, early_stopping=None, device=device)  # fmt: skip


def step_seconds(eng: Engine, m: int, steps: int) -> float:
    with eng.timed_stepper([Task(0, 0, 1e-3)] * m) as step:
        for _ in range(3):
            step()
        return statistics.median(step() for _ in range(steps))


def stack_table(name, eng, sizes, steps, device):
    tasks = [Task(i, 0, 1e-3) for i in range(65)]  # 13 strengths x 5 folds
    plan = sweep_plan.choose(eng, tasks, 65)
    pick = plan.chunk_size if plan.vectorize else 1
    print(f"\n{name} on {device}: plan {plan.choice}, chunks of {plan.chunk_size} "
          f"(predicted {plan.stacked_s * 1e3:.3g} ms stacked vs {plan.single_s * 1e3:.3g} ms "
          f"one at a time per model-step)")  # fmt: skip
    for m in sorted({*sizes, pick}):
        t = step_seconds(eng, m, steps)
        mark = "  <- the plan's stack size" if m == pick else ""
        print(f"  {m:5d} stacked: {m / t:10.0f} model-steps/s ({t * 1e3:8.3f} ms per step){mark}")


def with_compiled_step(eng: Engine) -> Engine:
    """``eng`` with what its training step runs compiled: on the bmm path (Linear stacks)
    the whole hand-written step (:class:`torchpenalty.sweep.mlp.MlpStep`: forward, loss
    gradient, backward), on the vmap path the forward pass (autograd's backward follows)."""
    if eng.forward_kind != "bmm":
        eng.forward = torch.compile(eng.forward)
        return eng
    build = eng._mlp

    def compiled_mlp(live):
        step = build(live)
        return torch.compile(step.__call__)

    eng._mlp = compiled_mlp
    return eng


def compile_row(name, make, x_shape, device, m, steps):
    """Eager against compiled step (:func:`with_compiled_step`), ``m`` models stacked."""
    eager = step_seconds(engine(make, x_shape, device), m, steps)
    eng = with_compiled_step(engine(make, x_shape, device))
    t0 = time.perf_counter()
    with eng.timed_stepper([Task(0, 0, 1e-3)] * m) as step:
        step()  # compiles
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            step()
        compiled = statistics.median(step() for _ in range(steps))
    gain = eager - compiled
    pays = compile_s / gain if gain > 0 else float("inf")
    verdict = "pays" if pays < STEPS_PER_SWEEP else "does not pay"
    print(f"  {name}, {m} stacked: eager {eager * 1e3:.3f} ms, compiled {compiled * 1e3:.3f} ms "
          f"per step, compile {compile_s:.1f} s: pays after {pays:.0f} steps ({verdict} "
          f"within one default sweep's {STEPS_PER_SWEEP})")  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--max-stack", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="time the compiled step too")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    sizes = [2**j for j in range(args.max_stack.bit_length()) if 2**j <= args.max_stack]
    models = {f"MLP 10-{w}-{w}-1": (mlp(w), (10,)) for w in (32, 256, 1024)}
    models["CNN on 8x8 images"] = (cnn, (1, 8, 8))
    if args.quick:
        sizes, args.steps = [1, 4], 2  # (--compile: 4 stacked)
        models = {k: models[k] for k in ("MLP 10-32-32-1", "CNN on 8x8 images")}
    cal = calibrate(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    how = "cached" if cal["cached"] else f"measured in {cal['seconds']:.1f} s"
    print(f"torch {torch.__version__}, {name}; calibration {cal['key']} ({how})")
    for label, (make, shape) in models.items():
        stack_table(label, engine(make, shape, device), sizes, args.steps, device)
    if args.compile:
        print("\ntorch.compile of the stacked step:")
        for label, (make, shape) in models.items():
            compile_row(label, make, shape, device, 65 if not args.quick else 4, args.steps)


if __name__ == "__main__":
    main()
