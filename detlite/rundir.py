"""The layout of a run directory, and what it takes to start a run in one.

    <run>/metrics.jsonl                       one JSON object per logged step and evaluation
    <run>/checkpoints/step-00000250.safetensors   training checkpoints
    <run>/best.safetensors                    weights of the best evaluation
    <run>/eval-step<N>.json                   detections of the evaluation at step N

A run never replaces another one: a directory that already holds a run is refused unless the
new run continues it (`--resume`) or `--overwrite` says to replace it.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
BEST = "best.safetensors"
STEP_GLOB = "step-*.safetensors"
EVAL_GLOB = "eval-step*.json"


def eval_results(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"eval-step{step}.json"


def run_files(run_dir: Path) -> list[Path]:
    """The files of a run in `run_dir` (empty when it holds none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = sorted((run_dir / CHECKPOINTS).glob(STEP_GLOB)) + sorted(run_dir.glob(EVAL_GLOB))
    found += [run_dir / name for name in (BEST, METRICS) if (run_dir / name).is_file()]
    return found


def describe(files: list[Path]) -> str:
    steps = sorted(f for f in files if f.name.startswith("step-"))
    parts = [f"{len(steps)} checkpoint(s) up to {steps[-1].stem}"] if steps else []
    parts += [name for name in (BEST, METRICS) if any(f.name == name for f in files)]
    return ", ".join(parts) or f"{len(files)} result file(s)"


def check_free(run_dir: Path, *, overwrite: bool, resuming_it: bool) -> None:
    """Refuse to start a new run where one already is (checked before anything is written)."""
    files = run_files(run_dir)
    if files and not resuming_it and not overwrite:
        raise ConfigError(
            f"--output {run_dir} already holds a run ({describe(files)}) — continue it with "
            f"--resume {run_dir}, choose another --output, or pass --overwrite to replace it"
        )


def clear(run_dir: Path) -> list[Path]:
    """Delete the files of the run in `run_dir` (for `--overwrite`); returns what was deleted."""
    files = run_files(run_dir)
    for path in files:
        path.unlink(missing_ok=True)
    return files
