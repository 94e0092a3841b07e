"""detlite.host_memory: freed host memory kept for reuse (glibc), and who may turn it off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from detlite import host_memory

REPO = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(host_memory.glibc() is None, reason="glibc's mallopt only")

# A child process runs a small training-like step (50 MB activations, forward and backward) and
# prints its page faults per step. With glibc's default every large block is a fresh mmap
# (about 110,000 faults of 4 KiB pages a step); kept, the heap's free blocks serve most of them
# again. Transparent huge pages are off in the child (prctl PR_SET_THP_DISABLE), so that a
# kernel with THP "always" counts faults in 4 KiB pages too. Then it frees 200 MB and prints
# how much of its resident set `return_free_memory` gave back.
_CHILD = textwrap.dedent(
    """
    import ctypes, resource, sys
    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)
    import torch
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
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    blocks = [torch.ones(2**20) for _ in range(50)]  # 50 blocks of 4 MB
    del blocks
    held = rss_mb()
    host_memory.return_free_memory()
    print(applied, faults, round(held - rss_mb()))
    """
)


def _child(mode: str, **env: str) -> tuple[bool, int, int]:
    """(applied, page faults per step, MB handed back by return_free_memory)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, **env},
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@needs_glibc
def test_kept_memory_is_reused_without_page_faults_and_handed_back():
    applied, kept, returned = _child("keep")
    _, default, _ = _child("default")
    assert applied
    assert default > 50_000, "glibc's default should map every 50 MB block afresh"
    assert kept < default / 4
    assert returned > 100, "return_free_memory should give back most of the 200 MB freed"


@needs_glibc
@pytest.mark.parametrize(
    "name, value",
    [
        (host_memory.OPT_OUT, "0"),
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000"),
    ],
)
def test_the_persons_malloc_settings_win(name, value):
    applied, faults, _ = _child("keep", **{name: value})
    assert not applied
    assert faults > 50_000


def test_allowed_only_on_linux_without_own_settings(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert host_memory._allowed({})
    assert host_memory._allowed({host_memory.OPT_OUT: "1", "GLIBC_TUNABLES": "glibc.rtld.x=1"})
    assert not host_memory._allowed({host_memory.OPT_OUT: "0"})
    assert not host_memory._allowed({"MALLOC_ARENA_MAX": "2"})
    assert not host_memory._allowed({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
    with pytest.raises(host_memory.ConfigError, match=host_memory.OPT_OUT):
        host_memory._allowed({host_memory.OPT_OUT: "off"})
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not host_memory._allowed({})


@pytest.mark.parametrize("program", ["train.py", "eval.py"])
def test_a_wrong_opt_out_value_is_one_line(program):
    """DETLITE_KEEP_FREED_MEMORY=yes is neither accepted silently nor a traceback."""
    done = subprocess.run(
        [sys.executable, program, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, host_memory.OPT_OUT: "yes"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: DETLITE_KEEP_FREED_MEMORY='yes': use 1 (keep freed host memory for reuse, the "
        "default) or 0 (leave glibc's malloc as it is)"
    ]
