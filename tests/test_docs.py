"""Every command and Python snippet in README.md and docs/ runs as written, at tiny sizes.

Commands run in a fresh folder holding tiny stand-ins for what they name (doc_world.py), with
small-size flags appended (later flags win): `train.py` runs 2 steps at 128 px, `eval.py` reads
4 images. Single-node launches run with 2 workers, the two-node example as two launchers on
this machine; a block that converts weights and then uses them runs in order in one folder.
What cannot run here is checked as far as it can be, and says why: installs and
the suite's own commands must be the ones .ci/run runs; multi-node, SLURM and MPI lines have
every launcher flag in `detlite-launch --help` and their train.py arguments parsed; benchmarks
that time minutes of compiled training have every flag in their `--help`. GPU-only lines are
marked `cuda`. A new kind of command fails here until this file is taught to run it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import doc_world
import pytest
from doc_snippets import REPO, Command, python_blocks, shell_commands
from doc_world import PLACEHOLDERS, TINY_DATA, TINY_TRAIN


@dataclass(frozen=True)
class Case:
    commands: tuple[Command, ...]
    places: tuple[str, ...]

    @property
    def argv(self) -> tuple[str, ...]:
        return self.commands[0].argv


def _cases() -> list[Case]:
    """Distinct commands (one case for all places that write it); a two-node example's
    commands, and a build block's, are one case."""
    by_argv: dict[tuple, list[Command]] = {}
    for command in shell_commands():
        key = command.argv
        if _nodes(command.argv) == 2 or command.argv[0] == "cmake" or "=" in command.argv[0]:
            key = ("block", command.block)
        if _chained(command):
            key = ("chain", command.block)
        by_argv.setdefault(key, []).append(command)
    cases = []
    for key, commands in by_argv.items():
        places = sorted({c.where for c in commands})
        if key[0] not in ("block", "chain"):
            commands = commands[:1]
        cases.append(Case(tuple(commands), tuple(places)))
    return cases


def _chained(command: Command) -> bool:
    """A block that converts weights and then evaluates or trains with the file it wrote: its
    commands run in order, in one folder."""
    block = [c for c in shell_commands() if c.block == command.block]
    converts = block[0].argv[:3] == ("python", "-m", "detlite.weights")
    return converts and any(c.argv[1] in ("eval.py", "train.py") for c in block)


def _nodes(argv) -> int:
    argv = list(argv)
    return int(argv[argv.index("--nnodes") + 1]) if "--nnodes" in argv else 1


def _substituted(argv) -> list[str]:
    return [PLACEHOLDERS.get(token, token) for token in argv]


# --- What each kind of command needs -------------------------------------------------------


def _tiny_train(args: list[str]) -> list[str]:
    if "--help" in args:
        return []
    if "--resume" in args:  # the run's own settings, one step further than the finished run
        return ["--steps", "3"]
    extra = list(TINY_TRAIN) + (["--benchmark", "1"] if "--benchmark" in args else [])
    return extra if any(a.startswith("--data.") for a in args) else extra + TINY_DATA


def _tiny_eval(args: list[str]) -> list[str]:
    if any(a.startswith("--data.") for a in args) or "--predict" in args:
        return ["--data.num-workers", "0"]
    return ["--data.num-workers", "0", "--data.val-json", "my/val.json",
            "--data.val-images", "my/img"]  # fmt: skip


TINY_OPS_BENCH = [
    "--focal-batch", "1", "--anchors", "2000", "--classes", "5", "--nms-batch", "2",
    "--nms-candidates", "200", "--repeats", "1", "--no-compile",
]  # fmt: skip
TINY = {
    "train.py": _tiny_train,
    "eval.py": _tiny_eval,
    "bench/ops.py": lambda args: TINY_OPS_BENCH,
    "bench/launcher.py": lambda args: ["--repeats", "1", "--workers", "2"],
    "bench/targets.py": lambda args: ["--repeats", "1"],
}
# Commands that take minutes (benchmarks of compiled training or prediction, exports compiled
# by AOTInductor, which tests/test_export.py runs, with examples/run_package.py on its package):
# their flags are checked, not run.
HELP_ONLY = {
    "bench/train.py",
    "bench/distributed.py",
    "bench/predict.py",
    "bench/batchnorm_bound.py",
    "bench/nvidia_parity.py",  # needs a checkout of NVIDIA's code, which the project never holds
    "detlite.export",
    "examples/run_package.py",
}
# Named in prose as "the commands", not run: the module must exist.
NAMES = {("python", "-m", "detlite.weights")}


def _python(args: list[str]) -> tuple[int, str]:
    """`python ARGS` in this process (imports are shared, so each command costs seconds)."""
    out = io.StringIO()
    target = args[1] if args[0] == "-m" else args[0]
    argv = [target, *args[2:]] if args[0] == "-m" else args
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            # runpy's note that the package already imported the module (earlier tests did).
            warnings.filterwarnings("ignore", "'detlite.* found in sys.modules", RuntimeWarning)
            if args[0] == "-m":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = 0 if stop.code is None else stop.code
    finally:
        sys.argv = saved
    return code, out.getvalue()


def _flags(argv) -> set[str]:
    return {a.split("=")[0] for a in argv if a.startswith("--")}


def _run_python_command(argv: list[str]) -> None:
    args = argv[1:]
    script = args[1] if args[0] == "-m" else args[0]
    if script in HELP_ONLY:
        code, text = _python([*args, "--help"])
        missing = _flags(args) - set(re.findall(r"--[\w-]+", text))
        assert code == 0 and not missing, f"{shlex.join(argv)}: flags not in --help: {missing}"
        return
    extra = TINY.get(script, lambda _: [])(args[1:])
    code, _ = _python([*args, *extra])
    assert code == 0, f"{shlex.join(argv + extra)} exited with {code}"


def _ci_lines() -> list[list[str]]:
    """The commands .ci/run runs, normalised like the docs' (pip, python), pins expanded."""
    text = (REPO / ".ci/run").read_text()
    pins = re.findall(r'torch_pins="([^"]+)"', text)
    lines = []
    for line in text.splitlines():
        if line.strip().startswith("#") or "python3 -m" not in line:
            continue
        for pin in pins:
            lines.append(_normal(shlex.split(line.replace("$torch_pins", pin))))
    return lines


def _normal(argv) -> list[str]:
    argv = ["python" if a == "python3" else a for a in argv if a != "--quiet"]
    argv = argv[2:] if argv[:3] == ["python", "-m", "pip"] else argv
    # CI installs the test extras, a superset of the plain install.
    return [".[test]" if a == "." else a for a in argv]


def _check_ci_runs_it(argv) -> None:
    assert _normal(list(argv)) in _ci_lines(), f"{shlex.join(argv)} is not what .ci/run runs"


def _check_pytest_command(argv) -> None:
    args = list(argv[3:])
    markers = (REPO / "pyproject.toml").read_text()
    if "-m" in args:
        marker = args[args.index("-m") + 1]
        assert f'"{marker}:' in markers, f"pytest marker {marker!r} is not registered"
    for path in (a for a in args if a.startswith("tests/")):
        assert (REPO / path).is_file(), f"{path} does not exist"


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _launch_argv(argv, nproc: str, port: str) -> list[str]:
    argv = _substituted(argv)
    argv[argv.index("--nproc-per-node") + 1] = nproc
    script = argv.index("train.py")
    args = argv[script + 1 :]
    return [argv[0], "--master-port", port, *argv[1 : script + 1], *args, *_tiny_train(args)]


def _run_launchers(commands: list[list[str]], folder: Path) -> None:
    procs = [
        subprocess.Popen(c, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    for command, proc in zip(commands, procs, strict=True):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, (
            f"{shlex.join(command)} exited {proc.returncode}:\n{out[-3000:]}"
        )


@functools.cache
def _help_flags(program: str) -> frozenset[str]:
    done = subprocess.run([program, "--help"], capture_output=True, text=True, timeout=60)
    return frozenset(re.findall(r"--[\w-]+", done.stdout + done.stderr))


def _check_flags(argv) -> None:
    """A line that needs several machines, SLURM or MPI: its launcher's flags exist and its
    train.py arguments parse."""
    import train

    argv = list(argv)
    launcher = next(a for a in argv if a in ("detlite-launch", "torchrun"))
    part = argv[argv.index(launcher) :]
    script = part.index("train.py")
    missing = _flags(part[:script]) - _help_flags(launcher)
    assert not missing, f"{shlex.join(argv)}: {launcher} has no {sorted(missing)}"
    try:
        train.parse(_substituted(part[script + 1 :]))
    except SystemExit as bad:
        pytest.fail(f"{shlex.join(argv)}: train.py refuses its arguments (exit {bad.code})")


def _kind(case: Case) -> str:
    argv = case.argv
    if argv[0] == "cmake":
        return "build"
    suite = argv[:3] == ("python", "-m", "ruff") or argv == ("python", "-m", "pytest", "-q")
    if argv[0] == "pip" or suite:
        return "ci"
    if argv[:3] == ("python", "-m", "pytest"):
        return "pytest"
    if len(case.commands) > 1 and all(c.argv[0] == "python" for c in case.commands):
        return "chain"
    if argv in NAMES:
        return "name"
    if argv[0] == "python":
        return "python"
    if argv[0] in ("detlite-launch", "torchrun") and _nodes(argv) == 1:
        return "launch"
    if _nodes(argv) == 2 and len(case.commands) == 2:
        return "nodes"
    if "detlite-launch" in argv or "torchrun" in argv:
        return "flags"
    return "unknown"


def _needs_cuda(case: Case) -> bool:
    on_cuda = (("--device", "cuda") in itertools.pairwise(c.argv) for c in case.commands)
    return _kind(case) == "build" or any(on_cuda)


def _param(case: Case):
    marks = []
    if _needs_cuda(case):
        import torch

        no_gpu = not torch.cuda.is_available()
        marks = [pytest.mark.cuda, pytest.mark.skipif(no_gpu, reason="needs CUDA")]
    ident = f"{case.places[0]} {shlex.join(case.argv)}"[:90]
    return pytest.param(case, marks=marks, id=ident)


CASES = _cases()


@pytest.fixture(scope="module")
def world(builtin_paths, tmp_path_factory):
    return doc_world.build(builtin_paths, tmp_path_factory.mktemp("docworld"))


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_documented_command(case: Case, world, tmp_path):
    kind, argv = _kind(case), list(case.argv)
    trains = any("train.py" in c.argv and "--resume" not in c.argv for c in case.commands)
    folder = doc_world.sandbox(world, tmp_path, with_runs=not trains)
    if kind == "ci":
        _check_ci_runs_it(argv)
    elif kind == "pytest":
        _check_pytest_command(argv)
    elif kind == "name":
        assert (REPO / argv[2].replace(".", "/") / "__main__.py").is_file()
    elif kind == "python":
        with contextlib.chdir(folder):
            _run_python_command(_substituted(argv))
    elif kind == "chain":
        with contextlib.chdir(folder):
            for command in case.commands:
                _run_python_command(_substituted(list(command.argv)))
    elif kind == "launch":
        _run_launchers([_launch_argv(argv, "2", _free_port())], folder)
    elif kind == "nodes":
        port = _free_port()
        _run_launchers([_launch_argv(c.argv, "1", port) for c in case.commands], folder)
    elif kind == "flags":
        _check_flags(argv)
    elif kind == "build":
        for command in case.commands:
            subprocess.run(str(command), shell=True, cwd=REPO, check=True, timeout=900)
    else:
        pytest.fail(f"{case.places}: {shlex.join(argv)} — teach tests/test_docs.py this command")


@pytest.mark.parametrize("file", sorted(python_blocks()))
def test_documented_python(file, world, tmp_path):
    """A file's snippets run in order in one namespace, in a folder with the files they name."""
    namespace = {"__name__": "__main__"}
    with contextlib.chdir(doc_world.sandbox(world, tmp_path, with_runs=True)):
        for snippet in python_blocks()[file]:
            exec(compile(snippet.text, snippet.where, "exec"), namespace)
