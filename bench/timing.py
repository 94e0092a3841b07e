"""Timing shared by the benchmarks: medians taken in interleaved rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from detlite import host_memory


def interleaved_medians(runners: dict[str, Callable[[], object]], warmup: int, repeats: int):
    """Median seconds per runner, timed in rounds that call every runner once in turn, so that
    a machine whose speed drifts (a shared host) shifts every row alike, not the later ones."""
    times: dict[str, list[float]] = {label: [] for label in runners}
    for run in runners.values():
        for _ in range(warmup):
            run()
    for _ in range(repeats):
        for label, run in runners.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(seconds) for label, seconds in times.items()}


def add_host_memory_flag(parser) -> None:
    parser.add_argument(
        "--release-freed-memory",
        action="store_true",
        help="keep glibc's default (large freed blocks unmapped); default: freed host memory "
        "kept for reuse, as train.py and eval.py run, for every row alike",
    )


def apply_host_memory_flag(args) -> str:
    """Apply the flag to this whole process (every row); returns the header's words for it."""
    if not args.release_freed_memory and host_memory.keep_freed_memory():
        return "freed host memory kept for reuse (detlite.host_memory)"
    return "glibc's default malloc"
