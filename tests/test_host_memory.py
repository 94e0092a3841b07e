"""detlite.host_memory: freed host memory kept for reuse (glibc), and who may turn it off."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from detlite import host_memory

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# Page faults per step of a small training-like step (50 MB activations, forward and backward):
# with glibc's default every large block is a fresh mmap (about 110,000 faults of 4 KiB pages a
# step); kept, the heap's free blocks serve most of them again.
_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from detlite import host_memory
    applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
    x = torch.randn(8, 16, 128, 128, requires_grad=True)
    w = torch.randn(96, 16, 1, 1, requires_grad=True)
    def step():
        y = torch.nn.functional.conv2d(x, w).relu()
        (y * y).sum().backward()
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
    """
)


def _faults(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_kept_memory_is_reused_without_page_faults():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied
    assert default > 50_000, "glibc's default should map every 50 MB block afresh"
    assert kept < default / 4


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_the_persons_malloc_settings_win():

    for name, value in ((host_memory.OPT_OUT, "0"), ("MALLOC_MMAP_THRESHOLD_", "1048576")):
        applied, faults = _faults("keep", env={**os.environ, name: value})
        assert not applied, name
        assert faults > 50_000, name


def test_allowed_only_on_linux_without_own_settings(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert host_memory._allowed({})
    assert host_memory._allowed({host_memory.OPT_OUT: "1"})
    assert not host_memory._allowed({host_memory.OPT_OUT: "0"})
    assert not host_memory._allowed({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not host_memory._allowed({})
