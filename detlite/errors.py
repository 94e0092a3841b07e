"""The error boundary of every command: expected failures become one clear line and an exit code.

    error: <what is wrong> (<the file, flag or variable>) — <what to do>

Expected failures are `DetliteError`s, raised where the problem is found with the culprit
named. The boundary (`command`) prints them on stderr without a traceback and exits with their
code: 2 for usage and configuration errors, 1 for data, checkpoint and runtime errors. A run
stopped by a signal exits 128 + the signal number. Anything else is a bug and keeps its
traceback. `--debug` (or `DETLITE_DEBUG=1`) shows tracebacks for expected errors too.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

USAGE = 2
FAILURE = 1


class DetliteError(Exception):
    """An expected failure: its message says what is wrong, where, and what to do."""

    exit_code = FAILURE


class ConfigError(DetliteError, ValueError):
    """A flag, a combination of flags or an environment variable that cannot work."""

    exit_code = USAGE


class PathError(ConfigError, FileNotFoundError):
    """A file or folder named by a flag does not exist."""


class DataError(DetliteError, ValueError):
    """An annotation file, an image or a folder that cannot be used as given."""


class Interrupted(DetliteError):
    """The run was asked to stop by a signal (its work is saved first)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def debug_requested(argv: list[str]) -> bool:
    """Whether tracebacks are wanted; removes `--debug` from `argv` (the parsers never see it)."""
    wanted = os.environ.get("DETLITE_DEBUG", "") not in ("", "0")
    while "--debug" in argv:
        argv.remove("--debug")
        wanted = True
    return wanted


def stop_children() -> None:
    """End every process this one started that is still running (DataLoader workers whose
    loader was not closed), so none outlives the command. The workers leave stop signals to
    this process, so they are killed outright; they hold nothing that needs saving."""
    children = multiprocessing.active_children()
    if not children:
        return
    # DataLoader's SIGCHLD handler would report these deaths as a worker failure.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)


def _terminated(signum: int, _frame) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


def command(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` inside the boundary; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    # SIGTERM ends a command as Ctrl-C does, through this boundary (a training run installs
    # its own handler, which saves a checkpoint first).
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        main(args)
        return 0
    except DetliteError as error:
        if debug:
            traceback.print_exc()
        # A requested stop is not an error; its message says where the work was saved.
        prefix = "" if isinstance(error, Interrupted) else "error: "
        print(f"{prefix}{error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        # A second Ctrl-C (the first one stops a training run cleanly) or one outside training.
        print("error: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_children()
