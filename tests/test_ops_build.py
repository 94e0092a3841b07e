"""The detlite ops library: loader behaviour, and (in CI, where nvcc and a CUDA torch are present
but no GPU) that `pip install` really built and installed the CUDA kernels where the package
finds them. Loading the library and registering its kernels needs no GPU."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from detlite import ops

OPS = ("sigmoid_focal_loss", "sigmoid_focal_loss_backward", "batched_nms")


def _cuda_build_expected() -> bool:
    return (
        bool(os.environ.get("CI"))
        and shutil.which("nvcc") is not None
        and torch.version.cuda is not None
        and os.environ.get("DETLITE_CUDA", "AUTO").upper() != "OFF"
        and os.environ.get("DETLITE_OPS_LIBRARY", "") == ""
    )


def test_ops_are_defined_with_reference_kernels():
    for name in OPS:
        qualname = f"detlite::{name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeExplicitAutograd")
    assert isinstance(ops.status(), str)
    assert (ops.library_path() is None) == (ops.library_error() is not None)


@pytest.mark.skipif(not _cuda_build_expected(), reason="CI with nvcc and a CUDA torch only")
def test_ci_install_built_and_loads_the_cuda_kernels():
    path = ops.library_path()
    assert path is not None, ops.status()
    assert path.name == ops.LIBRARY_NAME
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"detlite::{name}", "CUDA"), name
    assert ops.cuda_kernels_loaded()


def test_loader_reports_missing_or_disabled_library(monkeypatch, tmp_path):
    saved = (ops._library_path, ops._library_error)
    try:
        monkeypatch.setenv("DETLITE_OPS_LIBRARY", "none")
        ops._library_path = None
        ops._load()
        assert ops.library_path() is None and "not loading" in ops.library_error()

        missing = tmp_path / ops.LIBRARY_NAME
        monkeypatch.setenv("DETLITE_OPS_LIBRARY", str(missing))
        ops._load()
        assert ops.library_path() is None and "not found" in ops.library_error()

        broken = tmp_path / "broken" / ops.LIBRARY_NAME
        broken.parent.mkdir()
        broken.write_bytes(b"not an ELF file")
        monkeypatch.setenv("DETLITE_OPS_LIBRARY", str(broken))
        ops._load()
        assert ops.library_path() is None and "could not load" in ops.library_error()
        assert "reference kernels only" in ops.status()
    finally:
        ops._library_path, ops._library_error = saved
