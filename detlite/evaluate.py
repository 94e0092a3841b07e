"""COCO evaluation: detections → COCO results format → the 12 pycocotools metrics."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
METRIC_DESCRIPTIONS = (
    "AP @ IoU 0.50:0.95, all areas",
    "AP @ IoU 0.50",
    "AP @ IoU 0.75",
    "AP small (< 32² px)",
    "AP medium",
    "AP large (> 96² px)",
    "AR, 1 detection per image",
    "AR, 10 detections per image",
    "AR, 100 detections per image",
    "AR small",
    "AR medium",
    "AR large",
)
# As the reference evaluators: near-zero scores only add evaluation time.
MIN_SCORE = 0.001


def to_coco_results(
    detections: Tensor,
    counts: Tensor,
    image_ids: Sequence[int],
    label_to_category: Sequence[int],
    min_score: float = MIN_SCORE,
) -> list[dict]:
    """Rows (x1, y1, x2, y2, score, label) in original-image pixels → COCO result dicts.

    `label_to_category[label]` is the dataset's category id of a contiguous label.
    """
    detections = detections.detach().float().cpu()
    category = np.asarray(label_to_category)
    results = []
    for dets, n, image_id in zip(detections, counts.tolist(), image_ids, strict=True):
        dets = dets[:n]
        dets = dets[dets[:, 4] >= min_score].numpy()
        for x1, y1, x2, y2, score, label in dets:
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category[int(label)]),
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(score),
                }
            )
    return results


def coco_metrics(coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """The 12 COCO bbox metrics of `results` against `coco_gt` (restricted to `image_ids`)."""
    if not results:
        # pycocotools cannot load an empty result list; nothing detected scores zero everywhere.
        return dict.fromkeys(METRIC_NAMES, 0.0)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools reports -1 where a metric has no ground truth (e.g. no small objects).
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats, strict=True)}


def write_results(path: str | Path, results: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f)


def metrics_table(metrics: dict[str, float], title: str = "COCO bbox"):
    """A rich Table of the 12 metrics."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("meaning")
    table.add_column("value", justify="right")
    for name, meaning in zip(METRIC_NAMES, METRIC_DESCRIPTIONS, strict=True):
        value = metrics.get(name, float("nan"))
        table.add_row(name, meaning, "n/a" if value < 0 else f"{value:.4f}")
    return table


@torch.no_grad()
def evaluate(predict_batch, loader, coco_gt: COCO, category_map, device: torch.device) -> tuple[dict[str, float], list[dict]]:
    """mAP over a COCO split. `predict_batch(batch)` → (detections, counts) in original-image
    pixels (e.g. `model.predict(..., image_scales=1 / batch["scales"])`); boxes are clipped to
    each original image here, padding rows skipped, results gathered from every rank."""
    from .data import DevicePrefetcher
    from .postprocess import DYNAMO_CONFIG

    results: list[dict] = []
    with torch._dynamo.config.patch(**DYNAMO_CONFIG):
        for batch in DevicePrefetcher(loader, device):
            dets, counts = predict_batch(batch)
            dets = clip_to_images(dets, batch["orig_sizes"])
            keep = (batch["image_ids"] >= 0).nonzero().flatten().tolist()
            results += to_coco_results(
                dets[keep], counts[keep], batch["image_ids"][keep].tolist(), category_map.ids
            )
    results = gather_results(results)
    return coco_metrics(coco_gt, results, coco_gt.getImgIds()), results


def clip_to_images(dets: Tensor, orig_sizes: Tensor) -> Tensor:
    """Clip mapped-back boxes to each original image (the canvas padding maps outside it)."""
    h = orig_sizes[:, 0].to(dets.dtype).view(-1, 1)
    w = orig_sizes[:, 1].to(dets.dtype).view(-1, 1)
    boxes = dets[..., :4].clone()
    boxes[..., 0::2] = torch.minimum(boxes[..., 0::2].clamp(min=0), w.unsqueeze(-1))
    boxes[..., 1::2] = torch.minimum(boxes[..., 1::2].clamp(min=0), h.unsqueeze(-1))
    return torch.cat([boxes, dets[..., 4:]], dim=-1)


@torch.no_grad()
def gather_results(local: list[dict]) -> list[dict]:
    """All ranks' results on every rank (identity in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    gathered: list[list[dict] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    return [r for part in gathered for r in (part or [])]
