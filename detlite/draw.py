"""Images with boxes drawn: predictions in one colour per class with "name score" labels, and
ground truth (when known) as white boxes, so the two never look alike. Labels that would cover
an earlier one are left off (the higher-scored box keeps its label), so they do not pile up."""

from __future__ import annotations

import colorsys
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import write_jpeg, write_png
from torchvision.transforms.functional import resize
from torchvision.utils import draw_bounding_boxes, make_grid

from .data import CategoryMap, CocoDetection, read_image

TRUTH_COLOUR = (255, 255, 255)
_LABEL_HEIGHT, _CHAR_WIDTH = 11, 6  # torchvision's default font, in pixels


def class_colour(label: int) -> tuple[int, int, int]:
    """A saturated colour per class (golden-ratio hues: neighbours differ), never white."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _labels_that_fit(boxes: Tensor, texts: list[str]) -> list[str]:
    """`texts` with "" where a label's rectangle would overlap one placed before it."""
    placed: list[tuple[float, float, float, float]] = []
    kept = []
    for (x1, y1, _, _), text in zip(boxes.tolist(), texts, strict=True):
        rect = (x1, y1, x1 + _CHAR_WIDTH * len(text), y1 + _LABEL_HEIGHT)
        clash = any(
            rect[0] < p[2] and p[0] < rect[2] and rect[1] < p[3] and p[1] < rect[3] for p in placed
        )
        kept.append("" if clash else text)
        if not clash:
            placed.append(rect)
    return kept


def draw_detections(
    image: Tensor,
    dets: Tensor,
    names: tuple[str, ...],
    min_score: float,
    truth: Tensor | None = None,
    scores: bool = True,
) -> Tensor:
    """`image` (uint8 [3, H, W]) with the rows of `dets` ([N, 6] xyxy, score, label, in its
    pixels) that score at least `min_score`, over the ground-truth boxes `truth` ([M, 4]);
    labelled "name score" (`scores=False`: the name only)."""
    if truth is not None and len(truth):
        image = draw_bounding_boxes(image, truth.float(), colors=TRUTH_COLOUR, width=1)
    dets = dets[dets[:, 4] >= min_score]
    dets = dets[dets[:, 4].argsort(descending=True)]
    if len(dets) == 0:
        return image
    labels = dets[:, 5].long().tolist()
    texts = [
        f"{names[c]} {s:.2f}" if scores else names[c]
        for c, s in zip(labels, dets[:, 4].tolist(), strict=True)
    ]
    return draw_bounding_boxes(
        image,
        dets[:, :4],
        labels=_labels_that_fit(dets[:, :4], texts),
        colors=[class_colour(c) for c in labels],
        width=2,
    )


def grid(images: list[Tensor], cell: int = 320, columns: int = 4) -> Tensor:
    """`images` (uint8 [3, H, W], any sizes) fitted into `cell`-pixel squares, in rows."""
    cells = []
    for image in images:
        scale = cell / max(image.shape[-2:])
        size = [max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale))]
        fitted = resize(image, size, antialias=True)
        canvas = torch.zeros(3, cell, cell, dtype=torch.uint8)
        canvas[:, : size[0], : size[1]] = fitted
        cells.append(canvas)
    return make_grid(cells, nrow=min(columns, len(cells)), padding=2, pad_value=64)


def save_image(path: Path, image: Tensor) -> None:
    """JPEG or PNG by the extension of `path` (other extensions: JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        write_png(image, str(path))
    else:
        write_jpeg(image, str(path), quality=90)


def drawing_name(source: Path) -> str:
    """The drawing of `source` keeps its name and, where we can write it, its extension."""
    keep = source.suffix.lower() in (".jpg", ".jpeg", ".png")
    return source.name if keep else f"{source.stem}.jpg"


def draw_results(
    dataset: CocoDetection,
    results: list[dict],
    category_map: CategoryMap,
    folder: Path,
    count: int,
    min_score: float,
) -> int:
    """Draw the COCO-format `results` and the ground truth of the first `count` images of
    `dataset` into `folder` (under their own file names); returns how many were drawn."""
    by_image = results_by_image(results)
    count = min(count, len(dataset))
    for index in range(count):
        path = dataset.image_path(index)
        save_image(
            folder / drawing_name(path),
            drawn_image(dataset, index, by_image, category_map, min_score),
        )
    return count


def drawn_image(dataset, index: int, by_image: dict, category_map: CategoryMap, min_score: float):
    """Image `index` of `dataset` with its ground truth and its results (`by_image[id]`)."""
    rows = [_xyxy_row(r, category_map) for r in by_image.get(dataset.image_id(index), [])]
    dets = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    truth, _ = dataset.annotations(index)
    image = read_image(dataset.image_path(index))
    return draw_detections(image, dets, category_map.names, min_score, truth)


def results_by_image(results: list[dict]) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    return by_image


def _xyxy_row(result: dict, category_map: CategoryMap) -> list[float]:
    x, y, w, h = result["bbox"]
    return [x, y, x + w, y + h, result["score"], category_map.id_to_label(result["category_id"])]
