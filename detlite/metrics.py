"""COCO metrics: detections → COCO results format → the 12 pycocotools bbox metrics."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
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


def coco_metrics(
    coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """The 12 COCO bbox metrics of `results` against `coco_gt` (restricted to `image_ids`)."""
    if not results:
        # pycocotools cannot load an empty result list; nothing detected scores zero everywhere.
        return dict.fromkeys(METRIC_NAMES, 0.0)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        # loadRes adds fields (area, id, ...) to the dicts it is given: give it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted({int(i) for i in image_ids})
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
