"""Evaluation batches: images fitted to the model input, sharded by rank, padded to full
batches; and `ImageFolder`, unannotated images to predict on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from detlite.data.coco import Sample, read_image
from detlite.data.loader import worker_kwargs
from detlite.data.transforms import DEFAULT_FILL, Size, as_hw, eval_transform
from detlite.errors import PathError


class EvalBatch(TypedDict):
    """An evaluation batch. Rows with `image_ids < 0` pad the last batch and must be skipped."""

    images: Tensor
    """uint8 `[B, 3, H, W]`: each image resized to fit, pasted top-left."""
    image_ids: Tensor
    """int64 `[B]`; -1 for padding rows."""
    scales: Tensor
    """float32 `[B]`: model pixels per original pixel; `original_xyxy = model_xyxy / scale`."""
    inv_scales: Tensor
    """float32 `[B]`: `1 / scales`, original pixels per model pixel: the factor to multiply
    model-pixel boxes by (what `detlite.model.predict(..., image_scales=...)` takes)."""
    orig_sizes: Tensor
    """int64 `[B, 2]`: (height, width) of the original image, for clipping mapped-back boxes."""


class _EvalItem(NamedTuple):
    image: Tensor
    image_id: int
    scale: float
    orig_size: tuple[int, int]


class _Fitted(Dataset):
    """`dataset[i]` -> the image resized to fit the model input; index -1 is a padding row."""

    def __init__(self, dataset: Any, image_size: Size, fill: tuple[int, int, int]) -> None:
        self.dataset = dataset
        self.image_size = as_hw(image_size)
        self.fill = fill

    def __getitem__(self, index: int) -> _EvalItem:
        if index < 0:
            blank = (
                torch.tensor(self.fill, dtype=torch.uint8).view(3, 1, 1).expand(3, *self.image_size)
            )
            return _EvalItem(blank.clone(), -1, 1.0, (0, 0))
        sample = self.dataset[index]
        canvas, scale = eval_transform(sample.image, self.image_size, self.fill)
        return _EvalItem(canvas, sample.image_id, scale, tuple(sample.image.shape[-2:]))


def collate_eval(items: Sequence[_EvalItem]) -> EvalBatch:
    return EvalBatch(
        images=torch.stack([item.image for item in items]),
        image_ids=torch.tensor([item.image_id for item in items], dtype=torch.int64),
        scales=torch.tensor([item.scale for item in items], dtype=torch.float32),
        inv_scales=torch.tensor([1.0 / item.scale for item in items], dtype=torch.float32),
        orig_sizes=torch.tensor([item.orig_size for item in items], dtype=torch.int64),
    )


def eval_batches(
    num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's evaluation batches: indices rank, rank + world_size, ... in order, padded
    with -1 to full batches. Across ranks every image appears exactly once, and every rank has
    the same number of batches (so per-batch collectives, if any, stay in step)."""
    mine = list(range(rank, num_samples, world_size))
    per_rank = -(-num_samples // world_size)
    num_batches = max(1, -(-per_rank // batch_size))
    mine += [-1] * (num_batches * batch_size - len(mine))
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def eval_loader(
    dataset: Any,
    *,
    image_size: Size,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    fill: tuple[int, int, int] = DEFAULT_FILL,
) -> DataLoader:
    """Fixed-shape `EvalBatch`es of `dataset` (a `CocoDetection` or an `ImageFolder`), sharded
    by rank without augmentation. Reusable across evaluations (its workers persist)."""
    return DataLoader(
        _Fitted(dataset, image_size, fill),
        batch_sampler=eval_batches(len(dataset), batch_size, rank, world_size),
        collate_fn=collate_eval,
        **worker_kwargs(num_workers, pin_memory),
    )


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")
"""Files `ImageFolder` picks up (case-insensitive): the formats torchvision.io decodes."""


class ImageFolder:
    """Unannotated images under a folder (recursively, sorted by relative path), for prediction.

    `dataset[i]` is a `Sample` with no boxes and `image_id = i`; `paths[i]` is its file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)
        if not self.root.is_dir():
            raise PathError(f"--predict {self.root}: not a directory of images")
        self.paths = sorted(
            p
            for p in self.root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
        )
        if not self.paths:
            raise PathError(
                f"--predict {self.root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found under it"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        return Sample(
            read_image(self.paths[index]),
            torch.zeros(0, 4, dtype=torch.float32),
            torch.zeros(0, dtype=torch.int64),
            index,
        )
