"""DDP and FSDP2 support.

**DDP** needs nothing special: every rank adds ``reg()`` to its loss (DDP averages the
gradients, and the average of ``N`` identical penalty gradients is the penalty gradient),
or attaches it with ``reg.attach(opt, mode="grad")`` (added after the all-reduce, identical
on every rank). Two traps: adding the penalty on one rank only divides its gradient by
the world size, and scaling it by the world size multiplies it. With
``DDP(find_unused_parameters=True)``, a penalized parameter that the forward pass did not
use would receive its gradient after DDP already marked it ready and crash the backward;
``reg()`` therefore refuses such a model with a clear error, and grad mode (same result,
no autograd) works.

**FSDP2** (``torch.distributed.fsdp.fully_shard``) keeps the original parameter names
and shapes as DTensors sharded along dim 0, so the selection rule is unchanged. ``reg()``
returns the global value as a plain tensor (one scalar all-reduce), usable in the loss
next to ordinary tensors; its gradient reaches each shard as the single-process gradient
would. ``reg.value()`` is the same global float on every rank. The grad, decoupled,
independent and proximal modes work on each rank's local shard without communication.
Group lasso with ``dim=0`` keeps whole rows on one rank and works; group lasso along
another dim and orthogonality need whole tensors and are refused with an error
(gather the parameter, or apply them outside the sharded module). FSDP1's flat
parameters are not supported.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = [
    "all_gather_objects",
    "check_sharding",
    "is_ddp_find_unused",
    "is_dtensor",
    "local",
    "plain",
    "world",
]


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor``."""
    cls = type(t)
    return cls.__name__ == "DTensor" and cls.__module__.startswith("torch.distributed")


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view: in-place updates reach the parameter), or
    ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def plain(value: Tensor) -> Tensor:
    """A penalty value as an ordinary tensor: a DTensor is reduced to its global value
    (differentiably)."""
    return value.full_tensor() if is_dtensor(value) else value


def _shard_dims(p: Tensor) -> list[int]:
    from torch.distributed.tensor import Shard

    return [pl.dim for pl in p.placements if isinstance(pl, Shard)]


def check_sharding(penalty: Any, names: list[str], params: list[Tensor]) -> None:
    """Refuse penalties that need whole tensors (``penalty.shard_ok(dim, ndim)`` is False)
    on parameters sharded across ranks."""
    for n, p in zip(names, params, strict=True):
        if not is_dtensor(p):
            continue
        dims = _shard_dims(p)
        bad = [d for d in dims if not penalty.shard_ok(d, p.ndim)]
        if bad:
            raise ValueError(penalty.sharding_error(n, bad[0]))


def is_ddp_find_unused(model: nn.Module) -> bool:
    """True for ``DistributedDataParallel(..., find_unused_parameters=True)``."""
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel) and bool(model.find_unused_parameters)


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
