"""Checks of the commands' configurations, run when they are parsed, before anything is loaded or
written: every value that cannot work is a `ConfigError` naming its flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import tensorboard_log
from .errors import ConfigError

Rule = tuple[str, Callable[[Any], bool], str]
"""(field path, test of its value, what the value must be)."""


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and v >= low), f"an integer ≥ {low}"


def _number_in(low: float, high: float, *, low_open=False, high_open=False):
    def test(v: Any) -> bool:
        if not isinstance(v, int | float) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return test, f"a number in {left}{low}, {high}{right}"


def _positive() -> tuple[Callable[[Any], bool], str]:
    test = lambda v: isinstance(v, int | float) and math.isfinite(v) and v > 0  # noqa: E731
    return test, "a finite number > 0"


def _non_negative() -> tuple[Callable[[Any], bool], str]:
    test = lambda v: isinstance(v, int | float) and math.isfinite(v) and v >= 0  # noqa: E731
    return test, "a finite number ≥ 0"


def _optional(check: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    test, text = check
    return (lambda v: v is None or test(v)), f"{text} (or unset)"


def _rules(*entries: tuple[str, tuple[Callable[[Any], bool], str]]) -> list[Rule]:
    return [(path, test, text) for path, (test, text) in entries]


TRAIN_RULES = _rules(
    ("batch_size", _int_at_least(1)),
    ("grad_accum_steps", _int_at_least(1)),
    ("eval_batch_size", _optional(_int_at_least(1))),
    ("epochs", _int_at_least(1)),
    ("steps", _optional(_int_at_least(1))),
    ("log_every", _int_at_least(1)),
    ("checkpoint_every", _int_at_least(1)),
    ("keep_checkpoints", _int_at_least(0)),
    ("eval_every", _int_at_least(0)),
    ("benchmark", _int_at_least(0)),
    ("seed", _int_at_least(0)),
    ("optim.lr", _positive()),
    ("optim.lr_reference_batch", _int_at_least(1)),
    ("optim.momentum", _number_in(0, 1, high_open=True)),
    ("optim.weight_decay", _non_negative()),
    ("optim.clip_grad_norm", _non_negative()),
    ("optim.ema_decay", _number_in(0, 1, high_open=True)),
    ("schedule.warmup_steps", _int_at_least(0)),
    ("schedule.warmup_start_factor", _number_in(0, 1, low_open=True)),
    ("schedule.min_lr_factor", _number_in(0, 1)),
    ("schedule.cooldown_steps", _int_at_least(0)),
    ("data.max_boxes", _int_at_least(1)),
    ("data.scale_min", _positive()),
    ("data.scale_max", _positive()),
    ("data.hflip", _number_in(0, 1)),
    ("data.num_workers", _int_at_least(0)),
    ("dist.timeout_s", _positive()),
)

DEMO_RULES = _rules(("image_size", _int_at_least(1)), ("batch_size", _int_at_least(1)))

EVAL_RULES = _rules(
    ("batch_size", _int_at_least(1)),
    ("draw", _int_at_least(0)),
    ("min_score", _number_in(0, 1)),
    ("data.num_workers", _int_at_least(0)),
)


def flag(path: str) -> str:
    """The command-line spelling of a config field: `optim.lr_reference_batch` ->
    `--optim.lr-reference-batch`."""
    return "--" + path.replace("_", "-")


def _value(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_rules(cfg: Any, rules: list[Rule]) -> None:
    for path, test, requirement in rules:
        value = _value(cfg, path)
        if not test(value):
            raise ConfigError(f"{flag(path)} must be {requirement}, got {value!r}")


def check_device(name: str) -> None:
    """`--device` names a device this machine has ("auto", "cpu", "cuda", "cuda:N")."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"--device {name!r} is not a device — use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise ConfigError(f"--device {name!r}: detlite runs on cpu or cuda — use auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: this machine has no usable CUDA device (torch {torch.__version__}) "
            "— use --device cpu, or auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"--device {name}: this machine has {count} CUDA device(s), 0..{count - 1}"
        )


def check_output_dir(path: Path, name: str = "--output") -> None:
    """`path` is a directory or can become one (no part of it is an existing file)."""
    for part in (Path(path), *Path(path).parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(
                f"{name} {path}: {part} is a file, not a directory — choose another {name}"
            )


def check_existing(path: Path | None, name: str, *, directory: bool = False) -> None:
    if path is None:
        return
    if not Path(path).exists():
        raise ConfigError(f"{name} {path}: no such {'directory' if directory else 'file'}")
    if directory and not Path(path).is_dir():
        raise ConfigError(f"{name} {path}: not a directory")
    if not directory and Path(path).is_dir():
        raise ConfigError(f"{name} {path}: a directory, not a file")


def check_model_choice(preset: str, image_size: int | None, prefix: str = "--model.") -> None:
    """The preset exists and takes this input size (flags `<prefix>preset` and `-image-size`)."""
    from . import config  # the presets

    try:
        config.preset(preset, image_size=image_size)
    except ValueError as error:
        raise ConfigError(f"{prefix}preset {preset} / {prefix}image-size: {error}") from None


def check_train_config(cfg: Any) -> None:
    """Everything about a training config that can be checked without loading anything."""
    check_rules(cfg, TRAIN_RULES)
    if cfg.data.scale_min > cfg.data.scale_max:
        raise ConfigError(
            f"--data.scale-min {cfg.data.scale_min} is above --data.scale-max "
            f"{cfg.data.scale_max}; the scale jitter range must be ordered"
        )
    if cfg.model.image_size is not None and not cfg.model.image_size >= 1:
        raise ConfigError(
            f"--model.image-size must be a positive integer, got {cfg.model.image_size}"
        )
    check_model_choice(cfg.model.preset, cfg.model.image_size)
    check_device(cfg.device)
    check_output_dir(cfg.output)
    if cfg.log.tensorboard:
        tensorboard_log.check_available()
    check_existing(cfg.model.backbone_weights, "--model.backbone-weights")
    check_existing(cfg.model.init_checkpoint, "--model.init-checkpoint")
    if cfg.resume is not None and not Path(cfg.resume).exists():
        raise ConfigError(f"--resume {cfg.resume}: no such run directory or checkpoint")
    if cfg.resume is not None and cfg.overwrite:
        raise ConfigError("--overwrite replaces a run and --resume continues one: pass only one")


def check_eval_config(cfg: Any) -> None:
    """Everything about an evaluation config that can be checked without loading anything."""
    check_rules(cfg, EVAL_RULES)
    check_existing(cfg.checkpoint, "checkpoint")
    check_existing(cfg.predict, "--predict", directory=True)
    check_device(cfg.device)
    if cfg.output is not None:  # else a new folder beside the checkpoint
        check_output_dir(cfg.output)
