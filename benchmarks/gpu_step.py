"""GPU step cost of each attached mode against the unregularized fused-AdamW step.

For an MLP (~25M parameters by default, batch 64) on one CUDA device it times a full
training step (forward, MSE, backward, ``opt.step()``) with ``AdamW(weight_decay=0)`` and a
tensor lr for:

* ``none``: no regularization: the baseline;
* ``reg() in loss`` and ``attach <mode>`` for grad, decoupled, independent, corrected,
  cautious (decoupled, ``cautious=True``) and proximal (all ``L2(1e-4)``, the strength a
  ``tp.schedules.Linear`` ramp, read live);
* ``fuse decoupled``: ``attach(mode="decoupled", fuse=True)``: AdamW's own weight_decay
  (a constant strength: a fused schedule is written on the host and cannot be captured).

three ways, each as ratios to the unregularized step run the same way:

* ``eager``: ``AdamW(fused=True)``;
* ``compiled``: ``torch.compile`` of the whole step (``--compiled-optimizer``: the AdamW
  implementation inside it, ``foreach`` by default, torch's compiled-optimizer recipe);
* ``graph``: the step captured in a CUDA graph after 3 warm-up steps on a side stream
  (``AdamW(fused=True, capturable=True)``) and replayed; ``reg.check_capturable`` is
  asserted first.

Variants are interleaved round by round; each round times ``--steps`` steps between CUDA
events; the median over ``--rounds`` rounds is reported.

Run: ``python benchmarks/gpu_step.py`` (``--quick``: a small MLP, few rounds). Without a
CUDA device it prints why on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys

import torch
from torch import nn

import torchpenalty as tp

S = 1e-4
VARIANTS = {  # name -> (mode, attach options); None: no attach
    "none": None,
    "reg() in loss": None,
    "attach grad": ("grad", {}),
    "attach decoupled": ("decoupled", {}),
    "attach independent": ("independent", {}),
    "attach corrected": ("corrected", {}),
    "attach cautious": ("decoupled", {"cautious": True}),
    "attach proximal": ("proximal", {}),
    "fuse decoupled": ("decoupled", {"fuse": True}),
}
HOWS = ("eager", "compiled", "graph")


def mlp(sizes):
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def optimizer(model, how, compiled_opt):
    lr = torch.tensor(1e-3, device="cuda")
    if how == "eager":
        kw = {"fused": True}
    elif how == "graph":
        kw = {"fused": True, "capturable": True}
    else:
        kw = {"fused": True} if compiled_opt == "fused" else {"foreach": True, "capturable": True}
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, **kw)


def build(variant, how, sizes, batch, compiled_opt="foreach"):
    """A callable running one step of ``variant`` the ``how`` way."""
    torch.manual_seed(0)
    model = mlp(sizes).cuda()
    x = torch.randn(batch, sizes[0], device="cuda")
    y = torch.randn(batch, sizes[-1], device="cuda")
    opt = optimizer(model, how, compiled_opt)
    fused = variant.startswith("fuse")  # a constant: weight_decay is a host float
    reg = tp.Regularizer(model, tp.L2(S if fused else tp.schedules.Linear(0.0, S, steps=1000)))
    if VARIANTS[variant] is not None:
        mode, options = VARIANTS[variant]
        reg.attach(opt, mode=mode, **options)
    elif variant == "reg() in loss":
        reg.attach(opt, mode="loss")  # advances the schedule

    def step():
        loss = nn.functional.mse_loss(model(x), y)
        if variant == "reg() in loss":
            loss = loss + reg()
        loss.backward()
        opt.step()

    if how == "graph":
        reg.check_capturable(opt)
        return capture(step, opt)
    if how == "compiled":
        step = torch.compile(step)

    def eager_step():
        opt.zero_grad(set_to_none=True)
        step()

    return eager_step


def capture(step, opt):
    """torch's recipe: warm up on a side stream, capture one step, replay it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def time_round(fn, steps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps  # ms per step


def time_how(how, sizes, batch, rounds, steps, compiled_opt):
    fns = {v: build(v, how, sizes, batch, compiled_opt) for v in VARIANTS}
    for fn in fns.values():  # warm-up (compiles)
        time_round(fn, 3)
    times = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for v, fn in fns.items():
            times[v].append(time_round(fn, steps))
    return {v: statistics.median(t) for v, t in times.items()}


def report(results, n_params, batch):
    print(f"\nMLP {n_params / 1e6:.1f}M parameters, batch {batch}; ms per step, ratio to 'none' "
          "of the same column")  # fmt: skip
    head = "".join(f" {h + ' ms':>12s} {'ratio':>7s}" for h in results)
    print(f"  {'variant':20s}{head}")
    for v in VARIANTS:
        row = "".join(f" {r[v]:12.3f} {r[v] / r['none']:6.3f}x" for r in results.values())
        print(f"  {v:20s}{row}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small MLP and few rounds")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed round")
    ap.add_argument("--compiled-optimizer", choices=("foreach", "fused"), default="foreach")
    ap.add_argument("--how", default=",".join(HOWS), help="comma-separated: eager,compiled,graph")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu_step.py needs a CUDA device (torch.cuda.is_available() is "
              "False): nothing measured", file=sys.stderr)  # fmt: skip
        return 2
    sizes = [256, 512, 256, 1] if args.quick else [1024, 2048, 2048, 2048, 2048, 2048, 1024, 1]
    batch = 64
    rounds, steps = (3, 5) if args.quick else (args.rounds, args.steps)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; median of {rounds} "
          f"interleaved rounds of {steps} steps")  # fmt: skip
    results = {}
    for how in args.how.split(","):
        torch._dynamo.reset()
        results[how] = time_how(how, sizes, batch, rounds, steps, args.compiled_optimizer)
    report(results, sum(p.numel() for p in mlp(sizes).parameters()), batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
