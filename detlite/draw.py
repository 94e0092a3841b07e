"""Images with their detections drawn: boxes with class names and scores, as JPEG files."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import write_jpeg
from torchvision.utils import draw_bounding_boxes

from .data import CategoryMap, CocoDetection, read_image


def draw_detections(
    image: Tensor, dets: Tensor, names: tuple[str, ...], min_score: float
) -> Tensor:
    """`image` (uint8 [3, H, W]) with the rows of `dets` ([N, 6] xyxy, score, label, in its
    pixels) that score at least `min_score` drawn on it."""
    dets = dets[dets[:, 4] >= min_score]
    if len(dets) == 0:
        return image
    labels = [
        f"{names[int(c)]} {s:.2f}"
        for c, s in zip(dets[:, 5].tolist(), dets[:, 4].tolist(), strict=True)
    ]
    return draw_bounding_boxes(image, dets[:, :4], labels=labels, width=2, colors="red")


def save_drawing(path: Path, image: Tensor, dets: Tensor, names: tuple[str, ...], min_score: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(draw_detections(image, dets, names, min_score), str(path))


def draw_results(
    dataset: CocoDetection,
    results: list[dict],
    category_map: CategoryMap,
    folder: Path,
    count: int,
    min_score: float,
) -> int:
    """Draw the COCO-format `results` of the first `count` images of `dataset` into `folder`
    (one `<image id>.jpg` each); returns how many were drawn."""
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    count = min(count, len(dataset))
    for index in range(count):
        image_id = dataset.image_id(index)
        rows = [_xyxy_row(r, category_map) for r in by_image.get(image_id, [])]
        dets = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
        image = read_image(dataset.image_path(index))
        save_drawing(folder / f"{image_id}.jpg", image, dets, category_map.names, min_score)
    return count


def _xyxy_row(result: dict, category_map: CategoryMap) -> list[float]:
    x, y, w, h = result["bbox"]
    return [x, y, x + w, y + h, result["score"], category_map.id_to_label(result["category_id"])]
