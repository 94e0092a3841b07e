"""Stopping a training run on request: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (what SLURM sends
ahead of preemption) ask the run to finish its current step, save a checkpoint and exit; a
second SIGINT exits at once.

DataLoader workers ignore the three signals (`quiet_worker`): a terminal's Ctrl-C or a
launcher's SIGTERM reaches the whole process group, and a worker that died of it would turn the
clean stop into a crash. The main process ends them on the way out.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def quiet_worker(_worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: leave stop signals to the main process."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopRequest:
    """Records the first stop signal; install with `with StopRequest() as stop:`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        if self.signum is None:
            self.signum = signum
            print(
                f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopRequest:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
