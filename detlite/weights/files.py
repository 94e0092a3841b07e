"""Reading foreign checkpoint files: torch pickles (weights only) and safetensors."""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DetliteError, PathError

logger = logging.getLogger(__name__)

# Training scripts wrap the weights in a dict; the first of these that holds a dict is used
# (the plain weights before the EMA ones, as timm's own loader does by default).
_CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
# Objects besides tensors that timm/effdet training checkpoints pickle (their `args`); a plain
# attribute bag, safe to allow in the weights-only unpickler.
_SAFE_GLOBALS = [argparse.Namespace]


class WeightImportError(DetliteError, ValueError):
    """A file or state dict that cannot be imported for the requested config."""


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a .pth/.pt/.bin (torch.load, weights only) or .safetensors file.

    Common training containers (`state_dict`, `model`, `state_dict_ema`, `model_ema`) are
    unwrapped; non-tensor entries are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise PathError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        loaded: Any = _read_safetensors(path)
    else:
        loaded = _read_torch(path)
    return _tensors(_unwrap(loaded, path), path)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightImportError(f"{path}: not a readable safetensors file ({e})") from e


def _read_torch(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a bad file
        # A real checkpoint that pickles a class (e.g. a whole nn.Module) fails on that class;
        # anything else that fails is not a checkpoint at all.
        if blocked := re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e)):
            raise WeightImportError(
                f"{path}: pickles a {blocked.group(1)} object besides tensors, which is not loaded "
                "for safety (weights only); re-save the weights alone, e.g. "
                "`torch.save(model.state_dict(), path)`, or as safetensors"
            ) from e
        raise WeightImportError(
            f"{path}: not a PyTorch checkpoint (.pth/.pt/.bin) or safetensors file "
            f"({type(e).__name__}: {_last_detail(e)})"
        ) from e


def _last_detail(e: Exception) -> str:
    # torch's weights-only errors open with a generic banner and close with a documentation
    # link; the specific reason is the line before the link.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Check the documentation")]
    return lines[-1] if lines else "no detail"


def _unwrap(loaded: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(loaded, Mapping):
        raise WeightImportError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    for key in _CONTAINER_KEYS:
        if isinstance(loaded.get(key), Mapping):
            logger.info("%s: using the weights under %r", path, key)
            return loaded[key]
    return loaded


def _tensors(state: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(state)[:10]))
        raise WeightImportError(f"{path}: no tensors found (top-level keys: {keys or 'none'})")
    return tensors
