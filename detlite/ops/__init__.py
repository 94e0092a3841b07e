"""detlite's custom operators, as torch.library operators in the `detlite` namespace.

    detlite::sigmoid_focal_loss(Tensor logits, Tensor labels, float alpha, float gamma,
                                float label_smoothing) -> Tensor
    detlite::sigmoid_focal_loss_backward(Tensor grad, Tensor logits, Tensor labels, float alpha,
                                         float gamma, float label_smoothing) -> Tensor
    detlite::batched_nms(Tensor boxes, Tensor scores, Tensor classes, float iou_threshold,
                         int max_det) -> (Tensor keep, Tensor count)

The shared library `libdetlite_ops.so`, built by `pip install` (cpu/, cuda/), defines the
schemas (`TORCH_LIBRARY`, so that a process with only torch can load it and run an exported
graph that calls the ops) and registers C++ kernels for the CPU dispatch key and, where nvcc
was found, CUDA kernels for the CUDA key. It is loaded on import when present (library.py).
`focal_loss.py` and `nms.py` add the fake (meta) implementations, the autograd formula and the
reference kernels (vectorised torch, any device), and define the schemas themselves when no
library is loaded, so the ops exist, run and trace under `torch.compile(fullgraph=True)`
whether or not anything was compiled. Compiled kernels take precedence over the reference
ones; without the library, CUDA tensors take the reference kernels and a warning says so once.

Environment: `DETLITE_OPS_LIBRARY=/path/to/libdetlite_ops.so` loads that file instead of
searching; `DETLITE_OPS_LIBRARY=none` loads nothing. `python -m detlite.ops` prints the status.
"""

from __future__ import annotations

import logging
import warnings

import torch

from . import focal_loss as _focal_loss_module
from . import library
from . import nms as _nms_module
from .focal_loss import sigmoid_focal_loss
from .library import (
    LIBRARY_NAME,
    cpu_kernels_loaded,
    cuda_kernels_loaded,
    library_error,
    library_path,
    status,
)
from .nms import batched_nms

__all__ = [
    "LIBRARY_NAME",
    "batched_nms",
    "cpu_kernels_loaded",
    "cuda_kernels_loaded",
    "library",
    "library_error",
    "library_path",
    "sigmoid_focal_loss",
    "status",
]

_log = logging.getLogger(__name__)
_warned = False


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


if library_path() is None:
    _log.info(status())
_focal_loss_module._on_reference_call = _warn_reference_on_cuda
_nms_module._on_reference_call = _warn_reference_on_cuda
