"""The files of a run that a person reads (beside its checkpoints):

    config.json         the full resolved training config
    results.csv         one row per logged step; the evaluation columns filled where evaluated
    per_class_ap.csv    AP and AP50 per class of the latest evaluation
    pr_curves.json      precision at COCOeval's 101 recall points per class (latest evaluation)
    labels.json         instances per class and box sizes of the train split
    plots/              drawn from these files (`detlite.plot`)

`results.csv` is derived from `metrics.jsonl`, the record the trainer appends to, so it can be
rebuilt at any time, for a finished or a running run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import METRIC_NAMES, write_per_class_csv
from .rundir import CONFIG, LABELS, METRICS, PER_CLASS, PLOTS, PR_CURVES, RESULTS

__all__ = ["CONFIG", "LABELS", "METRICS", "PER_CLASS", "PLOTS", "PR_CURVES", "RESULTS"]
STEP_COLUMNS = (
    *("step", "epoch", "loss", "cls_loss", "box_loss", "lr"),
    *("img_per_s", "data_wait", "gt_overflow"),
)
COLUMNS = (*STEP_COLUMNS, *METRIC_NAMES)
_BOX_SAMPLE = 20_000  # box sizes kept for the label plot


def write_config(run_dir: Path, cfg: Any) -> None:
    text = json.dumps(dataclasses.asdict(cfg), indent=2, default=str)
    (Path(run_dir) / CONFIG).write_text(text + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of `metrics.jsonl`; a line cut short by a crash is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def result_rows(records: list[dict]) -> list[dict]:
    """One row per step, in step order; a step logged again after a resume keeps its newest
    record; an evaluation fills the metric columns of its step."""
    rows: dict[int, dict] = {}
    for record in records:
        if "step" not in record:
            continue
        row = rows.setdefault(int(record["step"]), {"step": int(record["step"])})
        if "eval" in record:
            row.update({k: record["eval"][k] for k in METRIC_NAMES if k in record["eval"]})
        else:
            row.update({k: record[k] for k in STEP_COLUMNS if k in record})
    return [rows[step] for step in sorted(rows)]


def write_results_csv(run_dir: Path, rows: list[dict]) -> Path:
    path = Path(run_dir) / RESULTS
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_evaluation(run_dir: Path, step: int, per_class: list[dict]) -> None:
    """The per-class AP table and precision-recall curves of the evaluation at `step`."""
    write_per_class_csv(Path(run_dir) / PER_CLASS, per_class)
    curves = {
        "step": step,
        "recall": np.linspace(0, 1, 101).round(2).tolist(),
        "classes": per_class,
    }
    (Path(run_dir) / PR_CURVES).write_text(json.dumps(curves))


def write_labels(run_dir: Path, boxes: np.ndarray, labels: np.ndarray, names: tuple) -> None:
    """Instances per class and (a sample of) box widths and heights of the train split."""
    kept = labels >= 0  # not ignore regions
    counts = np.bincount(labels[kept], minlength=len(names)).tolist()
    sizes = (boxes[kept, 2:] - boxes[kept, :2])[:: max(1, int(kept.sum()) // _BOX_SAMPLE)]
    data = {"names": list(names), "instances": counts, "box_wh": sizes.round(1).tolist()}
    (Path(run_dir) / LABELS).write_text(json.dumps(data))


def read_json(run_dir: Path, name: str) -> dict | None:
    path = Path(run_dir) / name
    return json.loads(path.read_text()) if path.is_file() else None
