"""Timing shared by the benchmarks: medians taken in interleaved rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
