"""safetensors files of the flat parameter dict, with the model config in the metadata.

A checkpoint alone rebuilds the model: `params, cfg = checkpoint.load(path)`. Writes are atomic
(temporary file in the same directory, fsync, rename), so an interrupted save never leaves a
half-written file under the final name. Training checkpoints (`training.py`) are files of the
same kind with more tensors; `load` reads their weights too.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .. import config as config_lib
from ..config import ModelConfig
from ..data.coco import CategoryMap
from ..data.coco_categories import COCO_NUM_CLASSES, coco90_category_map
from ..errors import DetliteError

FORMAT = "detlite-params-v1"
# A training checkpoint (training.py) holds params, EMA, optimizer state and RNG states under
# "<part>/" prefixes.
TRAIN_FORMAT = "detlite-train-v1"
_FORMATS = (FORMAT, TRAIN_FORMAT)
FORMAT_KEY = "format"
CONFIG_KEY = "model_config"
CATEGORY_MAP_KEY = "category_map"
# Temporary files of `atomic_write`: ".<final name>.<random>.tmp" beside the final file.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


class CheckpointError(DetliteError, ValueError):
    """A file that is not a readable detlite checkpoint (or lacks what was asked of it)."""


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_path)`, then move the finished file to `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
    )
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(
    path: str | os.PathLike,
    params: dict[str, Tensor],
    cfg: ModelConfig,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `params` (moved to CPU, made contiguous) and `cfg` to a safetensors file."""
    meta = {FORMAT_KEY: FORMAT, CONFIG_KEY: config_lib.to_json(cfg), **(metadata or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a checkpoint, checked to be a detlite file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors checkpoint ({e}); the file is truncated or "
            "corrupt — use another checkpoint (e.g. an earlier one from the run directory)"
        ) from e
    if meta.get(FORMAT_KEY) not in _FORMATS:
        raise CheckpointError(
            f"{path}: safetensors file without detlite metadata (format={meta.get(FORMAT_KEY)!r}); "
            "to import foreign weights use `python -m detlite.weights SRC DST --source ...`"
        )
    return meta


def model_config(meta: dict[str, str], path: str | os.PathLike) -> ModelConfig:
    try:
        return config_lib.from_json(meta[CONFIG_KEY])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: model config in the metadata is unreadable ({e})") from e


def read_tensors(
    path: str | os.PathLike, prefix: str = "", device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Tensors whose names start with `prefix`, with the prefix removed."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            # Cloned into fresh (aligned, writable) allocations: the vectorised CPU kernels then
            # take the same code paths as for freshly created tensors, which keeps resumed runs
            # bitwise equal to uninterrupted ones.
            names = [k for k in f.keys() if k.startswith(prefix)]  # noqa: SIM118 (not a dict)
            return {k[len(prefix) :]: f.get_tensor(k).clone() for k in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: tensor data is truncated or corrupt ({e})") from e


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "auto"
) -> tuple[dict[str, Tensor], ModelConfig]:
    """Read a checkpoint; returns (params, cfg). Refuses corrupt files with a clear message.

    For a training checkpoint, `weights` picks the EMA weights ("ema", as the reference
    evaluates) or the raw ones ("params"); "auto" takes the EMA when the run kept one. Asking
    for weights a file does not hold is an error, never a silent substitute.
    """
    if weights not in ("auto", "ema", "params"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'params', got {weights!r}")
    meta = read_metadata(path)
    cfg = model_config(meta, path)
    if meta[FORMAT_KEY] != TRAIN_FORMAT:
        if weights != "auto":
            raise CheckpointError(
                f"{path} is a weights-only file with one set of weights; --weights {weights} "
                "chooses between the raw and EMA weights of a training checkpoint — drop it"
            )
        return check_params(read_tensors(path, "", device), cfg, source=str(path)), cfg
    params = read_tensors(path, "ema/", device) if weights in ("auto", "ema") else {}
    if not params and weights == "ema":
        raise CheckpointError(
            f"{path}: the run kept no EMA weights (--optim.ema-decay 0) — use --weights params"
        )
    if not params:
        params = read_tensors(path, "params/", device)
    return check_params(params, cfg, source=str(path)), cfg


def check_params(params: dict[str, Tensor], cfg: ModelConfig, source: str) -> dict[str, Tensor]:
    """Names and shapes must be exactly those `model.init(cfg)` makes; returns `params` in
    `model.init`'s order (files store names sorted). The order matters beyond looks: it is the
    order of foreach reductions such as the gradient-norm clip, so a resumed run only matches an
    uninterrupted one bit for bit with the same order."""
    from .. import model  # late import: model pulls in the whole network code

    expected = {k: v.shape for k, v in model.init(cfg).items()}
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    misshaped = sorted(k for k in expected.keys() & params.keys() if params[k].shape != expected[k])
    if missing or unexpected or misshaped:
        details = []
        if missing:
            details.append(f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if misshaped:
            details.append(
                "wrong shape "
                + ", ".join(
                    f"{k}: {tuple(params[k].shape)} vs {tuple(expected[k])}" for k in misshaped[:10]
                )
            )
        listing = "; ".join(details)
        raise CheckpointError(
            f"{source}: tensors do not match the model config stored with them ({listing})"
        )
    return {k: params[k] for k in expected}


def stored_category_map(meta: dict[str, str]) -> CategoryMap | None:
    """The category map in a checkpoint's metadata, if it holds one."""
    if CATEGORY_MAP_KEY in meta:
        return CategoryMap.from_json(meta[CATEGORY_MAP_KEY])
    # Training checkpoints of detlite 0.1.0 kept it inside their JSON training state.
    stored = json.loads(meta.get("train_state", "{}")).get("extra", {}).get(CATEGORY_MAP_KEY)
    return CategoryMap.from_json(stored) if stored is not None else None


def category_map(
    path: str | os.PathLike, num_classes: int, fallback: CategoryMap | None = None
) -> CategoryMap:
    """The label → category mapping of the checkpoint at `path`.

    detlite checkpoints store the map of the data they were trained on. For imported weights
    (none stored): `fallback` (e.g. the map of the data being evaluated) when its class count
    fits, else COCO's 90 categories for a 90-class model (label + 1, as effdet), else an error.
    """
    stored = stored_category_map(read_metadata(path))
    if stored is not None:
        return stored
    if fallback is not None and fallback.num_classes == num_classes:
        return fallback
    if num_classes == COCO_NUM_CLASSES:
        return coco90_category_map()
    raise CheckpointError(
        f"{path}: no category mapping stored and the data has a different class count than the "
        f"model ({num_classes}); evaluate on the data it was trained on"
    )


def prediction_category_map(path: str | os.PathLike, num_classes: int) -> CategoryMap:
    """The categories to name predictions by: the checkpoint's map (or COCO's for 90 classes),
    else ids 0..C-1 named by number (a checkpoint trained without a map)."""
    try:
        return category_map(path, num_classes)
    except CheckpointError:
        numbers = tuple(range(num_classes))
        return CategoryMap(ids=numbers, names=tuple(str(i) for i in numbers))
