"""The training loop, top to bottom: build the run, step, log, evaluate, checkpoint, finish.

One optimizer step (`Run.step`):
    loss = focal + Huber(forward(params, images), assign(anchors, gt))   one compiled graph;
           the positive count (loss normaliser) is summed over ranks inside it
    backward; gradients summed over ranks; unscale; clip; SGD; EMA
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from . import distributed
from .benchmark import benchmark
from .optim import lr_at
from .run import Run, build
from .train_config import TrainConfig


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training (and the final evaluation); returns a summary dict."""
    world = distributed.setup(cfg.device)
    try:
        run = build(cfg, world)
        return benchmark(run) if cfg.benchmark else _loop(run)
    finally:
        distributed.teardown()


def _loop(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    step = run.state.step
    last: dict[str, Any] = {"loss": float("nan")}
    window = _Window()
    for batch in run.batches():
        if step >= run.total_steps:
            break
        lr = lr_at(step, run.total_steps, run.peak_lr, cfg.schedule)
        losses = run.step(batch, lr)
        step += 1
        window.add(run.global_batch, int(batch["num_overflow"]))
        if step % cfg.log_every == 0 or step == run.total_steps:
            last = _log(run, step, losses, lr, window)
        else:
            run.dash.advance(step)
        saved = False
        if _due(cfg.eval_every, step, run.total_steps) and run.val is not None:
            metric = run.evaluate(step)["AP"]
            saved = metric > run.state.best_metric and run.save(step, metric=metric)
        if run.checkpointer.due(step, run.total_steps) and not saved:
            run.save(step)
    return _finish(run, step, last)


def _due(every: int, step: int, total_steps: int) -> bool:
    """An interval event (0: never) falls on `step`, which is not the last one."""
    return every > 0 and step % every == 0 and step < total_steps


def _finish(run: Run, step: int, last: dict[str, Any]) -> dict[str, Any]:
    """Final evaluation and checkpoint (best.safetensors too when the run is the best)."""
    summary: dict[str, Any] = {"steps": step, "last": last, "run_dir": str(run.cfg.output)}
    metric = None
    if run.val is not None and not run.cfg.skip_eval:
        summary["metrics"] = run.evaluate(step)
        metric = summary["metrics"]["AP"]
    run.save(step, metric=metric, final=True)
    run.dash.close()
    return summary


class _Window:
    """Images and ground-truth overflow since the last log line, for throughput."""

    def __init__(self) -> None:
        self.images, self.start, self.overflow = 0, time.perf_counter(), 0

    def add(self, images: int, overflow: int) -> None:
        self.images += images
        self.overflow += overflow

    def rate(self) -> float:
        """Images per second since the last `rate`, which starts a new window."""
        now = time.perf_counter()
        rate = self.images / max(now - self.start, 1e-9)
        self.images, self.start = 0, now
        return rate


def _log(run: Run, step: int, losses, lr: float, window: _Window) -> dict[str, Any]:
    """Synchronise and record the losses of `step` (it happens only every --log-every steps)."""
    summed = distributed.all_reduce_sum(torch.stack([t.detach() for t in losses]))
    total, cls_loss, box_loss = summed.tolist()  # each rank held its share of the global loss
    if not math.isfinite(total):
        raise FloatingPointError(
            f"loss became {total} at step {step}; lower --optim.lr, or use "
            "--precision.dtype bf16/fp32 (fp16 without a scaler overflows)"
        )
    record = {
        "loss": total,
        "cls_loss": cls_loss,
        "box_loss": box_loss,
        "lr": lr,
        "img_per_s": window.rate(),
        "epoch": step / run.loader.steps_per_epoch,
        "gt_overflow": window.overflow,
    }
    run.dash.step(step, record)
    return record
