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
from torchvision.ops import box_area, box_iou

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


def _crowd_coverage(gt_boxes: Tensor, anchors: Tensor, crowd: Tensor) -> Tensor:
    """Largest fraction of each anchor's area covered by a crowd box, [B, A].

    Computed from the intersection itself, not recovered from the IoU: grid-aligned crowd boxes
    often cover anchors exactly at the threshold, where any rounding would flip the decision.
    """
    top_left = torch.maximum(gt_boxes[..., None, :2], anchors[:, :2])
    bottom_right = torch.minimum(gt_boxes[..., None, 2:], anchors[:, 2:])
    inter_wh = (bottom_right - top_left).clamp(min=0)
    ioa = inter_wh[..., 0] * inter_wh[..., 1] / box_area(anchors)
    return torch.where(crowd.unsqueeze(-1), ioa, 0.0).amax(dim=1)


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
    # box_iou broadcasts [B, M, 4] against the shared [A, 4] anchors into [B, M, A].
    iou = box_iou(gt_boxes, anchors)

    match = _match_anchors(iou, real, cfg)
    positive = match >= 0
    row = match.clamp(min=0)
    matched_labels = gt_labels.gather(1, row)
    cls_targets = torch.where(positive, matched_labels, match)

    # Anchors a crowd region mostly covers would otherwise be trained as confident negatives.
    covered = _crowd_coverage(gt_boxes, anchors, crowd) >= cfg.loss.crowd_ioa_threshold
    cls_targets = torch.where(covered & (cls_targets == BACKGROUND), IGNORE, cls_targets)

    matched_boxes = gt_boxes.gather(1, row.unsqueeze(-1).expand(-1, -1, 4))
    codes = encode(matched_boxes, anchors)
    box_targets = torch.where(positive.unsqueeze(-1), codes, 0.0)
    num_positives = positive.sum(dim=1).to(torch.float32)
    return cls_targets, box_targets, num_positives
