"""The checkpoints of one training run: when to write, where, how many to keep, which is best, and
where a resumed run continues from.

    run_dir/checkpoints/step-00000250.safetensors   training checkpoints (the newest `keep`)
    run_dir/best.safetensors                        weights of the best evaluation (by AP)

Only the writer (rank 0) touches files; every rank keeps the same bookkeeping, so all ranks
agree on what is best.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from ..config import ModelConfig
from ..data.coco import CategoryMap
from ..errors import PathError
from ..rundir import BEST, CHECKPOINTS, STEP_GLOB
from . import files, training


def step_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.safetensors"


class Checkpointer:
    """Writes, prunes and ranks the checkpoints of a run directory.

    Args:
        run_dir: the run directory (`--output`).
        every: steps between interval checkpoints (`--checkpoint-every`).
        keep: how many step checkpoints to keep (`--keep-checkpoints`; best.safetensors aside).
        writer: whether this process writes files (rank 0).
        log: where to say what it cleaned or skipped.
    """

    def __init__(
        self, run_dir: Path, every: int, keep: int, *, writer: bool, log: Callable[[str], None]
    ) -> None:
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / CHECKPOINTS
        self.best_path = self.run_dir / BEST
        self.every = every
        self.keep = keep
        self.writer = writer
        self.log = log

    def prepare(self) -> None:
        """Create the directory and delete temporary files a killed writer left behind (they
        are never a valid checkpoint: the rename that finishes a write did not happen)."""
        if not self.writer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        stale = [
            *self.directory.glob(f"{files.TEMP_PREFIX}step-*{files.TEMP_SUFFIX}"),
            *self.run_dir.glob(f"{files.TEMP_PREFIX}{self.best_path.name}.*{files.TEMP_SUFFIX}"),
        ]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            self.log(f"removed {len(stale)} unfinished checkpoint file(s) of an interrupted write")

    def due(self, step: int, total_steps: int) -> bool:
        """An interval checkpoint is due after `step` (the final one is written separately)."""
        return step % self.every == 0 and step < total_steps

    def save(
        self,
        step: int,
        tensors: training.TrainingTensors,
        cfg: ModelConfig,
        state: training.TrainingState,
        category_map: CategoryMap,
        *,
        metric: float | None = None,
        best_if_unevaluated: bool = False,
    ) -> Path:
        """Write the training checkpoint of `step`, prune old ones, and update best.safetensors
        when `metric` (AP) beats the best so far — or, with `best_if_unevaluated` (the end of a
        run), with these weights if no evaluation ever ran. Returns the checkpoint's path."""
        state.step = step
        best = metric is not None and metric > state.best_metric
        if best:
            state.best_metric, state.best_step = metric, step
        path = step_path(self.directory, step)
        if not self.writer:
            return path
        self._write(path, lambda: training.save(path, tensors, cfg, state, category_map))
        self._prune()
        if best or (best_if_unevaluated and state.best_step < 0):
            weights = tensors.ema if tensors.ema is not None else tensors.params
            meta = {files.CATEGORY_MAP_KEY: category_map.to_json(), "step": str(step)}
            self._write(self.best_path, lambda: files.save(self.best_path, weights, cfg, meta))
        return path

    def is_best(self, metric: float, state: training.TrainingState) -> bool:
        return metric > state.best_metric

    def newest(self) -> Path | None:
        """The newest step checkpoint on disk (the one a `--resume` of this run would take)."""
        found = sorted(self.directory.glob(STEP_GLOB))
        return found[-1] if found else None

    def _write(self, path: Path, write: Callable[[], None]) -> None:
        """Run an (atomic) write; a failure is a clear error, earlier checkpoints are intact."""
        try:
            write()
        except (OSError, SafetensorError) as error:
            previous = self.newest()
            kept = f"; {previous} is intact" if previous is not None and previous != path else ""
            raise files.CheckpointError(
                f"could not write {path}: {getattr(error, 'strerror', None) or error} — free space "
                "on that disk "
                f"or choose another --output{kept}"
            ) from None

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        for old in sorted(self.directory.glob(STEP_GLOB))[: -self.keep]:
            old.unlink(missing_ok=True)


def find_resume(path: Path, log: Callable[[str], None]) -> Path:
    """The training checkpoint `--resume PATH` continues from: the file itself, or the newest
    step checkpoint of a run directory whose header reads back (a truncated newer one is
    reported and passed over; temporary files of interrupted writes never match)."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise PathError(f"--resume {path}: no such file or run directory")
        _check_training_file(path)
        return path
    found = sorted((path / "checkpoints").glob(STEP_GLOB)) or sorted(path.glob(STEP_GLOB))
    if not found:
        raise files.CheckpointError(f"--resume {path}: no {STEP_GLOB} checkpoint in it")
    for candidate in reversed(found):
        try:
            _check_training_file(candidate)
            return candidate
        except files.CheckpointError as error:
            log(f"--resume: skipping {candidate.name}, which is unreadable ({error})")
    raise files.CheckpointError(
        f"--resume {path}: none of its {len(found)} step checkpoints is readable; start a new run"
    )


def _check_training_file(path: Path) -> None:
    if files.read_metadata(path).get(files.FORMAT_KEY) != files.TRAIN_FORMAT:
        raise files.CheckpointError(
            f"{path}: a weights-only checkpoint cannot resume a run; pass it as "
            "--model.init-checkpoint to start a new run from its weights"
        )


def restore(path: Path, log: Callable[[str], None]) -> tuple[Path, training.Restored]:
    """`find_resume`, then the checkpoint read."""
    found = find_resume(path, log)
    return found, training.load(found, device="cpu")
