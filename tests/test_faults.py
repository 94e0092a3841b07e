"""Faults lose no work: stop signals save a checkpoint and exit quickly with no process left
behind, the resumed run continues exactly; kill -9 during a save, a full disk, a divergence, an
unreadable image and an unreachable peer each end in a clear line with earlier work intact."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from detlite import checkpoint

REPO = Path(__file__).resolve().parents[1]
DIST = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
ENV = {**{k: v for k, v in os.environ.items() if k not in DIST}, "HF_HUB_OFFLINE": "1"}


def _args(tiny, out: Path, *extra: str) -> list[str]:
    return [
        "train.py", "--batch-size", "2", "--model.image-size", "128", "--log-every", "1",
        "--checkpoint-every", "1000", "--optim.ema-decay", "0.9", "--skip-eval",
        "--data.train-json", str(tiny["train_json"]),
        "--data.train-images", str(tiny["train_images"]),
        "--data.val-json", str(tiny["val_json"]), "--data.val-images", str(tiny["val_images"]),
        "--output", str(out), *extra,
    ]  # fmt: skip


def _start(args: list[str], output=subprocess.PIPE) -> subprocess.Popen:
    """A command in the background; pass output=DEVNULL for long runs nobody reads."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=ENV, text=True, stdout=output, stderr=output
    )


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=ENV, text=True, capture_output=True, timeout=timeout
    )


def _losses(out: Path) -> dict[int, float]:
    lines = (
        (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    )
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _wait(predicate, timeout: float = 180.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.fixture(scope="module")
def reference(tiny_coco, tmp_path_factory):
    """An uninterrupted 12-step run: what interrupted and resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    result = _run(_args(tiny_coco, out, "--steps", "12"))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGUSR1, 138)])
def test_stop_signal_saves_exits_quickly_and_resume_continues_exactly(
    tiny_coco, reference, tmp_path, signum, code
):
    out = tmp_path / "run"
    proc = _start(_args(tiny_coco, out, "--steps", "12", "--data.num-workers", "2"))
    _wait(lambda: len(_losses(out)) >= 3 or proc.poll() is not None)
    workers = _children(proc.pid)
    sent = time.monotonic()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert proc.returncode == code, stderr
    assert "Traceback" not in stdout + stderr
    stopped = max(_losses(out))
    assert stopped < 12, "the run ended before the signal; nothing was tested"
    saved = out / "checkpoints" / f"step-{stopped:08d}.safetensors"
    assert f"saved {saved}" in stderr and f"--resume {out}" in stderr
    assert len(workers) == 2 and _alive(workers) == []  # DataLoader workers ended too

    resumed = _run(["train.py", "--resume", str(out)])  # the run's own settings come back
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = _losses(out), _losses(reference)
    assert sorted(ours) == list(range(1, 13))
    assert {s: ours[s] for s in range(stopped + 1, 13)} == {
        s: theirs[s] for s in range(stopped + 1, 13)
    }
    a = checkpoint.load_training(out / "checkpoints" / "step-00000012.safetensors")
    b = checkpoint.load_training(reference / "checkpoints" / "step-00000012.safetensors")
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_second_ctrl_c_exits_at_once(tiny_coco, tmp_path):
    out = tmp_path / "run"
    # Large inputs make a step take seconds: the second Ctrl-C lands inside it.
    proc = _start(_args(tiny_coco, out, "--steps", "200", "--model.image-size", "512"))
    _wait(lambda: len(_losses(out)) >= 1 or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    first = proc.stderr.readline() + proc.stderr.readline()  # a blank line, then the notice
    assert "SIGINT: finishing this step" in first
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "error: interrupted" in stderr and "saved" not in stderr


def test_sigterm_ends_an_evaluation_cleanly(builtin_paths, tmp_path):
    from detlite import config, model

    cfg = config.preset("lite0", num_classes=5, image_size=512)
    weights = tmp_path / "w.safetensors"
    checkpoint.save(weights, model.init(cfg), cfg)
    # The built-in val split at 512 px: seconds of work to interrupt.
    proc = _start(
        ["eval.py", str(weights), "--output", str(tmp_path / "eval"), "--batch-size", "2"]
    )
    _wait(lambda: len(_children(proc.pid)) >= 2 or proc.poll() is not None)
    workers = _children(proc.pid)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "Traceback" not in stderr
    assert "stopped by SIGTERM" in stderr
    assert workers and _alive(workers) == []


def test_kill_during_a_save_leaves_the_previous_checkpoint_and_no_temp(tiny_coco, tmp_path):
    out = tmp_path / "run"
    args = _args(tiny_coco, out, "--steps", "400", "--checkpoint-every", "1")
    proc = _start(args, output=subprocess.DEVNULL)
    directory = out / "checkpoints"
    caught = False
    try:
        deadline = time.monotonic() + 180
        while not caught and time.monotonic() < deadline and proc.poll() is None:
            done = list(directory.glob("step-*.safetensors")) if directory.exists() else []
            temps = list(directory.glob(".step-*.tmp")) if done else []
            if temps:
                os.kill(proc.pid, signal.SIGSTOP)  # freeze the writer mid-write
                caught = any(t.exists() for t in temps)
                os.kill(proc.pid, signal.SIGKILL if caught else signal.SIGCONT)
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    assert caught, "never saw a save in progress"
    assert list(directory.glob(".step-*.tmp"))  # what kill -9 leaves behind
    newest = sorted(directory.glob("step-*.safetensors"))[-1]
    assert checkpoint.load_training(newest).state.step >= 1  # the previous one loads
    resumed = _run(["train.py", "--resume", str(out), "--steps", str(_step(newest) + 1)])
    assert resumed.returncode == 0, resumed.stderr
    assert "removed 1 unfinished checkpoint file(s)" in resumed.stdout
    assert f"changed on resume: --steps 400 → {_step(newest) + 1}" in resumed.stdout
    assert not list(directory.glob(".step-*.tmp"))


def _step(path: Path) -> int:
    return int(path.stem.split("-")[1])


def test_full_disk_during_a_save_is_a_clear_error(monkeypatch, tmp_path):
    from test_checkpointer import CATEGORIES, _checkpointer, _tensors

    from detlite import config, model
    from detlite.checkpoint import TrainingState

    cfg = config.preset("lite0", num_classes=3, image_size=128)
    tensors = _tensors(model.init(cfg))
    ckpt, _ = _checkpointer(tmp_path)
    ckpt.prepare()
    ckpt.save(2, tensors, cfg, TrainingState(), CATEGORIES)

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint.training, "save_file", full)
    with pytest.raises(checkpoint.CheckpointError) as failure:
        ckpt.save(4, tensors, cfg, TrainingState(), CATEGORIES)
    message = str(failure.value)
    assert "step-00000004.safetensors" in message and "No space left on device" in message
    assert "step-00000002.safetensors is intact" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000002.safetensors"
    ]
    assert checkpoint.load_training(tmp_path / "checkpoints" / "step-00000002.safetensors")
    assert errno.ENOSPC == 28


def test_divergence_stops_naming_the_step_and_the_last_good_checkpoint(tiny_coco, tmp_path):
    out = tmp_path / "run"
    diverging = ["--optim.lr", "1e12", "--optim.clip-grad-norm", "0", "--checkpoint-every", "1"]
    result = _run(_args(tiny_coco, out, "--steps", "30", *diverging))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "training diverged" in result.stderr and "at step" in result.stderr
    saved = sorted((out / "checkpoints").glob("step-*.safetensors"))
    assert saved and f"the newest good checkpoint is {saved[-1]}" in result.stderr
    good = checkpoint.load_training(saved[-1])
    assert all(torch.isfinite(v).all() for v in good.params.values())


def _corrupt_copy(tiny, tmp_path, split: str) -> dict:
    """The tiny dataset with split's first image truncated (a copy of its image folder)."""
    import shutil

    images = tmp_path / f"{split}-images"
    shutil.copytree(tiny[f"{split}_images"], images)
    first = json.loads(Path(tiny[f"{split}_json"]).read_text())["images"][0]["file_name"]
    data = (images / first).read_bytes()
    (images / first).write_bytes(data[: len(data) // 2])
    return {**tiny, f"{split}_images": images, "bad": images / first}


def test_unreadable_training_image_is_replaced_and_reported(tiny_coco, tmp_path):
    tiny = _corrupt_copy(tiny_coco, tmp_path, "train")
    result = _run(_args(tiny, tmp_path / "run", "--steps", "4", "--data.num-workers", "2"))
    assert result.returncode == 0, result.stderr
    assert f"cannot read image {tiny['bad']}" in result.stdout
    assert "replaced by the next readable image" in result.stdout
    strict = _run(_args(tiny, tmp_path / "strict", "--steps", "4", "--data.bad-images", "error"))
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert f"cannot read image {tiny['bad']}" in strict.stderr


def test_unreadable_val_image_fails_the_evaluation_after_saving(tiny_coco, tmp_path):
    tiny = _corrupt_copy(tiny_coco, tmp_path, "val")
    out = tmp_path / "run"
    args = [
        a for a in _args(tiny, out, "--steps", "2", "--data.num-workers", "2") if a != "--skip-eval"
    ]
    result = _run(args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot read image {tiny['bad']}" in result.stderr
    assert (out / "checkpoints" / "step-00000002.safetensors").exists()  # saved before eval


def test_unreachable_peer_fails_within_the_timeout(tiny_coco, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, *_args(tiny_coco, tmp_path / "run", "--dist.timeout-s", "3")],
        cwd=REPO, env=env, text=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - start < 60
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "rank 1 of 2 could not join" in result.stderr and "--dist.timeout-s" in result.stderr
