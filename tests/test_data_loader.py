"""Collation to fixed shapes, deterministic resumable sharded sampling, eval batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg, write_png

from detlite.data import (
    DevicePrefetcher,
    EpochBatchSampler,
    ImageFolder,
    TrainLoader,
    collate_train,
    epoch_permutation,
    eval_loader,
)
from detlite.data.coco import Sample


class FakeDataset:
    """Small in-memory detection data: image i is (40 + i % 7) x (50 + i % 5), i % 4 boxes."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        g = torch.Generator().manual_seed(index)
        height, width = 40 + index % 7, 50 + index % 5
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
        n = index % 4
        xy = torch.rand(n, 2, generator=g) * 20
        boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 15], dim=1)
        labels = torch.arange(n) % 3
        return Sample(image, boxes, labels, 1000 + index)


def _sample(areas: list[float], labels: list[int]) -> Sample:
    boxes = torch.tensor([[0.0, 0.0, a, 1.0] for a in areas])
    return Sample(torch.zeros(3, 8, 8, dtype=torch.uint8), boxes, torch.tensor(labels), 0)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_collate_pads_to_fixed_shapes() -> None:
    samples = [_sample([], []), _sample([3.0, 2.0], [1, -2]), _sample([1.0], [0])]
    batch = collate_train(samples, max_boxes=4)
    assert batch["images"].shape == (3, 3, 8, 8) and batch["images"].dtype == torch.uint8
    assert batch["boxes"].shape == (3, 4, 4) and batch["boxes"].dtype == torch.float32
    assert batch["labels"].shape == (3, 4) and batch["labels"].dtype == torch.int64
    assert batch["labels"].tolist() == [[-1] * 4, [1, -2, -1, -1], [0, -1, -1, -1]]
    assert batch["boxes"][1, 0].tolist() == [0.0, 0.0, 3.0, 1.0]
    assert (batch["boxes"][0] == 0).all()
    assert batch["num_overflow"] == 0


def test_overflow_keeps_the_largest_in_order_and_counts() -> None:
    areas = [1.0, 100.0, 50.0, 25.0, 400.0, 30.0]
    labels = [0, 1, 2, 0, -2, 1]  # the largest is a crowd region: real boxes go first
    batch = collate_train([_sample(areas, labels), _sample(areas[:2], labels[:2])], max_boxes=3)
    assert batch["boxes"][0, :, 2].tolist() == [100.0, 50.0, 30.0]
    assert batch["labels"][0].tolist() == [1, 2, 1]
    assert batch["num_overflow"] == 3
    batch = collate_train([_sample(areas, labels)], max_boxes=5)
    assert batch["labels"][0].tolist() == [0, 1, 2, 0, 1]  # the crowd region is dropped first
    assert batch["num_overflow"] == 1


def test_sampler_shards_are_disjoint_equal_and_cover_the_epoch() -> None:
    n, batch, world = 103, 4, 2
    shards = [
        EpochBatchSampler(n, batch, seed=5, rank=r, world_size=world).epoch_indices(3)
        for r in range(world)
    ]
    assert all(s.shape == (12, 4) for s in shards)  # 103 // 8 = 12 steps; 7 samples dropped
    a, b = (set(s.flatten().tolist()) for s in shards)
    assert not a & b
    assert a | b == set(epoch_permutation(n, 5, 3)[:96].tolist())
    # Global step s holds the same samples whatever the number of ranks.
    single = EpochBatchSampler(n, batch * world, seed=5).epoch_indices(3)
    for step in range(12):
        assert set(single[step]) == set(shards[0][step]) | set(shards[1][step])


def test_sampler_is_deterministic_and_resumable() -> None:
    sampler = EpochBatchSampler(50, 4, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == 12 and full[0][0][1] == 2  # keys carry the epoch
    sampler.set_epoch(2, start_step=5)
    assert len(sampler) == 7 and list(sampler) == full[5:]
    assert list(EpochBatchSampler(50, 4, seed=1).epoch_indices(2).flatten()) == [
        i for batch in full for i, _ in batch
    ]
    other = EpochBatchSampler(50, 4, seed=1)
    assert not np.array_equal(other.epoch_indices(2), other.epoch_indices(3))
    with pytest.raises(ValueError, match="batch"):
        EpochBatchSampler(3, 4, seed=0)
    with pytest.raises(ValueError, match="--grad-accum-steps 2"):
        EpochBatchSampler(6, 4, seed=0, accum_steps=2)


@pytest.mark.parametrize("world, batch, accum", [(2, 2, 1), (4, 1, 1), (1, 2, 2), (2, 1, 2)])
def test_a_step_has_the_same_images_however_it_is_split(world, batch, accum) -> None:
    """The images of step k do not depend on ranks × micro-batches, for the same global batch."""
    whole = EpochBatchSampler(48, 4, seed=5)
    for epoch in (0, 3):
        steps = whole.epoch_indices(epoch)
        parts = [
            EpochBatchSampler(48, batch, seed=5, rank=r, world_size=world, accum_steps=accum)
            for r in range(world)
        ]
        assert all(p.steps_per_epoch == whole.steps_per_epoch for p in parts)
        for p in parts:
            p.set_epoch(epoch)
        micro = [list(p) for p in parts]  # per rank: steps × accum micro-batches
        for step, expected in enumerate(steps):
            got = [
                i
                for rank in micro
                for part in rank[step * accum : (step + 1) * accum]
                for i, _ in part
            ]
            assert all(len(part) == batch for rank in micro for part in rank)
            assert sorted(got) == sorted(expected.tolist())
    resumed = EpochBatchSampler(48, batch, seed=5, world_size=world, accum_steps=accum)
    resumed.set_epoch(0, start_step=3)
    assert len(resumed) == (whole.steps_per_epoch - 3) * accum


def test_train_loader_batches_are_reproducible_and_resume_mid_epoch() -> None:
    data = FakeDataset(22)
    kwargs = {"image_size": (48, 64), "batch_size": 4, "max_boxes": 2, "seed": 9, "num_workers": 0}
    loader = TrainLoader(data, **kwargs)
    assert loader.steps_per_epoch == 5
    epoch1 = list(loader.epoch(1))
    again = list(TrainLoader(data, **kwargs).epoch(1))
    assert all(_same(a, b) for a, b in zip(epoch1, again, strict=True))
    assert all(
        _same(a, b) for a, b in zip(list(loader.epoch(1, start_step=3)), epoch1[3:], strict=True)
    )
    assert not _same(epoch1[0], next(iter(loader.epoch(2))))

    batch = epoch1[0]
    assert batch["images"].shape == (4, 3, 48, 64) and batch["boxes"].shape == (4, 2, 4)
    assert batch["labels"].shape == (4, 2)

    # A run resumed at global step 7 continues exactly where an uninterrupted one would be.
    stream = loader.iterate(0)
    uninterrupted = [next(stream) for _ in range(10)]
    resumed = loader.iterate(7)
    for expected in uninterrupted[7:]:
        got = next(resumed)
        assert got[:2] == expected[:2] and _same(got[2], expected[2])
    assert [e for e, _, _ in uninterrupted] == [0] * 5 + [1] * 5


def test_worker_processes_give_the_same_batches() -> None:
    data = FakeDataset(16)
    kwargs = {"image_size": 40, "batch_size": 4, "max_boxes": 3, "seed": 2}
    in_process = list(TrainLoader(data, num_workers=0, **kwargs).epoch(0))
    with_workers = TrainLoader(data, num_workers=2, **kwargs)
    for _ in range(2):  # persistent workers serve a second pass too
        assert all(_same(a, b) for a, b in zip(in_process, with_workers.epoch(0), strict=True))


def test_eval_loader_pads_the_last_batch_and_shards_without_overlap() -> None:
    data = FakeDataset(7)
    seen = []
    for rank in range(2):
        batches = list(
            eval_loader(data, image_size=32, batch_size=3, rank=rank, world_size=2, num_workers=0)
        )
        for batch in batches:
            assert batch["images"].shape == (3, 3, 32, 32)
            valid = batch["image_ids"] >= 0
            seen += batch["image_ids"][valid].tolist()
            for i in torch.nonzero(valid).flatten().tolist():
                h, w = batch["orig_sizes"][i].tolist()
                assert batch["scales"][i].item() == pytest.approx(min(32 / h, 32 / w))
                assert batch["inv_scales"][i].item() == pytest.approx(max(h / 32, w / 32))
        assert len(batches) == 2  # 4 and 3 images: both ranks run 2 batches of 3
    assert sorted(seen) == [1000 + i for i in range(7)]


def test_prefetcher_on_cpu_passes_batches_through() -> None:
    batches = [{"x": torch.arange(3), "n": 2}, {"x": torch.arange(4), "n": 5}]
    out = list(DevicePrefetcher(batches, "cpu"))
    assert all(_same(a, b) for a, b in zip(out, batches, strict=True))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetcher_on_cuda_copies_every_batch() -> None:
    batches = [{"x": torch.arange(1000).pin_memory() + i, "n": i} for i in range(5)]
    out = [(b["x"] * 2).cpu() for b in DevicePrefetcher(batches, "cuda")]
    assert all(torch.equal(o, b["x"] * 2) for o, b in zip(out, batches, strict=True))


def test_image_folder_lists_images_recursively(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_jpeg(torch.zeros(3, 10, 12, dtype=torch.uint8), str(tmp_path / "b.jpg"))
    write_png(torch.zeros(1, 7, 9, dtype=torch.uint8), str(tmp_path / "sub" / "a.PNG"))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in folder.paths] == ["b.jpg", "sub/a.PNG"]
    sample = folder[1]
    assert sample.image.shape == (3, 7, 9) and sample.image_id == 1 and sample.boxes.shape == (0, 4)
    batch = next(iter(eval_loader(folder, image_size=16, batch_size=2, num_workers=0)))
    assert batch["image_ids"].tolist() == [0, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path / "empty")
