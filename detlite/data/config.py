"""Where the data is and how it is loaded: the `--data.*` flags, and the paths they resolve to.

A split is an annotation file plus the folder its `file_name`s are relative to. The flags give
them explicitly, through a COCO root (`annotations/instances_{train,val}2017.json`,
`{train,val}2017/`), or not at all, which means the built-in dataset (written on first use).
Explicit flags win over the root; every path that is used must exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from detlite.data.builtin import ensure_builtin
from detlite.errors import ConfigError, PathError


@dataclass(frozen=True)
class EvalDataConfig:
    """The annotated split to evaluate on; with nothing set, the built-in dataset's val split."""

    root: Path | None = None
    """A COCO root with annotations/instances_{train,val}2017.json and {train,val}2017/."""
    val_json: Path | None = None
    """The val split's COCO annotation file (instead of --data.root's); needs --data.val-images."""
    val_images: Path | None = None
    """The folder the val split's file_name entries are relative to."""
    builtin_dir: Path | None = None
    """Where the built-in dataset is written (default ~/.cache/detlite/builtin-v1)."""
    num_workers: int = 2
    """Data-loader worker processes (0: load in the main process)."""


@dataclass(frozen=True)
class DataConfig(EvalDataConfig):
    """COCO-format data; with nothing set, the built-in dataset is used."""

    train_json: Path | None = None
    """The train split's COCO annotation file (instead of --data.root's); needs
    --data.train-images."""
    train_images: Path | None = None
    """The folder the train split's file_name entries are relative to."""
    max_boxes: int = 100
    """Ground-truth boxes kept per image (the largest; the overflow is counted and logged)."""
    scale_min: float = 0.1
    """Smallest random scale of the input size (scale jitter; the paper's 0.1)."""
    scale_max: float = 2.0
    """Largest random scale of the input size (the paper's 2.0)."""
    hflip: float = 0.5
    """Probability of a horizontal flip of a training image and its boxes."""
    bad_images: Literal["skip", "error"] = "skip"
    """A training image that exists but cannot be decoded: replace it by the next readable one
    (counted and logged), or stop the run. Evaluation always stops, naming the file."""


@dataclass(frozen=True)
class SplitPaths:
    """One split: a COCO JSON file and the image folder its file names are relative to."""

    annotations: Path
    images: Path


_COCO_FILES = {
    "train": ("annotations/instances_train2017.json", "train2017"),
    "val": ("annotations/instances_val2017.json", "val2017"),
}


def uses_builtin(cfg: DataConfig) -> bool:
    """True when no training data is named: the run trains on the built-in dataset."""
    return cfg.root is None and cfg.train_json is None and cfg.train_images is None


def train_split(cfg: DataConfig) -> SplitPaths:
    """The training split the flags name (the built-in one when none is named)."""
    if uses_builtin(cfg):
        builtin = ensure_builtin(cfg.builtin_dir)
        return SplitPaths(builtin.train_json, builtin.train_images)
    return _split(cfg, "train", cfg.train_json, cfg.train_images)


def val_split(cfg: EvalDataConfig, *, builtin_default: bool = True) -> SplitPaths | None:
    """The val split the flags name; with none named, the built-in one if `builtin_default`,
    else None (a training run on explicit files without val flags evaluates nothing)."""
    if cfg.root is not None or cfg.val_json is not None or cfg.val_images is not None:
        return _split(cfg, "val", cfg.val_json, cfg.val_images)
    if not builtin_default:
        return None
    builtin = ensure_builtin(cfg.builtin_dir)
    return SplitPaths(builtin.val_json, builtin.val_images)


def _split(cfg: EvalDataConfig, name: str, json_file: Path | None, images: Path | None):
    flags = (f"--data.{name}-json", f"--data.{name}-images")
    if cfg.root is not None:
        json_default, images_default = _COCO_FILES[name]
        json_file = json_file or Path(cfg.root) / json_default
        images = images or Path(cfg.root) / images_default
    if json_file is None or images is None:
        raise ConfigError(f"{flags[0]} and {flags[1]} must be given together (or --data.root)")
    for path, flag in zip((json_file, images), flags, strict=True):
        if not Path(path).exists():
            raise PathError(f"{path} does not exist (set {flag} or --data.root)")
    return SplitPaths(Path(json_file), Path(images))
