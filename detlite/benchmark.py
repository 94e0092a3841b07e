"""`train.py --benchmark N`: time N optimizer steps after a warm-up, print one JSON line.

The steps are the run's own (`Run.step`: same data, compile mode and precision), so the numbers
are what training gets; nothing is evaluated or written.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import torch

from .optim import lr_at
from .run import Run
from .train_config import BENCHMARK_WARMUP_STEPS


def benchmark(run: Run) -> dict[str, Any]:
    """Median step time and throughput of `run.cfg.benchmark` steps; printed on rank 0."""
    device = run.world.device
    times: list[float] = []
    for step, micro_batches in enumerate(run.batches()):
        if step >= run.total_steps:
            break
        start = time.perf_counter()
        run.step(micro_batches, lr_at(step, run.total_steps, run.peak_lr, run.cfg.schedule), step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= BENCHMARK_WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    median = statistics.median(times) if times else float("nan")
    report = {
        "model": run.model_cfg.name,
        "image_size": list(run.model_cfg.image_size),
        "batch_per_rank": run.cfg.batch_size,
        "world_size": run.world.world_size,
        "compile": run.cfg.compile,
        "dtype": run.cfg.precision.dtype,
        "steps_timed": len(times),
        "median_step_s": median,
        "img_per_s": run.global_batch / median if times else float("nan"),
    }
    if run.world.is_main:
        print(json.dumps(report))
    return report
