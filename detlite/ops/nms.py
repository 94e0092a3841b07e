"""`detlite::batched_nms`: class-aware NMS over a batch of candidate sets, fixed-size output.

    batched_nms(boxes [B, K, 4], scores [B, K], classes [B, K], iou_threshold, max_det)
        -> keep [B, max_det] int64, count [B] int64

Per image, candidates are visited in order of score (descending; equal scores by lower index); a
candidate is kept unless an already kept candidate of the same class overlaps it with
IoU > iou_threshold. `keep[b, :count[b]]` are the indices (into K) of the first `max_det` kept
candidates in that order; the rest of the row is -1. The output shape does not depend on the
data, so a graph calling this op compiles with `fullgraph=True`.

IoU is computed in float64 (boxes x1, y1, x2, y2 in any float dtype), as
`inter / (area_i + area_j - inter)`, exactly as torchvision's CPU kernel does, so that CPU and
CUDA keep the same sets.

The reference kernel registered here runs torchvision's `nms` per image on the sorted
candidates (on a prefix of them that is just long enough, see `batched_nms_reference`), with
classes pushed apart by a coordinate offset (in float64, which holds float32 coordinates of
ordinary magnitude plus the offset exactly) and scores replaced by their rank, so that ties are
broken by index regardless of torchvision's sort. It serves CPU tensors, and CUDA tensors when
the CUDA library is not loaded; the CUDA library registers a bitmask kernel that never leaves
the device.
"""

from __future__ import annotations

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.nms)
from torch import Tensor

from detlite.ops.library import define

NAME = "detlite::batched_nms"

SCHEMA = (
    "(Tensor boxes, Tensor scores, Tensor classes, float iou_threshold, int max_det)"
    " -> (Tensor keep, Tensor count)"
)
define(NAME, SCHEMA)


def _on_reference_call(*tensors: Tensor) -> None:
    """Replaced by the package loader: warns once when CUDA tensors reach the reference kernel."""


_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INTS = (torch.int64, torch.int32)


def _check(boxes: Tensor, scores: Tensor, classes: Tensor, max_det: int) -> None:
    torch._check(
        boxes.dim() == 3 and boxes.shape[-1] == 4,
        lambda: f"batched_nms: boxes must be [B, K, 4], got shape {tuple(boxes.shape)}",
    )
    torch._check(
        scores.dim() == 2 and scores.shape == boxes.shape[:2],
        lambda: (
            f"batched_nms: scores must be [B, K] = {tuple(boxes.shape[:2])}, "
            f"got {tuple(scores.shape)}"
        ),
    )
    torch._check(
        classes.shape == scores.shape,
        lambda: (
            f"batched_nms: classes must be [B, K] = {tuple(boxes.shape[:2])}, "
            f"got {tuple(classes.shape)}"
        ),
    )
    torch._check(
        boxes.dtype in _FLOATS and scores.dtype in _FLOATS,
        lambda: (
            f"batched_nms: boxes and scores must be floating point, "
            f"got {boxes.dtype} and {scores.dtype}"
        ),
    )
    torch._check(
        classes.dtype in _INTS,
        lambda: f"batched_nms: classes must be int64 or int32, got {classes.dtype}",
    )
    torch._check(
        boxes.device == scores.device == classes.device,
        lambda: (
            f"batched_nms: boxes, scores, classes on different devices "
            f"({boxes.device}, {scores.device}, {classes.device})"
        ),
    )
    torch._check(max_det >= 0, lambda: f"batched_nms: max_det must be >= 0, got {max_det}")


def order_by_score(scores: Tensor) -> Tensor:
    """Per-row visiting order [B, K]: score descending, equal scores by lower index."""
    return scores.sort(dim=-1, descending=True, stable=True).indices


# Candidates the reference kernel first runs NMS over (in visiting order); it grows the prefix
# only while fewer than max_det of them survive.
_FIRST_PREFIX = 256


def _nms_prefix(
    boxes: Tensor, classes: Tensor, order: Tensor, rank: Tensor, iou_threshold: float, n: int
) -> Tensor:
    """Positions (into `order`) kept by greedy NMS over the first n candidates of one image."""
    sorted_boxes = boxes[order[:n]].double()
    sorted_classes = classes[order[:n]].double()
    # Boxes of class c lie in [lo + c * span, hi + c * span]: disjoint from every other class.
    span = sorted_boxes.max() - sorted_boxes.min() + 1.0
    shifted = sorted_boxes + (sorted_classes * span).unsqueeze(-1)
    return torch.ops.torchvision.nms(shifted, rank[:n], float(iou_threshold))


def batched_nms_reference(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, max_det: int
) -> tuple[Tensor, Tensor]:
    """Reference kernel (any device torchvision's nms runs on).

    Greedy NMS decides each candidate from the candidates before it alone, so NMS over a prefix
    of the visiting order keeps exactly the prefix's share of the full result: when at least
    max_det survive in the prefix, the answer is complete. The prefix starts at `_FIRST_PREFIX`
    candidates and grows 4x at a time (usually once or not at all), which avoids the quadratic
    cost of NMS over all K candidates.
    """
    _check(boxes, scores, classes, max_det)
    _on_reference_call(boxes)
    batch, num = scores.shape
    device = scores.device
    keep = torch.full((batch, max_det), -1, dtype=torch.int64, device=device)
    count = torch.zeros(batch, dtype=torch.int64, device=device)
    if num == 0 or max_det == 0:
        return keep, count
    order = order_by_score(scores)
    rank = torch.arange(num, 0, -1, dtype=torch.float64, device=device)  # strictly decreasing
    for b in range(batch):
        n = min(num, max(_FIRST_PREFIX, 2 * max_det))
        kept = _nms_prefix(boxes[b], classes[b], order[b], rank, iou_threshold, n)
        while kept.numel() < max_det and n < num:
            n = min(num, 4 * n)
            kept = _nms_prefix(boxes[b], classes[b], order[b], rank, iou_threshold, n)
        kept = kept[:max_det]
        keep[b, : kept.numel()] = order[b, kept]
        count[b] = kept.numel()
    return keep, count


torch.library.impl(NAME, "default", batched_nms_reference)


@torch.library.register_fake(NAME)
def _batched_nms_fake(boxes, scores, classes, iou_threshold, max_det):
    _check(boxes, scores, classes, max_det)
    batch = boxes.shape[0]
    keep = boxes.new_empty((batch, max_det), dtype=torch.int64)
    count = boxes.new_empty((batch,), dtype=torch.int64)
    return keep, count


def batched_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, max_det: int
) -> tuple[Tensor, Tensor]:
    """Class-aware NMS per image with a fixed-size result (see the module docstring).

    Returns keep [B, max_det] int64 (indices into K in score order, -1 padded) and
    count [B] int64. Not differentiable (the outputs are indices).
    """
    return torch.ops.detlite.batched_nms(
        boxes.contiguous(),
        scores.contiguous(),
        classes.contiguous(),
        float(iou_threshold),
        int(max_det),
    )
