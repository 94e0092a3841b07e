"""A worker whose behaviour the launcher tests choose with flags (no torch: starts fast)."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--pid-dir", help="write <rank>.pid (and grandchild pids) here")
p.add_argument("--fail-rank", type=int, default=-1)
p.add_argument("--code", type=int, default=1)
p.add_argument("--delay", type=float, default=0.0, help="seconds before the failing rank fails")
p.add_argument("--sleep", type=float, default=0.0, help="seconds the other ranks sleep")
p.add_argument(
    "--fail-rounds",
    type=int,
    default=1 << 30,
    help="fail only while TORCHELASTIC_RESTART_COUNT < this",
)
p.add_argument("--ignore", action="append", default=[], help="signal names to ignore (reported)")
p.add_argument("--exit-on", action="append", default=[], help="signal names that print and exit 0")
p.add_argument(
    "--grandchildren", action="store_true", help="start a child and a detached grandchild"
)
p.add_argument(
    "--error-file", action="store_true", help="write a torchelastic error file before failing"
)
p.add_argument("--ready-dir", help="touch <rank>.ready once signal handlers are installed")
a = p.parse_args()

rank = int(os.environ["RANK"])
restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def note(name, pid):
    if a.pid_dir:
        with open(os.path.join(a.pid_dir, f"{name}.pid"), "w") as f:
            f.write(str(pid))


note(f"{rank}.r{restart}", os.getpid())
note(str(rank), os.getpid())
if a.pid_dir:
    with open(os.path.join(a.pid_dir, f"{rank}.errfile"), "w") as f:
        f.write(os.environ["TORCHELASTIC_ERROR_FILE"])


def report(sig, _frame):
    print(f"rank {rank} got {signal.Signals(sig).name}", flush=True)


def leave(sig, _frame):
    print(f"rank {rank} got {signal.Signals(sig).name}, exiting", flush=True)
    sys.exit(0)


for name in a.ignore:
    signal.signal(getattr(signal, name), report)
for name in a.exit_on:
    signal.signal(getattr(signal, name), leave)

if a.grandchildren:
    child = subprocess.Popen(["sleep", "300"])  # same process group as the worker
    note(f"{rank}.child", child.pid)
    # A daemon that leaves the worker's session: only the launcher's subreaper sweep finds it.
    code = (
        "import os,subprocess,sys;p=subprocess.Popen(['sleep','300'],start_new_session=True);"
        "open(sys.argv[1],'w').write(str(p.pid))"
    )
    subprocess.run(
        [sys.executable, "-c", code, os.path.join(a.pid_dir, f"{rank}.daemon.pid")], check=True
    )

if a.ready_dir:
    open(os.path.join(a.ready_dir, f"{rank}.ready"), "w").close()
print(
    f"rank {rank} of {os.environ['WORLD_SIZE']} up, restart {restart}, "
    f"port {os.environ['MASTER_PORT']}",
    flush=True,
)

if rank == a.fail_rank and restart < a.fail_rounds:
    time.sleep(a.delay)
    print(f"rank {rank} failing with {a.code}", file=sys.stderr, flush=True)
    if a.pid_dir:
        with open(os.path.join(a.pid_dir, f"{rank}.failing"), "w") as f:
            f.write(repr(time.time()))
    if a.error_file:
        with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
            message = {"message": "ValueError: bad batch", "extraInfo": {"py_callstack": "..."}}
            json.dump({"message": message}, f)
    sys.exit(a.code)

deadline = time.monotonic() + a.sleep
while time.monotonic() < deadline:  # a loop, so ignored signals do not end the sleep early
    time.sleep(0.05)
print(f"rank {rank} done", flush=True)
