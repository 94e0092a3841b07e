"""Raw head outputs -> a fixed-size detection tensor: top-k, decode, class-aware NMS, top max_det.

Output rows are `x1, y1, x2, y2, score, class` (class 0-based, as float); each image has
`cfg.postprocess.max_det` rows, the first `counts[b]` of them real, sorted by score (descending,
ties by lower candidate index), the rest zero with class -1.

NMS is class-aware at IoU `cfg.postprocess.nms_iou`, through the operator `detlite::batched_nms`
(detlite/ops): the whole batch in one call with a fixed-size result, on a CUDA kernel where the
library is built. No shape depends on the data, so `postprocess` compiles with `fullgraph=True`
and no special compiler settings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detlite import ops
from detlite.anchors import decode, flatten_outputs
from detlite.config import ModelConfig


def _top_candidates(
    cls_flat: Tensor, box_flat: Tensor, anchors: Tensor, cfg: ModelConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Top (anchor, class) pairs per image: clipped xyxy boxes [B, K, 4], float32 logits and
    classes [B, K], in descending logit order."""
    _, num_anchors, num_classes = cls_flat.shape
    k = min(cfg.postprocess.max_detection_points, num_anchors * num_classes)
    logits, anchor_index, classes = top_k(cls_flat, k)

    codes = box_flat.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4)).float()
    boxes = _clip_to_input(decode(codes, anchors.float()[anchor_index]), cfg)
    return boxes, logits.float(), classes


def top_k(cls_flat: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k largest (anchor, class) logits of each image of `cls_flat` [B, A, C], descending:
    (logits, anchor indices, classes), each [B, k] — `cls_flat.reshape(B, -1).topk(k)`, read
    from the k anchors whose best class scores highest instead of from all A·C logits.

    The same values: those k anchors hold at least k logits >= t, the k-th largest best-class
    logit, so the k-th largest logit of the image is >= t too, and every logit above t has an
    anchor whose best class is above t, which is one of the k. Only the order among exactly
    equal values may differ from `Tensor.topk`, whose order of ties is unspecified too. One
    pass over the logits (their maximum per anchor) replaces a top-k over millions of them
    (D0 at 512 px, 90 classes: 4.4 M), which costs up to 2.4x more on a CPU
    (docs/performance.md)."""
    batch, num_anchors, num_classes = cls_flat.shape
    if num_anchors <= k:  # every anchor would be kept: nothing to pre-select
        values, flat_index = cls_flat.reshape(batch, -1).topk(k, dim=1)
        return values, flat_index // num_classes, flat_index % num_classes
    _, best_anchors = cls_flat.amax(dim=2).topk(k, dim=1, sorted=False)
    rows = cls_flat.gather(1, best_anchors.unsqueeze(-1).expand(-1, -1, num_classes))
    values, within = rows.reshape(batch, -1).topk(k, dim=1)
    return values, best_anchors.gather(1, within // num_classes), within % num_classes


def _clip_to_input(boxes: Tensor, cfg: ModelConfig) -> Tensor:
    image_h, image_w = cfg.image_size
    upper = boxes.new_tensor([image_w, image_h, image_w, image_h])
    return torch.minimum(boxes.clamp(min=0.0), upper)


def dense_detections(
    cls_outputs: list[Tensor], box_outputs: list[Tensor], anchors: Tensor, cfg: ModelConfig
) -> tuple[Tensor, Tensor]:
    """Every anchor's class scores [B, A, C] (sigmoid, float32) and decoded boxes [B, A, 4]
    (xyxy in input pixels, clipped to the input): what NMS chooses from, for runtimes that run
    their own (the ONNX export)."""
    cls_flat, box_flat = flatten_outputs(cls_outputs, box_outputs, cfg)
    boxes = decode(box_flat.float(), anchors.float())
    return cls_flat.float().sigmoid(), _clip_to_input(boxes, cfg)


def _nms(boxes: Tensor, logits: Tensor, classes: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    """Candidate indices of the detections [B, max_det] (0 past the count) and counts [B].

    The op visits candidates by logit, which orders them as the sigmoid scores do (it is
    monotonic) without the ties that float32 sigmoids of distinct large logits round to; equal
    logits go by lower index. Kept candidates come back in that order.
    """
    pp = cfg.postprocess
    keep, counts = ops.batched_nms(boxes, logits, classes, pp.nms_iou, pp.max_det)
    return keep.clamp(min=0), counts


def postprocess(
    cls_outputs: list[Tensor],
    box_outputs: list[Tensor],
    anchors: Tensor,
    cfg: ModelConfig,
    image_scales: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Detections from raw per-level head outputs.

    Args:
        cls_outputs: per level [B, A*C, H, W] class logits.
        box_outputs: per level [B, A*4, H, W] box codes (ty, tx, th, tw).
        anchors: [A_total, 4] xyxy from `generate_anchors`.
        cfg: model config (`image_size`, `postprocess.*`).
        image_scales: optional [B]; boxes (after clipping to the input image) are multiplied by
            it, e.g. to map them back to original image pixels.

    Returns:
        detections [B, max_det, 6] float32 and counts [B] int64 (real rows per image).
    """
    cls_flat, box_flat = flatten_outputs(cls_outputs, box_outputs, cfg)
    boxes, logits, classes = _top_candidates(cls_flat, box_flat, anchors, cfg)
    scores = logits.sigmoid()
    order, counts = _nms(boxes, logits, classes, cfg)
    batch = scores.shape[0]
    max_det = cfg.postprocess.max_det

    top_boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
    if image_scales is not None:
        top_boxes = top_boxes * image_scales.to(top_boxes.dtype).reshape(-1, 1, 1)
    top_scores = scores.gather(1, order).unsqueeze(-1)
    top_classes = classes.gather(1, order).to(top_boxes.dtype).unsqueeze(-1)
    rows = torch.cat([top_boxes, top_scores, top_classes], dim=-1)

    if rows.shape[1] < max_det:  # fewer candidates than output rows (tiny models only)
        rows = torch.cat([rows, rows.new_zeros(batch, max_det - rows.shape[1], 6)], dim=1)
    valid = torch.arange(max_det, device=rows.device) < counts.unsqueeze(-1)
    empty_row = rows.new_tensor([0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    detections = torch.where(valid.unsqueeze(-1), rows, empty_row)
    return detections, counts
