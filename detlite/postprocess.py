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
    batch, num_anchors, num_classes = cls_flat.shape
    k = min(cfg.postprocess.max_detection_points, num_anchors * num_classes)
    logits, flat_index = top_k(cls_flat.reshape(batch, -1), k)
    anchor_index = flat_index // num_classes
    classes = flat_index % num_classes

    codes = box_flat.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4)).float()
    boxes = _clip_to_input(decode(codes, anchors.float()[anchor_index]), cfg)
    return boxes, logits.float(), classes


_ROW_ELEMENTS = 1_000_000
"""About how many scores one partial top-k reads. Measured on a 2-core CPU (docs/performance.md):
one top-k over an image's 4.4 M scores (D0 at 512, 90 classes) takes 53 ms, in 4 parts 15 ms;
Lite0 at 320 (1.7 M) 11 ms against 7 in 2 parts; at batch 8 the parts break even or gain."""


def top_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`values.topk(k, dim=1)` of [B, N] (descending), computed as the top k of each of R
    equal parts of a row, then the top k of those R·k: the same values (every one of the k
    largest is among the k largest of its part), several times faster on a CPU for N of
    millions (on other devices: one `Tensor.topk`). Only the order among exactly equal values
    may differ from `Tensor.topk`, whose order of ties is unspecified too."""
    batch, n = values.shape
    # Parts only where they were measured to pay: on the CPU (on a GPU, one top-k already runs
    # in parallel). A symbolic size (a graph compiled for dynamic shapes) keeps the plain
    # top-k too: choosing the parts would guard on, or loop over, the symbol.
    splittable = values.device.type == "cpu" and isinstance(n, int)
    parts = _parts(n, k) if splittable else 1
    if parts == 1:
        return values.topk(k, dim=1)
    width = n // parts
    part_values, part_index = values.reshape(-1, width).topk(k, dim=1, sorted=False)
    offsets = torch.arange(0, n, width, device=values.device).repeat(batch).unsqueeze(1)
    part_values = part_values.reshape(batch, parts * k)
    part_index = (part_index + offsets).reshape(batch, parts * k)
    top_values, chosen = part_values.topk(k, dim=1)
    return top_values, part_index.gather(1, chosen)


def _parts(n: int, k: int) -> int:
    """The divisor of `n` nearest n / _ROW_ELEMENTS whose parts still hold k values."""
    target = max(1, round(n / _ROW_ELEMENTS))
    divisors = [d for d in range(1, 2 * target + 1) if n % d == 0 and n // d >= k]
    return min(divisors, key=lambda d: abs(d - target), default=1)


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
