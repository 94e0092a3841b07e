"""`detlite.Detector`: a trained detector as one object, from a checkpoint or an exported
AOTInductor package.

    detector = detlite.Detector.from_checkpoint("runs/builtin/best.safetensors")
    for found in detector.predict(["a.jpg", "b.png"], min_score=0.3):
        found["boxes"], found["scores"], found["labels"], found["names"]

Images of any size are fitted into the model input as evaluation does (resized keeping their
aspect, pasted top-left) and the boxes mapped back to each image's own pixels and clipped to it.
Batches are padded to full size, so a compiled predictor or a fixed-batch package sees one shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint
from .data import CategoryMap
from .data.transforms import eval_transform
from .detect import clip_to_images
from .images import ImageLike, as_rgb_uint8
from .steps import CompileMode, Predictor, StepOptions

# (images uint8 [B, 3, H, W], image scales [B]) -> (detections [B, max_det, 6], counts [B])
RunBatch = Callable[[Tensor, Tensor], Sequence[Tensor]]


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Detector:
    """Predict on images; build with `from_checkpoint` or `from_package`."""

    def __init__(
        self,
        run_batch: RunBatch,
        image_size: tuple[int, int],
        categories: CategoryMap,
        device: torch.device,
        batch_size: int = 8,
    ) -> None:
        self._run_batch = run_batch
        self.image_size = image_size
        self.categories = categories
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        compile: bool | CompileMode = False,
        weights: str = "auto",
        batch_size: int = 8,
    ) -> Detector:
        """From a detlite checkpoint; `compile` True (or a torch.compile mode) compiles the
        predictor on first use; `weights` as in `checkpoint.load`."""
        device = _device(device)
        params, cfg = checkpoint.load(path, device=device, weights=weights)
        mode = {True: "default", False: "off"}.get(compile, compile)
        predictor = Predictor(cfg, StepOptions(compile=mode), device)
        categories = checkpoint.prediction_category_map(path, cfg.num_classes)
        run = lambda images, scales: predictor(params, images, scales)  # noqa: E731
        return cls(run, cfg.image_size, categories, device, batch_size)

    @classmethod
    def from_package(cls, path: str | os.PathLike, batch_size: int = 8) -> Detector:
        """From an AOTInductor package written by `python -m detlite.export --format aoti`; it
        runs on the device it was exported for."""
        from .export.formats import load_aoti

        runner, meta = load_aoti(Path(path))
        categories = CategoryMap(
            ids=tuple(meta["category_ids"]), names=tuple(meta["category_names"])
        )
        fixed = meta["batch"].split()  # "dynamic" or "fixed N"
        if fixed[0] == "fixed":
            batch_size = int(fixed[1])
        size = tuple(meta["image_size"])
        return cls(runner, size, categories, torch.device(meta["device"]), batch_size)

    def predict(
        self, images: ImageLike | Sequence[ImageLike], min_score: float = 0.3
    ) -> dict | list[dict]:
        """Detections of one image (a dict) or of a list of them, or of a [B, 3, H, W] uint8
        tensor (a list of dicts): `boxes` [N, 4] float32 (x1, y1, x2, y2 in that image's
        pixels), `scores` [N], `labels` [N] int64 category ids, `names` [N] category names;
        only detections scoring at least `min_score`, best first."""
        batched = isinstance(images, (list, tuple)) or (
            isinstance(images, Tensor) and images.dim() == 4
        )
        listed = list(images) if batched else [images]
        found = []
        for start in range(0, len(listed), self.batch_size):  # decoded a batch at a time
            chunk = enumerate(listed[start : start + self.batch_size], start)
            pictures = [as_rgb_uint8(image, f"image {i}") for i, image in chunk]
            found += self._predict_batch(pictures, min_score)
        return found if batched else found[0]

    @torch.no_grad()
    def _predict_batch(self, pictures: list[Tensor], min_score: float) -> list[dict]:
        fitted = [eval_transform(picture, self.image_size) for picture in pictures]
        padding = self.batch_size - len(fitted)
        canvases = [canvas for canvas, _ in fitted] + [fitted[0][0]] * padding
        scales = [1.0 / scale for _, scale in fitted] + [1.0] * padding
        images = torch.stack(canvases).to(self.device)
        dets, counts = self._run_batch(images, torch.tensor(scales, device=self.device))
        sizes = torch.tensor([list(p.shape[-2:]) for p in pictures] + [[1, 1]] * padding)
        dets, counts = clip_to_images(dets.cpu(), sizes), counts.cpu()
        return [self._result(dets[b, : counts[b]], min_score) for b in range(len(pictures))]

    def _result(self, rows: Tensor, min_score: float) -> dict:
        rows = rows[rows[:, 4] >= min_score]
        classes = rows[:, 5].long().tolist()
        return {
            "boxes": rows[:, :4].contiguous(),
            "scores": rows[:, 4].contiguous(),
            "labels": torch.tensor([self.categories.ids[c] for c in classes], dtype=torch.int64),
            "names": [self.categories.names[c] for c in classes],
        }
