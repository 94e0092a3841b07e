"""Prediction on a folder of unannotated images: `predictions.json` (and drawings), for
`eval.py CKPT --predict DIR`, through `detlite.Detector`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from .data import ImageFolder, read_image
from .detector import Detector
from .draw import draw_detections, drawing_name, save_image


@dataclass(frozen=True)
class FolderJob:
    """What to predict on and where the results go."""

    folder: Path
    output: Path
    draw: int
    min_score: float


def _entry(path: Path, found: dict) -> dict:
    return {
        "file": str(path),
        "detections": [
            {
                "bbox_xyxy": [round(v, 2) for v in box],
                "score": round(score, 4),
                "category_id": category_id,
                "category": name,
            }
            for box, score, category_id, name in zip(
                found["boxes"].tolist(),
                found["scores"].tolist(),
                found["labels"].tolist(),
                found["names"],
                strict=True,
            )
        ],
    }


def _drawing(path: Path, found: dict, detector: Detector) -> torch.Tensor:
    classes = [detector.categories.id_to_label(i) for i in found["labels"].tolist()]
    rows = torch.cat(
        [
            found["boxes"],
            found["scores"][:, None],
            torch.tensor(classes, dtype=torch.float32)[:, None],
        ],
        dim=1,
    )
    return draw_detections(read_image(path), rows, detector.categories.names, min_score=0.0)


def predict_folder(job: FolderJob, detector: Detector) -> dict:
    """Run on every image under `job.folder`; writes `predictions.json` (and `--draw` images)."""
    paths = ImageFolder(job.folder).paths
    predictions, drawn = [], 0
    for start in range(0, len(paths), detector.batch_size):
        chunk = paths[start : start + detector.batch_size]
        for path, found in zip(chunk, detector.predict(chunk, job.min_score), strict=True):
            predictions.append(_entry(path, found))
            if drawn < job.draw:
                save_image(
                    job.output / "drawn" / drawing_name(path), _drawing(path, found, detector)
                )
                drawn += 1
    (job.output / "predictions.json").write_text(json.dumps(predictions, indent=1))
    note = f"; drew {drawn} into {job.output / 'drawn'}" if drawn else ""
    Console().print(f"{len(predictions)} images → {job.output / 'predictions.json'}{note}")
    return {"images": len(predictions)}
