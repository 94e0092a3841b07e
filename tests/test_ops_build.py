"""The detlite ops library: loader behaviour, and (in CI, where nvcc and a CUDA torch are present
but no GPU) that `pip install` really built and installed the CUDA kernels where the package
finds them. Loading the library and registering its kernels needs no GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from detlite import ops
from detlite.ops import focal_loss, library, nms

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


def test_library_defines_the_schemas_python_would():
    """The schemas in cpu/schema.cpp are the ones the Python modules define without it."""
    if ops.library_path() is None:
        pytest.skip(ops.status())
    for qualname, schema in (
        (focal_loss.NAME, focal_loss.SCHEMA),
        (focal_loss.BACKWARD_NAME, focal_loss.BACKWARD_SCHEMA),
        (nms.NAME, nms.SCHEMA),
    ):
        op = getattr(torch.ops.detlite, qualname.split("::")[1]).default
        assert op._schema == torch._C.parse_schema(qualname + schema), qualname


def test_library_alone_runs_the_ops_without_detlite(tmp_path):
    """A process with torch and the library, but not the detlite package, has the ops."""
    if ops.library_path() is None:
        pytest.skip(ops.status())
    code = (
        "import sys, torch\n"
        f"torch.ops.load_library({str(ops.library_path())!r})\n"
        "boxes = torch.tensor([[[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]]])\n"
        "keep, count = torch.ops.detlite.batched_nms(boxes, torch.tensor([[.9, .8, .7]]),\n"
        "    torch.zeros(1, 3, dtype=torch.long), 0.5, 5)\n"
        "assert 'detlite' not in sys.modules\n"
        "print(keep.tolist(), count.tolist())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "[[0, 2, -1, -1, -1]] [2]"


def test_loader_reports_missing_or_disabled_library(monkeypatch, tmp_path):
    saved = (library._library_path, library._library_error)
    try:
        monkeypatch.setenv("DETLITE_OPS_LIBRARY", "none")
        library._library_path = None
        library._load()
        assert ops.library_path() is None and "not loading" in ops.library_error()

        missing = tmp_path / ops.LIBRARY_NAME
        monkeypatch.setenv("DETLITE_OPS_LIBRARY", str(missing))
        library._load()
        assert ops.library_path() is None and "not found" in ops.library_error()

        broken = tmp_path / "broken" / ops.LIBRARY_NAME
        broken.parent.mkdir()
        broken.write_bytes(b"not an ELF file")
        monkeypatch.setenv("DETLITE_OPS_LIBRARY", str(broken))
        library._load()
        assert ops.library_path() is None and "could not load" in ops.library_error()
        assert "reference kernels only" in ops.status()
    finally:
        library._library_path, library._library_error = saved
