"""Finding and loading `libdetlite_ops.so`, which defines the `detlite::` op schemas
(`TORCH_LIBRARY`, cpu/schema.cpp) and registers the C++ CPU and CUDA kernels.

Loaded before the op modules, which define the schemas themselves only when no library did:
with the library, a process needs nothing but `torch.ops.load_library(path)` to run a graph
that calls the ops (an AOTInductor package, say), without the detlite Python package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

LIBRARY_NAME = "libdetlite_ops.so"

_library_path: Path | None = None
_library_error: str | None = None


def _candidates() -> list[Path]:
    """Where an install puts the library: next to this package (a wheel or an in-place build),
    and every other directory this package is spread over (scikit-build-core's editable mode
    maps the package onto both the source tree and the CMake install tree)."""
    dirs = [Path(__file__).resolve().parent]
    for entry in _package_path():
        path = Path(entry).resolve()
        if path not in dirs:
            dirs.append(path)
    return [d / LIBRARY_NAME for d in dirs]


def _load() -> None:
    global _library_path, _library_error
    override = os.environ.get("DETLITE_OPS_LIBRARY", "")
    if override.lower() in ("none", "0", "off"):
        _library_error = f"DETLITE_OPS_LIBRARY={override}: not loading the ops library"
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
    _library_path = found[0].resolve()


def library_path() -> Path | None:
    """The loaded ops library, or None when the reference kernels serve every device."""
    return _library_path


def library_error() -> str | None:
    """Why no ops library is loaded (None when one is)."""
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


def defined(qualname: str) -> bool:
    """True when the operator `namespace::name` has a schema (from the library or Python)."""
    namespace, name = qualname.split("::")
    return hasattr(getattr(torch.ops, namespace), name)


def define(qualname: str, schema: str) -> None:
    """Define `qualname` with `schema` unless the loaded library already has (then the two
    must agree: tests/test_ops_build.py compares them)."""
    if not defined(qualname):
        torch.library.define(qualname, schema)


def _package_path() -> list[str]:
    """The directories of the detlite.ops package (being imported when this runs)."""
    return list(sys.modules[__package__].__path__)


_load()
