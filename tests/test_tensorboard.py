"""`--log.tensorboard`: what it writes reads back through TensorBoard's own event reader, and a
missing package is one line before the run starts."""

import json

import numpy as np
import pytest
from conftest import tiny_run_args

import train as train_cli
from detlite import tensorboard_log
from detlite.trainer import train

RECALL = np.linspace(0, 1, 101)


def _accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    return events


def _row(name, reached_recall):
    """A class whose precision falls from 1 to 0.4 up to `reached_recall`, then 0 (unreached)."""
    falling = 1 - 0.6 * RECALL / reached_recall
    precision = np.where(reached_recall >= RECALL, falling, 0.0).round(4)
    curves = {"pr50": precision.tolist(), "pr": (precision * 0.5).tolist()}
    return {"name": name, "instances": 20, "AP": 0.35, "AP50": 0.6, **curves}


def test_scalars_and_pr_curves_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    log = tensorboard_log.TensorBoardLog(tmp_path, start_step=0)
    record = {"loss": 2.5, "cls_loss": 1.5, "box_loss": 0.02, "lr": 0.1, "img_per_s": 7.0,
              "data_wait": 0.0}  # fmt: skip
    log.step(3, record)
    log.evaluation(3, {"AP": 0.3, "AP50": 0.55}, [_row("ring", 0.8), _row("cross", 0.005)])
    log.close()
    events = _accumulator(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 2.5)]
    assert events.Scalars("val/AP50")[0].value == pytest.approx(0.55)
    assert events.Scalars("val_ap/ring")[0].value == pytest.approx(0.35)
    # "cross" reached one recall point only: no curve to draw. "ring": the 81 points it reached.
    assert "pr_iou50/cross" not in events.Tags()["tensors"]
    tp, fp, tn, fn, precision, recall = np.asarray(
        events.Tensors("pr_iou50/ring")[0].tensor_proto.float_val
    ).reshape(6, -1)
    expected = np.asarray(_row("ring", 0.8)["pr50"])[:81][::-1]
    assert np.allclose(precision, expected, atol=1e-6) and np.allclose(recall, RECALL[:81][::-1])
    found = tp > 0  # at recall 0 the counts say nothing about precision
    assert np.allclose(tp[found] / (tp + fp)[found], precision[found], atol=1e-5)
    assert np.allclose(tp + fn, 20) and not tn.any()
    assert "pr_iou50-95/ring" in events.Tags()["tensors"]


def test_a_run_logs_the_losses_of_metrics_jsonl(tiny_coco, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    args = tiny_run_args(tiny_coco, out, "--steps", "2", "--log.tensorboard")
    train(train_cli.parse(args))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in lines if "loss" in r}
    events = _accumulator(out / "tensorboard")
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged.keys() == losses.keys() == {1, 2}
    assert all(logged[s] == pytest.approx(losses[s], rel=1e-6) for s in losses)
    assert [e.step for e in events.Scalars("val/AP")] == [2]


def test_without_the_package_the_flag_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    real = tensorboard_log.importlib.util.find_spec
    monkeypatch.setattr(
        tensorboard_log.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    code = train_cli.main(["--log.tensorboard", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "pip install tensorboard" in err and "--log.tensorboard" in err
    assert not (tmp_path / "run").exists()
