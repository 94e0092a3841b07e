"""Process-group setup from the torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK, ...).

Works the same under detlite-launch, torchrun, or srun/mpirun wrappers that set those variables;
a plain `python train.py` is a world of one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor

from .errors import ConfigError, DetliteError


@dataclass(frozen=True)
class DistConfig:
    """Multi-process training (the process group comes from RANK / WORLD_SIZE / MASTER_ADDR)."""

    sync_bn: bool = False
    """Reduce the batch statistics of every training-mode BatchNorm over all ranks
    (SyncBatchNorm); only with more than one process."""
    timeout_s: float = 300.0
    """Seconds to wait for every rank to join (and for any collective) before failing."""


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


def _env_int(name: str, default: int, low: int = 0) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low:
        raise ConfigError(
            f"environment variable {name}={value!r} is not an integer ≥ {low} — start the run "
            "with detlite-launch or torchrun, which set it, or fix it"
        )
    return number


def read_environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun-style environment, checked."""
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1, low=1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if rank >= world_size:
        raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={world_size}")
    if world_size > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ConfigError(
                    f"WORLD_SIZE={world_size} but {name} is not set — start the run with "
                    "detlite-launch or torchrun, or set MASTER_ADDR and MASTER_PORT"
                )
        _env_int("MASTER_PORT", 0, low=1)
    return rank, world_size, local_rank


def setup(device: str = "auto", timeout: float = DistConfig.timeout_s) -> World:
    """Read the environment, pick the device, and join the process group when world_size > 1
    (failing after `timeout` seconds if the other ranks cannot be reached)."""
    rank, world_size, local_rank = read_environment()
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        _join(rank, world_size, dev, timeout)
    return World(rank, world_size, local_rank, dev)


def _join(rank: int, world_size: int, device: torch.device, timeout: float) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
            device_id=device if device.type == "cuda" else None,
        )
    except (RuntimeError, dist.DistError, TimeoutError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DetliteError(
            f"rank {rank} of {world_size} could not join the process group at {where} within "
            f"{timeout:g} s (--dist.timeout-s): {reason} — check that every rank was started and "
            "can reach MASTER_ADDR"
        ) from error


def teardown() -> None:
    global _control_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks, in place; a no-op in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


_control_group = None


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any (e.g. a stop signal that reached only some);
    through a CPU (gloo) group, so that asking never waits for the GPU."""
    global _control_group
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    if _control_group is None:
        _control_group = dist.new_group(backend="gloo")
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control_group)
    return bool(value.item())


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """Sum over ranks as a functional collective, which torch.compile traces into the graph
    (BatchNorm statistics); the tensor itself in a single process."""
    if world_size() > 1:
        return funcol.all_reduce(tensor, "sum", dist.group.WORLD).wait()
    return tensor


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def all_gather_objects(value: object) -> list:
    """Every rank's `value`, in rank order (`[value]` in a single process)."""
    if world_size() == 1:
        return [value]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered
