"""Batched anchor assignment on the device: ground truth -> per-anchor class and box targets.

Ground truth is padded to a fixed number of rows M: `gt_boxes [B, M, 4]` (x1, y1, x2, y2 in input
pixels) and `gt_labels [B, M]` with class ids >= 0, `BACKGROUND` (-1) for padding and `IGNORE` (-2)
for crowd / ignore regions (detlite.labels). Everything is computed for the whole batch at once
with static shapes, so it compiles with `fullgraph=True` and runs next to the model instead of in
data-loader workers.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_area

from detlite.anchors import encode
from detlite.config import ModelConfig
from detlite.labels import BACKGROUND, IGNORE


def _match_anchors(iou: Tensor, real: Tensor, cfg: ModelConfig) -> Tensor:
    """Per anchor, the index of its matched gt row, or BACKGROUND / IGNORE. [B, A] int64.

    Reproduces the reference ArgMaxMatcher with force_match_for_each_row: every anchor takes its
    highest-IoU real box (first such row on ties) and is positive at >= match_threshold,
    background below unmatch_threshold and ignored in between; then every real box claims its
    own best anchor (first such anchor on ties), overriding that anchor's result, with the
    lowest row winning when several boxes claim the same anchor.
    """
    batch, num_rows, num_anchors = iou.shape
    # IoU is never negative, so -1 keeps padding and crowd rows out of every argmax over rows.
    iou_real = torch.where(real.unsqueeze(-1), iou, -1.0)
    best_iou, best_row = iou_real.max(dim=1)
    loss_cfg = cfg.loss
    match = torch.where(best_iou >= loss_cfg.match_threshold, best_row, IGNORE)
    match = torch.where(best_iou < loss_cfg.unmatch_threshold, BACKGROUND, match)

    best_anchor = iou.argmax(dim=2)  # [B, M]
    rows = torch.arange(num_rows, device=iou.device).expand(batch, num_rows)
    # `num_rows` is a "no claim" sentinel larger than every row id, so a scatter with `amin`
    # leaves the lowest claiming real row per anchor and ignores rows that are not real.
    claims = torch.where(real, rows, num_rows)
    forced_row = torch.full((batch, num_anchors), num_rows, dtype=torch.long, device=iou.device)
    forced_row = forced_row.scatter_reduce(1, best_anchor, claims, reduce="amin")
    return torch.where(forced_row < num_rows, forced_row, match)


def overlaps(gt_boxes: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and intersection area of each gt box with each anchor, [B, M, A] each.

    torchvision's `box_iou` pairs the boxes up as [B, M, A, 2] tensors, whose last axis of 2
    keeps its element-wise ops from vectorising; here each coordinate is one [A]-long row of the
    (transposed) anchors, so every op runs along A: about 3x faster on the CPU, and the same
    operations in the same order as `box_iou`, so the same bits in float32 and float64
    (tests/test_targets_loss.py; in half precision torchvision upcasts, but `assign` works in
    the anchors' float32).
    """
    ax1, ay1, ax2, ay2 = anchors.T.contiguous()
    x1, y1, x2, y2 = gt_boxes.unsqueeze(-1).unbind(dim=2)  # each [B, M, 1]
    width = torch.minimum(x2, ax2).sub_(torch.maximum(x1, ax1)).clamp_(min=0)
    height = torch.minimum(y2, ay2).sub_(torch.maximum(y1, ay1)).clamp_(min=0)
    inter = width.mul_(height)
    union = (box_area(gt_boxes).unsqueeze(-1) + box_area(anchors)).sub_(inter)
    return inter / union, inter


def _crowd_coverage(inter: Tensor, anchors: Tensor, crowd: Tensor) -> Tensor:
    """Largest fraction of each anchor's area covered by a crowd box, [B, A].

    Computed from the intersection itself, not recovered from the IoU: grid-aligned crowd boxes
    often cover anchors exactly at the threshold, where any rounding would flip the decision.
    The largest intersection is divided once: rounding a quotient never reverses an order, so
    this is the largest of the per-box fractions, bit for bit (anchors have positive area),
    without a [B, M, A] division.
    """
    return torch.where(crowd.unsqueeze(-1), inter, 0.0).amax(dim=1) / box_area(anchors)


def assign(
    anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, cfg: ModelConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Match anchors to padded ground truth.

    Args:
        anchors: [A, 4] xyxy, from `generate_anchors`.
        gt_boxes: [B, M, 4] xyxy in input pixels (padding rows may hold anything finite).
        gt_labels: [B, M] int64: class >= 0, -1 padding, -2 crowd / ignore region.
        cfg: model config (`loss.match_threshold`, `loss.unmatch_threshold`,
            `loss.crowd_ioa_threshold`).

    Returns:
        cls_targets: [B, A] int64, class >= 0 for positives, -1 background, -2 ignored.
        box_targets: [B, A, 4] (ty, tx, th, tw) codes of the matched box, zero elsewhere.
        num_positives: [B] float32, positive anchors per image.
    """
    gt_boxes = gt_boxes.to(anchors.dtype)
    real = gt_labels >= 0
    crowd = gt_labels == IGNORE
    iou, inter = overlaps(gt_boxes, anchors)  # [B, M, A] each

    match = _match_anchors(iou, real, cfg)
    positive = match >= 0
    row = match.clamp(min=0)
    matched_labels = gt_labels.gather(1, row)
    cls_targets = torch.where(positive, matched_labels, match)

    # Anchors a crowd region mostly covers would otherwise be trained as confident negatives.
    covered = _crowd_coverage(inter, anchors, crowd) >= cfg.loss.crowd_ioa_threshold
    cls_targets = torch.where(covered & (cls_targets == BACKGROUND), IGNORE, cls_targets)

    matched_boxes = gt_boxes.gather(1, row.unsqueeze(-1).expand(-1, -1, 4))
    codes = encode(matched_boxes, anchors)
    box_targets = torch.where(positive.unsqueeze(-1), codes, 0.0)
    num_positives = positive.sum(dim=1).to(torch.float32)
    return cls_targets, box_targets, num_positives
