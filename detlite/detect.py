"""Detections for the batches of an evaluation loader, in original-image pixels.

The one place where an `EvalBatch` meets the predictor: both COCO evaluation and prediction on a
folder of images go through `detections`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .data import DevicePrefetcher
from .data.loader import batches_of
from .errors import Interrupted
from .layers import Params
from .steps import Predictor
from .stopping import StopRequest

PredictBatch = Callable[[dict[str, Any]], tuple[Tensor, Tensor]]


def batch_predictor(predictor: Predictor, params: Params) -> PredictBatch:
    """`predict(batch)` for evaluation batches: detections in original-image pixels."""
    return lambda batch: predictor(params, batch["images"], batch["inv_scales"])


def clip_to_images(dets: Tensor, orig_sizes: Tensor) -> Tensor:
    """Clip mapped-back boxes to each original image (the canvas padding maps outside it)."""
    h = orig_sizes[:, 0].to(dets.dtype).view(-1, 1)
    w = orig_sizes[:, 1].to(dets.dtype).view(-1, 1)
    boxes = dets[..., :4].clone()
    boxes[..., 0::2] = torch.minimum(boxes[..., 0::2].clamp(min=0), w.unsqueeze(-1))
    boxes[..., 1::2] = torch.minimum(boxes[..., 1::2].clamp(min=0), h.unsqueeze(-1))
    return torch.cat([boxes, dets[..., 4:]], dim=-1)


@torch.no_grad()
def detections(
    predict_batch: PredictBatch, loader, device: torch.device, stop: StopRequest | None = None
) -> Iterator[tuple[dict[str, Any], Tensor, Tensor]]:
    """(batch, detections clipped to the original images, counts) per batch; rows of padding
    images (`image_ids < 0`) are still there for the caller to skip. A requested `stop` ends
    the pass between batches (`Interrupted`)."""
    for batch in DevicePrefetcher(batches_of(loader), device):
        if stop is not None and stop.requested:
            raise Interrupted(f"evaluation stopped by {stop.name}", stop.signum)
        dets, counts = predict_batch(batch)
        yield batch, clip_to_images(dets, batch["orig_sizes"]), counts
