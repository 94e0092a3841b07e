"""Let glibc keep freed host memory for reuse instead of handing it back to the kernel.

Why: glibc serves each allocation above its mmap threshold (32 MiB at most) with a fresh
`mmap` and unmaps it on `free`. A CPU training step allocates and frees dozens of such
activations every step (a Lite0 256 batch-8 step: [8, 96, 128, 128] floats, 50 MB each), so
the kernel page-faults and zeroes them anew each time: on a 2-core machine that made the
step 1.2-1.7x slower (docs/performance.md). With mmap off and trimming deferred, freed blocks
return to glibc's heap and the next step reuses them. The price: the heap keeps its
high-water mark, partly fragmented (the peak resident set of a training benchmark rose 8-10 %),
so the free part is handed back before each evaluation (`return_free_memory`).

train.py and eval.py turn it on as they start (a process-wide choice belongs to the program,
not to a library call). Only where it can apply: Linux with glibc. The person's own choices
win: nothing changes when a `MALLOC_*` variable or a `glibc.malloc.*` tunable is set, when
another allocator is preloaded (jemalloc, tcmalloc, mimalloc), or with
`DETLITE_KEEP_FREED_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

from .errors import ConfigError

OPT_OUT = "DETLITE_KEEP_FREED_MEMORY"
_PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the top of the heap is returned only beyond this (an int: 2 GiB)."""

_applied = False


def keep_freed_memory() -> bool:
    """Turn off glibc's mmap for large blocks and its heap trimming, once per process.
    True when the setting is in effect (now or from an earlier call). ConfigError when
    DETLITE_KEEP_FREED_MEMORY is neither 0 nor 1."""
    global _applied
    if _applied:
        return True
    libc = glibc()
    if libc is None or not _allowed(os.environ):
        return False
    _applied = (
        libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    )
    return _applied


def return_free_memory() -> None:
    """Give the kernel back what the heap holds free (`malloc_trim`), where the setting above is
    in effect: before an evaluation, so that its peak does not stack on a training run's free
    blocks."""
    if _applied:
        glibc().malloc_trim(0)


def _allowed(environ) -> bool:
    choice = environ.get(OPT_OUT, "1")
    if choice not in ("0", "1"):
        raise ConfigError(
            f"{OPT_OUT}={choice!r}: use 1 (keep freed host memory for reuse, the default) or 0 "
            "(leave glibc's malloc as it is)"
        )
    if choice == "0":
        return False
    own = any(k.startswith("MALLOC_") for k in environ)
    own |= "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
    own |= any(name in environ.get("LD_PRELOAD", "") for name in _PRELOADED_ALLOCATORS)
    return sys.platform.startswith("linux") and not own


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """This process's C library with `mallopt` and `malloc_trim` typed, or None where it is not
    glibc (musl's mallopt is a stub; macOS has neither)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    return libc
