"""L2 under DistributedDataParallel, the same on CPU (gloo) and GPUs (nccl).

Run: ``torchrun --nproc-per-node 2 examples/torchrun_ddp.py``

Every rank adds the penalty the same way (never on one rank only, never scaled by the
world size): with ``reg.attach(opt, mode="grad")`` it is added after DDP's all-reduce,
so it also works with ``find_unused_parameters=True``; ``loss + reg()`` works too.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

import torchpenalty as tp


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    )
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.LayerNorm(64), nn.Linear(64, 1)).to(
        device
    )
    ddp = nn.parallel.DistributedDataParallel(model)
    reg = tp.Regularizer(ddp, tp.L2(1e-2))  # weights only: biases and LayerNorm are skipped
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.0)
    reg.attach(opt, mode="grad")

    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    x = torch.randn(256, 20, generator=g).to(device)
    y = x[:, :1] * 2 + 0.1 * torch.randn(256, 1, generator=g).to(device)
    for step in range(50):
        opt.zero_grad()
        loss = nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        opt.step()
        if step % 10 == 0 and rank == 0:
            print(f"step {step:3d}  data loss {loss.item():.4f}  penalty {reg.value():.4f}")
    if rank == 0:
        print(f"done on {world} ranks ({'nccl' if cuda else 'gloo'}); regularized: {reg.names}")
    dist.barrier()  # let every rank finish its collectives before tearing down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
