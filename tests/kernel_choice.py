"""A fixture that runs a CPU op test twice: on the C++ CPU kernels of libdetlite_ops.so, and on
the Python reference kernels (registered over them for the CPU key for the test's duration;
dropping that registration brings the C++ kernels back). bench/ops.py times both the same way."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from detlite import ops
from detlite.ops import focal_loss, nms

_REFERENCE = {
    "sigmoid_focal_loss": focal_loss.forward_reference,
    "sigmoid_focal_loss_backward": focal_loss.backward_reference,
    "batched_nms": nms.batched_nms_reference,
}


@contextlib.contextmanager
def reference_cpu_kernels():
    """Within the block, CPU tensors take the Python reference kernels of the detlite ops."""
    if not ops.cpu_kernels_loaded():  # the reference serves the CPU already
        yield
        return
    library = torch.library.Library("detlite", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        for name, kernel in _REFERENCE.items():
            library.impl(name, kernel, "CPU")
    try:
        yield
    finally:
        library._destroy()


@pytest.fixture(params=["cpp", "reference"])
def cpu_kernels(request):
    """ "cpp" or "reference": which kernels serve CPU tensors in this test."""
    if request.param == "cpp":
        if not ops.cpu_kernels_loaded():
            pytest.skip(f"the C++ CPU kernels are not built here ({ops.status()})")
        yield "cpp"
        return
    with reference_cpu_kernels():
        yield "reference"
