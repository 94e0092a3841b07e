"""detlite-launch, driven as a binary: environment parity with torchrun, multi-node on loopback,
failure propagation and teardown, signals, output integrity, schedulers and CPU affinity.

The binary comes from $DETLITE_LAUNCH, else `detlite-launch` on PATH, else it is built once per
session with cmake. Every wait has a timeout and every test kills what it started, even on failure.
Network traffic stays on 127.0.0.1 / 127.0.0.2.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "launcher_workers"
BEHAVE = str(WORKERS / "behave.py")
PY = sys.executable
GRACE = 1.0  # --grace-period used by the teardown tests
HB = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "2"]


# ----------------------------------------------------------------------------------------------
# harness


@pytest.fixture(scope="session")
def launch_bin(tmp_path_factory) -> str:
    path = os.environ.get("DETLITE_LAUNCH")
    if path:
        return path
    # What `pip install -e .` installed for this interpreter; looked up directly rather than through
    # PATH, where a pyenv shim (a shell script that adds PYENV_* variables) may stand in for it.
    installed = Path(sysconfig.get_path("scripts")) / "detlite-launch"
    if installed.is_file() and os.access(installed, os.X_OK):
        return str(installed)
    path = shutil.which("detlite-launch")
    if path:
        return path
    build = tmp_path_factory.mktemp("launcher-build")
    subprocess.run(
        ["cmake", "-S", str(REPO / "launcher"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "-j", "2"],
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    return str(build / "detlite-launch")


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that would make the launcher think a
    scheduler started it, with workers on this interpreter and gloo on loopback."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("SLURM_", "OMPI_", "PMI_", "PMIX_", "PET_", "TORCHELASTIC_", "MPI_LOCAL")
        )
        and k
        not in (
            "MASTER_ADDR",
            "MASTER_PORT",
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "OMP_NUM_THREADS",
            "CUDA_VISIBLE_DEVICES",
            "DETLITE_SYSFS_ROOT",
            "DETLITE_ALLOWED_CPUS",
        )
    }
    env["PYTHON_EXEC"] = PY
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pids_in(directory: Path, pattern: str = "*.pid") -> dict[str, int]:
    out = {}
    for f in directory.glob(pattern):
        text = f.read_text().strip()
        if text:
            out[f.name[: -len(".pid")]] = int(text)
    return out


class Launch:
    def __init__(self, proc: subprocess.Popen, out: Path, err: Path):
        self.proc, self.out_path, self.err_path = proc, out, err
        self.ended_at: float | None = None

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"launcher still running after {timeout} s\nstdout:\n{self.out[-3000:]}\n"
                f"stderr:\n{self.err[-3000:]}"
            ) from None
        if self.ended_at is None:
            self.ended_at = time.time()
        return rc

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")


@pytest.fixture
def spawn(launch_bin, tmp_path):
    started: list[Launch] = []

    def _spawn(args: list[str], env: dict[str, str] | None = None) -> Launch:
        n = len(started)
        out, err = tmp_path / f"launcher{n}.out", tmp_path / f"launcher{n}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                [launch_bin, *args],
                env=env or base_env(),
                stdout=o,
                stderr=e,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        launch = Launch(proc, out, err)
        started.append(launch)
        return launch

    yield _spawn
    for launch in started:
        if launch.proc.poll() is None:
            launch.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                launch.proc.wait(timeout=10)
    for f in tmp_path.rglob("*.pid"):  # anything a worker recorded and that is still around
        try:
            pid = int(f.read_text().strip())
        except ValueError:
            continue
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def run_launcher(
    launch_bin: str, args: list[str], env=None, timeout: float = 30
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [launch_bin, *args],
        env=env or base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def two_nodes(
    spawn,
    node_args: list[str],
    script: list[str],
    *,
    nproc: int = 2,
    port: int | None = None,
    extra0: list[str] = (),
    extra1: list[str] = (),
) -> tuple[Launch, Launch]:
    """Node 0 on 127.0.0.1, node 1 connecting from 127.0.0.2."""
    port = port or free_port()
    common = [
        "--nnodes",
        "2",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        *HB,
        *node_args,
    ]
    n0 = spawn([*common, "--node-rank", "0", *extra0, *script])
    n1 = spawn([*common, "--node-rank", "1", "--local-addr", "127.0.0.2", *extra1, *script])
    return n0, n1


def rank_lines(text: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"\[rank(\d+)\]: (.*)$", line)
        if m:
            out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


# ----------------------------------------------------------------------------------------------
# command line, pure functions


def test_help_documents_every_flag(launch_bin):
    r = run_launcher(launch_bin, ["--help"])
    assert r.returncode == 0
    for flag in [
        "--nnodes",
        "--nproc-per-node",
        "--node-rank",
        "--master-addr",
        "--master-port",
        "--max-restarts",
        "--grace-period",
        "--log-dir",
        "--tee",
        "--local-ranks-filter",
        "--cpu-bind",
        "--no-python",
        "--module",
        "--rdzv-endpoint",
        "--rdzv-id",
        "--rdzv-timeout",
        "--heartbeat-interval",
        "--heartbeat-timeout",
        "--local-addr",
        "--standalone",
        "--dry-run",
        "--signals-to-handle",
        "--expand-hostlist",
        "124",
        "125",
    ]:
        assert flag in r.stdout, flag


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus", "x.py"],
        ["--nnodes", "1:4", "x.py"],
        ["--nnodes", "2", "--node-rank", "2", "x.py"],
        ["--nproc-per-node", "zero", "x.py"],
        ["--cpu-bind", "numa", "x.py"],
        ["--no-python", "-m", "x"],
        ["--nproc-per-node", "2"],
    ],
)
def test_usage_errors_exit_2(launch_bin, args):
    r = run_launcher(launch_bin, args)
    assert r.returncode == 2, r.stderr
    assert "error" in r.stderr


def dry(launch_bin, args, env=None) -> dict:
    r = run_launcher(launch_bin, [*args, "--dry-run", "script.py"], env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_torchrun_spellings_and_pet_env(launch_bin):
    cfg = dry(launch_bin, ["--nproc_per_node=3", "--master_port", "1234", "--max_restarts=2", "-m"])
    assert (cfg["nproc_per_node"], cfg["master_port"], cfg["max_restarts"]) == (3, 1234, 2)
    assert cfg["command"] == [PY, "-u", "-m", "script.py"]
    cfg = dry(
        launch_bin, [], env=base_env(PET_NPROC_PER_NODE="4", PET_NNODES="3", PET_NODE_RANK="2")
    )
    assert (cfg["nproc_per_node"], cfg["nnodes"], cfg["node_rank"]) == (4, 3, 2)
    cfg = dry(launch_bin, ["--standalone", "--nproc-per-node", "cpu"])
    assert (
        cfg["master_port"] == 0
        and cfg["nnodes"] == 1
        and cfg["nproc_per_node"] == len(os.sched_getaffinity(0))  # the CPUs it may use
    )
    cfg = dry(
        launch_bin,
        ["--nnodes", "2:2", "--rdzv-endpoint", "10.1.2.3:777", "--rdzv_conf", "join_timeout=42"],
    )
    assert (
        cfg["nnodes"] == 2 and cfg["rdzv_endpoint"] == "10.1.2.3:777" and cfg["rdzv_timeout"] == 42
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rdzv-backend", "etcd"], "--rdzv-backend etcd is not supported"),
        (["--rdzv-conf", "read_timeout=60"], "--rdzv-conf read_timeout is not supported"),
        (["--rdzv-conf", "join_timeout"], "--rdzv-conf expects KEY=VALUE"),
        (["--rdzv-conf", "join_timeout=soon"], "--rdzv-conf join_timeout expects a number"),
        (["--monitor-interval", "5"], "--monitor-interval is not supported"),
        (["--redirects", "0:1,1:2", "--log-dir", "logs"], "per-rank --redirects maps are not"),
        (["--redirects", "3"], "--redirects 3 needs --log-dir"),
        (["--standalone", "--nnodes", "2"], "--standalone runs a single node"),
        (["--standalone", "--master-port", "1234"], "--standalone picks a free MASTER_PORT"),
    ],
)
def test_torchrun_flags_without_an_equivalent_are_refused(launch_bin, args, message):
    """Once accepted and silently ignored; now each is refused with one clear line."""
    r = run_launcher(launch_bin, [*args, "--dry-run", "x.py"])
    assert r.returncode == 2 and r.stdout == "", r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detlite-launch: error: "), r.stderr
    assert message in lines[0]
    r = run_launcher(launch_bin, ["--dry-run", "x.py"], env=base_env(PET_MONITOR_INTERVAL="5"))
    assert r.returncode == 2 and "--monitor-interval is not supported" in r.stderr


def test_torchrun_flags_that_do_what_torchruns_do(launch_bin):
    for backend in ("static", "c10d", "C10D"):  # both name a fixed-size rendezvous through node 0
        assert dry(launch_bin, ["--rdzv-backend", backend])["nnodes"] == 1
    assert dry(launch_bin, ["--rdzv-conf", "timeout=7"])["rdzv_timeout"] == 7
    cfg = dry(launch_bin, ["--rdzv-conf", "join_timeout=42", "--rdzv-timeout", "9"])
    assert cfg["rdzv_timeout"] == 9
    # --run-path runs the script by path with the interpreter, over --no-python and -m
    assert dry(launch_bin, ["--run-path", "--no-python"])["command"] == [PY, "-u", "script.py"]
    assert dry(launch_bin, ["--run_path", "-m"])["command"] == [PY, "-u", "script.py"]
    cfg = dry(launch_bin, ["--standalone", "--nnodes", "1", "--master-port", "0"])
    assert (cfg["nnodes"], cfg["master_port"]) == (1, 0)
    assert dry(launch_bin, ["--redirects", "0"])["log_dir"] is None  # nothing to redirect


@pytest.mark.parametrize(
    "hostlist,expected",
    [
        ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
        ("r[1-2]-n[01-02]", ["r1-n01", "r1-n02", "r2-n01", "r2-n02"]),
        ("node[8-11]", ["node8", "node9", "node10", "node11"]),
        ("x[098-101]", ["x098", "x099", "x100", "x101"]),
        ("a,b[2,4],c", ["a", "b2", "b4", "c"]),
        ("127.0.0.[1-2]", ["127.0.0.1", "127.0.0.2"]),
        ("solo", ["solo"]),
    ],
)
def test_hostlist_expansion(launch_bin, hostlist, expected):
    r = run_launcher(launch_bin, ["--expand-hostlist", hostlist])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == expected


@pytest.mark.parametrize("bad", ["gpu[01-", "gpu]1", "n[3-1]", "n[a-b]", "a,,b", "n[[1-2]]"])
def test_hostlist_rejects_bad_syntax(launch_bin, bad):
    r = run_launcher(launch_bin, ["--expand-hostlist", bad])
    assert r.returncode == 2 and r.stdout == ""


def slurm_env(
    node: int, nnodes: int, nodelist: str, job: int = 4242, ntasks: int | None = None, **extra
) -> dict:
    env = dict(
        SLURM_JOB_ID=str(job),
        SLURM_STEP_ID="0",
        SLURM_PROCID=str(node),
        SLURM_NODEID=str(node),
        SLURM_STEP_NUM_NODES=str(nnodes),
        SLURM_NNODES=str(nnodes),
        SLURM_STEP_NUM_TASKS=str(ntasks if ntasks is not None else nnodes),
        SLURM_STEP_NODELIST=nodelist,
        SLURM_JOB_NODELIST=nodelist,
    )
    return base_env(**{**env, **extra})


def test_slurm_and_mpi_detection(launch_bin):
    cfg = dry(launch_bin, [], env=slurm_env(2, 5, "gpu[01-03,07],cpu5"))
    assert cfg["scheduler"] == "slurm"
    assert (cfg["nnodes"], cfg["node_rank"], cfg["master_addr"]) == (5, 2, "gpu01")
    assert cfg["hosts"] == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]
    assert cfg["run_id"] == "4242.0" and cfg["master_port"] == 0
    assert cfg["rdzv_endpoint"].startswith("gpu01:")
    # explicit flags win over the scheduler
    cfg = dry(
        launch_bin,
        ["--master-addr", "10.0.0.9", "--master-port", "1111"],
        env=slurm_env(0, 2, "n[1-2]"),
    )
    assert (cfg["master_addr"], cfg["master_port"]) == ("10.0.0.9", 1111)
    # a batch script (special step id) is not a launch by srun
    cfg = dry(launch_bin, [], env=slurm_env(0, 2, "n[1-2]", SLURM_STEP_ID="4294967291"))
    assert cfg["scheduler"] is None and cfg["nnodes"] == 1
    # srun with a task per GPU instead of per node
    r = run_launcher(launch_bin, ["--dry-run", "x.py"], env=slurm_env(0, 2, "n[1-2]", ntasks=8))
    assert r.returncode == 2 and "one task per node" in r.stderr

    ompi = dict(
        OMPI_COMM_WORLD_SIZE="3",
        OMPI_COMM_WORLD_RANK="1",
        OMPI_COMM_WORLD_LOCAL_SIZE="1",
        OMPI_COMM_WORLD_LOCAL_RANK="0",
        OMPI_COMM_WORLD_NODE_RANK="1",
    )
    cfg = dry(launch_bin, ["--master-addr", "10.0.0.1"], env=base_env(**ompi))
    assert (cfg["scheduler"], cfg["nnodes"], cfg["node_rank"]) == ("openmpi", 3, 1)
    r = run_launcher(launch_bin, ["--dry-run", "x.py"], env=base_env(**ompi))
    assert r.returncode == 2 and "--master-addr" in r.stderr
    r = run_launcher(
        launch_bin,
        ["--master-addr", "h", "--dry-run", "x.py"],
        env=base_env(**{**ompi, "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}),
    )
    assert r.returncode == 2


# ----------------------------------------------------------------------------------------------
# CPU affinity from canned sysfs trees


def make_sysfs(
    root: Path, sockets: int, cores: int, threads: int, gpu_numa: list[int] = ()
) -> Path:
    """Linux numbering: thread t of core c on socket s is CPU t*S*C + s*C + c."""
    n = sockets * cores * threads
    cpu_dir = root / "devices/system/cpu"
    cpu_dir.mkdir(parents=True)
    (cpu_dir / "online").write_text(f"0-{n - 1}\n")
    per_node: dict[int, list[int]] = {}
    for t in range(threads):
        for s in range(sockets):
            for c in range(cores):
                cpu = t * sockets * cores + s * cores + c
                sib = ",".join(str(u * sockets * cores + s * cores + c) for u in range(threads))
                topo = cpu_dir / f"cpu{cpu}/topology"
                topo.mkdir(parents=True)
                (topo / "thread_siblings_list").write_text(sib + "\n")
                (topo / "core_id").write_text(f"{c}\n")
                (topo / "physical_package_id").write_text(f"{s}\n")
                per_node.setdefault(s, []).append(cpu)
    for s, cpus in per_node.items():
        d = root / f"devices/system/node/node{s}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(",".join(map(str, sorted(cpus))) + "\n")
    pci = root / "bus/pci/devices"
    pci.mkdir(parents=True)
    bmc = pci / "0000:02:00.0"  # the board's VGA chip: not a GPU for us
    bmc.mkdir()
    (bmc / "vendor").write_text("0x1a03\n")
    (bmc / "class").write_text("0x030000\n")
    (bmc / "numa_node").write_text("0\n")
    for i, numa in enumerate(gpu_numa):
        d = pci / f"0000:{0x18 + i:02x}:00.0"
        d.mkdir()
        (d / "vendor").write_text("0x10de\n")
        (d / "class").write_text("0x030200\n")
        (d / "numa_node").write_text(f"{numa}\n")
    return root


def binding(launch_bin, sysfs: Path, mode: str, nproc: int, allowed: str, **env) -> list[str]:
    cfg = dry(
        launch_bin,
        ["--cpu-bind", mode, "--nproc-per-node", str(nproc)],
        env=base_env(DETLITE_SYSFS_ROOT=str(sysfs), DETLITE_ALLOWED_CPUS=allowed, **env),
    )
    return [r["cpus"] for r in cfg["local_ranks"]]


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("none", ["", "", "", ""]),
        ("socket", ["0-3,8-11", "0-3,8-11", "4-7,12-15", "4-7,12-15"]),
        ("socket-unique-contiguous", ["0-1,8-9", "2-3,10-11", "4-5,12-13", "6-7,14-15"]),
        ("socket-unique-interleaved", ["0,2,8,10", "1,3,9,11", "4,6,12,14", "5,7,13,15"]),
        ("core", ["0,8", "2,10", "4,12", "6,14"]),
    ],
)
def test_affinity_modes_two_sockets_four_gpus(launch_bin, tmp_path, mode, expected):
    sysfs = make_sysfs(tmp_path / "sys", sockets=2, cores=4, threads=2, gpu_numa=[0, 0, 1, 1])
    assert binding(launch_bin, sysfs, mode, 4, "0-15") == expected


def test_affinity_follows_gpu_numa_and_visible_devices(launch_bin, tmp_path):
    sysfs = make_sysfs(tmp_path / "sys", sockets=2, cores=4, threads=2, gpu_numa=[1, 1, 0, 0])
    assert binding(launch_bin, sysfs, "socket", 4, "0-15", CUDA_VISIBLE_DEVICES="") == [
        "0-3,8-11",
        "0-3,8-11",
        "4-7,12-15",
        "4-7,12-15",
    ]  # no visible GPU: spread over sockets
    del_cvd = binding(
        launch_bin, sysfs, "socket-unique-contiguous", 2, "0-15", CUDA_VISIBLE_DEVICES="2,3"
    )
    assert del_cvd == ["0-1,8-9", "2-3,10-11"]  # GPUs 2 and 3 sit on node 0
    env = {k: v for k, v in base_env().items() if k != "CUDA_VISIBLE_DEVICES"}
    cfg = json.loads(
        subprocess.run(
            [launch_bin, "--cpu-bind", "socket", "--nproc-per-node", "4", "--dry-run", "x.py"],
            env={**env, "DETLITE_SYSFS_ROOT": str(sysfs), "DETLITE_ALLOWED_CPUS": "0-15"},
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    )
    assert [r["cpus"] for r in cfg["local_ranks"]] == [
        "4-7,12-15",
        "4-7,12-15",
        "0-3,8-11",
        "0-3,8-11",
    ]
    # only the allowed CPUs are handed out; more ranks than cores share cores
    assert binding(
        launch_bin, sysfs, "socket-unique-contiguous", 2, "0-3", CUDA_VISIBLE_DEVICES=""
    ) == ["0-1", "2-3"]
    assert binding(launch_bin, sysfs, "core", 3, "0-1", CUDA_VISIBLE_DEVICES="") == ["0", "1", "0"]
    gpu = dry(
        launch_bin, ["--nproc-per-node", "gpu"], env={**env, "DETLITE_SYSFS_ROOT": str(sysfs)}
    )
    assert gpu["nproc_per_node"] == 4


def test_affinity_is_applied_before_exec(spawn, tmp_path):
    allowed = sorted(os.sched_getaffinity(0))[:4]
    root = tmp_path / "sys"  # one socket per allowed CPU, so rank r gets exactly CPU allowed[r]
    cpu_dir = root / "devices/system/cpu"
    for s, cpu in enumerate(allowed):
        (cpu_dir / f"cpu{cpu}/topology").mkdir(parents=True)
        (cpu_dir / f"cpu{cpu}/topology/thread_siblings_list").write_text(f"{cpu}\n")
        (root / f"devices/system/node/node{s}").mkdir(parents=True)
        (root / f"devices/system/node/node{s}/cpulist").write_text(f"{cpu}\n")
    code = (
        "import os;print('AFF', sorted(os.sched_getaffinity(0)), os.environ.get('OMP_NUM_THREADS'))"
    )
    n = len(allowed)
    launch = spawn(
        ["--nproc-per-node", str(n), "--cpu-bind", "socket", "--no-python", PY, "-c", code],
        env=base_env(DETLITE_SYSFS_ROOT=str(root)),
    )
    assert launch.wait(30) == 0, launch.err
    lines = rank_lines(launch.out)
    for r in range(n):
        expected_omp = "1" if n > 1 else "None"
        assert lines[r] == [f"AFF [{allowed[r]}] {expected_omp}"]


def cpu_count_of(cpulist: str) -> int:
    """The number of CPUs in a kernel CPU list such as "0-1,8"."""
    count = 0
    for part in cpulist.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def test_one_cpu_count_for_nproc_omp_and_binding(spawn, launch_bin, tmp_path):
    """DETLITE_ALLOWED_CPUS is the CPU set everything counts: --nproc-per-node cpu, the bindings,
    and OMP_NUM_THREADS (the binding's size, else the allowed CPUs per worker)."""
    code = "import os; print('OMP', os.environ['OMP_NUM_THREADS'])"
    launch = spawn(
        ["--nproc-per-node", "2", "--no-python", PY, "-c", code],
        env=base_env(DETLITE_ALLOWED_CPUS="0-5"),
    )
    assert launch.wait(30) == 0, launch.err
    assert rank_lines(launch.out) == {0: ["OMP 3"], 1: ["OMP 3"]}

    sysfs = make_sysfs(tmp_path / "sys", sockets=2, cores=4, threads=2)
    env = base_env(DETLITE_SYSFS_ROOT=str(sysfs), DETLITE_ALLOWED_CPUS="0-1,4,8-9")
    args = ["--nproc-per-node", "cpu", "--cpu-bind", "socket-unique-contiguous"]
    cfg = dry(launch_bin, args, env=env)
    assert cfg["nproc_per_node"] == 5
    sizes = [cpu_count_of(r["cpus"]) for r in cfg["local_ranks"]]
    assert sizes == [2, 2, 2, 1, 1]
    launch = spawn([*args, "--no-python", PY, "-c", code], env=env)
    assert launch.wait(30) == 0, launch.err
    assert rank_lines(launch.out) == {r: [f"OMP {n}"] for r, n in enumerate(sizes)}


# ----------------------------------------------------------------------------------------------
# environment parity with torchrun, real gloo jobs


def test_environment_matches_torchrun(spawn, tmp_path):
    port = free_port()
    script = str(WORKERS / "env_dump.py")
    env = base_env()
    dump = tmp_path / "torchrun-env"
    dump.mkdir()
    torchrun = subprocess.run(
        [
            PY,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(port),
            script,
        ],
        env={**env, "ENV_DUMP_DIR": str(dump)},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert torchrun.returncode == 0, torchrun.stderr
    # From files: torchrun's workers share its stdout unprefixed, and their lines can interleave.
    theirs = {}
    for f in dump.glob("rank*.json"):
        e = json.loads(f.read_text())
        e.pop("ENV_DUMP_DIR")
        theirs[int(e["RANK"])] = e
    launch = spawn(["--nproc-per-node", "2", "--master-port", str(port), script], env=env)
    assert launch.wait(60) == 0, launch.err
    ours = {}
    for rank, lines in rank_lines(launch.out).items():
        ours[rank] = json.loads(lines[0][4:])
    assert sorted(theirs) == sorted(ours) == [0, 1]
    cores_per_rank = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for rank in (0, 1):
        t, o = theirs[rank], ours[rank]
        # the documented differences
        assert (
            t["TORCHELASTIC_USE_AGENT_STORE"] == "True"
            and o["TORCHELASTIC_USE_AGENT_STORE"] == "False"
        )
        assert o["TORCHELASTIC_ERROR_FILE"].endswith(f"/attempt_0/rank_{rank}/error.json")
        assert t["OMP_NUM_THREADS"] == "1" and o["OMP_NUM_THREADS"] == cores_per_rank
        assert (
            o["TORCHELASTIC_SIGNALS_TO_HANDLE"] == "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"
        )
        skip = {
            "TORCHELASTIC_USE_AGENT_STORE",
            "TORCHELASTIC_ERROR_FILE",
            "OMP_NUM_THREADS",
            "TORCHELASTIC_SIGNALS_TO_HANDLE",
        }
        assert {k: v for k, v in t.items() if k not in skip} == {
            k: v for k, v in o.items() if k not in skip
        }
    # the error file directory is temporary and removed afterwards
    assert not Path(ours[0]["TORCHELASTIC_ERROR_FILE"]).parent.exists()


def test_two_nodes_gloo_allreduce(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    n0, n1 = two_nodes(
        spawn, ["--master-port", "0"], [str(WORKERS / "gloo_allreduce.py"), str(pid_dir)]
    )
    assert n1.wait(120) == 0, n1.err
    assert n0.wait(30) == 0, n0.err
    results = {}
    for text in (n0.out, n1.out):
        for rank, lines in rank_lines(text).items():
            results[rank] = dict(kv.split("=") for kv in lines[-1].split()[1:])
    assert sorted(results) == [0, 1, 2, 3]
    assert {r["sum"] for r in results.values()} == {"10"}
    assert {r["world"] for r in results.values()} == {"4"}
    ports = {r["port"] for r in results.values()}
    assert len(ports) == 1 and ports != {"0"}
    assert set(rank_lines(n0.out)) == {0, 1} and set(rank_lines(n1.out)) == {2, 3}
    assert not any(pid_alive(p) for p in pids_in(pid_dir).values())


def test_gloo_job_failure_tears_down_both_nodes(spawn, tmp_path):
    """Rank 3 dies while ranks 0-2 sit in an all_reduce; the others may error out on their own, but
    the root cause (and every launcher's exit code) is rank 3's 7."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    env = base_env(FAIL_RANK="3")
    port = free_port()
    common = [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "2",
        "--master-port",
        "0",
        "--grace-period",
        str(GRACE),
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        *HB,
    ]
    script = [str(WORKERS / "gloo_allreduce.py"), str(pid_dir)]
    n0 = spawn([*common, "--node-rank", "0", *script], env=env)
    n1 = spawn([*common, "--node-rank", "1", "--local-addr", "127.0.0.2", *script], env=env)
    assert n1.wait(120) == 7, n1.err
    assert n0.wait(GRACE + 5) == 7, n0.err
    assert "root cause: rank 3" in n1.err and "rank 3 on node 1" in n0.err
    wait_for(lambda: not any(pid_alive(p) for p in pids_in(pid_dir).values()), 3, "no worker left")


def test_port_29500_taken_with_master_port_0(spawn, launch_bin):
    blocker = socket.socket()
    try:
        try:
            blocker.bind(("127.0.0.1", 29500))
            blocker.listen()
        except OSError:
            pass  # somebody else holds it: just as good
        launch = spawn(
            ["--nproc-per-node", "2", "--master-port", "0", str(WORKERS / "gloo_allreduce.py")]
        )
        assert launch.wait(120) == 0, launch.err
        lines = rank_lines(launch.out)
        ports = {dict(kv.split("=") for kv in lines[r][-1].split()[1:])["port"] for r in (0, 1)}
        assert len(ports) == 1 and ports.pop() not in ("0", "29500")
        # with the default port, node 0 says what is wrong before rank 0 trips over it
        r = run_launcher(launch_bin, ["--nproc-per-node", "1", BEHAVE])
        assert "29500 is already in use" in r.stderr
    finally:
        blocker.close()


# ----------------------------------------------------------------------------------------------
# failures, teardown, signals


def test_worker_exit_code_propagates_across_nodes(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    log_dir = tmp_path / "logs"
    n0, n1 = two_nodes(
        spawn,
        ["--grace-period", str(GRACE)],
        [
            BEHAVE,
            "--pid-dir",
            str(pid_dir),
            "--fail-rank",
            "3",
            "--code",
            "7",
            "--delay",
            "0.5",
            "--sleep",
            "60",
            "--ready-dir",
            str(pid_dir),
        ],
        extra0=["--log-dir", str(log_dir), "--tee"],
    )
    wait_for(lambda: len(list(pid_dir.glob("*.ready"))) == 4, 60, "4 workers up")
    assert n0.wait(GRACE + 15) == 7, n0.err
    assert n1.wait(GRACE + 15) == 7, n1.err
    failed_at = float((pid_dir / "3.failing").read_text())
    assert max(n0.ended_at, n1.ended_at) - failed_at < GRACE + 2
    rank3 = pids_in(pid_dir)["3"]
    for text in (n0.err, n1.err):
        assert "root cause: rank 3" in text or "rank 3 on node 1" in text
    assert (
        f"rank 3 (local rank 1, node 1, host {socket.gethostname()}, pid {rank3}) "
        "exited with code 7" in n1.err
    )
    assert "rank 3 failing with 7" in n1.err  # the tail of its output
    wait_for(lambda: not any(pid_alive(p) for p in pids_in(pid_dir).values()), 3, "no worker left")
    summary = json.loads((log_dir / "summary.json").read_text())
    assert summary["exit_code"] == 7 and summary["root_cause"]["rank"]["rank"] == 3
    states = {r["rank"]: r["state"] for r in summary["ranks"]}
    assert states == {0: "terminated", 1: "terminated", 2: "terminated", 3: "failed"}


def test_error_file_message_in_report(spawn, tmp_path):
    launch = spawn(
        [
            "--nproc-per-node",
            "2",
            "--grace-period",
            str(GRACE),
            BEHAVE,
            "--fail-rank",
            "1",
            "--code",
            "3",
            "--error-file",
            "--sleep",
            "30",
        ]
    )
    assert launch.wait(20) == 3
    assert "error: ValueError: bad batch" in launch.err


def test_sigterm_forwarded_then_sigkill(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    log_dir = tmp_path / "logs"
    launch = spawn(
        [
            "--nproc-per-node",
            "2",
            "--grace-period",
            str(GRACE),
            "--log-dir",
            str(log_dir),
            "--tee",
            BEHAVE,
            "--pid-dir",
            str(pid_dir),
            "--ready-dir",
            str(pid_dir),
            "--ignore",
            "SIGTERM",
            "--sleep",
            "60",
        ]
    )
    wait_for(lambda: len(list(pid_dir.glob("*.ready"))) == 2, 30, "workers up")
    sent = time.time()
    launch.signal(signal.SIGTERM)
    assert launch.wait(GRACE + 10) == 128 + signal.SIGTERM
    assert launch.ended_at - sent < GRACE + 2
    assert "rank 0 got SIGTERM" in launch.out and "rank 1 got SIGTERM" in launch.out
    assert "SIGKILL" in launch.err
    summary = json.loads((log_dir / "summary.json").read_text())
    assert [r["signal"] for r in summary["ranks"]] == ["SIGKILL", "SIGKILL"]
    assert summary["root_cause"]["kind"] == "signal"
    assert not any(pid_alive(p) for p in pids_in(pid_dir).values())


def test_second_ctrl_c_kills_at_once(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    launch = spawn(
        [
            "--nproc-per-node",
            "2",
            "--grace-period",
            "60",
            BEHAVE,
            "--ready-dir",
            str(pid_dir),
            "--pid-dir",
            str(pid_dir),
            "--ignore",
            "SIGINT",
            "--sleep",
            "60",
        ]
    )
    wait_for(lambda: len(list(pid_dir.glob("*.ready"))) == 2, 30, "workers up")
    launch.signal(signal.SIGINT)
    wait_for(lambda: launch.out.count("got SIGINT") == 2, 10, "SIGINT forwarded")
    assert launch.proc.poll() is None  # still inside the 60 s grace period
    sent = time.time()
    launch.signal(signal.SIGINT)
    assert launch.wait(10) == 128 + signal.SIGINT
    assert launch.ended_at - sent < 2
    assert not any(pid_alive(p) for p in pids_in(pid_dir).values())


@pytest.mark.parametrize(
    "sig,expected",
    [
        ("SIGUSR1", 0),
        ("SIGUSR2", 0),
        ("SIGHUP", 128 + signal.SIGHUP),
        ("SIGQUIT", 128 + signal.SIGQUIT),
    ],
)
def test_signals_forwarded(spawn, tmp_path, sig, expected):
    ready = tmp_path / "ready"
    ready.mkdir()
    launch = spawn(
        [
            "--nproc-per-node",
            "2",
            "--grace-period",
            "5",
            BEHAVE,
            "--ready-dir",
            str(ready),
            "--exit-on",
            sig,
            "--sleep",
            "60",
        ]
    )
    wait_for(lambda: len(list(ready.glob("*.ready"))) == 2, 30, "workers up")
    launch.signal(getattr(signal, sig))
    assert launch.wait(10) == expected, launch.err
    assert launch.out.count(f"got {sig}, exiting") == 2


def test_signal_to_one_node_stops_every_node(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    n0, n1 = two_nodes(
        spawn,
        ["--grace-period", str(GRACE)],
        [BEHAVE, "--pid-dir", str(pid_dir), "--ready-dir", str(pid_dir), "--sleep", "60"],
    )
    wait_for(lambda: len(list(pid_dir.glob("*.ready"))) == 4, 60, "4 workers up")
    n1.signal(signal.SIGINT)
    assert n1.wait(GRACE + 5) == 128 + signal.SIGINT, n1.err
    assert n0.wait(GRACE + 5) == 128 + signal.SIGINT, n0.err
    assert "node 1" in n0.err and "SIGINT" in n0.err
    wait_for(
        lambda: not any(pid_alive(p) for p in pids_in(pid_dir).values()), 3, "every worker gone"
    )


def test_kill_9_of_a_launcher_takes_its_workers_and_aborts_the_other_node(spawn, tmp_path):
    for victim in (1, 0):
        _kill_one_of_two_nodes(spawn, tmp_path / f"pids{victim}", victim)


def _kill_one_of_two_nodes(spawn, pid_dir, victim):
    pid_dir.mkdir()
    nodes = two_nodes(
        spawn,
        ["--grace-period", str(GRACE)],
        [BEHAVE, "--pid-dir", str(pid_dir), "--ready-dir", str(pid_dir), "--sleep", "60"],
    )
    wait_for(lambda: len(list(pid_dir.glob("*.ready"))) == 4, 60, "4 workers up")
    killed_at = time.time()
    nodes[victim].proc.kill()
    nodes[victim].wait(5)
    survivor = nodes[1 - victim]
    assert survivor.wait(10) == 125, survivor.err
    assert survivor.ended_at - killed_at < 2 + GRACE  # within the heartbeat timeout (2 s)
    assert "lost" in survivor.err
    wait_for(
        lambda: not any(pid_alive(p) for p in pids_in(pid_dir).values()), 3, "every worker gone"
    )


def test_heartbeat_timeout_when_a_launcher_hangs(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    n0, n1 = two_nodes(
        spawn,
        ["--grace-period", str(GRACE)],
        [BEHAVE, "--pid-dir", str(pid_dir), "--ready-dir", str(pid_dir), "--sleep", "60"],
    )
    wait_for(lambda: len(list(pid_dir.glob("*.ready"))) == 4, 60, "4 workers up")
    n1.signal(signal.SIGSTOP)
    try:
        stopped_at = time.time()
        assert n0.wait(10) == 125, n0.err
        assert 1.5 < n0.ended_at - stopped_at < 2 + 1.5
        assert "no heartbeat" in n0.err
    finally:
        n1.signal(signal.SIGCONT)
    assert n1.wait(10) == 125, n1.err
    wait_for(
        lambda: not any(pid_alive(p) for p in pids_in(pid_dir).values()), 3, "every worker gone"
    )


def test_grandchildren_are_reaped(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    launch = spawn(
        [
            "--nproc-per-node",
            "2",
            BEHAVE,
            "--pid-dir",
            str(pid_dir),
            "--grandchildren",
            "--sleep",
            "0.2",
        ]
    )
    assert launch.wait(30) == 0, launch.err
    pids = pids_in(pid_dir)
    assert {"0.child", "1.child", "0.daemon", "1.daemon"} <= set(pids)
    wait_for(
        lambda: not any(pid_alive(p) for p in pids.values()),
        3,
        "children and detached daemons gone",
    )


def test_no_orphans_when_the_launcher_is_sigkilled(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    launch = spawn(
        [
            "--nproc-per-node",
            "2",
            BEHAVE,
            "--pid-dir",
            str(pid_dir),
            "--ready-dir",
            str(pid_dir),
            "--grandchildren",
            "--sleep",
            "60",
        ]
    )
    wait_for(lambda: len(list(pid_dir.glob("*.ready"))) == 2, 30, "workers up")
    launch.proc.kill()
    launch.wait(5)
    pids = pids_in(pid_dir)
    # workers (parent-death signal) and everything in their process groups (guardian); daemons
    # that left the session are out of reach once the launcher is gone (documented)
    mine = {k: v for k, v in pids.items() if not k.endswith(".daemon")}
    assert {"0", "1", "0.child", "1.child"} <= set(mine)
    wait_for(
        lambda: not any(pid_alive(p) for p in mine.values()), 3, "workers and their children gone"
    )
    temp_dir = Path((pid_dir / "0.errfile").read_text()).parents[
        2
    ]  # <tmp>/attempt_0/rank_0/error.json
    assert temp_dir.name.startswith("detlite-launch-")
    wait_for(lambda: not temp_dir.exists(), 3, "the guardian to remove the temporary directory")


def test_coordinated_restarts(spawn, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    log_dir = tmp_path / "logs"
    script = [
        BEHAVE,
        "--pid-dir",
        str(pid_dir),
        "--fail-rank",
        "2",
        "--code",
        "5",
        "--fail-rounds",
        "2",
        "--delay",
        "0.2",
        "--sleep",
        "0.5",
    ]
    n0, n1 = two_nodes(
        spawn,
        ["--grace-period", str(GRACE), "--max-restarts", "2", "--master-port", "0"],
        script,
        extra0=["--log-dir", str(log_dir), "--tee"],
    )
    assert n0.wait(60) == 0, n0.err
    assert n1.wait(10) == 0, n1.err
    seen: dict[int, set[int]] = {}
    ports: dict[int, set[str]] = {}
    for text in (n0.out, n1.out):
        for rank, lines in rank_lines(text).items():
            for line in lines:
                m = re.match(r"rank \d+ of 4 up, restart (\d+), port (\d+)", line)
                if m:
                    seen.setdefault(rank, set()).add(int(m.group(1)))
                    ports.setdefault(int(m.group(1)), set()).add(m.group(2))
    assert seen == {r: {0, 1, 2} for r in range(4)}
    assert all(len(p) == 1 for p in ports.values()) and len(set().union(*ports.values())) == 3
    summary = json.loads((log_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and len(summary["restarts"]) == 2 and summary["exit_code"] == 0

    # out of restarts: the worker's code
    n0, n1 = two_nodes(
        spawn, ["--grace-period", str(GRACE), "--max-restarts", "1", "--master-port", "0"], script
    )
    assert n0.wait(60) == 5, n0.err
    assert n1.wait(10) == 5, n1.err
    assert "restart 1/1" in n0.err and "restart 1/1" in n1.err


def test_output_whole_lines_under_load(launch_bin, tmp_path):
    size = 10 * 1000 * 1000
    proc = subprocess.Popen(
        [launch_bin, "--nproc-per-node", "4", str(WORKERS / "spew.py"), str(size)],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err[-2000:]
    line_re = re.compile(rb"\[rank(\d)\]: (out|err) r(\d) n(\d+) x*\|$")
    last = {(r, s): -1 for r in range(4) for s in (b"out", b"err")}
    totals = {}
    count = 0
    for stream, data in ((b"out", out), (b"err", err)):
        for line in data.split(b"\n")[:-1]:
            m = line_re.match(line)
            if not m:
                t = re.match(rb"\[rank(\d)\]: out r(\d) total (\d+) no newline at the end$", line)
                assert t and stream == b"out", line[:200]
                totals[int(t.group(1))] = int(t.group(3))
                continue
            rank, s, n = int(m.group(1)), m.group(2), int(m.group(4))
            assert s == stream and int(m.group(3)) == rank
            assert n > last[(rank, s)]  # in order within each stream
            last[(rank, s)] = n
            count += 1
    assert sorted(totals) == [0, 1, 2, 3]
    assert count == sum(totals.values())  # nothing lost, nothing torn
    assert len(out) + len(err) > 4 * size


def test_log_dir_tee_and_rank_filter(spawn, tmp_path):
    logs = tmp_path / "logs"
    quiet = spawn(["--nproc-per-node", "2", "--log-dir", str(logs), BEHAVE])
    assert quiet.wait(30) == 0
    assert "[rank" not in quiet.out + quiet.err
    for r in (0, 1):
        assert f"rank {r} of 2 up" in (logs / f"attempt_0/rank_{r}/stdout.log").read_text()
    summary = json.loads((logs / "summary.json").read_text())
    assert [r["state"] for r in summary["ranks"]] == ["succeeded", "succeeded"] and summary[
        "exit_code"
    ] == 0

    filtered = spawn(
        [
            "--nproc-per-node",
            "2",
            "--log-dir",
            str(tmp_path / "logs2"),
            "--tee",
            "--local-ranks-filter",
            "1",
            BEHAVE,
        ]
    )
    assert filtered.wait(30) == 0
    assert set(rank_lines(filtered.out)) == {1}
    assert "rank 0 of 2 up" in (tmp_path / "logs2/attempt_0/rank_0/stdout.log").read_text()

    console = spawn(["--nproc-per-node", "3", "--local-ranks-filter", "0,2", BEHAVE])
    assert console.wait(30) == 0
    assert set(rank_lines(console.out)) == {0, 2}


def test_redirects_choose_the_streams_kept_off_the_console(spawn, tmp_path):
    code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"
    for redirects, on_out, on_err in (("1", 0, 1), ("2", 1, 0), ("0", 1, 1), ("3", 0, 0)):
        logs = tmp_path / f"logs{redirects}"
        args = ["--log-dir", str(logs), "--redirects", redirects, "--no-python", PY, "-c", code]
        launch = spawn(args)
        assert launch.wait(30) == 0, launch.err
        assert ("[rank0]: to stdout" in launch.out) == bool(on_out), redirects
        assert ("[rank0]: to stderr" in launch.err) == bool(on_err), redirects
        assert (logs / "attempt_0/rank_0/stdout.log").read_text() == "to stdout\n"
        assert (logs / "attempt_0/rank_0/stderr.log").read_text() == "to stderr\n"
    # a teed stream is shown even when it is redirected
    args = [
        "--log-dir",
        str(tmp_path / "logs-t"),
        "-r",
        "3",
        "-t",
        "2",
        "--no-python",
        PY,
        "-c",
        code,
    ]
    launch = spawn(args)
    assert launch.wait(30) == 0, launch.err
    assert "to stdout" not in launch.out and "[rank0]: to stderr" in launch.err


def test_no_grace_period_kills_at_once(spawn, tmp_path):
    logs = tmp_path / "logs"
    worker = [BEHAVE, "--ignore", "SIGTERM", "--fail-rank", "1", "--code", "4", "--delay", "0.5"]
    launch = spawn(
        [
            "--nproc-per-node",
            "2",
            "--grace-period",
            "0",
            "--log-dir",
            str(logs),
            "--tee",
            *worker,
            "--sleep",
            "60",
        ]
    )
    assert launch.wait(15) == 4, launch.err
    assert "got SIGTERM" not in launch.out
    ranks = json.loads((logs / "summary.json").read_text())["ranks"]
    assert [(r["state"], r["signal"], r["exit_code"]) for r in ranks] == [
        ("terminated", "SIGKILL", None),
        ("failed", None, 4),
    ]


def test_command_not_found(launch_bin):
    r = run_launcher(launch_bin, ["--no-python", "definitely-not-a-command-xyz"])
    assert r.returncode == 127
    assert "cannot execute 'definitely-not-a-command-xyz'" in r.stderr


# ----------------------------------------------------------------------------------------------
# rendezvous


def test_slurm_emulation_two_nodes_no_flags(spawn):
    for job in range(1000, 1100):  # a job id whose derived control port is free here
        port = 20000 + (job * 16) % 9000
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    code = (
        "import os;print('ENV', os.environ['RANK'], os.environ['WORLD_SIZE'], "
        "os.environ['MASTER_ADDR'], "
        "os.environ['GROUP_RANK'], os.environ['TORCHELASTIC_RUN_ID'])"
    )
    launches = [
        spawn(["--no-python", PY, "-c", code], env=slurm_env(node, 2, "127.0.0.[1-2]", job=job))
        for node in (1, 0)
    ]
    for launch in launches:
        assert launch.wait(30) == 0, launch.err
    n1, n0 = launches
    assert rank_lines(n0.out) == {0: [f"ENV 0 2 127.0.0.1 0 {job}.0"]}
    assert rank_lines(n1.out) == {1: [f"ENV 1 2 127.0.0.1 1 {job}.0"]}


def test_rendezvous_timeout_and_mismatches(spawn):
    alone0 = spawn(
        [
            "--nnodes",
            "2",
            "--node-rank",
            "0",
            "--rdzv-timeout",
            "1",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            BEHAVE,
        ]
    )
    alone1 = spawn(
        [
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--rdzv-timeout",
            "1",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            BEHAVE,
        ]
    )
    assert alone0.wait(10) == 124 and "did not join" in alone0.err
    assert alone1.wait(10) == 124 and "could not join node 0" in alone1.err

    # another job's node (other run id) is refused; node 0 keeps waiting for the right one
    port = free_port()
    common = ["--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    n0 = spawn([*common, "--node-rank", "0", "--rdzv-id", "job-a", "--rdzv-timeout", "3", BEHAVE])
    n1 = spawn(
        [*common, "--node-rank", "1", "--rdzv-id", "job-b", "--local-addr", "127.0.0.2", BEHAVE]
    )
    assert n1.wait(10) == 124 and "run id 'job-b' differs" in n1.err
    assert n0.wait(10) == 124

    # same run, inconsistent world description: both stop with a clear message
    port = free_port()
    n0 = spawn(
        ["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", f"127.0.0.1:{port}", BEHAVE]
    )
    n1 = spawn(
        ["--nnodes", "3", "--node-rank", "1", "--rdzv-endpoint", f"127.0.0.1:{port}", BEHAVE]
    )
    assert n1.wait(10) == 124 and "--nnodes 3 but node 0 has 2" in n1.err
    assert n0.wait(10) == 124 and "--nnodes 3 but node 0 has 2" in n0.err


def test_two_nodes_train_detlite(spawn, tmp_path, tiny_coco):
    """A few real detlite training steps, 2 nodes × 1 worker on loopback (gloo)."""
    run_dir = tmp_path / "run"
    script = [
        str(REPO / "train.py"), "builtin", "--steps", "2", "--batch-size", "2",
        "--model.image-size", "128", "--data.num-workers", "0", "--log-every", "1", "--skip-eval",
        "--data.train-json", str(tiny_coco["train_json"]),
        "--data.train-images", str(tiny_coco["train_images"]),
        "--output", str(run_dir),
    ]  # fmt: skip
    n0, n1 = two_nodes(spawn, ["--master-port", "0"], script, nproc=1)
    assert n1.wait(240) == 0, n1.err[-2000:]
    assert n0.wait(60) == 0, n0.err[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert (run_dir / "checkpoints" / "step-00000002.safetensors").is_file()
    # Only rank 0 talks to the person; its lines carry the world size.
    assert "world 2" in "".join(rank_lines(n0.out).get(0, []))
    assert not any("step 2/2" in line for line in rank_lines(n1.out).get(1, []))
