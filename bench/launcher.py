"""detlite-launch against torchrun: start-up latency and memory.

For 2 and 8 workers, each launcher runs `--no-python echo ready` workers (so the numbers are the
launcher's own cost) and we measure
  * first line: time from spawning the launcher to the first worker line on its stdout,
  * total: time until the launcher exits,
  * launcher peak RSS: VmHWM of the launcher process itself (for torchrun, its Python agent),
  * tree peak PSS: the largest sum of PSS (shared pages split between sharers, so nothing is counted
    twice) over the launcher and all its descendants, sampled every 2 ms.
Timings are medians of --repeats runs without the memory sampler; memory is the larger of two
separate sampled runs.
(ru_maxrss from wait4 is useless here: a child inherits the forking Python's high-water mark.)
torchrun runs as `python -m torch.distributed.run --standalone` (no pyenv shim in the way).
Prints a markdown table (median of --repeats runs).

    python bench/launcher.py [--repeats 5] [--workers 2 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import selectors
import shutil
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def find_launcher() -> str:
    path = os.environ.get("DETLITE_LAUNCH")
    if path:
        return path
    installed = Path(sysconfig.get_path("scripts")) / "detlite-launch"
    if installed.is_file():
        return str(installed)
    path = shutil.which("detlite-launch")
    if not path:
        sys.exit("detlite-launch not found: `pip install -e .` or set DETLITE_LAUNCH")
    return path


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def kib_field(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str], memory: bool) -> dict[str, float]:
    """One run. With memory=True a sampler thread watches the tree (and slows things down, so the
    timing runs are separate)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env
    )
    peak = {"tree": 0, "hwm": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss = sum(kib_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in tree_pids(proc.pid))
            peak["tree"] = max(peak["tree"], pss)
            peak["hwm"] = max(peak["hwm"], kib_field(f"/proc/{proc.pid}/status", "VmHWM:"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    if memory:
        sampler.start()
    first = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    while first is None:
        if not sel.select(timeout=60):
            proc.kill()
            raise RuntimeError(f"no output from {cmd}")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        if b"ready" in buf:
            first = time.perf_counter() - start
    while os.read(proc.stdout.fileno(), 65536):
        pass
    # Let the sampler read the launcher's final high-water mark before it is reaped.
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    total = time.perf_counter() - start
    done.set()
    if memory:
        sampler.join()
        peak["hwm"] = max(peak["hwm"], kib_field(f"/proc/{proc.pid}/status", "VmHWM:"))
    proc.wait()
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return {"first": first, "total": total, "hwm": peak["hwm"] / 1024, "tree": peak["tree"] / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 8])
    args = ap.parse_args()
    launcher = find_launcher()
    rows = []
    for n in args.workers:
        cmds = {
            "detlite-launch": [
                launcher,
                "--nproc-per-node",
                str(n),
                "--master-port",
                "0",
                "--no-python",
                "echo",
                "ready",
            ],
            "torchrun --standalone": [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(n),
                "--no-python",
                "echo",
                "ready",
            ],
        }
        for name, cmd in cmds.items():
            measure(cmd, memory=False)  # warm the page cache
            runs = [measure(cmd, memory=False) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in ("first", "total")}
            mem = [measure(cmd, memory=True) for _ in range(2)]
            med.update({k: max(r[k] for r in mem) for k in ("hwm", "tree")})
            rows.append((n, name, med))
            print(f"  {name:<22} {n} workers: {med}", file=sys.stderr, flush=True)

    cpu = platform.processor() or platform.machine()
    print(
        f"\n{os.cpu_count()}-CPU {cpu} host, Python {platform.python_version()}, "
        f"timings: median of {args.repeats} runs, "
        f"workers = `--no-python echo ready`\n"
    )
    print(
        "| workers | launcher | first worker line (ms) | total (ms) | launcher peak RSS (MiB) "
        "| process tree peak PSS (MiB) |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for n, name, m in rows:
        print(
            f"| {n} | {name} | {m['first'] * 1000:.0f} | {m['total'] * 1000:.0f} | {m['hwm']:.1f} "
            f"| {m['tree']:.1f} |"
        )


if __name__ == "__main__":
    main()
