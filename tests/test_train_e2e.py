"""train → checkpoint → exact resume → eval, end to end on a tiny dataset (CPU)."""

import json
import math
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO

import train as train_cli
from detlite import checkpoint, evaluate
from detlite.trainer import train


def _args(tiny, out, *extra):
    return [
        "builtin",
        "--steps", "4",
        "--batch-size", "2",
        "--model.image-size", "128",
        "--data.train-json", str(tiny["train_json"]),
        "--data.train-images", str(tiny["train_images"]),
        "--data.val-json", str(tiny["val_json"]),
        "--data.val-images", str(tiny["val_images"]),
        "--data.num-workers", "0",
        "--log-every", "1",
        "--checkpoint-every", "2",
        "--optim.ema-decay", "0.9",
        "--output", str(out),
        *extra,
    ]  # fmt: skip


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def first_run(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "a"
    summary = train(train_cli.parse(_args(tiny_coco, out)))
    return out, summary


def test_train_writes_checkpoints_metrics_and_evaluates(first_run):
    out, summary = first_run
    assert summary["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000002.safetensors",
        "step-00000004.safetensors",
    ]
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    assert math.isfinite(summary["metrics"]["AP"]) and 0.0 <= summary["metrics"]["AP"] <= 1.0
    results = json.loads((out / "eval-step4.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    # The best weights are a plain checkpoint that rebuilds the model.
    _, cfg = checkpoint.load(out / "best.safetensors")
    assert cfg.num_classes == 5 and cfg.image_size == (128, 128)


def test_resume_continues_exactly(first_run, tiny_coco, tmp_path):
    out, _ = first_run
    resumed = tmp_path / "b"
    train(
        train_cli.parse(
            _args(
                tiny_coco,
                resumed,
                "--resume",
                str(out / "checkpoints" / "step-00000002.safetensors"),
                "--skip-eval",
            )
        )
    )
    assert _losses(resumed) == {3: _losses(out)[3], 4: _losses(out)[4]}
    a = checkpoint.load_training(out / "checkpoints" / "step-00000004.safetensors")
    b = checkpoint.load_training(resumed / "checkpoints" / "step-00000004.safetensors")
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)


def test_eval_cli_writes_metrics_and_coco_results(first_run, tiny_coco, tmp_path):
    out, summary = first_run
    metrics = evaluate.run(
        evaluate.EvalConfig(
            checkpoint=out / "checkpoints" / "step-00000004.safetensors",
            data=train_cli.parse(_args(tiny_coco, out)).data,
            output=tmp_path / "eval",
            draw=2,
        )
    )
    assert metrics == pytest.approx(summary["metrics"])  # EMA weights, as the training eval
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    coco = COCO(str(tiny_coco["val_json"]))
    coco.loadRes(str(tmp_path / "eval" / "detections.json"))  # valid COCO results file
    drawn = sorted(p.name for p in (tmp_path / "eval" / "drawn").iterdir())
    val = json.loads(tiny_coco["val_json"].read_text())["images"]
    assert drawn == sorted(Path(i["file_name"]).name for i in val[:2])  # the inputs' own names
    per_class = (tmp_path / "eval" / "per_class_ap.csv").read_text().splitlines()
    assert per_class[0] == "category_id,name,instances,AP,AP50"
    assert len(per_class) == 1 + len(json.loads(tiny_coco["val_json"].read_text())["categories"])


def test_each_evaluation_gets_its_own_folder_beside_the_checkpoint(first_run, tiny_coco, tmp_path):
    out, _ = first_run
    checkpoint_copy = tmp_path / "run" / "best.safetensors"
    checkpoint_copy.parent.mkdir()
    checkpoint_copy.write_bytes((out / "best.safetensors").read_bytes())
    data = train_cli.parse(_args(tiny_coco, out)).data
    for _ in range(2):
        evaluate.run(evaluate.EvalConfig(checkpoint=checkpoint_copy, data=data))
    folders = sorted(p.name for p in checkpoint_copy.parent.iterdir() if p.is_dir())
    assert folders == ["eval-best", "eval-best-2"]  # the second did not replace the first
    assert all((checkpoint_copy.parent / f / "metrics.json").is_file() for f in folders)


def test_resume_refuses_corrupt_and_weights_only_files(first_run, tiny_coco, tmp_path):
    out, _ = first_run
    broken = tmp_path / "broken.safetensors"
    data = (out / "checkpoints" / "step-00000004.safetensors").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        train(train_cli.parse(_args(tiny_coco, tmp_path / "c", "--resume", str(broken))))
    with pytest.raises(checkpoint.CheckpointError, match="cannot resume"):
        train(
            train_cli.parse(
                _args(tiny_coco, tmp_path / "d", "--resume", str(out / "best.safetensors"))
            )
        )


def test_missing_data_names_the_flag(tmp_path):
    cfg = train_cli.parse(
        ["builtin", "--data.root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run")]
    )
    with pytest.raises(FileNotFoundError, match="--data"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing created before the inputs are valid


def test_retired_fused_ops_flag_is_accepted_and_explained():
    from detlite.run import _deprecation_notes

    assert _deprecation_notes(train_cli.parse([])) == []
    (note,) = _deprecation_notes(train_cli.parse(["--model.no-fused-ops"]))
    assert "--model.no-fused-ops has no effect" in note


def test_overwrite_replaces_the_earlier_run(first_run, tiny_coco, tmp_path):
    import shutil

    out, _ = first_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    train(train_cli.parse(_args(tiny_coco, again, "--overwrite", "--steps", "2", "--skip-eval")))
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == [
        "step-00000002.safetensors"
    ]
    assert sorted(_losses(again)) == [1, 2]  # metrics of the earlier run are gone
    assert not (again / "eval-step4.json").exists()
    assert checkpoint.read_metadata(again / "best.safetensors")["step"] == "2"


def test_random_backbone_is_said_loudly():
    from detlite import config
    from detlite.init_weights import initial_params

    cfg = train_cli.parse(["coco"])
    notes: list[str] = []
    initial_params(cfg, config.preset("d0", num_classes=3, image_size=128), notes)
    assert notes and notes[0].startswith("warning: the backbone starts from random weights")
    assert "--model.backbone-weights" in notes[0]


def test_skipped_fp16_steps_are_counted(tiny_coco, tmp_path, capsys):
    """fp16 from GradScaler's initial scale 2**16 overflows at first, and each skipped step
    halves the scale (it grows only after 2000 good steps): the count shown must be
    log2(initial / final scale) of the saved scaler."""
    out = tmp_path / "fp16"
    summary = train(
        train_cli.parse(_args(tiny_coco, out, "--precision.dtype", "fp16", "--skip-eval"))
    )
    state = checkpoint.load_training(out / "checkpoints" / "step-00000004.safetensors").state
    halvings = round(math.log2(65536.0 / state.scaler["scale"]))
    assert halvings >= 1  # a step was skipped: the count is tested, not just zero
    assert summary["warnings"].get("skipped fp16 steps", 0) == halvings
    assert f"warnings: skipped fp16 steps {halvings}" in capsys.readouterr().out


def test_dropped_boxes_are_counted_on_the_dashboard(tiny_coco, tmp_path):
    data = json.loads(tiny_coco["train_json"].read_text())
    data["annotations"][0]["bbox"][2] = 0.5  # under 1 px wide: dropped at loading
    broken = tmp_path / "train.json"
    broken.write_text(json.dumps(data))
    args = _args(tiny_coco, tmp_path / "run", "--steps", "1", "--skip-eval")
    args[args.index("--data.train-json") + 1] = str(broken)
    summary = train(train_cli.parse(args))
    assert summary["warnings"] == {"dropped boxes": 1}
