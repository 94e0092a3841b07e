"""Users make mistakes: every command answers each one with a clear line, never a traceback.

Each case runs a real command (train.py, eval.py, the weights converter, the demo) as a
subprocess on small fixtures written here, and checks the exit code (2 usage/configuration,
1 data/checkpoint/runtime), that the message names the culprit, that there is no "Traceback",
and that nothing was written where nothing should be. The processes run two at a time.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from detlite import checkpoint, config, model
from detlite.checkpoint import Checkpointer, TrainingState, TrainingTensors
from detlite.data import CategoryMap
from detlite.train_config import RECIPES

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    command: list[str]
    code: int
    says: list[str]
    env: dict[str, str] = field(default_factory=dict)
    absent: list[Path] = field(default_factory=list)
    """Paths that must not exist afterwards (nothing written before the inputs are valid)."""


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _train_checkpoint(path_dir: Path, cfg: config.ModelConfig, train_cfg) -> Path:
    """A training checkpoint of a (tiny, untrained) run made with `train_cfg`."""
    params = model.init(cfg)
    names = [k for k in params if not k.endswith(("running_mean", "running_var"))]
    tensors = TrainingTensors(params, None, torch.optim.SGD([params[k] for k in names]), names)
    state = TrainingState(step=2, extra={"train_config": json.dumps(_asdict(train_cfg))})
    ckpt = Checkpointer(path_dir, every=2, keep=3, writer=True, log=print)
    ckpt.prepare()
    categories = CategoryMap(ids=(1, 3, 5, 7, 9), names=tuple("abcde"))
    return ckpt.save(2, tensors, cfg, state, categories)


def _asdict(cfg):
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


@pytest.fixture(scope="module")
def fixtures(tiny_coco, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    train_data = json.loads(Path(tiny_coco["train_json"]).read_text())
    images = root / "images"
    shutil.copytree(tiny_coco["train_images"], images, dirs_exist_ok=True)
    shutil.copytree(tiny_coco["val_images"], images, dirs_exist_ok=True)
    good = _write(root / "good.json", train_data)
    val = _write(root / "val.json", json.loads(Path(tiny_coco["val_json"]).read_text()))
    cfg = config.preset("lite0", num_classes=5, image_size=128)
    weights_only = root / "weights.safetensors"
    checkpoint.save(weights_only, model.init(cfg), cfg)
    run_cfg = RECIPES["builtin"][1]
    step_file = _train_checkpoint(root / "run", cfg, run_cfg)
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(step_file.read_bytes()[:5000])
    return {"root": root, "data": train_data, "good": good, "val": val, "images": images,
            "weights": weights_only, "run": root / "run", "truncated": truncated}  # fmt: skip


def _mutated(fx, name: str, change) -> Path:
    data = copy.deepcopy(fx["data"])
    change(data)
    return _write(fx["root"] / f"{name}.json", data)


def _missing_val_image(fx) -> Path:
    data = json.loads(Path(fx["val"]).read_text())
    data["images"][0]["file_name"] = "lost.jpg"
    return _write(fx["root"] / "val-lost.json", data)


def _train(fx, name: str, json_file: Path | str, *extra: str, images: Path | None = None) -> list:
    out = fx["root"] / "out" / name
    return [
        "train.py", "--steps", "1", "--batch-size", "2", "--model.image-size", "128",
        "--data.num-workers", "0", "--compile", "off", "--skip-eval",
        "--data.train-json", str(json_file), "--data.train-images", str(images or fx["images"]),
        "--output", str(out), *extra,
    ]  # fmt: skip


def _eval(fx, *extra: str) -> list:
    return ["eval.py", str(fx["weights"]), "--output", str(fx["root"] / "eval-out"), *extra]


def _cases(fx) -> dict[str, Case]:
    def data_case(name, change, says):
        path = _mutated(fx, name, change)
        return Case(
            _train(fx, name, path), 1, [str(path), *says], absent=[fx["root"] / "out" / name]
        )

    first_image = fx["data"]["images"][0]["id"]
    out = fx["root"] / "out"
    existing_file = _write(fx["root"] / "a-file", "x")
    empty_dir = fx["root"] / "empty"
    empty_dir.mkdir(exist_ok=True)
    converter = [sys.executable, "-m", "detlite.weights"]
    pth = fx["root"] / "random.pth"
    pth.write_bytes(os.urandom(2048))
    cases = {
        # --- data files
        "json missing": Case(_train(fx, "m", fx["root"] / "nope.json"), 2, ["nope.json", "--data.train-json"]),
        "json syntax": Case(_train(fx, "s", _write(fx["root"] / "syntax.json", '{"images": [}')), 1, ["not valid JSON", "line 1, column 13"]),
        "json top level": Case(_train(fx, "t", _write(fx["root"] / "list.json", "[1, 2]")), 1, ["not a JSON object"]),
        "no categories": data_case("nocat", lambda d: d.pop("categories"), ["'categories' is missing"]),
        "no annotations": data_case("noann", lambda d: d.pop("annotations"), ["'annotations' is missing"]),
        "image without file_name": data_case("nofile", lambda d: d["images"][0].pop("file_name"), [f"image {first_image}", "'file_name' missing"]),
        "image without height": data_case("noh", lambda d: d["images"][1].pop("height"), ["'height' missing"]),
        "duplicate image ids": data_case("dupimg", lambda d: d["images"].append(dict(d["images"][0])), ["duplicate image ids", str(first_image)]),
        "bbox of three numbers": data_case("bbox3", lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), ["annotation", "'bbox' [1, 2, 3]"]),
        "bbox as a string": data_case("bboxs", lambda d: d["annotations"][0].update(bbox="1,2,3,4"), ["'bbox' '1,2,3,4'"]),
        "bbox with NaN": data_case("bboxnan", lambda d: d["annotations"][0].update(bbox=[1, float("nan"), 3, 4]), ["'bbox' [1, nan, 3, 4]"]),
        "unknown image id": data_case("unkimg", lambda d: d["annotations"][0].update(image_id=999999), ["'image_id' 999999"]),
        "unknown category": data_case("unkcat", lambda d: d["annotations"][0].update(category_id=42), ["'category_id' 42"]),
        "duplicate annotation ids": data_case("dupann", lambda d: d["annotations"].append(dict(d["annotations"][0])), ["duplicate annotation ids"]),
        "missing image file": data_case("nojpg", lambda d: d["images"][0].update(file_name="gone.jpg"), ["image files are not in", "gone.jpg"]),
        "image folder missing": Case(_train(fx, "nodir", fx["good"], images=fx["root"] / "no-images"), 2, ["no-images", "--data.train-images"]),
        "train json without images": Case(["train.py", "--data.train-json", str(fx["good"]), "--output", str(out / "half")], 2, ["--data.train-json and --data.train-images must be given together"], absent=[out / "half"]),
        "coco recipe without data": Case(["train.py", "coco", "--data.root", str(fx["root"] / "no-coco"), "--output", str(out / "coco")], 2, ["no-coco", "--data.root"], absent=[out / "coco"]),
        # --- flags
        "batch size 0": Case(_train(fx, "b0", fx["good"], "--batch-size", "0"), 2, ["--batch-size must be an integer ≥ 1, got 0"]),
        "batch size -2": Case(_train(fx, "b2", fx["good"], "--batch-size", "-2"), 2, ["--batch-size", "got -2"]),
        "batch size not a number": Case(_train(fx, "bx", fx["good"], "--batch-size", "abc"), 2, ["--batch-size", "abc"]),
        "log every 0": Case(_train(fx, "l0", fx["good"], "--log-every", "0"), 2, ["--log-every"]),
        "checkpoint every 0": Case(_train(fx, "c0", fx["good"], "--checkpoint-every", "0"), 2, ["--checkpoint-every"]),
        "max boxes 0": Case(_train(fx, "mb", fx["good"], "--data.max-boxes", "0"), 2, ["--data.max-boxes"]),
        "steps -1": Case(_train(fx, "sm", fx["good"], "--steps", "-1"), 2, ["--steps", "got -1"]),
        "epochs 0": Case(["train.py", "--epochs", "0", "--output", str(out / "e0")], 2, ["--epochs"], absent=[out / "e0"]),
        "learning rate nan": Case(_train(fx, "lr", fx["good"], "--optim.lr", "nan"), 2, ["--optim.lr", "nan"]),
        "scale range reversed": Case(_train(fx, "sc", fx["good"], "--data.scale-min", "2", "--data.scale-max", "1"), 2, ["--data.scale-min 2.0 is above --data.scale-max 1.0"]),
        "missing cuda device": Case(_train(fx, "cu", fx["good"], "--device", "cuda:99"), 2, ["--device cuda:99"]),
        "nonsense device": Case(_train(fx, "dv", fx["good"], "--device", "banana"), 2, ["--device 'banana'"]),
        "output is a file": Case(_train(fx, "f", fx["good"], "--output", str(existing_file)), 2, ["--output", "is a file"]),
        "unknown preset": Case(_train(fx, "p", fx["good"], "--model.preset", "d9"), 2, ["--model.preset d9", "unknown preset"]),
        "image size too small": Case(_train(fx, "i", fx["good"], "--model.image-size", "64"), 2, ["--model.image-size", "coarsest stride 128"]),
        "output holds a run": Case(_train(fx, "r", fx["good"], "--output", str(fx["run"])), 2, ["already holds a run", "--resume", "--overwrite"]),
        # --- checkpoints
        "resume missing": Case(_train(fx, "rm", fx["good"], "--resume", str(fx["root"] / "gone")), 2, ["--resume", "gone"]),
        "resume truncated": Case(_train(fx, "rt", fx["good"], "--resume", str(fx["truncated"])), 1, ["truncated.safetensors", "truncated or corrupt"]),
        "resume weights-only": Case(_train(fx, "rw", fx["good"], "--resume", str(fx["weights"])), 1, ["weights-only", "cannot resume"]),
        "resume changing the batch": Case(["train.py", "--resume", str(fx["run"]), "--batch-size", "3"], 2, ["cannot change --batch-size (8 → 3)"]),
        "eval missing checkpoint": Case(["eval.py", str(fx["root"] / "gone.safetensors")], 2, ["gone.safetensors", "no such file"]),
        "eval truncated checkpoint": Case(["eval.py", str(fx["truncated"]), "--output", str(out / "ev")], 1, ["truncated or corrupt"]),
        "eval --weights params of weights-only": Case(_eval(fx, "--weights", "params"), 1, ["weights-only", "--weights params"]),
        "eval val json missing": Case(_eval(fx, "--data.val-json", str(fx["root"] / "nope.json"), "--data.val-images", str(fx["images"])), 2, ["nope.json", "--data.val-json"]),
        "eval val images missing": Case(_eval(fx, "--data.val-json", str(fx["val"]), "--data.val-images", str(fx["root"] / "none")), 2, ["none", "--data.val-images"]),
        "eval val image file missing": Case(_eval(fx, "--data.val-json", str(_missing_val_image(fx)), "--data.val-images", str(fx["images"])), 1, ["image files are not in", "lost.jpg"]),
        "eval val json alone": Case(_eval(fx, "--data.val-json", str(fx["val"])), 2, ["--data.val-json and --data.val-images must be given together"]),
        "eval min score 2": Case(_eval(fx, "--min-score", "2"), 2, ["--min-score"]),
        "eval predict missing folder": Case(_eval(fx, "--predict", str(fx["root"] / "photos")), 2, ["--predict", "photos"]),
        "eval predict empty folder": Case(_eval(fx, "--predict", str(empty_dir)), 2, ["no images", "empty"]),
        # --- environment
        "LOCAL_RANK not a number": Case(_train(fx, "e1", fx["good"]), 2, ["LOCAL_RANK='abc'"], env={"LOCAL_RANK": "abc"}),
        "WORLD_SIZE without MASTER_ADDR": Case(_train(fx, "e2", fx["good"]), 2, ["WORLD_SIZE=2", "MASTER_ADDR"], env={"WORLD_SIZE": "2", "RANK": "0"}),
        "RANK outside the world": Case(_train(fx, "e3", fx["good"]), 2, ["RANK=3", "WORLD_SIZE=2"], env={"WORLD_SIZE": "2", "RANK": "3"}),
        # --- the converter and the demo
        "converter source missing": Case([*converter, str(fx["root"] / "x.pth"), str(out / "y.safetensors"), "--preset", "d0", "--source", "effdet"], 2, ["SRC", "x.pth"]),
        "converter random bytes": Case([*converter, str(pth), str(out / "z.safetensors"), "--preset", "d0", "--source", "effdet"], 1, ["random.pth", "not a PyTorch checkpoint"], absent=[out / "z.safetensors"]),
        "converter destination exists": Case([*converter, str(pth), str(fx["weights"]), "--preset", "d0", "--source", "effdet"], 2, ["DST", "exists", "--overwrite"]),
        "converter zero classes": Case([*converter, str(pth), str(out / "w.safetensors"), "--preset", "d0", "--source", "effdet", "--num-classes", "0"], 2, ["--num-classes"]),
        "demo unknown preset": Case([sys.executable, "-m", "detlite.demo", "--preset", "d9"], 2, ["--preset d9"]),
    }  # fmt: skip
    return cases


def _run(case: Case) -> subprocess.CompletedProcess:
    command = case.command if case.command[0] == sys.executable else [sys.executable, *case.command]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **case.env}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in case.env:
            env.pop(name, None)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


CASE_NAMES = [
    "json missing", "json syntax", "json top level", "no categories", "no annotations",
    "image without file_name", "image without height", "duplicate image ids",
    "bbox of three numbers", "bbox as a string", "bbox with NaN", "unknown image id",
    "unknown category", "duplicate annotation ids", "missing image file", "image folder missing",
    "train json without images", "coco recipe without data", "batch size 0", "batch size -2",
    "batch size not a number", "log every 0", "checkpoint every 0", "max boxes 0", "steps -1",
    "epochs 0", "learning rate nan", "scale range reversed", "missing cuda device",
    "nonsense device", "output is a file", "unknown preset", "image size too small",
    "output holds a run", "resume missing", "resume truncated", "resume weights-only",
    "resume changing the batch", "eval missing checkpoint", "eval truncated checkpoint",
    "eval --weights params of weights-only", "eval val json missing", "eval val images missing",
    "eval val image file missing", "eval val json alone", "eval min score 2", "eval predict missing folder",
    "eval predict empty folder", "LOCAL_RANK not a number", "WORLD_SIZE without MASTER_ADDR",
    "RANK outside the world", "converter source missing", "converter random bytes",
    "converter destination exists", "converter zero classes", "demo unknown preset",
]  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(fixtures):
    cases = _cases(fixtures)
    assert sorted(cases) == sorted(CASE_NAMES)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(cases, pool.map(_run, cases.values()), strict=True))
    return cases, results


@pytest.mark.parametrize("name", CASE_NAMES)
def test_mistake_gets_a_clear_error(outcomes, name):
    cases, results = outcomes
    case, result = cases[name], results[name]
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == case.code, output
    for fragment in case.says:
        assert fragment in result.stderr, result.stderr
    for path in case.absent:
        assert not path.exists(), f"{path} was created"
