"""Scenarios run in 2 gloo processes by tests/test_distributed.py, and the same training
in one process as the reference. Each scenario trains a small float64 MLP for a few
steps on a global batch split across ranks and returns the final full parameters."""

from __future__ import annotations

import traceback

import torch
import torch.distributed as dist
from torch import nn

import torchpenalty as tp

STEPS = 4


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(
        8, 3, generator=g, dtype=torch.float64
    )


PENALTIES = {
    "l2": lambda: tp.L2(0.05),
    "l1": lambda: tp.L1(0.02),
    "enet": lambda: tp.ElasticNet(0.05, l1_ratio=0.5),
    "group0": lambda: tp.GroupLasso(0.05, dim=0),
    "none": lambda: tp.L2(0.0),
}

# name: (wrapper, mode, penalty, optimizer)
SCENARIOS = {
    "ddp-loss-l2": ("ddp", "loss", "l2", "sgd"),
    "ddp-grad-l2": ("ddp", "grad", "l2", "sgd"),
    "ddp-decoupled-l2-adam": ("ddp", "decoupled", "l2", "adam"),
    "ddp-proximal-l1": ("ddp", "proximal", "l1", "sgd"),
    "fsdp-loss-l2": ("fsdp", "loss", "l2", "sgd"),
    "fsdp-loss-l1": ("fsdp", "loss", "l1", "sgd"),
    "fsdp-loss-group0": ("fsdp", "loss", "group0", "sgd"),
    "fsdp-grad-l2": ("fsdp", "grad", "l2", "sgd"),
    "fsdp-grad-enet": ("fsdp", "grad", "enet", "sgd"),
    "fsdp-decoupled-l2-adam": ("fsdp", "decoupled", "l2", "adam"),
    "fsdp-proximal-l1": ("fsdp", "proximal", "l1", "sgd"),
    "fsdp-proximal-group0": ("fsdp", "proximal", "group0", "sgd"),
}


def _optimizer(kind, params):
    if kind == "adam":
        return torch.optim.Adam(params, lr=0.05)
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def train(wrapper, mode, penalty, optimizer, rank=0, world=1):
    """``wrapper`` "ddp"/"fsdp": every penalized weight takes the in-place loss-mode gradient
    path (``functional._DEFER_MIN = 0``; the reference, unwrapped, keeps the default, under
    which these small weights get their gradient returned)."""
    defer_min = tp.functional._DEFER_MIN
    if wrapper is not None:
        tp.functional._DEFER_MIN = 0
    try:
        return _train(wrapper, mode, penalty, optimizer, rank, world)
    finally:
        tp.functional._DEFER_MIN = defer_min


def _train(wrapper, mode, penalty, optimizer, rank, world):
    model = make_model()
    if wrapper == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif wrapper == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    reg = tp.Regularizer(model, PENALTIES[penalty]())
    opt = _optimizer(optimizer, model.parameters())
    if mode != "loss":
        reg.attach(opt, mode=mode)
    X, Y = data()
    rows = slice(rank * len(X) // world, (rank + 1) * len(X) // world)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X[rows]), Y[rows])
        if mode == "loss":
            loss = loss + reg()
        loss.backward()
        opt.step()
    params = {}
    for n, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        params[n.removeprefix("module.")] = full.detach().clone()
    return {"params": params, "value": reg.value()}


def special_cases(rank):
    out = {}
    # find_unused_parameters=True with a penalized parameter unused in forward
    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 2).double()
            self.unused = nn.Linear(4, 2).double()

        def forward(self, x):
            return self.used(x)

    ddp = nn.parallel.DistributedDataParallel(Two(), find_unused_parameters=True)
    reg = tp.Regularizer(ddp, tp.L2(0.1))
    try:
        reg()
        out["find_unused_loss"] = "no error"
    except RuntimeError as e:
        out["find_unused_loss"] = str(e)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    reg.attach(opt, mode="grad")
    before = ddp.module.unused.weight.detach().clone()
    ddp(torch.ones(2, 4, dtype=torch.float64)).sum().backward()
    opt.step()
    # the unused weight has no gradient: left alone, as torch.optim does
    out["find_unused_grad_ok"] = bool(torch.equal(before, ddp.module.unused.weight.detach()))
    # penalties that need whole tensors on FSDP2 shards
    from torch.distributed.fsdp import fully_shard

    for name, pen in (
        ("orthogonal", tp.Orthogonal(0.1)),
        ("group1", tp.GroupLasso(0.1, dim=1)),
        ("l2sp", None),
    ):
        m = make_model()
        fully_shard(m)
        if pen is None:
            pen = tp.L2SP(0.1, reference=make_model())
        try:
            tp.Regularizer(m, pen)
            out[name] = "no error"
        except ValueError as e:
            out[name] = str(e)
    # the sweep splits the grid across ranks and gathers the table everywhere
    X, _Y = data()
    X = torch.cat([X] * 5)
    y = (
        X[:, 0]
        - 2 * X[:, 1]
        + 0.1 * torch.randn(40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    )
    # solver="train": a linear model would be solved exactly; this checks the split grid
    r = tp.sweep(lambda: nn.Linear(6, 1), (X, y), strengths=[1e-3, 1e-1, 1.0], folds=3, epochs=5,
                 batch_size=8, progress=False, solver="train")  # fmt: skip
    out["sweep_table"] = r.table
    out["sweep_chunks"] = r.settings["chunks"]
    return out


def run(rank, world, store, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    results = {}
    try:
        for name, spec in SCENARIOS.items():
            try:
                results[name] = train(*spec, rank=rank, world=world)
            except Exception:
                results[name] = {"error": traceback.format_exc()}
        try:
            results["special"] = special_cases(rank)
        except Exception:
            results["special"] = {"error": traceback.format_exc()}
    finally:
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
