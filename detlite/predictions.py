"""Prediction on a folder of unannotated images: `predictions.json` (and drawings), for
`eval.py CKPT --predict DIR`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from . import checkpoint
from .data import CategoryMap, ImageFolder, eval_loader, read_image
from .detect import batch_predictor, detections
from .draw import draw_detections, drawing_name, save_image
from .layers import Params
from .steps import Predictor


@dataclass(frozen=True)
class FolderJob:
    """What to predict on and where the results go."""

    folder: Path
    checkpoint: Path
    output: Path
    batch_size: int
    draw: int
    min_score: float


def folder_category_map(path: Path, num_classes: int) -> CategoryMap:
    """The checkpoint's category map, or ids 0..C-1 named by number when it stores none."""
    try:
        return checkpoint.category_map(path, num_classes)
    except checkpoint.CheckpointError:
        numbers = tuple(range(num_classes))
        return CategoryMap(ids=numbers, names=tuple(str(i) for i in numbers))


def _entry(path: Path, kept: torch.Tensor, category_map: CategoryMap) -> dict:
    return {
        "file": str(path),
        "detections": [
            {
                "bbox_xyxy": [round(v, 2) for v in d[:4].tolist()],
                "score": round(float(d[4]), 4),
                "category_id": category_map.ids[int(d[5])],
                "category": category_map.names[int(d[5])],
            }
            for d in kept
        ],
    }


def predict_folder(job: FolderJob, predictor: Predictor, params: Params, device) -> dict:
    """Run on every image under `job.folder`; writes `predictions.json` (and `--draw` images)."""
    images = ImageFolder(job.folder)
    category_map = folder_category_map(job.checkpoint, predictor.cfg.num_classes)
    loader = eval_loader(
        images, image_size=predictor.cfg.image_size, batch_size=job.batch_size, num_workers=0
    )
    predictions, drawn = [], 0
    for batch, dets, counts in detections(batch_predictor(predictor, params), loader, device):
        for row, n, index in zip(
            dets.cpu(), counts.tolist(), batch["image_ids"].tolist(), strict=True
        ):
            if index < 0:
                continue
            kept = row[:n][row[:n, 4] >= job.min_score]
            path = images.paths[index]
            predictions.append(_entry(path, kept, category_map))
            if drawn < job.draw:
                names = category_map.names
                drawing = draw_detections(read_image(path), kept, names, job.min_score)
                save_image(job.output / "drawn" / drawing_name(path), drawing)
                drawn += 1
    (job.output / "predictions.json").write_text(json.dumps(predictions, indent=1))
    note = f"; drew {drawn} into {job.output / 'drawn'}" if drawn else ""
    Console().print(f"{len(predictions)} images → {job.output / 'predictions.json'}{note}")
    return {"images": len(predictions)}
