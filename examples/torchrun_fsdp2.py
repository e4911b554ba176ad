"""L1 with a proximal step under FSDP2 (``fully_shard``), on CPU (gloo) or GPUs (nccl).

Run: ``torchrun --nproc-per-node 2 examples/torchrun_fsdp2.py``

FSDP2 keeps parameter names and shapes (as DTensors sharded along dim 0), so the default
rule still skips biases and norms. ``reg()`` in the loss returns the global penalty as a
plain tensor; the grad/decoupled/proximal modes act on each rank's shard without
communication; ``reg.value()`` is the same global number on every rank.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import torchpenalty as tp


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    )
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1)
    )
    model.to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)

    reg = tp.Regularizer(model, tp.L1(1e-3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    reg.attach(opt, mode="proximal")  # exact zeros, shard by shard

    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(256, 32, generator=g).to(device)
    y = x[:, :2].sum(1, keepdim=True) + 0.1 * torch.randn(256, 1, generator=g).to(device)
    for step in range(60):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        value = reg.value()  # global: every rank prints the same number
        if step % 20 == 0 and rank == 0:
            print(f"step {step:3d}  data loss {loss.item():.4f}  L1 penalty {value:.4f}")
    zeros = sum((p.to_local() == 0).sum().item() for p in reg.parameters())
    total = sum(p.to_local().numel() for p in reg.parameters())
    print(f"rank {rank}: {zeros} of {total} local weights are exactly zero")
    dist.barrier()  # let every rank finish its collectives before tearing down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
