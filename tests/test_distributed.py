"""Several processes train the same model as one: DDP (gloo, CPU) through detlite-launch,
SyncBatchNorm, gradient accumulation, distributed evaluation and resume, each compared with a
single-process run of the same global batch.

The equality runs train in float64 (`--precision.dtype fp64`). In float32 no two runs that round
differently can agree to 1e-5 after a few steps, distributed or not: this network's float32
gradient is rough (ReLU6, max pooling), so that a random 1e-7 relative change of the weights
moves the gradient by 0.2 % and, after a second step, by 2 % (measured), and one process with 2
threads against 1 thread already differs by 5e-5 in the second step's loss. In float64 the same
comparisons agree to ~1e-11 (measured: losses 2e-12, weights 4e-12 after 4 steps at the
built-in recipe's learning rate), which is what "the same model" means; any error in the sharding,
the loss normalisation, the gradient reduction or SyncBatchNorm would show at the 1e-2 level.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "dist_workers" / "train_and_dump.py"
RTOL, ATOL = 1e-8, 1e-9
"""Agreement asked of float64 losses and tensors (relative; the absolute floor covers values
near 0): far inside the 1e-5 the property needs, far outside what float64 rounding leaves."""
EXACT = ("--precision.dtype", "fp64")


def _launcher() -> str:
    installed = Path(sysconfig.get_path("scripts")) / "detlite-launch"
    found = os.environ.get("DETLITE_LAUNCH") or (str(installed) if installed.is_file() else None)
    found = found or shutil.which("detlite-launch")
    if found is None:
        pytest.fail("detlite-launch is not installed (pip install -e . builds it)")
    return found


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    # One thread in every process: kernels then reduce in the same order whatever the world
    # size (early training amplifies a 1e-7 difference from another thread count to ~1e-2).
    return {**env, "PYTHON_EXEC": sys.executable, "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(tiny, out: Path, batch: int, *extra: str) -> list[str]:
    return [
        "--steps", "4", "--batch-size", str(batch), "--model.image-size", "128",
        "--data.num-workers", "0", "--log-every", "1", "--checkpoint-every", "2",
        "--optim.ema-decay", "0.9", "--skip-eval", "--seed", "3",
        "--data.train-json", str(tiny["train_json"]),
        "--data.train-images", str(tiny["train_images"]),
        "--data.val-json", str(tiny["val_json"]), "--data.val-images", str(tiny["val_images"]),
        "--output", str(out), *extra,
    ]  # fmt: skip


def _run(command: list[str], timeout: float = 600) -> None:
    result = subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _train(args: list[str], nproc: int = 1, script: Path = WORKER) -> None:
    if nproc == 1:
        _run([sys.executable, str(script), *args])
    else:
        launch = [_launcher(), "--nproc-per-node", str(nproc), "--master-port", str(_port())]
        _run([*launch, str(script), *args])


def _losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _rank(out: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"rank{rank}.safetensors"))


def _same_run(a: Path, b: Path) -> None:
    """Per-step losses and every final tensor (parameters, EMA, BN statistics) agree."""
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4]
    for step in la:
        assert la[step] == pytest.approx(lb[step], rel=RTOL), step
    ta, tb = _rank(a), _rank(b)
    assert set(ta) == set(tb)
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], rtol=RTOL, atol=ATOL, msg=name)


@pytest.fixture(scope="module")
def single(tiny_coco, tmp_path_factory):
    """The reference: one process, batch 4, float64."""
    out = tmp_path_factory.mktemp("dist") / "single"
    _train(_args(tiny_coco, out, 4, *EXACT))
    return out


def test_two_processes_with_sync_bn_train_as_one(tiny_coco, single, tmp_path):
    out = tmp_path / "two"
    _train(_args(tiny_coco, out, 2, "--dist.sync-bn", *EXACT), nproc=2)
    _same_run(out, single)
    # Both replicas hold the same tensors, BN statistics included.
    r0, r1 = _rank(out, 0), _rank(out, 1)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)


def test_without_sync_bn_statistics_are_per_rank_but_weights_agree(tiny_coco, tmp_path):
    out = tmp_path / "local-bn"
    _train(_args(tiny_coco, out, 2), nproc=2)
    r0, r1 = _rank(out, 0), _rank(out, 1)
    stats = [k for k in r0 if k.startswith("params/") and k.endswith("running_mean")]
    weights = [k for k in r0 if k.startswith("params/") and not k.endswith(("_mean", "_var"))]
    assert stats and any(not torch.equal(r0[k], r1[k]) for k in stats)
    assert all(torch.equal(r0[k], r1[k]) for k in weights)  # DDP keeps the replicas in sync


def test_accumulation_equals_one_big_batch(tiny_coco, single, tmp_path):
    """N micro-batches of B give the gradients of one batch of N·B. BatchNorm normalises each
    micro-batch with its own statistics, so the exact comparison freezes BatchNorm in both."""
    frozen = ("--model.frozen-bn", *EXACT)
    frozen_single = tmp_path / "single-frozen"
    _train(_args(tiny_coco, frozen_single, 4, *frozen))
    accumulated = tmp_path / "accumulated"
    _train(_args(tiny_coco, accumulated, 2, *frozen, "--grad-accum-steps", "2"))
    _same_run(accumulated, frozen_single)
    # And over two ranks at once: 2 processes × 1 image × 2 micro-batches.
    both = tmp_path / "both"
    _train(_args(tiny_coco, both, 1, *frozen, "--grad-accum-steps", "2"), nproc=2)
    _same_run(both, frozen_single)
    # With BatchNorm in training mode each micro-batch normalises with its own statistics:
    # close to the big batch, not equal to it.
    local_bn = tmp_path / "accumulated-local-bn"
    _train(_args(tiny_coco, local_bn, 2, *EXACT, "--grad-accum-steps", "2"))
    assert _losses(local_bn)[1] != pytest.approx(_losses(single)[1], rel=1e-6)


def test_two_nodes_of_two_workers_train_as_one(tiny_coco, single, tmp_path):
    out = tmp_path / "nodes"
    port = _port()
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
              "--rdzv-endpoint", f"127.0.0.1:{port}"]  # fmt: skip
    script = [str(WORKER), *_args(tiny_coco, out, 1, "--dist.sync-bn", *EXACT)]
    nodes = [
        subprocess.Popen([_launcher(), *common, "--node-rank", "0", *script], cwd=REPO, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([_launcher(), *common, "--node-rank", "1", "--local-addr", "127.0.0.2",
                          *script], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True),
    ]  # fmt: skip
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    _same_run(out, single)


def test_distributed_evaluation_equals_a_single_process(tiny_coco, single, tmp_path):
    checkpoint = single / "checkpoints" / "step-00000004.safetensors"  # float64 weights
    data = ["--data.val-json", str(tiny_coco["val_json"]),
            "--data.val-images", str(tiny_coco["val_images"]),
            "--data.num-workers", "0", "--batch-size", "3"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "eval.py", str(checkpoint), "--output", str(one), *data])
    launch = [_launcher(), "--nproc-per-node", "2", "--master-port", str(_port())]
    _run([*launch, str(REPO / "eval.py"), str(checkpoint), "--output", str(two), *data])
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, two)]
    assert metrics[0] == metrics[1]
    # The same detections (4 images over 2 ranks in batches of 3: padded, never duplicated).
    key = lambda r: (r["image_id"], r["category_id"], -r["score"])  # noqa: E731
    a, b = (sorted(json.loads((d / "detections.json").read_text()), key=key) for d in (one, two))
    assert len(a) == len(b) > 0 and {r["image_id"] for r in b} <= {1, 2, 3, 4}
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y) == {"image_id", "category_id", "bbox", "score"}
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        assert x["score"] == pytest.approx(y["score"], rel=1e-6)
        assert x["bbox"] == pytest.approx(y["bbox"], rel=1e-6, abs=1e-4)


def test_resume_of_a_two_process_run_continues_exactly(tiny_coco, tmp_path):
    full = tmp_path / "full"
    _train(_args(tiny_coco, full, 2, "--dist.sync-bn"), nproc=2)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for later in ("step-00000004.safetensors",):
        (part / "checkpoints" / later).unlink()
    (part / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (full / "metrics.jsonl").read_text().splitlines()[:2])
    )
    _train(["--resume", str(part)], nproc=2)
    assert _losses(part) == _losses(full)
    for rank in (0, 1):
        a, b = _rank(part, rank), _rank(full, rank)
        assert all(torch.equal(a[k], b[k]) for k in a)
