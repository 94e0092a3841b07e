"""COCO-format detection data: a JSON annotation file plus a folder of images.

Annotations are read once, checked (annotations.py), and kept in flat numpy arrays (not
per-image Python objects), so data-loader workers forked from the main process share them
without copying. Every image file is checked to exist when the dataset is built.

What happens to each annotation:
- `bbox [x, y, w, h]` becomes `x1, y1, x2, y2`, clipped to the image;
- category ids (any sparse set, e.g. 1, 7, 90) become contiguous labels 0..C-1 in ascending id
  order (`CategoryMap`);
- `iscrowd=1` or `ignore=1` becomes label `IGNORE` (-2): an ignore region, never a positive;
- boxes with width or height under 1 px (after clipping; empty, negative or outside the image)
  are dropped and counted, their ids kept for the report (`CocoStats`);
- images without any annotation are kept as negatives.

An image that cannot be read or decoded raises `UnreadableImageError` naming the file; the
training loader decides what to do with it (`--data.bad-images`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file

from detlite.data.annotations import load_coco
from detlite.errors import DataError
from detlite.labels import IGNORE

_SHOWN = 5  # ids or files listed in a message


class UnreadableImageError(DataError, RuntimeError):
    """An image file is missing, unreadable or not a decodable image."""


class Sample(NamedTuple):
    """One image and its ground truth, in pixels of that image."""

    image: Tensor
    """uint8 `[3, H, W]` RGB."""
    boxes: Tensor
    """float32 `[N, 4]` xyxy."""
    labels: Tensor
    """int64 `[N]`: contiguous class >= 0, or `IGNORE` (-2) for crowd / ignore regions."""
    image_id: int
    """The image's id in the annotation file (or its index for `ImageFolder`)."""
    unreadable: tuple[str, ...] = ()
    """Why the images skipped in favour of this one could not be read (training only)."""


@dataclass(frozen=True)
class CategoryMap:
    """Maps dataset category ids to the contiguous labels 0..C-1 the model predicts, and back.

    Stored in every checkpoint, so predictions map back to the ids of the data it was trained on.
    """

    ids: tuple[int, ...]
    """Category id of each label: label `i` is category `ids[i]`."""
    names: tuple[str, ...]
    """Category name of each label."""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise ValueError(f"{len(self.ids)} category ids but {len(self.names)} names")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"duplicate category ids in {self.ids}")

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    def label_to_id(self, label: int) -> int:
        return self.ids[label]

    def id_to_label(self, category_id: int) -> int:
        try:
            return self.ids.index(category_id)
        except ValueError:
            raise KeyError(f"category id {category_id} is not in {self.ids}") from None

    def labels_to_ids(self, labels: Tensor) -> Tensor:
        """Vectorised `label_to_id` for a tensor of labels >= 0 (same device and shape)."""
        table = torch.tensor(self.ids, dtype=torch.int64, device=labels.device)
        return table[labels.long()]

    def to_json(self) -> str:
        return json.dumps({"ids": list(self.ids), "names": list(self.names)})

    @classmethod
    def from_json(cls, text: str) -> CategoryMap:
        data = json.loads(text)
        return cls(ids=tuple(int(i) for i in data["ids"]), names=tuple(data["names"]))

    @classmethod
    def from_categories(cls, categories: list[dict]) -> CategoryMap:
        """From a COCO `categories` list: labels follow ascending category id."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(
            ids=tuple(int(c["id"]) for c in ordered), names=tuple(c["name"] for c in ordered)
        )

    @classmethod
    def of_coco(cls, coco) -> CategoryMap:
        """The categories of a pycocotools `COCO` object."""
        return cls.from_categories(coco.loadCats(coco.getCatIds()))


@dataclass(frozen=True)
class CocoStats:
    """What loading the annotations kept and dropped."""

    images: int
    boxes: int
    """Boxes of real classes kept."""
    crowd: int
    """Crowd / ignore regions kept as label -2."""
    degenerate: int
    """Boxes dropped because width or height was under 1 px after clipping to the image."""
    negatives: int
    """Images with no box at all (kept)."""
    degenerate_ids: tuple[int, ...] = ()
    """Annotation ids of the first dropped boxes."""

    def report(self, name: str) -> str | None:
        """One line on the dropped boxes of split `name`, or None when none were dropped."""
        if not self.degenerate:
            return None
        ids = ", ".join(map(str, self.degenerate_ids))
        more = ", ..." if self.degenerate > len(self.degenerate_ids) else ""
        return (
            f"{name}: dropped {self.degenerate} box(es) under 1 px wide or high after clipping "
            f"to their image (annotation ids {ids}{more})"
        )


def read_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file to uint8 `[3, H, W]` RGB (grayscale and alpha are converted)."""
    try:
        data = read_file(str(path))
        return decode_image(data, mode=ImageReadMode.RGB)
    except Exception as err:  # torchvision raises RuntimeError / ValueError / OSError variously
        # torchvision prefixes its reason with the C++ source location; the reason is the end.
        reason = str(err).rsplit(", ", 1)[-1].strip() or type(err).__name__
        raise UnreadableImageError(f"cannot read image {path}: {reason}") from err


class CocoDetection:
    """A COCO-format detection dataset; `dataset[i]` is a `Sample` of the i-th image.

    Images are ordered by ascending image id, so index `i` means the same image every run.

    Args:
        annotation_file: COCO JSON (`images`, `annotations`, `categories`).
        image_dir: folder that `images[*].file_name` is relative to.
        category_map: labels to use instead of the file's own categories (e.g. the map stored
            in a checkpoint being fine-tuned or evaluated); annotations of categories missing
            from it are an error.
        coco: the file already parsed by `load_coco` (evaluation needs it too), so that it is
            parsed once; the dataset keeps only flat arrays, not this object.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        category_map: CategoryMap | None = None,
        *,
        coco=None,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        coco = coco if coco is not None else load_coco(self.annotation_file)
        self.category_map = category_map or CategoryMap.of_coco(coco)
        image_ids = sorted(coco.getImgIds())
        self._image_ids = np.asarray(image_ids, dtype=np.int64)
        infos = coco.loadImgs(image_ids)
        self._file_names = np.asarray([info["file_name"] for info in infos])
        self._sizes = np.asarray([(info["height"], info["width"]) for info in infos], np.int64)
        self._check_files()
        self._read_boxes(coco, image_ids)

    def _check_files(self) -> None:
        """Every image file exists (found now, not after hours of training)."""
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: no such image folder (for {self.annotation_file})")
        missing = [str(f) for f in self._file_names if not (self.image_dir / str(f)).is_file()]
        if missing:
            listed = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
            raise DataError(
                f"{self.annotation_file}: {len(missing)} of {len(self)} image files are not in "
                f"{self.image_dir} ({listed}) — check the image folder flag or the file names"
            )

    def _read_boxes(self, coco, image_ids: list[int]) -> None:
        """Flat box, label and per-image offset arrays, and the statistics of what was kept."""
        label_of = {cid: label for label, cid in enumerate(self.category_map.ids)}
        boxes: list[list[float]] = []
        labels: list[int] = []
        offsets = [0]
        degenerate: list[int] = []
        negatives = 0
        for image_id, (height, width) in zip(image_ids, self._sizes.tolist(), strict=True):
            for ann in coco.imgToAnns.get(image_id, []):
                box = _clipped_xyxy(ann["bbox"], height, width)
                if box is None:
                    degenerate.append(ann["id"])
                    continue
                boxes.append(box)
                labels.append(self._label(ann, label_of))
            negatives += len(boxes) == offsets[-1]
            offsets.append(len(boxes))

        self._boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self._labels = np.asarray(labels, dtype=np.int64)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        crowd = int((self._labels == IGNORE).sum())
        self.stats = CocoStats(
            images=len(image_ids),
            boxes=len(boxes) - crowd,
            crowd=crowd,
            degenerate=len(degenerate),
            negatives=negatives,
            degenerate_ids=tuple(degenerate[:_SHOWN]),
        )

    def _label(self, ann: dict, label_of: dict[int, int]) -> int:
        if ann.get("iscrowd", 0) or ann.get("ignore", 0):
            return IGNORE
        category = ann["category_id"]
        if category not in label_of:
            raise ValueError(
                f"{self.annotation_file}: annotation {ann.get('id')} has category id "
                f"{category}, which is not in the category map {self.category_map.ids}"
            )
        return label_of[category]

    def __len__(self) -> int:
        return len(self._image_ids)

    @property
    def num_classes(self) -> int:
        return self.category_map.num_classes

    def image_id(self, index: int) -> int:
        return int(self._image_ids[index])

    def image_path(self, index: int) -> Path:
        return self.image_dir / str(self._file_names[index])

    def all_annotations(self) -> tuple[np.ndarray, np.ndarray]:
        """`(boxes [N, 4], labels [N])` of every image together (ignore regions labelled -2)."""
        return self._boxes, self._labels

    def annotations(self, index: int) -> tuple[Tensor, Tensor]:
        """`(boxes [N, 4], labels [N])` of the i-th image, without decoding it."""
        start, stop = self._offsets[index], self._offsets[index + 1]
        return torch.from_numpy(self._boxes[start:stop].copy()), torch.from_numpy(
            self._labels[start:stop].copy()
        )

    def __getitem__(self, index: int) -> Sample:
        path = self.image_path(index)
        image = read_image(path)
        height, width = self._sizes[index].tolist()
        if tuple(image.shape[-2:]) != (height, width):
            raise UnreadableImageError(
                f"image {path} decodes to {tuple(image.shape[-2:])} (height, width) but the "
                f"annotation file says ({height}, {width}); its boxes would not line up"
            )
        boxes, labels = self.annotations(index)
        return Sample(image, boxes, labels, self.image_id(index))


def _clipped_xyxy(bbox, height: int, width: int) -> list[float] | None:
    """COCO `[x, y, w, h]` as `[x1, y1, x2, y2]` clipped to the image, or None when the result
    is under 1 px wide or high (empty, negative or outside the image)."""
    x, y, w, h = (float(v) for v in bbox)
    x1, x2 = min(max(x, 0.0), width), min(max(x + w, 0.0), width)
    y1, y2 = min(max(y, 0.0), height), min(max(y + h, 0.0), height)
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return None
    return [x1, y1, x2, y2]
