"""The two compiled units of detlite, used by the trainer, the evaluator, eval.py, the demo and
the benchmarks alike:

    training_loss(params, images, boxes, labels, anchors, cfg) -> (total, class, box)
        target assignment (assign_targets), then forward + focal/Huber loss
        (loss_with_targets, normalised by the positives of the global batch)
    inference(params, images, image_scales, anchors, cfg) -> (detections, counts)
        normalisation + forward + decode + NMS, fixed-size output
    dense_inference(params, images, anchors, cfg) -> (scores, boxes)
        the same before top-k and NMS: every anchor's scores and boxes (the ONNX export)

`TrainingLoss` and `Predictor` wrap them with the run's runtime choices (`StepOptions`: compile
mode, autocast dtype, channels_last, BatchNorm statistics), which are never part of a
checkpoint's model config, and hold the anchor grid. Both compile with `fullgraph=True`: static
shapes, no graph breaks. Over several processes the trainer runs `loss_with_targets` inside
DistributedDataParallel (detlite/parallel.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from . import anchors as anchors_lib
from . import model, postprocess, targets
from .config import ModelConfig
from .layers import BatchStats, Params
from .loss import detection_loss

CompileMode = Literal["off", "default", "max-autotune"]
Precision = Literal["fp32", "bf16", "fp16", "fp64"]
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": None}


@dataclass(frozen=True)
class StepOptions:
    """How the steps run (not what they compute): chosen per run, never stored with weights."""

    compile: CompileMode = "off"
    """torch.compile mode ("off": eager)."""
    dtype: Precision = "fp32"
    """Autocast dtype of the network (losses and NMS stay float32); fp64 runs everything in
    float64 (slow: for numerical checks, e.g. that a distributed run equals one process)."""
    channels_last: bool = False
    """Run convolutions in NHWC memory format (faster with bf16/fp16 on GPUs)."""
    batch_stats: BatchStats = "local"
    """Training BatchNorm statistics: this process's batch, every rank's ("sync"), or the
    running ones ("frozen"); see `detlite.layers.Mode`."""


EAGER = StepOptions()
"""Eager float32, the default."""


def _autocast(device: torch.device, dtype: Precision):
    amp_dtype = _AUTOCAST_DTYPES[dtype]
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def parameter_dtype(options: StepOptions) -> torch.dtype:
    """The dtype weights are kept in: float64 for fp64, float32 otherwise (autocast casts)."""
    return torch.float64 if options.dtype == "fp64" else torch.float32


def _network_input(images: Tensor, params: Params, cfg: ModelConfig, options: StepOptions):
    # In the weights' dtype, so that a float64 model (fp64, or a float64 checkpoint) just runs.
    x = model.normalize(images, cfg).to(params["backbone.stem.conv.weight"].dtype)
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last else x


class Targets(NamedTuple):
    """What target assignment gives a batch (see `detlite.targets.assign`)."""

    cls: Tensor
    """[B, A] int64: class >= 0, BACKGROUND or IGNORE."""
    box: Tensor
    """[B, A, 4] box codes of positives, zero elsewhere."""
    positives: Tensor
    """[B] float32 positive anchors per image."""


def assign_targets(anchors: Tensor, boxes: Tensor, labels: Tensor, cfg: ModelConfig) -> Targets:
    """Targets of ground truth padded to M rows (boxes [B, M, 4] xyxy in input pixels, labels
    [B, M]); no gradients."""
    with torch.no_grad():
        return Targets(*targets.assign(anchors, boxes, labels, cfg))


def loss_with_targets(
    params: Params,
    images: Tensor,
    targets: Targets,
    positives_total: Tensor,
    cfg: ModelConfig,
    options: StepOptions = EAGER,
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, class, box) loss of uint8 images [B, 3, H, W] against `targets`, normalised by
    `positives_total + 1`: the positives of the whole global batch (every rank, every
    accumulated micro-batch), so that the losses of the parts add up to the loss of the whole."""
    x = _network_input(images, params, cfg, options)
    with _autocast(x.device, options.dtype):
        cls_out, box_out = model.forward(
            params, x, cfg, training=True, batch_stats=options.batch_stats
        )
    cls_flat, box_flat = anchors_lib.flatten_outputs(cls_out, box_out, cfg)
    return detection_loss(
        cls_flat,
        box_flat,
        targets.cls,
        targets.box,
        targets.positives,
        cfg,
        num_positives_total=positives_total,
    )


def training_loss(
    params: Params,
    images: Tensor,
    boxes: Tensor,
    labels: Tensor,
    anchors: Tensor,
    cfg: ModelConfig,
    options: StepOptions = EAGER,
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, class, box) loss of one batch on its own: target assignment, then
    `loss_with_targets` normalised by this batch's positives."""
    assigned = assign_targets(anchors, boxes, labels, cfg)
    return loss_with_targets(params, images, assigned, assigned.positives.sum(), cfg, options)


def inference(
    params: Params,
    images: Tensor,
    image_scales: Tensor | None,
    anchors: Tensor,
    cfg: ModelConfig,
    options: StepOptions = EAGER,
) -> tuple[Tensor, Tensor]:
    """Detections [B, max_det, 6] and counts [B] of uint8 images [B, 3, H, W]; `image_scales`
    [B] (original pixels per model pixel) maps boxes back to the original images."""
    x = _network_input(images, params, cfg, options)
    with _autocast(x.device, options.dtype):
        return model.predict(params, x, cfg, image_scales=image_scales, anchors=anchors)


def dense_inference(
    params: Params, images: Tensor, anchors: Tensor, cfg: ModelConfig, options: StepOptions = EAGER
) -> tuple[Tensor, Tensor]:
    """Every anchor's class scores [B, A, C] and boxes [B, A, 4] (input pixels) of uint8 images:
    `inference` without its top-k and NMS (for runtimes that bring their own NMS)."""
    x = _network_input(images, params, cfg, options)
    with _autocast(x.device, options.dtype):
        cls_out, box_out = model.forward(params, x, cfg, training=False)
    return postprocess.dense_detections(cls_out, box_out, anchors, cfg)


def compiled(
    fn: Callable, mode: CompileMode, fullgraph: bool = True, dynamic: bool | None = None
) -> Callable:
    """`fn` compiled in `mode` ("off": `fn` itself), with fullgraph unless told otherwise;
    `dynamic` as `torch.compile` takes it (None: static first, symbolic after a change)."""
    if mode == "off":
        return fn
    mode_arg = None if mode == "default" else mode
    return torch.compile(fn, fullgraph=fullgraph, dynamic=dynamic, mode=mode_arg)


class TrainingLoss:
    """The training loss, compiled per `options`, with the anchor grid:

    - `loss(params, images, boxes, labels) -> (total, class, box)`: one batch on its own;
    - `loss.assign(boxes, labels) -> Targets` and
      `loss.with_targets(params, images, targets, positives_total)`: the two halves, for a
      loss normalised over several ranks or accumulated micro-batches (what the trainer runs).
    """

    def __init__(self, cfg: ModelConfig, options: StepOptions = EAGER, device: str = "cpu") -> None:
        self.cfg = cfg
        self.options = options
        self.anchors = anchors_lib.generate_anchors(
            cfg, device=device, dtype=parameter_dtype(options)
        )

        def assign(boxes, labels, anchors):
            return assign_targets(anchors, boxes, labels, cfg)

        def with_targets(params, images, targets, positives_total):
            return loss_with_targets(params, images, targets, positives_total, cfg, options)

        self._assign = compiled(assign, options.compile)
        self._with_targets = compiled(with_targets, options.compile)

    def assign(self, boxes: Tensor, labels: Tensor) -> Targets:
        return self._assign(boxes, labels, self.anchors)

    def with_targets(self, params: Params, images: Tensor, targets: Targets, total: Tensor):
        return self._with_targets(params, images, targets, total)

    def __call__(self, params: Params, images: Tensor, boxes: Tensor, labels: Tensor):
        assigned = self.assign(boxes, labels)
        return self.with_targets(params, images, assigned, assigned.positives.sum())


class Predictor:
    """`predict(params, images, image_scales=None) -> (detections, counts)` without gradients,
    compiled per `options`: one static graph per batch shape, since a symbolic batch compiled
    slower and ran slower when measured (docs/performance.md), and a run sees few shapes."""

    def __init__(self, cfg: ModelConfig, options: StepOptions = EAGER, device: str = "cpu") -> None:
        self.cfg = cfg
        self.anchors = anchors_lib.generate_anchors(cfg, device=device)

        def predict(params, images, image_scales, anchors):
            return inference(params, images, image_scales, anchors, cfg, options)

        self._predict = compiled(predict, options.compile, dynamic=False)

    @torch.no_grad()
    def __call__(self, params: Params, images: Tensor, image_scales: Tensor | None = None):
        return self._predict(params, images, image_scales, self.anchors)
