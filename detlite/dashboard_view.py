"""What the live dashboard shows, as data (`DashState`) and as one rich renderable (`render`), so
that it can be tested by rendering into a recording console of any width."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from rich.panel import Panel
from rich.table import Table

_SPARK = "▁▂▃▄▅▆▇█"
_SMOOTHING = 0.9  # of the loss shown (an exponential moving average over log steps)
_RATE_WINDOW_S = 60.0  # img/s over about the last minute: steadier than one log interval


@dataclass
class DashState:
    header: dict[str, str] = field(default_factory=dict)
    step: int = 0
    total_steps: int = 1
    start_step: int = 0
    epoch: float = 0.0
    started: float = field(default_factory=time.monotonic)
    status: str = "starting"
    losses: dict[str, float] = field(default_factory=dict)  # smoothed total / class / box
    trend: deque = field(default_factory=lambda: deque(maxlen=24))
    lr: float = 0.0
    samples: deque = field(default_factory=lambda: deque(maxlen=512))  # (time, images, wait s)
    waited_s: float = 0.0  # the whole run's time spent waiting for data
    rss_gb: float = 0.0
    cuda_peak_gb: float | None = None
    last_eval: dict[str, float] | None = None
    eval_step: int | None = None
    best: tuple[float, int] | None = None  # (AP, step)
    checkpoint: tuple[int, float] | None = None  # (step, monotonic time)
    warnings: dict[str, int] = field(default_factory=dict)
    eval_progress: tuple[int, int, float] | None = None  # (batches done, total, start time)

    def add_losses(self, record: dict) -> None:
        for key in ("loss", "cls_loss", "box_loss"):
            old = self.losses.get(key)
            value = record[key]
            self.losses[key] = value if old is None else _SMOOTHING * old + (1 - _SMOOTHING) * value
        self.trend.append(self.losses["loss"])

    def add_throughput(self, images: int, wait_s: float, now: float) -> None:
        self.samples.append((now, images, wait_s))
        self.waited_s += wait_s
        while self.samples and now - self.samples[0][0] > _RATE_WINDOW_S:
            self.samples.popleft()

    def rate(self) -> tuple[float, float]:
        """(images per second, share of the time spent waiting for data) over the window."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        span = self.samples[-1][0] - self.samples[0][0]
        images = sum(s[1] for s in list(self.samples)[1:])
        wait = sum(s[2] for s in list(self.samples)[1:])
        return (images / span, wait / span) if span > 0 else (0.0, 0.0)

    def eta_s(self, now: float) -> float | None:
        done = self.step - self.start_step
        if done <= 0:
            return None
        return (now - self.started) / done * (self.total_steps - self.step)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def sparkline(values) -> str:
    values = list(values)
    if len(values) < 2:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(_SPARK[int((v - low) / span * (len(_SPARK) - 1))] for v in values)


def _grid() -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True, min_width=10)
    table.add_column(no_wrap=True, overflow="ellipsis")
    return table


def render(state: DashState, width: int) -> Panel:
    """The dashboard at `width` columns (every line fits; long values end in "…")."""
    now = time.monotonic()
    body = _grid()
    for key, value in state.header.items():
        body.add_row(key, value)
    bar_width = max(10, min(40, width - 46))
    filled = int(bar_width * state.step / max(state.total_steps, 1))
    body.add_row(
        "progress",
        f"[green]{'━' * filled}[/][dim]{'━' * (bar_width - filled)}[/] "
        f"{state.step}/{state.total_steps} epoch {state.epoch:.2f}",
    )
    elapsed = _duration(now - state.started)
    body.add_row("time", f"{elapsed} elapsed, ETA {_duration(state.eta_s(now))} · {state.status}")
    body.add_row("loss", _loss_text(state))
    rate, waiting = state.rate()
    body.add_row("speed", f"{rate:.1f} img/s (last minute), {waiting:.0%} waiting for data")
    body.add_row("lr", f"{state.lr:.3e}")
    memory = f"RSS {state.rss_gb:.2f} GB"
    if state.cuda_peak_gb is not None:
        memory += f", CUDA peak {state.cuda_peak_gb:.2f} GB"
    body.add_row("memory", memory)
    body.add_row("eval", _eval_text(state, now))
    saved = state.checkpoint
    body.add_row(
        "checkpoint",
        f"step {saved[0]}, {_duration(now - saved[1])} ago" if saved else "none yet",
    )
    warnings = ", ".join(f"{k} {v}" for k, v in state.warnings.items() if v) or "none"
    body.add_row("warnings", warnings)
    return Panel(body, title="detlite train", title_align="left", width=min(width, 100))


def _loss_text(state: DashState) -> str:
    if not state.losses:
        return "–"
    loss = state.losses
    return (
        f"{loss['loss']:.4f} (cls {loss['cls_loss']:.4f}, box {loss['box_loss']:.5f}) "
        f"[cyan]{sparkline(state.trend)}[/]"
    )


def _eval_text(state: DashState, now: float) -> str:
    if state.eval_progress is not None:
        done, total, start = state.eval_progress
        speed = done / max(now - start, 1e-9)
        return f"evaluating: batch {done}/{total}, {speed:.1f} batches/s"
    if state.last_eval is None:
        return "not yet"
    e = state.last_eval
    best = f", best {state.best[0]:.4f} @ {state.best[1]}" if state.best else ""
    return (
        f"step {state.eval_step}: AP {e['AP']:.4f} AP50 {e['AP50']:.4f} AP75 {e['AP75']:.4f}{best}"
    )


def summary_lines(state: DashState, best_path: str | None, run_dir: str) -> list[str]:
    """The end-of-run summary: best AP, where the best weights are, wall time, what next."""
    elapsed = time.monotonic() - state.started
    waited = f" ({state.waited_s / elapsed:.0%} of it waiting for data)" if elapsed > 0 else ""
    lines = [f"finished {state.step} steps in {_duration(elapsed)}{waited}"]
    if state.best is not None:
        lines.append(f"best AP {state.best[0]:.4f} at step {state.best[1]}: {best_path}")
    elif best_path:
        lines.append(f"final weights: {best_path}")
    counted = {name: count for name, count in state.warnings.items() if count}
    if counted:
        lines.append("warnings: " + ", ".join(f"{name} {n}" for name, n in counted.items()))
    if best_path:
        lines.append(f"evaluate:  python eval.py {best_path}")
    lines.append(f"continue:  python train.py --resume {run_dir} --steps N")
    return lines
