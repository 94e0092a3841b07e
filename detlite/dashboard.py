"""What rank 0 shows the person: a rich progress bar on a terminal, plain lines elsewhere, and
always a JSON-lines metrics file in the run directory. Other ranks stay quiet."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .rundir import METRICS


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


class Dashboard:
    """Progress of a training run on rank 0; silent (but still writing nothing) on other ranks."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.console = Console(stderr=False)
        self.metrics = MetricsFile(run_dir / METRICS) if enabled else None
        self.interactive = enabled and self.console.is_terminal
        self.total_steps = total_steps
        self._progress: Progress | None = None
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, stats=""
            )
            self._progress.start()

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            print(message, flush=True)

    def step(self, step: int, record: dict[str, Any]) -> None:
        """Record the metrics of optimizer step `step` (1-based count of steps done)."""
        if not self.enabled:
            return
        assert self.metrics is not None
        self.metrics.write({"step": step, **record})
        stats = (
            f"loss {record['loss']:.4f} (cls {record['cls_loss']:.4f} box {record['box_loss']:.5f})"
            f"  lr {record['lr']:.2e}  {record['img_per_s']:.1f} img/s"
        )
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)
        else:
            print(f"step {step}/{self.total_steps}  {stats}", flush=True)

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def record(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def print(self, renderable: Any) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(renderable)
        else:
            Console(file=sys.stdout).print(renderable)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self.metrics is not None:
            self.metrics.close()
