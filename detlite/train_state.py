"""Training checkpoints: everything a run needs to continue exactly, in one safetensors file.

Tensors: `params/<name>`, `ema/<name>`, `optim/<name>/<state key>` (e.g. SGD momentum buffers),
`rng/cpu`, `rng/cuda.<i>`. Metadata: the model config (so `checkpoint.load` reads the weights of
a training checkpoint too), and a JSON `train_state` with the step, epoch, best metric, GradScaler
state, category mapping and the training config. Written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from . import checkpoint
from . import config as config_lib
from .config import ModelConfig

_STATE_KEY = "train_state"


@dataclass
class TrainingState:
    """What a checkpoint restores besides tensors."""

    step: int = 0
    epoch: int = 0
    best_metric: float = -1.0
    scaler: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON (category mapping, training config, ...)."""


def save(
    path: str | os.PathLike,
    *,
    params: dict[str, Tensor],
    ema: dict[str, Tensor] | None,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    cfg: ModelConfig,
    state: TrainingState,
) -> None:
    tensors: dict[str, Tensor] = {f"params/{k}": v for k, v in params.items()}
    if ema is not None:
        tensors |= {f"ema/{k}": v for k, v in ema.items()}
    for name in names:
        for key, value in optimizer.state.get(params[name], {}).items():
            if isinstance(value, Tensor):
                tensors[f"optim/{name}/{key}"] = value
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda.{i}"] = s
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {
        "format": checkpoint.TRAIN_FORMAT,
        "model_config": config_lib.to_json(cfg),
        _STATE_KEY: json.dumps(
            {
                "step": state.step,
                "epoch": state.epoch,
                "best_metric": state.best_metric,
                "scaler": state.scaler,
                "extra": state.extra,
            }
        ),
    }
    checkpoint.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


@dataclass
class Restored:
    cfg: ModelConfig
    params: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    optimizer_state: dict[str, dict[str, Tensor]]
    rng: dict[str, Tensor]
    state: TrainingState


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Restored:
    meta = checkpoint.read_metadata(path)
    if meta.get("format") != checkpoint.TRAIN_FORMAT:
        raise checkpoint.CheckpointError(
            f"{path}: a weights-only checkpoint cannot resume a run; pass it as --init-checkpoint "
            "to start a new run from its weights"
        )
    cfg = checkpoint.model_config(meta, path)
    try:
        raw = json.loads(meta[_STATE_KEY])
        state = TrainingState(**raw)
    except (KeyError, ValueError, TypeError) as e:
        raise checkpoint.CheckpointError(f"{path}: training state is unreadable ({e})") from e
    params = checkpoint.check_params(checkpoint.read_tensors(path, "params/", device), cfg, str(path))
    ema = checkpoint.read_tensors(path, "ema/", device) or None
    if ema is not None:
        ema = checkpoint.check_params(ema, cfg, f"{path} (EMA)")
    optim: dict[str, dict[str, Tensor]] = {}
    for key, value in checkpoint.read_tensors(path, "optim/", device).items():
        name, state_key = key.rsplit("/", 1)
        optim.setdefault(name, {})[state_key] = value
    rng = checkpoint.read_tensors(path, "rng/", "cpu")
    return Restored(cfg, params, ema, optim, rng, state)


def restore_optimizer(
    optimizer: torch.optim.Optimizer, params: dict[str, Tensor], saved: dict[str, dict[str, Tensor]]
) -> None:
    for name, entries in saved.items():
        if name in params:
            optimizer.state[params[name]] = dict(entries)


def restore_rng(rng: dict[str, Tensor]) -> None:
    if "cpu" in rng:
        torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
