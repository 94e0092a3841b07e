"""COCO metrics: detections → COCO results format → the 12 pycocotools bbox metrics."""

from __future__ import annotations

import contextlib
import csv
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
    return coco_scores(coco_gt, results, image_ids)[0]


def coco_scores(
    coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None = None
) -> tuple[dict[str, float], list[dict]]:
    """The 12 COCO bbox metrics and the per-class AP rows (`per_class_ap`) of one evaluation."""
    if not results:
        # pycocotools cannot load an empty result list; nothing detected scores zero everywhere,
        # and no recall point is reached (-1, as COCOeval marks them).
        unreached = [-1.0] * len(COCOeval(iouType="bbox").params.recThrs)
        empty = {"AP": 0.0, "AP50": 0.0, "pr50": unreached, "pr": unreached}
        return dict.fromkeys(METRIC_NAMES, 0.0), [
            {**row, **empty} for row in _class_rows(coco_gt, image_ids)
        ]
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
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats, strict=True)}
    return metrics, per_class_ap(evaluator, coco_gt)


def per_class_ap(evaluator: COCOeval, coco_gt: COCO) -> list[dict]:
    """One row per category of an accumulated `evaluator`: AP over IoU 0.50:0.95 and AP50 (all
    areas, 100 detections), as COCOeval's summary computes them for one category (-1: no
    ground truth), with the number of ground-truth instances."""
    precision = evaluator.eval["precision"]  # [IoU, recall, category, area, max detections]
    rows = _class_rows(coco_gt, evaluator.params.imgIds)
    for k, row in enumerate(rows):
        at_all = precision[:, :, k, 0, -1]
        for name, values in (("AP", at_all), ("AP50", at_all[0])):
            valid = values[values > -1]
            row[name] = float(valid.mean()) if valid.size else -1.0
        # Precision at COCOeval's 101 recall points (-1 past the highest recall reached).
        row["pr50"] = at_all[0].round(4).tolist()
        row["pr"] = _mean_over_iou(at_all).round(4).tolist()
    return rows


def _mean_over_iou(precision: np.ndarray) -> np.ndarray:
    """[IoU, recall] precision → [recall], averaged over the IoUs where it is defined."""
    valid = precision > -1
    total = np.where(valid, precision, 0.0).sum(0)
    count = valid.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), -1.0)


def _class_rows(coco_gt: COCO, image_ids: Sequence[int] | None) -> list[dict]:
    """The categories in COCOeval's order (sorted ids) with their non-crowd instance counts."""
    ids = sorted(coco_gt.getCatIds())
    images = coco_gt.getImgIds() if image_ids is None or len(image_ids) == 0 else image_ids
    rows = []
    for category_id in ids:
        annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=images, catIds=[category_id]))
        rows.append(
            {
                "category_id": category_id,
                "name": coco_gt.loadCats(category_id)[0].get("name", str(category_id)),
                "instances": sum(1 for a in annotations if not a.get("iscrowd", 0)),
            }
        )
    return rows


def write_per_class_csv(path: Path, rows: list[dict]) -> None:
    """per_class_ap.csv: category id, name, instances, AP, AP50."""
    with open(path, "w", newline="") as f:
        columns = ["category_id", "name", "instances", "AP", "AP50"]
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def per_class_table(rows: list[dict], title: str = "AP per class"):
    """A rich Table of per-class AP, best first."""
    from rich.table import Table

    table = Table(title=title)
    for column, justify in (("class", "left"), ("instances", "right"), ("AP", "right"),
                            ("AP50", "right")):  # fmt: skip
        table.add_column(column, justify=justify)
    for row in sorted(rows, key=lambda r: -r["AP"]):
        cells = ["n/a" if row[k] < 0 else f"{row[k]:.4f}" for k in ("AP", "AP50")]
        table.add_row(row["name"], str(row["instances"]), *cells)
    return table


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
