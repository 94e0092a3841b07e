"""The results directory of a tiny run: config.json, results.csv, per-class AP, the drawings and
the plots exist, decode, have the expected size and are not blank; `detlite.plot` redraws them."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_run_args
from torchvision.io import ImageReadMode, decode_image

import train as train_cli
from detlite import results, train_config
from detlite.metrics import METRIC_NAMES
from detlite.trainer import train

PLOTS = ("losses", "lr", "map", "pr_curves", "per_class_ap", "labels")


@pytest.fixture(scope="module")
def run_dir(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "run"
    args = tiny_run_args(tiny_coco, out, "--steps", "4", "--eval-every", "2")
    train(train_cli.parse(args))
    return out


def _not_blank(path) -> torch.Tensor:
    image = decode_image(str(path), mode=ImageReadMode.RGB)
    assert image.shape[0] == 3 and image.float().std() > 5, path  # not one flat colour
    return image


def test_config_json_is_the_full_resolved_config(run_dir):
    stored = json.loads((run_dir / "config.json").read_text())
    cfg = train_config.train_config_from_dict(stored)
    assert cfg.steps == 4 and cfg.eval_every == 2 and cfg.model.image_size == 128


def test_results_csv_has_a_row_per_logged_step_and_metrics_where_evaluated(run_dir):
    with open(run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == results.COLUMNS and [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r["loss"] for r in rows)
    evaluated = [r["step"] for r in rows if r["AP"]]
    assert evaluated == ["2", "4"] and all(r[m] for r in rows if r["AP"] for m in METRIC_NAMES)


def test_a_step_logged_again_after_a_resume_keeps_its_newest_record():
    records = [
        {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval": {"AP": 0.1}},
        {"step": 2, "loss": 2.5}, {"step": 3, "loss": 1.0},
    ]  # fmt: skip
    rows = results.result_rows(records)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 3.0), (2, 2.5), (3, 1.0)]
    assert rows[1]["AP"] == 0.1


def test_per_class_files_and_drawings(run_dir, tiny_coco):
    categories = json.loads(tiny_coco["val_json"].read_text())["categories"]
    with open(run_dir / "per_class_ap.csv") as f:
        assert len(list(csv.DictReader(f))) == len(categories)
    curves = json.loads((run_dir / "pr_curves.json").read_text())
    assert curves["step"] == 4 and all(len(c["pr50"]) == 101 for c in curves["classes"])
    batch = _not_blank(run_dir / "train_batch.jpg")
    assert batch.shape[1:] == (2 + 256 + 2, 2 + 2 * (256 + 2))  # 2 images of 256 px, one row
    _not_blank(run_dir / "val_predictions.jpg")


def test_plots_exist_decode_and_are_redrawn_by_the_cli(run_dir):
    for name in PLOTS:
        image = _not_blank(run_dir / "plots" / f"{name}.png")
        assert image.shape[1] >= 300 and image.shape[2] >= 600
    (run_dir / "plots" / "lr.png").unlink()
    (run_dir / "results.csv").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "detlite.plot", str(run_dir)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "plots" / "lr.png").is_file() and (run_dir / "results.csv").is_file()
    assert len(done.stdout.split()) == len(PLOTS)


def test_plot_cli_refuses_a_folder_that_is_not_a_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "detlite.plot", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "not a run directory" in done.stderr
    assert "Traceback" not in done.stderr
