"""Training batches: deterministic sharded sampling, augmentation in DataLoader workers and
fixed-shape collation (evaluation batches: eval_loader.py; device copies: prefetch.py).

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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from detlite.data.coco import Sample, UnreadableImageError
from detlite.data.transforms import (
    Augment,
    Size,
    as_hw,
    train_transform,
)
from detlite.errors import ConfigError, DataError, DetliteError
from detlite.labels import BACKGROUND
from detlite.stopping import quiet_worker


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
    unreadable: list[str]
    """Why each image replaced in this batch could not be read (`--data.bad-images skip`)."""


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one sample's augmentation: a hash of `(seed, epoch, index)`, all >= 0."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of all samples in one epoch, a function of `(seed, epoch)` only."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """One rank's batches of an epoch, as lists of `(sample index, epoch)` keys.

    A step takes the next `world_size × accum_steps × batch_size` samples of the epoch's order;
    rank r takes every world_size-th of them from the r-th, in `accum_steps` micro-batches of
    `batch_size`. So the images of a step, and their augmentation, do not depend on how the
    step is split over ranks and micro-batches.

    Call `set_epoch(epoch, start_step)` before iterating. Iteration yields the micro-batches of
    steps `start_step`, `start_step + 1`, ... of that epoch; skipped ones are never
    materialised, let alone decoded. The epoch travels with each key, so workers need no state
    to seed augmentation.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.accum_steps = accum_steps
        self.steps_per_epoch = num_samples // (world_size * accum_steps * batch_size)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{num_samples} training images cannot fill one step of --batch-size "
                f"{batch_size} × --grad-accum-steps {accum_steps} on each of {world_size} "
                "rank(s); use a smaller batch size"
            )
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} not in [0, {self.steps_per_epoch}]")
        self.epoch = epoch
        self.start_step = start_step

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices of `epoch`: `[steps_per_epoch, accum_steps * batch_size]`
        (micro-batch j of a step is columns `j * batch_size` on)."""
        per_step = self.accum_steps * self.batch_size
        used = self.steps_per_epoch * self.world_size * per_step
        mine = epoch_permutation(self.num_samples, self.seed, epoch)[:used][
            self.rank :: self.world_size
        ]
        return mine.reshape(self.steps_per_epoch, per_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for row in self.epoch_indices(epoch)[self.start_step :]:
            for micro in row.reshape(self.accum_steps, self.batch_size):
                yield [(int(index), epoch) for index in micro]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum_steps


BadImages = Literal["skip", "error"]
MAX_CONSECUTIVE_UNREADABLE = 16


class _Augmented(Dataset):
    """`dataset[(index, epoch)]` -> the sample with its training augmentation applied.

    An image that cannot be decoded is replaced by the next readable one in index order with
    `bad_images="skip"` (deterministic, so a resumed run sees the same data) and reported in
    the sample's `unreadable`; with "error" it stops the run.
    """

    def __init__(
        self, dataset: Any, image_size: Size, seed: int, augment: Augment, bad_images: BadImages
    ) -> None:
        self.dataset = dataset
        self.image_size = as_hw(image_size)
        self.seed = seed
        self.augment = augment
        self.bad_images = bad_images

    def _readable(self, index: int) -> Sample:
        skipped: list[str] = []
        for offset in range(min(MAX_CONSECUTIVE_UNREADABLE, len(self.dataset))):
            try:
                sample = self.dataset[(index + offset) % len(self.dataset)]
            except UnreadableImageError as error:
                if self.bad_images == "error":
                    raise DataError(f"{error} (--data.bad-images error)") from None
                skipped.append(str(error))
                continue
            return sample._replace(unreadable=tuple(skipped))
        raise DataError(
            f"{len(skipped)} consecutive training images cannot be read ({skipped[0]}, ...) — "
            "check the image folder"
        )

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, epoch = key
        sample = self._readable(index)
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
        return Sample(image, boxes, labels, sample.image_id, sample.unreadable)


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
    labels = torch.full((len(samples), max_boxes), BACKGROUND, dtype=torch.int64)
    overflow = 0
    for i, sample in enumerate(samples):
        rows, classes = sample.boxes.reshape(-1, 4), sample.labels.reshape(-1)
        if len(rows) > max_boxes:
            keep = _rows_to_keep(rows, classes, max_boxes)
            overflow += len(rows) - max_boxes
            rows, classes = rows[keep], classes[keep]
        boxes[i, : len(rows)] = rows
        labels[i, : len(classes)] = classes
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
        unreadable=[reason for s in samples for reason in s.unreadable],
    )


def worker_kwargs(num_workers: int, pin_memory: bool | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        # Pinned host memory makes the prefetcher's non_blocking copies truly asynchronous.
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
    }
    if num_workers > 0:
        # Workers (and the dataset copies they hold) survive across epochs; stop signals are the
        # main process's to handle (see detlite.stopping).
        kwargs.update(persistent_workers=True, prefetch_factor=2, worker_init_fn=quiet_worker)
    return kwargs


def shutdown_workers(loader: DataLoader) -> None:
    """Stop a DataLoader's (persistent) workers now, cleanly, rather than at garbage collection
    or interpreter exit, where a worker can outlive the run by seconds."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def worker_error(error: DetliteError) -> DetliteError:
    """`error` as raised in a worker, without the worker traceback that DataLoader folds into
    the message of the copy it re-raises in the main process."""
    text = str(error)
    if not text.startswith("Caught ") or "Traceback" not in text:
        return error
    last = text.strip().splitlines()[-1]
    return DataError(last.split(": ", 1)[1] if ": " in last else last)


def batches_of(loader: Iterable) -> Iterator:
    """Iterate `loader`, turning an expected error raised in a worker into a clean one."""
    try:
        yield from loader
    except DetliteError as error:
        raise worker_error(error) from None


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
        bad_images: "skip" replaces an undecodable image by the next readable one, "error"
            stops.
        accum_steps: micro-batches of `batch_size` per optimizer step on this rank.
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
        bad_images: BadImages = "skip",
        accum_steps: int = 1,
    ) -> None:
        self.sampler = EpochBatchSampler(
            len(dataset),
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            accum_steps=accum_steps,
        )
        self._loader = DataLoader(
            _Augmented(dataset, image_size, seed, augment or Augment(), bad_images),
            batch_sampler=self.sampler,
            collate_fn=functools.partial(collate_train, max_boxes=max_boxes),
            **worker_kwargs(num_workers, pin_memory),
        )

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def position(self, global_step: int) -> tuple[int, int]:
        """`(epoch, step within the epoch)` of a global step count."""
        return divmod(global_step, self.steps_per_epoch)

    def close(self) -> None:
        """Stop the worker processes (a later iteration starts new ones)."""
        shutdown_workers(self._loader)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]:
        """The (micro-)batches of steps `start_step`.. of `epoch` on this rank."""
        self.sampler.set_epoch(epoch, start_step)
        return batches_of(self._loader)

    def iterate(self, start_global_step: int = 0) -> Iterator[tuple[int, int, TrainBatch]]:
        """Endless `(epoch, step in epoch, batch)` from `start_global_step` on; with
        accumulation, each step's micro-batches in turn."""
        epoch, step = self.position(start_global_step)
        while True:
            for i, batch in enumerate(self.epoch(epoch, step)):
                yield epoch, step + i // self.sampler.accum_steps, batch
            epoch, step = epoch + 1, 0
