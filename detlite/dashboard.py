"""What rank 0 shows the person: a live rich dashboard on a terminal (`detlite.dashboard_view`),
plain grep-able lines elsewhere (CI, files, pipes), and always a JSON-lines metrics file in the
run directory. Other ranks stay quiet."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.live import Live

from .dashboard_view import DashState, render, summary_lines
from .rundir import METRICS
from .tensorboard_log import TensorBoardLog


class MetricsFile:
    """Appends one JSON object per line; flushed each write so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Open for the whole run (closed by `close`), line-buffered.
        self._file = open(path, "a", buffering=1)  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def close(self) -> None:
        self._file.close()


def _rss_gb() -> float:
    """This process's resident memory (Linux /proc; elsewhere its peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 1e9
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


class Dashboard:
    """Progress of a training run on rank 0; silent on other ranks."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        enabled: bool,
        compiling: bool = False,
        tensorboard: bool = False,
        console: Console | None = None,
    ) -> None:
        self.enabled = enabled
        self.console = console or Console()
        self.metrics = MetricsFile(run_dir / METRICS) if enabled else None
        self.tensorboard = TensorBoardLog(run_dir, start_step) if enabled and tensorboard else None
        self.interactive = enabled and self.console.is_terminal
        self.total_steps = total_steps
        first = "compiling the first step (a minute or more)…" if compiling else "first step…"
        self.state = DashState(
            total_steps=total_steps, start_step=start_step, step=start_step, status=first
        )
        self._live: Live | None = None
        self._width = self.console.width
        if self.interactive:
            self._live = Live(
                console=self.console,
                get_renderable=lambda: render(self.state, self.console.width),
                refresh_per_second=2,
            )
            self._live.start()

    def set_header(self, header: dict[str, str]) -> None:
        self.state.header = header

    def log(self, message: str) -> None:
        if self.enabled:
            self._print(message)

    def _print(self, renderable: Any) -> None:
        if self._live is not None:
            self._live.console.print(renderable)
        elif isinstance(renderable, str):
            print(renderable, flush=True)
        else:
            Console(file=sys.stdout).print(renderable)

    def step(self, step: int, record: dict[str, Any]) -> None:
        """Record the metrics of optimizer step `step` (1-based count of steps done)."""
        if not self.enabled:
            return
        assert self.metrics is not None
        self.metrics.write({"step": step, **record})
        if self.tensorboard is not None:
            self.tensorboard.step(step, record)
        state = self.state
        state.step, state.epoch, state.lr, state.status = (
            step,
            record["epoch"],
            record["lr"],
            "training",
        )
        state.add_losses(record)
        state.rss_gb = _rss_gb()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state.cuda_peak_gb = torch.cuda.max_memory_allocated() / 1e9
        if self._live is None:
            print(
                f"step {step}/{self.total_steps}  loss {record['loss']:.4f} "
                f"(cls {record['cls_loss']:.4f} box {record['box_loss']:.5f})  "
                f"lr {record['lr']:.2e}  {record['img_per_s']:.1f} img/s  "
                f"data wait {record['data_wait']:.0%}",
                flush=True,
            )

    def advance(self, step: int, epoch: float, images: int = 0, wait_s: float = 0.0) -> None:
        """Step `step` is done (`epoch` epochs): `images` trained, `wait_s` seconds spent
        waiting for data."""
        self.state.step, self.state.epoch = step, epoch
        self.state.add_throughput(images, wait_s, time.monotonic())
        self._clear_if_narrowed()

    def _clear_if_narrowed(self) -> None:
        """A terminal made narrower re-wraps the frame on screen into more lines than the live
        view knows to redraw, which would leave its remains above the next frame: clear the
        screen once, and the next frame is drawn whole at the top."""
        width = self.console.width
        if self._live is not None and width < self._width:
            self.console.clear()
        self._width = width

    def warn_count(self, name: str, count: int) -> None:
        self.state.warnings[name] = count

    def checkpoint(self, step: int) -> None:
        self.state.checkpoint = (step, time.monotonic())

    def evaluating(self, done: int, total: int) -> None:
        """Evaluation progress: `done` of `total` batches (done == total: finished)."""
        if done == 0 or self.state.eval_progress is None:
            self.state.eval_progress = (done, total, time.monotonic())
        else:
            self.state.eval_progress = (done, total, self.state.eval_progress[2])
        if done >= total:
            self.state.eval_progress = None
        self._clear_if_narrowed()

    def record(self, record: dict[str, Any], per_class: list[dict] | None = None) -> None:
        """A record for metrics.jsonl; an evaluation's (`"eval"`) also updates the view and,
        with its `per_class` rows, TensorBoard."""
        if self.metrics is not None:
            self.metrics.write(record)
        if "eval" in record and self.tensorboard is not None:
            self.tensorboard.evaluation(record["step"], record["eval"], per_class or [])
        if "eval" in record:
            metrics, step = record["eval"], record["step"]
            self.state.last_eval, self.state.eval_step = metrics, step
            if self.state.best is None or metrics["AP"] > self.state.best[0]:
                self.state.best = (metrics["AP"], step)

    def print(self, renderable: Any) -> None:
        if self.enabled:
            self._print(renderable)

    def close(self, run_dir: Path | None = None) -> None:
        """Stop the live view; with `run_dir`, print the summary of the run."""
        if self._live is not None:
            self.state.status = "done"
            self._live.stop()
            self._live = None
        if self.enabled and run_dir is not None:
            best = Path(run_dir) / "best.safetensors"
            path = str(best) if best.is_file() else None
            for line in summary_lines(self.state, path, str(run_dir)):
                self._print(line)
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
