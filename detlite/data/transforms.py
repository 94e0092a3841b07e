"""Image + box transforms for training (flip, scale jitter, crop, pad) and evaluation (fit, pad).

Geometry convention: a box `x1, y1, x2, y2` is in continuous pixel-edge coordinates, so pixel
column `i` spans `[i, i + 1)` and a box covering columns 3..7 is `x1 = 3, x2 = 8`. Under this
convention a horizontal flip maps `x -> W - x` and a resize by factor `s` maps `x -> s * x`
exactly (it is the `align_corners=False` convention the resize kernels use), so boxes stay
aligned with the pixels they describe.

Everything random is drawn from a generator seeded with `rng_seed`: the same seed gives the same
output, in any process, so a data pipeline built on it needs no global RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

Size = int | tuple[int, int]

DEFAULT_FILL: tuple[int, int, int] = (124, 116, 104)
"""Canvas colour: the ImageNet mean in 0..255, so padding normalises to about zero."""

MIN_BOX_SIZE = 1.0
"""Boxes narrower or shorter than this many pixels after a transform are dropped."""


@dataclass(frozen=True)
class Augment:
    """Training augmentation settings (the NVIDIA / paper recipe by default)."""

    scale_range: tuple[float, float] = (0.1, 2.0)
    """Output-size multiplier drawn uniformly from this range; the image is resized to fit the
    multiplied output size (keeping its aspect ratio), then cropped to the output size."""
    hflip: float = 0.5
    """Probability of a horizontal flip."""
    fill: tuple[int, int, int] = DEFAULT_FILL
    """RGB colour of the canvas where the image does not reach."""


def as_hw(size: Size) -> tuple[int, int]:
    """`512` -> `(512, 512)`; `(h, w)` stays."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _canvas(out_hw: tuple[int, int], fill: tuple[int, int, int]) -> Tensor:
    colour = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1)
    return colour.expand(3, *out_hw).clone()


def _resize(image: Tensor, hw: tuple[int, int]) -> Tensor:
    if tuple(image.shape[-2:]) == hw:
        return image
    # Antialiasing matters when shrinking by 10x (scale jitter 0.1); torchvision has a fast
    # uint8 path for bilinear + antialias.
    return F.resize(image, list(hw), interpolation=F.InterpolationMode.BILINEAR, antialias=True)


def _keep_visible(boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (wh >= MIN_BOX_SIZE).all(dim=1)
    return boxes[keep], labels[keep]


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes of an image `width` pixels wide, mirrored left-right (x -> width - x)."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def train_transform(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    out_size: Size,
    rng_seed: int,
    scale_range: tuple[float, float] = (0.1, 2.0),
    hflip: float = 0.5,
    fill: tuple[int, int, int] = DEFAULT_FILL,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random flip, scale jitter and crop, pasted top-left on a `fill`-coloured canvas.

    1. With probability `hflip`, mirror the image and its boxes left-right.
    2. Draw `f ~ U(scale_range)`; resize the image to fit inside `f * out_size` keeping its
       aspect ratio (the smaller of the two ratios decides).
    3. Where the resized image is larger than `out_size`, take a crop at a uniformly random
       offset; paste the result at the top-left corner of the canvas.
    4. Shift and scale boxes with the image, clip them to the pasted region and drop those
       narrower or shorter than 1 px. Crowd regions (label -2) follow the same geometry.

    Args:
        image: uint8 `[3, H, W]`.
        boxes: float `[N, 4]` xyxy in pixels of `image`.
        labels: int64 `[N]` (class >= 0, or -2 for crowd regions).
        out_size: output size, an int for a square or `(height, width)`.
        rng_seed: seeds every random choice; equal seeds give equal outputs.
        scale_range, hflip, fill: see `Augment`.

    Returns:
        `(canvas uint8 [3, out_h, out_w], boxes float32 [K, 4], labels int64 [K])`, K <= N.
    """
    out_h, out_w = as_hw(out_size)
    height, width = image.shape[-2:]
    rng = np.random.default_rng(rng_seed)
    # Draw all random numbers up front and in a fixed order, so that changing one branch
    # (e.g. no crop needed) never shifts the values another decision sees.
    flip_draw, scale_draw, crop_y_draw, crop_x_draw = rng.random(4)
    boxes = boxes.to(torch.float32)

    if flip_draw < hflip:
        image = F.horizontal_flip(image)
        boxes = hflip_boxes(boxes, width)

    factor = scale_range[0] + (scale_range[1] - scale_range[0]) * scale_draw
    ratio = min(factor * out_h / height, factor * out_w / width)
    scaled_hw = (max(1, int(height * ratio)), max(1, int(width * ratio)))
    image = _resize(image, scaled_hw)
    offset = (
        int(max(0, scaled_hw[0] - out_h) * crop_y_draw),
        int(max(0, scaled_hw[1] - out_w) * crop_x_draw),
    )
    canvas, visible_hw = _paste_crop(image, offset, (out_h, out_w), fill)
    # The per-axis ratio of the integer sizes actually produced, so boxes match the pixels.
    box_scale = (scaled_hw[0] / height, scaled_hw[1] / width)
    boxes = _move_boxes(boxes, box_scale, offset, visible_hw)
    boxes, labels = _keep_visible(boxes, labels)
    return canvas, boxes, labels


def _paste_crop(
    image: Tensor, offset: tuple[int, int], out_hw: tuple[int, int], fill: tuple[int, int, int]
) -> tuple[Tensor, tuple[int, int]]:
    """The part of `image` from `offset` (y, x) that fits, pasted top-left on an `out_hw`
    canvas; returns the canvas and the (height, width) of the pasted part."""
    off_y, off_x = offset
    visible_h = min(out_hw[0], image.shape[-2] - off_y)
    visible_w = min(out_hw[1], image.shape[-1] - off_x)
    canvas = _canvas(out_hw, fill)
    canvas[:, :visible_h, :visible_w] = image[
        :, off_y : off_y + visible_h, off_x : off_x + visible_w
    ]
    return canvas, (visible_h, visible_w)


def _move_boxes(
    boxes: Tensor, scale_yx: tuple[float, float], offset: tuple[int, int], visible_hw
) -> Tensor:
    """Boxes scaled with the image, shifted by the crop offset and clipped to the pasted part."""
    (sy, sx), (off_y, off_x), (visible_h, visible_w) = scale_yx, offset, visible_hw
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    shift = torch.tensor([off_x, off_y, off_x, off_y], dtype=torch.float32)
    limit = torch.tensor([visible_w, visible_h, visible_w, visible_h], dtype=torch.float32)
    return (boxes * scale - shift).clamp(min=torch.zeros(4), max=limit)


def fit_scale(image_hw: tuple[int, int], out_size: Size) -> tuple[float, tuple[int, int]]:
    """Scale that fits an image of `image_hw` inside `out_size`, and the resized (h, w)."""
    out_h, out_w = as_hw(out_size)
    height, width = image_hw
    scale = min(out_h / height, out_w / width)
    # round, not int: 640 * (512 / 640) can land at 511.99999 and must give 512.
    resized = (min(out_h, max(1, round(height * scale))), min(out_w, max(1, round(width * scale))))
    return scale, resized


def eval_transform(
    image: Tensor, out_size: Size, fill: tuple[int, int, int] = DEFAULT_FILL
) -> tuple[Tensor, float]:
    """Resize to fit inside `out_size` (keeping aspect), paste top-left on a `fill` canvas.

    Returns `(canvas uint8 [3, out_h, out_w], scale)`. `scale` is model pixels per original
    pixel: a box predicted on the canvas maps back to the original image as
    `original_xyxy = model_xyxy / scale` (then clip to the original size).
    """
    scale, resized = fit_scale(tuple(image.shape[-2:]), out_size)
    canvas = _canvas(as_hw(out_size), fill)
    canvas[:, : resized[0], : resized[1]] = _resize(image, resized)
    return canvas, scale
