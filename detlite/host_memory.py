"""Let glibc keep freed host memory for reuse instead of handing it back to the kernel.

Why: glibc serves each allocation above its mmap threshold (32 MiB at most) with a fresh
`mmap` and unmaps it on `free`. A CPU training step allocates and frees dozens of such
activations every step (a Lite0 256 batch-8 step: [8, 96, 128, 128] floats, 50 MB each), so
the kernel page-faults and zeroes them anew each time: on a 2-core machine that made the
step 1.2-1.7x slower (docs/performance.md). With mmap off and trimming deferred, freed blocks
return to glibc's heap and the next step reuses them. The price: the heap keeps its
high-water mark, partly fragmented (the peak resident set of a training benchmark rose 8-10 %),
so the free part is handed back before each evaluation (`return_free_memory`).

Only where it can apply: Linux with glibc. The person's own malloc settings win: when any
`MALLOC_*_` variable or `GLIBC_TUNABLES` is set, or `DETLITE_KEEP_FREED_MEMORY=0`, nothing
changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_OUT = "DETLITE_KEEP_FREED_MEMORY"
_OWN_SETTINGS = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)
# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the top of the heap is returned only beyond this (an int: 2 GiB)."""

_applied = False


def keep_freed_memory() -> bool:
    """Turn off glibc's mmap for large blocks and its heap trimming, once per process.
    True when the setting is in effect (now or from an earlier call)."""
    global _applied
    if _applied:
        return True
    if not _allowed(os.environ):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    return _applied


def return_free_memory() -> None:
    """Give the kernel back what the heap holds free (`malloc_trim`), where the setting above is
    in effect: between training and an evaluation, so that the evaluation's peak does not stack
    on the training steps' free blocks."""
    if _applied:
        ctypes.CDLL(None).malloc_trim(0)


def _allowed(environ) -> bool:
    if environ.get(OPT_OUT, "1") == "0":
        return False
    return sys.platform.startswith("linux") and not any(k in environ for k in _OWN_SETTINGS)


def _glibc_mallopt():
    """glibc's `mallopt`, or None where the C library is another one (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only; musl's mallopt is a stub
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
