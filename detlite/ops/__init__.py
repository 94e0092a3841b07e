"""detlite's custom operators, as torch.library operators in the `detlite` namespace.

    detlite::sigmoid_focal_loss(Tensor logits, Tensor labels, float alpha, float gamma,
                                float label_smoothing) -> Tensor
    detlite::sigmoid_focal_loss_backward(Tensor grad, Tensor logits, Tensor labels, float alpha,
                                         float gamma, float label_smoothing) -> Tensor
    detlite::batched_nms(Tensor boxes, Tensor scores, Tensor classes, float iou_threshold,
                         int max_det) -> (Tensor keep, Tensor count)

The schemas, fake (meta) implementations, the autograd formula and the reference kernels
(vectorised torch, any device) are defined in Python by `focal_loss.py` and `nms.py`, so the ops
exist, run and trace under `torch.compile(fullgraph=True)` whether or not anything was
compiled. The shared library `libdetlite_ops.so`, built by `pip install` (cpu/, cuda/), adds
C++ kernels for the CPU dispatch key and, where nvcc was found, CUDA kernels for the CUDA key;
they take precedence over the reference kernels. It is loaded on import when present; without
it, CUDA tensors take the reference kernels and a warning says so once.

Environment: `DETLITE_OPS_LIBRARY=/path/to/libdetlite_ops.so` loads that file instead of
searching; `DETLITE_OPS_LIBRARY=none` loads nothing. `python -m detlite.ops` prints the status.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from . import focal_loss as _focal_loss_module
from . import nms as _nms_module
from .focal_loss import sigmoid_focal_loss
from .nms import batched_nms

__all__ = [
    "batched_nms",
    "cpu_kernels_loaded",
    "cuda_kernels_loaded",
    "library_error",
    "library_path",
    "sigmoid_focal_loss",
    "status",
]

LIBRARY_NAME = "libdetlite_ops.so"
_log = logging.getLogger(__name__)

_library_path: Path | None = None
_library_error: str | None = None
_warned = False


def _candidates() -> list[Path]:
    """Where an install puts the library: next to this package (a wheel or an in-place build),
    and every other directory this package is spread over (scikit-build-core's editable mode
    maps the package onto both the source tree and the CMake install tree)."""
    dirs = [Path(__file__).resolve().parent]
    for entry in list(globals().get("__path__", [])):
        path = Path(entry).resolve()
        if path not in dirs:
            dirs.append(path)
    return [d / LIBRARY_NAME for d in dirs]


def _load() -> None:
    global _library_path, _library_error
    override = os.environ.get("DETLITE_OPS_LIBRARY", "")
    if override.lower() in ("none", "0", "off"):
        _library_error = f"DETLITE_OPS_LIBRARY={override}: not loading the CUDA library"
        return
    paths = [Path(override)] if override else _candidates()
    found = [p for p in paths if p.is_file()]
    if not found:
        where = ", ".join(str(p.parent) for p in paths)
        _library_error = f"{LIBRARY_NAME} not found (looked in {where})"
        return
    try:
        torch.ops.load_library(str(found[0]))
    except (OSError, RuntimeError) as error:  # e.g. built against another torch
        _library_error = f"could not load {found[0]}: {error}"
        return
    _library_path = found[0]


def library_path() -> Path | None:
    """The loaded CUDA library, or None when the reference kernels serve every device."""
    return _library_path


def library_error() -> str | None:
    """Why no CUDA library is loaded (None when one is)."""
    return _library_error


OPS = ("sigmoid_focal_loss", "sigmoid_focal_loss_backward", "batched_nms")


def _library_serves(key: str) -> bool:
    return _library_path is not None and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"detlite::{name}", key) for name in OPS
    )


def cuda_kernels_loaded() -> bool:
    """True when the compiled CUDA kernels are registered for all detlite ops."""
    return _library_serves("CUDA")


def cpu_kernels_loaded() -> bool:
    """True when the compiled C++ CPU kernels are registered for all detlite ops."""
    return _library_serves("CPU")


def status() -> str:
    """One line on which kernels serve CPU and CUDA tensors."""
    if _library_path is None:
        return f"detlite ops: reference kernels only ({_library_error})"
    served = [key for key in ("CPU", "CUDA") if _library_serves(key)]
    return f"detlite ops: {' and '.join(served) or 'no'} kernels from {_library_path}"


def _warn_reference_on_cuda(*tensors: torch.Tensor) -> None:
    """Say once per process that CUDA tensors are going through the reference kernels."""
    global _warned
    if _warned or not any(t.is_cuda for t in tensors):
        return
    _warned = True
    warnings.warn(
        f"{status()}; CUDA tensors use the unfused reference kernels (slower, and the focal loss "
        "materialises [B, A, C] temporaries). Reinstall with nvcc on PATH (see docs/ops.md).",
        RuntimeWarning,
        stacklevel=3,
    )


_load()
if _library_path is None:
    _log.info(status())
_focal_loss_module._on_reference_call = _warn_reference_on_cuda
_nms_module._on_reference_call = _warn_reference_on_cuda
