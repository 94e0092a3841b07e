"""The training loop, top to bottom: build the run, step, log, evaluate, checkpoint, finish.

One optimizer step (`Run.step`), over the step's micro-batches (`--grad-accum-steps`):
    targets = assign(anchors, gt)                 per micro-batch; the positive count of the
                                                  whole global batch (all ranks) normalises
    loss = focal + Huber(forward(params, images), targets)    compiled; inside DDP with > 1 rank
    backward (DDP all-reduces gradient buckets during the last micro-batch's backward)
    unscale; clip; SGD; EMA
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NoReturn

import torch

from . import distributed, run_outputs, validate
from .benchmark import benchmark
from .errors import DetliteError, Interrupted
from .optim import lr_at
from .run import Run, build
from .stopping import StopRequest
from .train_config import TrainConfig


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training (and the final evaluation); returns a summary dict."""
    validate.check_train_config(cfg)
    world = distributed.setup(cfg.device, cfg.dist.timeout_s)
    try:
        with StopRequest() as stop:
            run = build(cfg, world, stop)
            try:
                return benchmark(run) if cfg.benchmark else loop(run)
            finally:
                run.close()
    finally:
        distributed.teardown()


def loop(run: Run) -> dict[str, Any]:
    """Train `run` (from `detlite.run.build`) to its last step, then finish: final checkpoint,
    final evaluation; returns a summary dict."""
    cfg = run.cfg
    step = first_step = run.state.step
    last: dict[str, Any] = {"loss": float("nan")}
    window = _Window()
    ready = time.perf_counter()
    for micro_batches in run.batches():
        waited = time.perf_counter() - ready  # for data: the loader did not keep up
        if step >= run.total_steps:
            break
        lr = lr_at(step, run.total_steps, run.peak_lr, cfg.schedule)
        losses = run.step(micro_batches, lr, step)
        if run.dash.enabled and step == first_step:  # the run's (or this resume's) first step
            run_outputs.first_batch(cfg.output, micro_batches[0], run.category_map.names)
        step += 1
        window.add(run.global_batch, sum(int(b["num_overflow"]) for b in micro_batches), waited)
        run.report_unreadable([reason for b in micro_batches for reason in b["unreadable"]])
        run.dash.advance(step, step / run.loader.steps_per_epoch, run.global_batch, waited)
        if step % cfg.log_every == 0 or step == run.total_steps:
            last = _log(run, step, losses, lr, window)
        if run.stop_agreed():
            _stop(run, step, _save(run, step))
        saved = False
        if _due(cfg.eval_every, step, run.total_steps) and run.val is not None:
            metric = _evaluate(run, step)["AP"]
            saved = run.checkpointer.is_best(metric, run.state)
            if saved:
                _save(run, step, metric)
        if run.checkpointer.due(step, run.total_steps) and not saved:
            _save(run, step)
        ready = time.perf_counter()
    return _finish(run, step, last)


def _due(every: int, step: int, total_steps: int) -> bool:
    """An interval event (0: never) falls on `step`, which is not the last one."""
    return every > 0 and step % every == 0 and step < total_steps


def _save(run: Run, step: int, metric: float | None = None, final: bool = False) -> Path:
    """A checkpoint of `step`, after checking that the weights are finite (a checkpoint of
    diverged weights would only hide the good one before it)."""
    weights = [v for v in run.params.values() if v.is_floating_point()]
    if not torch.stack(torch._foreach_norm(weights)).isfinite().all():
        _check_finite(run, step, float("nan"), what="weights")
    return run.save(step, metric=metric, final=final)


def _check_finite(run: Run, step: int, total: float, what: str = "loss") -> None:
    if math.isfinite(total) or (what == "loss" and run.cfg.precision.dtype == "fp16"):
        return  # fp16: the GradScaler skips an overflowed step and lowers its scale
    newest = run.checkpointer.newest()
    where = (
        f"the newest good checkpoint is {newest} (continue from it with --resume "
        f"{run.cfg.output} and a lower --optim.lr)"
        if newest is not None
        else "no checkpoint was written yet (start again with a lower --optim.lr)"
    )
    precision = "" if run.cfg.precision.dtype == "fp32" else " (or --precision.dtype fp32)"
    raise DetliteError(
        f"the {what} became {total if what == 'loss' else 'non-finite'} at step {step}: "
        f"training diverged; {where}{precision}"
    )


def _stop(run: Run, step: int, path: Path) -> NoReturn:
    """End the run after a stop signal; its state is saved at `path`."""
    signum = run.stop.signum or 15  # another rank got the signal: stop as for SIGTERM
    raise Interrupted(
        f"stopped by {run.stop.name or 'a signal on another rank'} at step {step}; saved {path} "
        f"— continue with: python train.py --resume {run.cfg.output}",
        signum,
    )


def _evaluate(run: Run, step: int) -> dict[str, float]:
    """A mid-run evaluation; a stop signal during it saves the step and ends the run."""
    try:
        return run.evaluate(step)
    except Interrupted:
        _stop(run, step, _save(run, step))


def _finish(run: Run, step: int, last: dict[str, Any]) -> dict[str, Any]:
    """The final checkpoint, then the final evaluation (a crash or a signal during it loses
    nothing), then best.safetensors when the final weights are the best."""
    summary: dict[str, Any] = {"steps": step, "last": last, "run_dir": str(run.cfg.output)}
    evaluating = run.val is not None and not run.cfg.skip_eval
    path = _save(run, step, final=not evaluating)
    if evaluating:
        try:
            summary["metrics"] = run.evaluate(step)
        except Interrupted as stopped:
            raise Interrupted(
                f"{stopped} at the end of training; the final checkpoint {path} is saved — "
                f"evaluate it with: python eval.py {path}",
                run.stop.signum or 15,
            ) from None
        if run.checkpointer.is_best(summary["metrics"]["AP"], run.state):
            run.save(step, metric=summary["metrics"]["AP"])
    if run.dash.enabled and not evaluating:  # an evaluation has drawn them already
        run_outputs.plots(run.cfg.output)
    summary["warnings"] = {k: v for k, v in run.dash.state.warnings.items() if v}
    run.dash.close(run.cfg.output)
    return summary


class _Window:
    """Images, seconds waited for data and ground-truth overflow since the last log line."""

    def __init__(self) -> None:
        self.images, self.start, self.overflow, self.total_overflow = 0, time.perf_counter(), 0, 0
        self.waited = 0.0

    def add(self, images: int, overflow: int, waited: float) -> None:
        self.images += images
        self.waited += waited
        self.overflow += overflow
        self.total_overflow += overflow

    def rates(self) -> tuple[float, float]:
        """(images per second, share of the wall time spent waiting for data) since the last
        `rates`, which starts a new window."""
        now = time.perf_counter()
        span = max(now - self.start, 1e-9)
        rates = self.images / span, min(self.waited / span, 1.0)
        self.images, self.waited, self.start = 0, 0.0, now
        return rates


def _log(run: Run, step: int, losses, lr: float, window: _Window) -> dict[str, Any]:
    """Synchronise and record the losses of `step` (it happens only every --log-every steps)."""
    summed = distributed.all_reduce_sum(torch.stack([t.detach() for t in losses]))
    total, cls_loss, box_loss = summed.tolist()  # each rank held its share of the global loss
    _check_finite(run, step, total)
    img_per_s, data_wait = window.rates()
    record = {
        "loss": total,
        "cls_loss": cls_loss,
        "box_loss": box_loss,
        "lr": lr,
        "img_per_s": img_per_s,
        "data_wait": data_wait,
        "epoch": step / run.loader.steps_per_epoch,
        "gt_overflow": window.overflow,
    }
    run.dash.step(step, record)
    run.dash.warn_count("boxes over --data.max-boxes", window.total_overflow)
    return record
