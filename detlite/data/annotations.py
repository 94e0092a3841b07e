"""Reading a COCO annotation file, checked: every problem that would otherwise surface as a
`KeyError` deep in a data-loader worker (or not at all) is a `DataError` naming the file and the
entry.

Checked: JSON syntax (with line and column); `images`, `annotations` and `categories` lists;
every image has an integer `id` (unique), a `file_name`, and positive integer `height` and
`width`; every category an integer `id` (unique) and a `name`; every annotation an integer `id`
(unique), an `image_id` and `category_id` that exist, and a `bbox` of four finite numbers.
Missing `area` (w × h) and `iscrowd` (0), which pycocotools' evaluator needs, are filled in.
Boxes that are empty or outside their image are not errors: `CocoDetection` drops and counts
them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from detlite.errors import DataError

_SHOWN = 5  # ids listed in a message before "..."


def _ids(values) -> str:
    values = list(values)
    more = f", ... ({len(values)} in all)" if len(values) > _SHOWN else ""
    return ", ".join(map(str, values[:_SHOWN])) + more


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_json(path: Path) -> dict:
    """The parsed file, or a `DataError` that says where its syntax breaks."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such annotation file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a directory, not an annotation file") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text (JSON) file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the top level is a {type(data).__name__}, not a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise DataError(
                f"{path}: '{key}' is {found}, but a COCO detection file needs lists of images, "
                "annotations and categories"
            )
    return data


def _require(path: Path, kind: str, index: int, entry: Any, key: str, test, wanted: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {kind} #{index} is a {type(entry).__name__}, not an object")
    if key not in entry or not test(entry[key]):
        name = f"{kind} {entry['id']}" if _is_int(entry.get("id")) else f"{kind} #{index}"
        got = "missing" if key not in entry else f"{entry[key]!r}"
        raise DataError(f"{path}: {name} has '{key}' {got}; it must be {wanted}")


def _unique(path: Path, kind: str, ids: list[int]) -> None:
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise DataError(f"{path}: duplicate {kind} ids {_ids(repeated)}; ids must be unique")


def _check_images(path: Path, images: list) -> set[int]:
    positive = lambda v: _is_int(v) and v > 0  # noqa: E731
    for i, image in enumerate(images):
        _require(path, "image", i, image, "id", _is_int, "an integer")
        _require(path, "image", i, image, "file_name", lambda v: isinstance(v, str) and v, "a path")
        _require(path, "image", i, image, "height", positive, "a positive integer")
        _require(path, "image", i, image, "width", positive, "a positive integer")
    ids = [image["id"] for image in images]
    _unique(path, "image", ids)
    return set(ids)


def _check_categories(path: Path, categories: list) -> set[int]:
    if not categories:
        raise DataError(f"{path}: 'categories' is empty; list the classes to detect")
    for i, category in enumerate(categories):
        _require(path, "category", i, category, "id", _is_int, "an integer")
        _require(path, "category", i, category, "name", lambda v: isinstance(v, str), "a string")
    ids = [category["id"] for category in categories]
    _unique(path, "category", ids)
    return set(ids)


def _is_bbox(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(map(_is_number, value))


def _check_annotations(path: Path, annotations: list, images: set[int], categories: set[int]):
    for i, ann in enumerate(annotations):
        _require(path, "annotation", i, ann, "id", _is_int, "an integer")
        in_images = lambda v: _is_int(v) and v in images  # noqa: E731
        in_categories = lambda v: _is_int(v) and v in categories  # noqa: E731
        _require(path, "annotation", i, ann, "image_id", in_images, "the id of an image listed")
        _require(
            path, "annotation", i, ann, "category_id", in_categories, "the id of a category listed"
        )
        _require(path, "annotation", i, ann, "bbox", _is_bbox, "[x, y, width, height] numbers")
        if "iscrowd" in ann:
            _require(path, "annotation", i, ann, "iscrowd", lambda v: v in (0, 1), "0 or 1")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    _unique(path, "annotation", [ann["id"] for ann in annotations])


def load_coco(annotation_file: str | os.PathLike):
    """pycocotools `COCO` of a checked annotation file (parsed once, without its prints)."""
    from pycocotools.coco import COCO

    path = Path(annotation_file)
    data = read_json(path)
    images = _check_images(path, data["images"])
    categories = _check_categories(path, data["categories"])
    _check_annotations(path, data["annotations"], images, categories)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
