"""Training checkpoints: everything a run needs to continue exactly, in one safetensors file.

Tensors: `params/<name>`, `ema/<name>`, `optim/<name>/<state key>` (e.g. SGD momentum buffers),
`rng/cpu`, `rng/cuda.<i>` (rank 0's), `rng/rank<r>.cpu`, `rng/rank<r>.cuda.<i>` (the other
ranks'). Metadata: the model config (so `load` of files.py reads the weights of
a training checkpoint too), the category map, and a JSON `train_state` with the step, epoch, best
metric, GradScaler state and the training config. Written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from .. import config as config_lib
from ..config import ModelConfig
from ..data.coco import CategoryMap
from . import files

_STATE_KEY = "train_state"


@dataclass
class TrainingState:
    """What a checkpoint restores besides tensors."""

    step: int = 0
    epoch: int = 0
    best_metric: float = -1.0
    """AP of the best evaluation so far (-1: none yet)."""
    best_step: int = -1
    """The step of that evaluation."""
    scaler: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON (the training config, ...)."""


@dataclass(frozen=True)
class TrainingTensors:
    """The tensors of a run that a training checkpoint holds."""

    params: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    optimizer: torch.optim.Optimizer
    trainable: list[str]
    """Names of the tensors the optimizer updates (their state is saved under these names)."""
    rng: list[dict[str, Tensor]] | None = None
    """Every rank's random-number generator states (`rng_states()`); None: this process's."""


@dataclass
class Restored:
    """A training checkpoint read back."""

    cfg: ModelConfig
    params: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    optimizer_state: dict[str, dict[str, Tensor]]
    rng: dict[str, Tensor]
    state: TrainingState
    category_map: CategoryMap | None


def _tensors(run: TrainingTensors) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {f"params/{k}": v for k, v in run.params.items()}
    if run.ema is not None:
        tensors |= {f"ema/{k}": v for k, v in run.ema.items()}
    for name in run.trainable:
        for key, value in run.optimizer.state.get(run.params[name], {}).items():
            if isinstance(value, Tensor):
                tensors[f"optim/{name}/{key}"] = value
    for rank, states in enumerate(run.rng or [rng_states()]):
        prefix = "rng/" if rank == 0 else f"rng/rank{rank}."
        tensors |= {prefix + name: state for name, state in states.items()}
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save(
    path: str | os.PathLike,
    run: TrainingTensors,
    cfg: ModelConfig,
    state: TrainingState,
    category_map: CategoryMap | None = None,
) -> None:
    """Write a training checkpoint atomically."""
    tensors = _tensors(run)
    meta = {
        files.FORMAT_KEY: files.TRAIN_FORMAT,
        files.CONFIG_KEY: config_lib.to_json(cfg),
        _STATE_KEY: json.dumps(asdict(state)),
    }
    if category_map is not None:
        meta[files.CATEGORY_MAP_KEY] = category_map.to_json()
    files.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Restored:
    """Read a training checkpoint; refuses weights-only and corrupt files with a clear message."""
    meta = files.read_metadata(path)
    if meta.get(files.FORMAT_KEY) != files.TRAIN_FORMAT:
        raise files.CheckpointError(
            f"{path}: a weights-only checkpoint cannot resume a run; pass it as "
            "--model.init-checkpoint to start a new run from its weights"
        )
    cfg = files.model_config(meta, path)
    try:
        state = TrainingState(**json.loads(meta[_STATE_KEY]))
    except (KeyError, ValueError, TypeError) as e:
        raise files.CheckpointError(f"{path}: training state is unreadable ({e})") from e
    params = files.check_params(files.read_tensors(path, "params/", device), cfg, str(path))
    ema = files.read_tensors(path, "ema/", device) or None
    if ema is not None:
        ema = files.check_params(ema, cfg, f"{path} (EMA)")
    optim: dict[str, dict[str, Tensor]] = {}
    for key, value in files.read_tensors(path, "optim/", device).items():
        name, state_key = key.rsplit("/", 1)
        optim.setdefault(name, {})[state_key] = value
    rng = files.read_tensors(path, "rng/", "cpu")
    return Restored(cfg, params, ema, optim, rng, state, files.stored_category_map(meta))


def restore_optimizer(
    optimizer: torch.optim.Optimizer, params: dict[str, Tensor], saved: dict[str, dict[str, Tensor]]
) -> None:
    for name, entries in saved.items():
        if name in params:
            optimizer.state[params[name]] = dict(entries)


def rng_states() -> dict[str, Tensor]:
    """This process's random-number generator states (CPU, and every initialised GPU)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = state
    return states


def restore_rng(rng: dict[str, Tensor], rank: int = 0) -> None:
    """Set this process's generators to those rank `rank` saved (rank 0's when the file holds
    no others, e.g. one written by a single process)."""
    own = f"rank{rank}."
    if rank > 0 and any(k.startswith(own) for k in rng):
        rng = {k[len(own) :]: v for k, v in rng.items() if k.startswith(own)}
    if "cpu" in rng:
        torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
