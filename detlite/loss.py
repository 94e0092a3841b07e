"""Detection loss: sigmoid focal loss over classes plus Huber loss over box codes.

The focal loss is the operator `detlite::sigmoid_focal_loss` (see detlite/ops); the tests hold
a plain PyTorch expression of it as the reference it must match.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detlite import ops
from detlite.config import LossConfig, ModelConfig


def loss_dtype(outputs: Tensor) -> torch.dtype:
    """Losses are computed in float32, or float64 for a float64 network."""
    return torch.float64 if outputs.dtype == torch.float64 else torch.float32


def focal_loss(logits: Tensor, cls_targets: Tensor, loss_cfg: LossConfig) -> Tensor:
    """Un-normalised focal loss summed over anchors and classes (a float32 scalar, float64 for
    float64 logits).

    logits [B, A, C] (any float dtype; computed in float32 or better); cls_targets [B, A]
    (class >= 0, `BACKGROUND`, or `IGNORE` for no loss). Runs as the operator
    `detlite::sigmoid_focal_loss`, which never materialises [B, A, C] temporaries on the GPU.
    """
    per_image = ops.sigmoid_focal_loss(
        logits, cls_targets, loss_cfg.alpha, loss_cfg.gamma, loss_cfg.label_smoothing
    )
    return per_image.sum().to(loss_dtype(logits))


def box_loss(box_outputs: Tensor, box_targets: Tensor, delta: float) -> Tensor:
    """Un-normalised Huber loss over the non-zero entries of the box targets (float32 scalar).

    The mask is elementwise `target != 0`, as the reference: background anchors carry all-zero
    targets, and a positive's exactly-zero code component is (harmlessly) skipped too.
    """
    dtype = loss_dtype(box_outputs)
    box_outputs = box_outputs.to(dtype)
    box_targets = box_targets.to(dtype)
    abs_err = (box_outputs - box_targets).abs()
    quadratic = abs_err.clamp(max=delta)
    linear = abs_err - quadratic
    loss = 0.5 * quadratic * quadratic + delta * linear
    return torch.where(box_targets != 0.0, loss, 0.0).sum()


def detection_loss(
    cls_flat: Tensor,
    box_flat: Tensor,
    cls_targets: Tensor,
    box_targets: Tensor,
    num_positives: Tensor,
    cfg: ModelConfig,
    *,
    num_positives_total: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Total, class and box loss (float32 scalars) over a batch in anchor order.

    Args:
        cls_flat: [B, A, C] class logits (any float dtype; computed in float32).
        box_flat: [B, A, 4] box codes (ty, tx, th, tw).
        cls_targets, box_targets, num_positives: from `targets.assign`.
        cfg: model config (`loss.*`).
        num_positives_total: the number of positives to normalise by instead of
            `num_positives.sum()`, e.g. the sum all-reduced across ranks so that every rank
            uses the same normaliser. The `+ 1` (guard against zero positives) is still added.

    Returns:
        (total, cls_loss, box_loss) with total = cls_loss + box_loss_weight * box_loss,
        cls_loss = focal / normaliser and box_loss = huber / (4 * normaliser),
        normaliser = positives + 1.
    """
    loss_cfg = cfg.loss
    positives = num_positives.sum() if num_positives_total is None else num_positives_total
    normaliser = positives.to(loss_dtype(cls_flat)) + 1.0
    cls_loss = focal_loss(cls_flat, cls_targets, loss_cfg) / normaliser
    box = box_loss(box_flat, box_targets, loss_cfg.huber_delta) / (4.0 * normaliser)
    total = cls_loss + loss_cfg.box_loss_weight * box
    return total, cls_loss, box
