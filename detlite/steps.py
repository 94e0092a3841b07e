"""The two compiled units of detlite, used by the trainer, the evaluator, eval.py, the demo and
the benchmarks alike:

    training_loss(params, images, boxes, labels, anchors, cfg) -> (total, class, box)
        target assignment + forward + focal/Huber loss, one graph
    inference(params, images, image_scales, anchors, cfg) -> (detections, counts)
        normalisation + forward + decode + NMS, fixed-size output

`TrainingLoss` and `Predictor` wrap them with the run's runtime choices (`StepOptions`: compile
mode, autocast dtype, channels_last), which are never part of a checkpoint's model config, and
hold the anchor grid. Both compile with `fullgraph=True`: static shapes, no graph breaks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from . import anchors as anchors_lib
from . import distributed, model, targets
from .config import ModelConfig
from .layers import Params
from .loss import detection_loss

CompileMode = Literal["off", "default", "max-autotune"]
Precision = Literal["fp32", "bf16", "fp16"]
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepOptions:
    """How the steps run (not what they compute): chosen per run, never stored with weights."""

    compile: CompileMode = "off"
    """torch.compile mode ("off": eager)."""
    dtype: Precision = "fp32"
    """Autocast dtype of the network (losses and NMS stay float32)."""
    channels_last: bool = False
    """Run convolutions in NHWC memory format (faster with bf16/fp16 on GPUs)."""


EAGER = StepOptions()
"""Eager float32, the default."""


def _autocast(device: torch.device, dtype: Precision):
    amp_dtype = _AUTOCAST_DTYPES[dtype]
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def _network_input(images: Tensor, cfg: ModelConfig, options: StepOptions) -> Tensor:
    x = model.normalize(images, cfg)
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last else x


def training_loss(
    params: Params,
    images: Tensor,
    boxes: Tensor,
    labels: Tensor,
    anchors: Tensor,
    cfg: ModelConfig,
    options: StepOptions = EAGER,
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, class, box) loss of a batch: uint8 images [B, 3, H, W] at `cfg.image_size`,
    ground truth padded to M rows (boxes [B, M, 4] xyxy in input pixels, labels [B, M])."""
    with torch.no_grad():
        cls_targets, box_targets, num_positives = targets.assign(anchors, boxes, labels, cfg)
    # The normaliser is the positive count of the whole global batch (the seed used each rank's
    # own); a traceable collective keeps this inside the compiled graph.
    num_positives_total = distributed.traceable_sum(num_positives.sum())
    x = _network_input(images, cfg, options)
    with _autocast(x.device, options.dtype):
        cls_out, box_out = model.forward(params, x, cfg, training=True)
    cls_flat, box_flat = anchors_lib.flatten_outputs(cls_out, box_out, cfg)
    return detection_loss(
        cls_flat,
        box_flat,
        cls_targets,
        box_targets,
        num_positives,
        cfg,
        num_positives_total=num_positives_total,
    )


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
    x = _network_input(images, cfg, options)
    with _autocast(x.device, options.dtype):
        return model.predict(params, x, cfg, image_scales=image_scales, anchors=anchors)


def _compiled(fn: Callable, mode: CompileMode) -> Callable:
    if mode == "off":
        return fn
    return torch.compile(fn, fullgraph=True, mode=None if mode == "default" else mode)


class TrainingLoss:
    """`loss(params, images, boxes, labels) -> (total, class, box)`, compiled per `options`."""

    def __init__(self, cfg: ModelConfig, options: StepOptions = EAGER, device: str = "cpu") -> None:
        self.cfg = cfg
        self.anchors = anchors_lib.generate_anchors(cfg, device=device)

        def loss(params, images, boxes, labels, anchors):
            return training_loss(params, images, boxes, labels, anchors, cfg, options)

        self._loss = _compiled(loss, options.compile)

    def __call__(self, params: Params, images: Tensor, boxes: Tensor, labels: Tensor):
        return self._loss(params, images, boxes, labels, self.anchors)


class Predictor:
    """`predict(params, images, image_scales=None) -> (detections, counts)` without gradients,
    compiled per `options`."""

    def __init__(self, cfg: ModelConfig, options: StepOptions = EAGER, device: str = "cpu") -> None:
        self.cfg = cfg
        self.anchors = anchors_lib.generate_anchors(cfg, device=device)

        def predict(params, images, image_scales, anchors):
            return inference(params, images, image_scales, anchors, cfg, options)

        self._predict = _compiled(predict, options.compile)

    @torch.no_grad()
    def __call__(self, params: Params, images: Tensor, image_scales: Tensor | None = None):
        return self._predict(params, images, image_scales, self.anchors)
