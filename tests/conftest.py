"""Shared fixtures: a tiny COCO-format dataset cut from the built-in one."""

import json
from pathlib import Path

import pytest

from detlite.data import ensure_builtin


def subset_coco(src_json: Path, dst_json: Path, count: int) -> None:
    data = json.loads(src_json.read_text())
    images = sorted(data["images"], key=lambda im: im["id"])[:count]
    ids = {im["id"] for im in images}
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    dst_json.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def builtin_paths(tmp_path_factory):
    return ensure_builtin(tmp_path_factory.mktemp("builtin") / "builtin-v1")


@pytest.fixture(scope="session")
def tiny_coco(builtin_paths, tmp_path_factory):
    """8 train and 4 val images of the built-in dataset, as COCO JSON + image folders."""
    root = tmp_path_factory.mktemp("tiny")
    subset_coco(builtin_paths.train_json, root / "train.json", 8)
    subset_coco(builtin_paths.val_json, root / "val.json", 4)
    return {
        "train_json": root / "train.json",
        "train_images": builtin_paths.train_images,
        "val_json": root / "val.json",
        "val_images": builtin_paths.val_images,
    }


def tiny_run_args(tiny: dict, out: Path, *extra: str) -> list[str]:
    """train.py's arguments for a tiny CPU run on `tiny_coco`: 128 px, batch 2, every step
    logged, no loader workers; `extra` flags come last (and win)."""
    return [
        "builtin", "--batch-size", "2", "--model.image-size", "128",
        "--data.train-json", str(tiny["train_json"]),
        "--data.train-images", str(tiny["train_images"]),
        "--data.val-json", str(tiny["val_json"]),
        "--data.val-images", str(tiny["val_images"]),
        "--data.num-workers", "0", "--log-every", "1", "--output", str(out), *extra,
    ]  # fmt: skip


def compact_lite0(num_classes: int = 3, image_size: int = 128):
    """Lite0's layers with one block per backbone stage, one BiFPN cell and one head repeat
    (249 tensors instead of 588): every kind of layer, in a graph that torch.compile builds in
    a fraction of the time, for the tests that compare compiled code with eager."""
    return compact_preset("lite0", num_classes, image_size)


def compact_preset(name: str, num_classes: int = 3, image_size: int = 128):
    """Preset `name`'s layers, as compact as `compact_lite0` (e.g. "d0": SiLU and
    fast-attention fusion)."""
    import dataclasses

    from detlite import config

    cfg = config.preset(name, num_classes=num_classes, image_size=image_size)
    backbone = dataclasses.replace(cfg.backbone, depth=0.1)
    return dataclasses.replace(cfg, backbone=backbone, fpn_cells=1, head_repeats=1)


def named_checkpoint(path: Path, categories, image_size: int, seed: int):
    """A fresh Lite0 checkpoint at `path` with one class per category of `categories` (a
    CategoryMap) stored in it; returns (path, params, cfg)."""
    from detlite import checkpoint, config, model
    from detlite.checkpoint.files import CATEGORY_MAP_KEY

    cfg = config.preset("lite0", num_classes=categories.num_classes, image_size=image_size)
    params = model.init(cfg, seed=seed)
    checkpoint.save(path, params, cfg, metadata={CATEGORY_MAP_KEY: categories.to_json()})
    return path, params, cfg
