"""Reference implementations the product's operators are checked against (tests and bench only).

- `plain_focal_loss`: the focal loss as a plain PyTorch expression, with [B, A, C] temporaries;
  `detlite::sigmoid_focal_loss` must equal it, value and gradient.
- `torchvision_nms`: class-aware NMS with torchvision's `nms` per image, in the calling
  convention of `detlite.postprocess._nms`, so post-processing can run through it instead of
  `detlite::batched_nms` (`with_torchvision_nms`).
- `plain_top_k`: `detlite.postprocess.top_k` as one `Tensor.topk` over every (anchor, class)
  logit of an image, the unoptimised path prediction is checked against.
- `torchvision_overlaps`, `per_box_crowd_coverage`: target assignment's IoU and crowd coverage
  as detlite computed them before 2026-12-04 (torchvision's `box_iou`; a division per box), so
  `detlite.targets.assign` can run through them (`with_torchvision_overlaps`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_area, nms
from torchvision.ops.boxes import _box_inter_union

from detlite import postprocess as postprocess_module
from detlite import targets as targets_module
from detlite.config import LossConfig, ModelConfig
from detlite.labels import IGNORE


def plain_focal_loss(logits: Tensor, cls_targets: Tensor, loss_cfg: LossConfig) -> Tensor:
    """Un-normalised focal loss summed over anchors and classes (float32 scalar), plain PyTorch.

    logits [B, A, C]; cls_targets [B, A] (class >= 0, -1 background, -2 ignored). The modulating
    factor and alpha use the hard 0/1 target; only the cross-entropy target is label-smoothed,
    so smoothing does not inflate the loss of easy negatives.
    """
    logits = logits.float()
    classes = torch.arange(logits.shape[-1], device=logits.device)
    target = (cls_targets.unsqueeze(-1) == classes).to(torch.float32)

    prob = logits.sigmoid()
    p_t = target * prob + (1.0 - target) * (1.0 - prob)
    alpha_t = target * loss_cfg.alpha + (1.0 - target) * (1.0 - loss_cfg.alpha)
    modulating = (1.0 - p_t) ** loss_cfg.gamma
    smoothing = loss_cfg.label_smoothing
    bce_target = target * (1.0 - smoothing) + 0.5 * smoothing if smoothing > 0 else target
    ce = F.binary_cross_entropy_with_logits(logits, bce_target, reduction="none")

    loss = alpha_t * modulating * ce
    counted = (cls_targets != IGNORE).unsqueeze(-1)
    return torch.where(counted, loss, 0.0).sum()


def _nms_keep_mask(boxes: Tensor, scores: Tensor, classes: Tensor, cfg: ModelConfig) -> Tensor:
    """Class-aware NMS of one image's candidates as a boolean mask [K].

    Boxes of different classes are shifted apart by more than the image size so that one plain
    `nms` call never lets them suppress each other. The shift is done in float64: in float32 an
    offset of ~90 * 512 would cost ~1e-2 px of precision and flip IoU decisions near the
    threshold; float64 holds the shifted float32 coordinates exactly.
    """
    offset = float(max(cfg.image_size) + 1)
    shifted = boxes.double() + (classes.double() * offset).unsqueeze(-1)
    kept = nms(shifted, scores.double(), cfg.postprocess.nms_iou)
    return torch.zeros_like(scores, dtype=torch.bool).index_fill(0, kept, True)


def torchvision_nms(
    boxes: Tensor, logits: Tensor, classes: Tensor, cfg: ModelConfig
) -> tuple[Tensor, Tensor]:
    """Candidate indices of the detections [B, min(max_det, K)] and counts [B], with torchvision.

    Rows past a count index suppressed candidates; post-processing masks them out.
    """
    scores = logits.sigmoid()
    batch, num_candidates = scores.shape
    max_det = cfg.postprocess.max_det
    keep = torch.stack([_nms_keep_mask(boxes[b], scores[b], classes[b], cfg) for b in range(batch)])
    counts = keep.sum(dim=1).clamp(max=max_det)
    # Suppressed candidates sink below every sigmoid score; a stable sort then ranks kept ones
    # by score with ties going to the lower candidate index (= the higher or equal logit).
    ranked = torch.where(keep, scores, -1.0)
    order = ranked.sort(dim=1, descending=True, stable=True).indices
    return order[:, : min(max_det, num_candidates)], counts


@contextlib.contextmanager
def with_torchvision_nms():
    """Within the block, `detlite.postprocess.postprocess` runs its NMS through torchvision."""
    saved = postprocess_module._nms
    postprocess_module._nms = torchvision_nms
    try:
        yield
    finally:
        postprocess_module._nms = saved


def plain_top_k(cls_flat: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k largest logits of [B, A, C] per image, with their anchors and classes, [B, k] each."""
    batch, _, num_classes = cls_flat.shape
    values, flat_index = cls_flat.reshape(batch, -1).topk(k, dim=1)
    return values, flat_index // num_classes, flat_index % num_classes


def torchvision_overlaps(gt_boxes: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """`detlite.targets.overlaps` through torchvision: (IoU, intersection), [B, M, A] each."""
    inter, union = _box_inter_union(gt_boxes, anchors)
    return inter / union, inter


def per_box_crowd_coverage(inter: Tensor, anchors: Tensor, crowd: Tensor) -> Tensor:
    """`detlite.targets._crowd_coverage` with each box's fraction divided out, then the largest."""
    fraction = inter / box_area(anchors)
    return torch.where(crowd.unsqueeze(-1), fraction, 0.0).amax(dim=1)


@contextlib.contextmanager
def with_torchvision_overlaps():
    """Within the block, `detlite.targets.assign` computes IoU and coverage as it used to."""
    saved = targets_module.overlaps, targets_module._crowd_coverage
    targets_module.overlaps = torchvision_overlaps
    targets_module._crowd_coverage = per_box_crowd_coverage
    try:
        yield
    finally:
        targets_module.overlaps, targets_module._crowd_coverage = saved
