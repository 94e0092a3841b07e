"""Process-group setup from the torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK, ...).

Works the same under detlite-launch, torchrun, or srun/mpirun wrappers that set those variables;
a plain `python train.py` is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str = "auto") -> World:
    """Read the environment, pick the device, and join the process group when world_size > 1."""
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, device_id=dev if dev.type == "cuda" else None
        )
    return World(rank, world_size, local_rank, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks, in place; a no-op in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def traceable_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks as a functional collective, which torch.compile traces into the graph;
    the tensor itself in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return funcol.all_reduce(tensor, "sum", dist.group.WORLD)
    return tensor


def all_reduce_gradients(grads: list[Tensor]) -> None:
    """Sum gradients over ranks with one flattened all-reduce (the loss is already normalised
    by the global positive count, so the sum is the gradient of the global loss)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1) or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
