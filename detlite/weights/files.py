"""Reading foreign checkpoint files: torch pickles (weights only) and safetensors."""

from __future__ import annotations

import argparse
import logging
import os
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
_EMA_KEYS = ("state_dict_ema", "model_ema")
# Objects besides tensors that timm/effdet/NVIDIA training checkpoints pickle (their `args`); a
# plain attribute bag, safe to allow in the weights-only unpickler.
_SAFE_GLOBALS = [argparse.Namespace]


class _Unread:
    """Stands in for an object of a class the weights-only unpickler must not build (e.g. in an
    optimizer's state): accepts whatever the pickle gives it and runs none of that class's code."""

    origin = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Unread:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class WeightImportError(DetliteError, ValueError):
    """A file or state dict that cannot be imported for the requested config."""


def read_state_dict(path: str | os.PathLike, ema: bool = False) -> dict[str, Tensor]:
    """The tensors of a .pth/.pt/.bin (torch.load, weights only) or .safetensors file.

    Common training containers (`state_dict`, `model`, `state_dict_ema`, `model_ema`) are
    unwrapped, the EMA weights with `ema=True`; non-tensor entries are dropped, and objects the
    weights-only unpickler must not build are skipped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise PathError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        loaded: Any = _read_safetensors(path)
    else:
        loaded = _read_torch(path)
    if isinstance(loaded, _Unread):
        raise WeightImportError(
            f"{path}: pickles a whole {loaded.origin} object instead of a state dict, which is not "
            "loaded for safety (weights only); re-save the weights alone, e.g. "
            "`torch.save(model.state_dict(), path)`, or as safetensors"
        )
    if skipped := sorted({u.origin for u in _unread_objects(loaded)}):
        logger.warning(
            "%s: skipped objects of %s that are not loaded for safety (weights only); the weights "
            "do not need them",
            path,
            ", ".join(skipped),
        )
    return _tensors(_unwrap(loaded, path, ema), path)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightImportError(f"{path}: not a readable safetensors file ({e})") from e


def _read_torch(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals([*_SAFE_GLOBALS, *_stand_ins(path)]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a bad file
        raise WeightImportError(
            f"{path}: not a PyTorch checkpoint (.pth/.pt/.bin) or safetensors file "
            f"({type(e).__name__}: {_last_detail(e)})"
        ) from e


def _stand_ins(path: Path) -> list[tuple[type, str]]:
    """An inert `_Unread` class for each class the file pickles that is not allowed."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: torch.load says what is wrong with it
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _SAFE_GLOBALS}
    return [
        (type("Unread", (_Unread,), {"origin": name}), name)
        for name in names
        if name not in allowed
    ]


def _unread_objects(value: Any) -> list[_Unread]:
    if isinstance(value, _Unread):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in _unread_objects(v)]
    return []


def _last_detail(e: Exception) -> str:
    # torch's weights-only errors open with a generic banner and close with a documentation
    # link; the specific reason is the line before the link.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Check the documentation")]
    return lines[-1] if lines else "no detail"


def _unwrap(loaded: Any, path: Path, ema: bool) -> Mapping[str, Any]:
    if not isinstance(loaded, Mapping):
        raise WeightImportError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    for key in _EMA_KEYS if ema else _CONTAINER_KEYS:
        if isinstance(loaded.get(key), Mapping):
            logger.info("%s: using the weights under %r", path, key)
            return loaded[key]
    if ema:
        keys = ", ".join(map(str, list(loaded)[:10]))
        raise WeightImportError(
            f"{path}: holds no EMA weights (no {' or '.join(_EMA_KEYS)}; top-level keys: "
            f"{keys or 'none'}) — drop --ema (ema=False) to import the plain weights"
        )
    return loaded


def _tensors(state: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(state)[:10]))
        raise WeightImportError(f"{path}: no tensors found (top-level keys: {keys or 'none'})")
    return tensors
