"""`train.py --resume RUN`: the resumed run is the run it continues.

Its whole training configuration comes back from the checkpoint (steps, batch size, LR,
schedule, data, output directory, ...). A flag given beside `--resume` overrides only itself,
and only where the run can still continue exactly: how it executes (device, compile mode,
precision, workers), how often and where it logs, evaluates and saves, and how long it runs.
Changing the model, the data, the batch, the seed, the optimizer or the schedule is refused;
start a new run from the weights with `--model.init-checkpoint` for that.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from . import checkpoint
from .errors import ConfigError
from .train_config import TrainConfig, train_config_from_dict
from .validate import flag

CHANGEABLE = frozenset(
    {
        "device",
        "compile",
        "precision.dtype",
        "precision.tf32",
        "precision.channels_last",
        "data.num_workers",
        "data.bad_images",
        "dist.timeout_s",
        "log_every",
        "log.tensorboard",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "eval_batch_size",
        "skip_eval",
        "steps",
        "epochs",
        "output",
        "overwrite",
        "model.fused_ops",
    }
)
"""Fields a flag may change on resume."""


def field_paths(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a config dataclass by dotted path, with its type annotation."""
    paths: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if dataclasses.is_dataclass(default):
            paths |= field_paths(type(default), f"{prefix}{f.name}.")
        else:
            paths[f"{prefix}{f.name}"] = f.type
    return paths


def given_fields(argv: list[str]) -> set[str]:
    """The config fields that `argv` sets with a flag (`--a.b-c V`, `--a.b-c=V`, `--a.no-flag`)."""
    paths = field_paths()
    given = set()
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        head, _, last = name.rpartition(".")
        negated = f"{head}.{last[3:]}" if head else last[3:]
        if name in paths:
            given.add(name)
        elif last.startswith("no_") and negated in paths:
            given.add(negated)
    return given


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run directory a step checkpoint belongs to."""
    parent = checkpoint_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def stored_config(path: Path) -> TrainConfig:
    """The training configuration a training checkpoint was written with."""
    meta = checkpoint.read_metadata(path)
    try:
        state = json.loads(meta["train_state"])
        return train_config_from_dict(json.loads(state["extra"]["train_config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise checkpoint.CheckpointError(
            f"{path}: holds no readable training configuration ({error}); it cannot resume a run"
        ) from None


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _replace(cfg: Any, path: str, value: Any) -> Any:
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _replace(getattr(cfg, head), rest, value)})


def resume_config(cli: TrainConfig, given: set[str], log=print) -> TrainConfig:
    """The configuration of the run `cli.resume` names, with the flags in `given` applied."""
    assert cli.resume is not None
    path = checkpoint.find_resume(Path(cli.resume), log)
    stored = stored_config(path)
    changed = {p for p in given if p != "resume" and _get(cli, p) != _get(stored, p)}
    refused = sorted(changed - CHANGEABLE)
    if refused:
        listing = ", ".join(f"{flag(p)} ({_get(stored, p)} → {_get(cli, p)})" for p in refused)
        raise ConfigError(
            f"--resume {cli.resume}: cannot change {listing} and continue the run exactly — "
            "drop those flags, or start a new run from its weights with --model.init-checkpoint"
        )
    merged = dataclasses.replace(stored, resume=path, output=run_dir_of(path))
    for p in sorted(changed):
        merged = _replace(merged, p, _get(cli, p))
    return merged


def describe_changes(stored: TrainConfig, current: TrainConfig) -> list[str]:
    """`--flag old → new` for every changeable field that differs."""
    return [
        f"{flag(p)} {_get(stored, p)} → {_get(current, p)}"
        for p in sorted(CHANGEABLE)
        if _get(stored, p) != _get(current, p) and p not in ("output", "overwrite")
    ]
