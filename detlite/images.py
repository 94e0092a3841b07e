"""What `detlite.Detector.predict` accepts as an image, turned into uint8 RGB [3, H, W]: a file
path, a uint8 tensor ([3, H, W] RGB, [1, H, W] or [H, W] grayscale, [4, H, W] RGBA), a PIL
image (any mode), or a numpy uint8 array in height-width-channel order (as PIL and OpenCV give;
OpenCV's BGR must be flipped first)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import read_image
from .errors import DataError

ImageLike = Any  # str | os.PathLike | Tensor | PIL.Image.Image | np.ndarray


def _from_tensor(image: Tensor, where: str) -> Tensor:
    if image.dtype != torch.uint8:
        raise DataError(
            f"{where}: a {image.dtype} tensor — pass uint8 pixels 0–255, e.g. "
            "(x * 255).round().to(torch.uint8)"
        )
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise DataError(
            f"{where}: a tensor of shape {tuple(image.shape)} — pass [3, H, W] RGB, [1, H, W] or "
            "[H, W] grayscale, or [4, H, W] RGBA (channels first)"
        )
    if image.shape[0] == 1:
        return image.expand(3, -1, -1).contiguous()
    return image[:3].contiguous()  # RGBA: the alpha channel is dropped


def _from_array(image: np.ndarray, where: str) -> Tensor:
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        return _from_tensor(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1), where)
    if image.ndim == 2:
        return _from_tensor(torch.from_numpy(np.array(image, copy=True)), where)
    raise DataError(
        f"{where}: an array of shape {image.shape} — pass [H, W, 3] RGB, [H, W, 4] RGBA or "
        "[H, W] grayscale"
    )


def as_rgb_uint8(image: ImageLike, where: str = "image") -> Tensor:
    """`image` as a uint8 [3, H, W] RGB tensor on the CPU; `where` names it in errors."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Tensor):
        return _from_tensor(image.detach().cpu(), where)
    if isinstance(image, np.ndarray):
        return _from_array(image, where)
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        return _from_array(np.asarray(image.convert("RGB")), where)
    raise DataError(
        f"{where}: a {type(image).__name__} — pass a file path, a uint8 tensor, a PIL image or "
        "a numpy array"
    )
