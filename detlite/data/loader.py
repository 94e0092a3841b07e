"""Batches for training and evaluation: deterministic sharded sampling, fixed-shape collation,
DataLoader workers and a host-to-device prefetcher.

Determinism: the order of an epoch is a permutation drawn from `(seed, epoch)`, and every random
choice made for a sample is drawn from `(seed, epoch, sample index)` (`sample_seed`). Nothing
depends on global RNG state, on worker count or on what ran before, so a run resumed at step k
sees exactly the batches an uninterrupted run would have seen, and `start_step=k` skips the first
k batches without decoding them.

Sharding: each epoch's permutation is cut to a multiple of `world_size * batch_size` (the tail is
dropped; it is a different random tail every epoch) and rank r takes every world_size-th sample
of what remains. Ranks therefore get disjoint, equal-size parts, every rank runs the same number
of steps, and the samples of global step s are the same whatever the number of ranks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from detlite.data.coco import PADDING, Sample, read_image
from detlite.data.transforms import (
    DEFAULT_FILL,
    Augment,
    Size,
    as_hw,
    eval_transform,
    train_transform,
)


class TrainBatch(TypedDict):
    """A training batch; every tensor has a fixed shape."""

    images: Tensor
    """uint8 `[B, 3, H, W]`, not normalised (see `detlite.model.normalize`)."""
    boxes: Tensor
    """float32 `[B, M, 4]` xyxy in input pixels; padding rows are zero."""
    labels: Tensor
    """int64 `[B, M]`: class >= 0, -1 padding, -2 crowd / ignore region."""
    image_ids: Tensor
    """int64 `[B]`."""
    num_overflow: int
    """Boxes dropped from this batch because an image had more than M."""


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


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one sample's augmentation: a hash of `(seed, epoch, index)`, all >= 0."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of all samples in one epoch, a function of `(seed, epoch)` only."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """One rank's batches of an epoch, as lists of `(sample index, epoch)` keys.

    Call `set_epoch(epoch, start_step)` before iterating. Iteration yields batches `start_step`,
    `start_step + 1`, ... of that epoch; skipped batches are never materialised, let alone
    decoded. The epoch travels with each key, so workers need no state to seed augmentation.
    """

    def __init__(
        self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.steps_per_epoch = num_samples // (world_size * batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{num_samples} samples cannot fill one batch of {batch_size} on each of "
                f"{world_size} rank(s); use a smaller batch size"
            )
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} not in [0, {self.steps_per_epoch}]")
        self.epoch = epoch
        self.start_step = start_step

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices of `epoch`, shaped `[steps_per_epoch, batch_size]`."""
        used = self.steps_per_epoch * self.world_size * self.batch_size
        mine = epoch_permutation(self.num_samples, self.seed, epoch)[:used][
            self.rank :: self.world_size
        ]
        return mine.reshape(self.steps_per_epoch, self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for row in self.epoch_indices(epoch)[self.start_step :]:
            yield [(int(index), epoch) for index in row]

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step


class _Augmented(Dataset):
    """`dataset[(index, epoch)]` -> the sample with its training augmentation applied."""

    def __init__(self, dataset: Any, image_size: Size, seed: int, augment: Augment) -> None:
        self.dataset = dataset
        self.image_size = as_hw(image_size)
        self.seed = seed
        self.augment = augment

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, epoch = key
        sample = self.dataset[index]
        image, boxes, labels = train_transform(
            sample.image,
            sample.boxes,
            sample.labels,
            self.image_size,
            rng_seed=sample_seed(self.seed, epoch, index),
            scale_range=self.augment.scale_range,
            hflip=self.augment.hflip,
            fill=self.augment.fill,
        )
        return Sample(image, boxes, labels, sample.image_id)


def _rows_to_keep(boxes: Tensor, labels: Tensor, max_boxes: int) -> Tensor:
    """Indices (ascending) of the `max_boxes` rows to keep: real boxes before crowd regions,
    larger before smaller. Original order is preserved among the kept rows, since target
    assignment breaks ties by row."""
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).numpy()
    is_crowd = (labels < 0).numpy()
    # lexsort: the last key is the primary one; it is stable, so equal keys keep their order.
    order = np.lexsort((-area, is_crowd))
    return torch.from_numpy(np.sort(order[:max_boxes]))


def pad_ground_truth(samples: Sequence[Sample], max_boxes: int) -> tuple[Tensor, Tensor, int]:
    """Pad each sample's boxes and labels to `max_boxes` rows.

    Returns `(boxes [B, M, 4], labels [B, M], num_overflow)`; an image with more than M boxes
    keeps its M largest (real boxes before crowd regions) and the rest count as overflow.
    """
    boxes = torch.zeros(len(samples), max_boxes, 4, dtype=torch.float32)
    labels = torch.full((len(samples), max_boxes), PADDING, dtype=torch.int64)
    overflow = 0
    for i, sample in enumerate(samples):
        b, l = sample.boxes.reshape(-1, 4), sample.labels.reshape(-1)
        if len(b) > max_boxes:
            keep = _rows_to_keep(b, l, max_boxes)
            overflow += len(b) - max_boxes
            b, l = b[keep], l[keep]
        boxes[i, : len(b)] = b
        labels[i, : len(l)] = l
    return boxes, labels, overflow


def collate_train(samples: Sequence[Sample], max_boxes: int) -> TrainBatch:
    """Stack equally sized images and pad ground truth to `max_boxes` rows per image."""
    boxes, labels, overflow = pad_ground_truth(samples, max_boxes)
    return TrainBatch(
        images=torch.stack([s.image for s in samples]),
        boxes=boxes,
        labels=labels,
        image_ids=torch.tensor([s.image_id for s in samples], dtype=torch.int64),
        num_overflow=overflow,
    )


def _worker_kwargs(num_workers: int, pin_memory: bool | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        # Pinned host memory makes the prefetcher's non_blocking copies truly asynchronous.
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
    }
    if num_workers > 0:
        # Workers (and the dataset copies they hold) survive across epochs.
        kwargs.update(persistent_workers=True, prefetch_factor=2)
    return kwargs


class TrainLoader:
    """Augmented, sharded, fixed-shape training batches.

    `loader.epoch(e, start_step=k)` iterates batches k.. of epoch e for this rank;
    `loader.iterate(global_step)` runs on through the epochs from any global step.

    Args:
        dataset: `dataset[i]` returns a `Sample` (e.g. `CocoDetection`).
        image_size: model input size, int or (height, width).
        batch_size: images per batch on this rank.
        max_boxes: ground-truth rows per image (M).
        seed: the run's data seed.
        rank, world_size: this process's shard.
        augment: flip / scale jitter / fill settings (default: `Augment()`, the paper's).
        num_workers: DataLoader worker processes (0 = load in this process).
        pin_memory: page-lock batches for fast device copies; default: when CUDA is available.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        image_size: Size,
        batch_size: int,
        max_boxes: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        augment: Augment | None = None,
        num_workers: int = 2,
        pin_memory: bool | None = None,
    ) -> None:
        self.sampler = EpochBatchSampler(
            len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size
        )
        self._loader = DataLoader(
            _Augmented(dataset, image_size, seed, augment or Augment()),
            batch_sampler=self.sampler,
            collate_fn=functools.partial(collate_train, max_boxes=max_boxes),
            **_worker_kwargs(num_workers, pin_memory),
        )

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def position(self, global_step: int) -> tuple[int, int]:
        """`(epoch, step within the epoch)` of a global step count."""
        return divmod(global_step, self.steps_per_epoch)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]:
        """Batches `start_step`.. of `epoch` on this rank."""
        self.sampler.set_epoch(epoch, start_step)
        return iter(self._loader)

    def iterate(self, start_global_step: int = 0) -> Iterator[tuple[int, int, TrainBatch]]:
        """Endless `(epoch, step in epoch, batch)` from `start_global_step` on."""
        epoch, step = self.position(start_global_step)
        while True:
            for batch in self.epoch(epoch, step):
                yield epoch, step, batch
                step += 1
            epoch, step = epoch + 1, 0


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
        **_worker_kwargs(num_workers, pin_memory),
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
            raise NotADirectoryError(f"{self.root} is not a directory")
        self.paths = sorted(
            p
            for p in self.root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
        )
        if not self.paths:
            raise FileNotFoundError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}"
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


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, Tensor) else value
        for key, value in batch.items()
    }


class DevicePrefetcher:
    """Moves batches (dicts of tensors) to `device`, copying batch i+1 while batch i computes.

    On CUDA the copies run on a side stream from pinned memory (`non_blocking=True`); the compute
    stream waits for a batch's copy only when that batch is handed out, and the tensors are
    recorded on the compute stream so the allocator does not recycle them early. On any other
    device this is a plain `.to(device)` per batch. Non-tensor values pass through unchanged.
    """

    def __init__(self, batches: Iterable[dict[str, Any]], device: torch.device | str) -> None:
        self.batches = batches
        self.device = torch.device(device)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type != "cuda":
            for batch in self.batches:
                yield _to_device(batch, self.device)
            return

        copy_stream = torch.cuda.Stream(self.device)
        source = iter(self.batches)

        def start_copy() -> dict[str, Any] | None:
            batch = next(source, None)
            if batch is None:
                return None
            with torch.cuda.stream(copy_stream):
                return _to_device(batch, self.device)

        ready = start_copy()
        while ready is not None:
            compute_stream = torch.cuda.current_stream(self.device)
            compute_stream.wait_stream(copy_stream)
            for value in ready.values():
                if isinstance(value, Tensor):
                    value.record_stream(compute_stream)
            batch, ready = ready, start_copy()
            yield batch
