"""The built-in dataset: procedurally generated shapes, written once as COCO JSON + JPEG files.

It is what detlite trains on when no data is given. Because it is written in the ordinary COCO
layout, it goes through exactly the loading path of real data (and its category ids are
deliberately sparse, 1, 3, 5, 7, 9, so the id <-> label mapping is exercised too).

Content: 5 classes of filled shapes (ellipse, rectangle, triangle, ring, cross), each with its own
base colour (jittered), at sizes from about 16 px to 60 % of the image and aspect ratios 1:2 to
2:1, on cluttered backgrounds (colour gradients, distractor strokes, sensor-like noise). Objects
may overlap (one later object covers at most a third of an earlier one's box, all of them
together at most half), about 8 % of images are empty, and a few images hold a crowd region: a
swarm of tiny ellipses annotated once with `iscrowd=1`. Image sides are 256-320 px. 512 training
and 128 validation images; generation takes about 5 s on 2 CPU cores.

Every pixel is a function of a fixed seed, the split and the image index, so regenerating gives
the same JPEG bytes and annotations (given the same libjpeg).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg

VERSION = "builtin-v1"
"""Directory name of this generation; change it whenever the generated content changes."""
CLASS_NAMES = ("ellipse", "rectangle", "triangle", "ring", "cross")
CATEGORY_IDS = (1, 3, 5, 7, 9)
CLASS_COLOURS = ((215, 45, 45), (45, 175, 65), (50, 85, 225), (235, 195, 35), (195, 60, 200))
SPLITS = {"train": 512, "val": 128}
_SPLIT_CODES = {"train": 0, "val": 1}  # part of every image's seed
IMAGE_SIDE = (256, 320)
"""Range of image heights and widths, pixels."""
MIN_OBJECT, MAX_OBJECT_FRACTION = 16.0, 0.6
EMPTY_FRACTION = 0.08
CROWD_FRACTION = 0.04
MAX_OBJECTS = 7
MAX_COVERED = 1 / 3
"""Largest fraction of an earlier object's box that one later object may cover."""
MAX_COVERED_TOTAL = 1 / 2
"""Largest fraction of an object's box that all later objects together may cover (bounded by
the sum of their overlaps, so the visible part is at least half)."""
JPEG_QUALITY = 90
_SEED = 20240601
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BuiltinPaths:
    """Where the built-in dataset lives; pass the pairs to `CocoDetection`."""

    root: Path
    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path


def default_cache_dir() -> Path:
    """`$DETLITE_BUILTIN_DIR`, else `$XDG_CACHE_HOME/detlite/builtin-v1` (`~/.cache` default)."""
    override = os.environ.get("DETLITE_BUILTIN_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "detlite" / VERSION


def _paths(root: Path) -> BuiltinPaths:
    return BuiltinPaths(
        root=root,
        train_json=root / "annotations" / "train.json",
        train_images=root / "train",
        val_json=root / "annotations" / "val.json",
        val_images=root / "val",
    )


def ensure_builtin(cache_dir: str | os.PathLike | None = None) -> BuiltinPaths:
    """The built-in dataset's paths, generating it first if `cache_dir` does not hold it.

    `cache_dir` is the dataset's own directory (default: `default_cache_dir()`). Generation
    writes into a temporary sibling directory and renames it into place, so an interrupted run
    never leaves a partial dataset, and concurrent callers (several ranks) cannot corrupt it.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (root / _MANIFEST).is_file():
        return _paths(root)
    if root.exists():
        raise FileExistsError(
            f"{root} exists but is not a complete built-in dataset (no {_MANIFEST}); "
            "remove it or choose another cache directory"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate(staging)
        try:
            os.rename(staging, root)
        except OSError:
            if not (root / _MANIFEST).is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _paths(root)


def generate(root: Path, splits: dict[str, int] = SPLITS) -> None:
    """Write the splits under `root` (which must exist): images, annotations, manifest.

    Image i of a split does not depend on how many images the split has, so a smaller `splits`
    gives a prefix of the full dataset (the tests rely on this).
    """
    (root / "annotations").mkdir()
    categories = [
        {"id": cid, "name": name, "supercategory": "shape"}
        for cid, name in zip(CATEGORY_IDS, CLASS_NAMES, strict=True)
    ]
    counts = {}
    threads = torch.get_num_threads()
    # torchvision's JPEG encoder is ~10x slower when torch may use several threads for it.
    torch.set_num_threads(1)
    noise_field = _noise_field()
    try:
        for split, num_images in splits.items():
            counts[split] = _write_split(root, split, num_images, categories, noise_field)
    finally:
        torch.set_num_threads(threads)
    (root / _MANIFEST).write_text(json.dumps({"version": VERSION, "splits": counts}))


def _write_split(
    root: Path,
    split: str,
    num_images: int,
    categories: list[dict],
    noise_field: np.ndarray,
) -> dict[str, int]:
    """Render, encode and write one split's images and its COCO JSON; returns its counts."""
    image_dir = root / split
    image_dir.mkdir()
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([_SEED, _SPLIT_CODES[split], index])
        pixels, objects = _render(rng, noise_field)
        image_id = index + 1
        file_name = f"{image_id:06d}.jpg"
        chw = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        (image_dir / file_name).write_bytes(
            encode_jpeg(chw, quality=JPEG_QUALITY).numpy().tobytes()
        )
        height, width = pixels.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for label, (x1, y1, x2, y2), area, crowd in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": area,
                    "iscrowd": int(crowd),
                    "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
                }
            )
    coco = {
        "info": {"description": f"detlite built-in shapes dataset ({VERSION}, {split})"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return {"images": len(images), "annotations": len(annotations)}


# --- rendering ------------------------------------------------------------------------------

Object = tuple[int, tuple[int, int, int, int], int, bool]
"""(label, (x1, y1, x2, y2) tight pixel box, pixel area, is crowd)."""


def _noise_field() -> np.ndarray:
    """Unit Gaussian noise, float32 HxWx3, large enough to crop any image's noise from.

    Drawing fresh noise for every image costs more than rendering it; a random crop of one
    shared field, at a per-image strength, looks the same to a detector."""
    side = 2 * IMAGE_SIDE[1]
    return np.random.default_rng([_SEED, 99]).standard_normal((side, side, 3), dtype=np.float32)


def _render(rng: np.random.Generator, noise_field: np.ndarray) -> tuple[np.ndarray, list[Object]]:
    """One image (uint8 HxWx3) and its objects."""
    height, width = (int(v) for v in rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1, size=2))
    canvas = _background(rng, height, width)
    for _ in range(int(rng.integers(3, 12))):
        _stroke(rng, canvas)

    objects: list[Object] = []
    if rng.random() < CROWD_FRACTION:
        objects.append(_crowd(rng, canvas))
    covered = [0.0] * len(objects)
    count = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(count):
        placed = _place(rng, canvas, [box for _, box, _, _ in objects], covered)
        if placed is not None:
            objects.append(placed)
            covered.append(0.0)

    top = int(rng.integers(0, noise_field.shape[0] - height + 1))
    left = int(rng.integers(0, noise_field.shape[1] - width + 1))
    canvas += noise_field[top : top + height, left : left + width] * np.float32(
        rng.uniform(3.0, 12.0)
    )
    return np.clip(canvas, 0, 255).astype(np.uint8), objects


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear gradient between two muted colours, float32 HxWx3."""
    grey = rng.uniform(70, 180)
    ends = 0.5 * grey + 0.5 * rng.uniform(40, 210, size=(2, 3))  # pulled towards grey: muted
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.arange(width, dtype=np.float32) * np.float32(np.cos(angle))
    ys = np.arange(height, dtype=np.float32) * np.float32(np.sin(angle))
    t = ys[:, None, None] + xs[None, :, None]  # H x W x 1, by broadcasting
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    start, step = ends[0].astype(np.float32), (ends[1] - ends[0]).astype(np.float32)
    return start + step * t


def _stroke(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A straight line segment of random colour and 1-3 px thickness."""
    height, width = canvas.shape[:2]
    (ax, bx), (ay, by) = rng.uniform(0, width, 2), rng.uniform(0, height, 2)
    half = rng.uniform(0.5, 1.5)
    colour = rng.uniform(20, 235, size=3)
    x0, x1 = int(max(0, min(ax, bx) - 2)), int(min(width, max(ax, bx) + 3))
    y0, y1 = int(max(0, min(ay, by) - 2)), int(min(height, max(ay, by) + 3))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = bx - ax, by - ay
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    dist = np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
    canvas[y0:y1, x0:x1][dist <= half] = colour


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray, variant: float) -> np.ndarray:
    """Pixels inside shape `label`, in coordinates where its box is [-1, 1]^2."""
    name = CLASS_NAMES[label]
    if name == "ellipse":
        return u * u + v * v <= 1.0
    if name == "rectangle":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if name == "triangle":
        v = v if variant < 0.5 else -v  # apex up or down
        return (np.abs(v) <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 + 0.15 * variant)
    if name == "cross":
        arm = 0.25 + 0.15 * variant
        inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        return inside & ((np.abs(u) <= arm) | (np.abs(v) <= arm))
    raise AssertionError(name)


def _draw(
    canvas: np.ndarray,
    label: int,
    cx: float,
    cy: float,
    w: float,
    h: float,
    variant: float,
    colour: np.ndarray,
) -> tuple[tuple[int, int, int, int], int] | None:
    """Paint a shape centred at (cx, cy) in a w x h box; its tight pixel box and area."""
    height, width = canvas.shape[:2]
    x0, x1 = max(0, int(np.floor(cx - w / 2))), min(width, int(np.ceil(cx + w / 2)))
    y0, y1 = max(0, int(np.floor(cy - h / 2))), min(height, int(np.ceil(cy + h / 2)))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5  # pixel centres
    mask = _shape_mask(label, (xs - cx) / (w / 2), (ys - cy) / (h / 2), variant)
    if not mask.any():
        return None
    canvas[y0:y1, x0:x1][mask] = colour
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
    return box, int(mask.sum())


def _class_colour(rng: np.random.Generator, label: int) -> np.ndarray:
    base = np.asarray(CLASS_COLOURS[label], dtype=np.float32)
    return np.clip(base * rng.uniform(0.75, 1.1) + rng.uniform(-25, 25, size=3), 0, 255)


def _intersections(box: tuple[float, float, float, float], earlier: list) -> np.ndarray:
    """Area of `box` overlapping each earlier box."""
    if not earlier:
        return np.zeros(0)
    e = np.asarray(earlier, dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(box[2], e[:, 2]) - np.maximum(box[0], e[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], e[:, 3]) - np.maximum(box[1], e[:, 1]), 0, None)
    return w * h


def _place(
    rng: np.random.Generator, canvas: np.ndarray, earlier: list, covered: list[float]
) -> Object | None:
    """Draw one object where it keeps every earlier one mostly visible (up to 20 tries).

    `covered[i]` is the area of earlier box i already overlapped by later objects; it is
    updated when the object is placed.
    """
    height, width = canvas.shape[:2]
    label = int(rng.integers(len(CLASS_NAMES)))
    variant = rng.random()
    colour = _class_colour(rng, label)
    largest = MAX_OBJECT_FRACTION * min(height, width)
    size = np.exp(rng.uniform(np.log(MIN_OBJECT), np.log(largest)))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    w = float(np.clip(size * np.sqrt(aspect), MIN_OBJECT * 0.75, 0.9 * width))
    h = float(np.clip(size / np.sqrt(aspect), MIN_OBJECT * 0.75, 0.9 * height))
    for _ in range(20):
        cx = rng.uniform(w / 2, width - w / 2)
        cy = rng.uniform(h / 2, height - h / 2)
        overlap = _intersections((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), earlier)
        areas = np.asarray([(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in earlier])
        if np.any(overlap > MAX_COVERED * areas) or np.any(
            np.asarray(covered) + overlap > MAX_COVERED_TOTAL * areas
        ):
            continue
        drawn = _draw(canvas, label, cx, cy, w, h, variant, colour)
        if drawn is None:
            return None
        box, area = drawn
        covered[:] = (np.asarray(covered) + overlap).tolist()
        return label, box, area, False
    return None


def _crowd(rng: np.random.Generator, canvas: np.ndarray) -> Object:
    """A swarm of tiny ellipses in one region, annotated once as a crowd of ellipses."""
    height, width = canvas.shape[:2]
    region_w, region_h = rng.uniform(60, 120, size=2)
    left, top = rng.uniform(0, width - region_w), rng.uniform(0, height - region_h)
    label = CLASS_NAMES.index("ellipse")
    x1, y1, x2, y2, area = width, height, 0, 0, 0
    for _ in range(int(rng.integers(15, 30))):
        d = rng.uniform(4, 8)
        cx, cy = (
            left + rng.uniform(d / 2, region_w - d / 2),
            top + rng.uniform(d / 2, region_h - d / 2),
        )
        drawn = _draw(canvas, label, cx, cy, d, d, 0.0, _class_colour(rng, label))
        if drawn is not None:
            (bx1, by1, bx2, by2), a = drawn
            x1, y1, x2, y2 = min(x1, bx1), min(y1, by1), max(x2, bx2), max(y2, by2)
            area += a
    return label, (x1, y1, x2, y2), area, True
