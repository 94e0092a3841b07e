"""The Checkpointer of a run: interval, retention, best-by-AP, stale temporary files, and where
`--resume` continues from; and checkpoints of older versions still loading."""

import json

import pytest
import torch
from safetensors.torch import save_file

from detlite import checkpoint, config, model
from detlite.checkpoint import Checkpointer, TrainingState, TrainingTensors
from detlite.data import CategoryMap

CATEGORIES = CategoryMap(ids=(1, 3, 5), names=("a", "b", "c"))


@pytest.fixture(scope="module")
def small():
    cfg = config.preset("lite0", num_classes=3, image_size=128)
    return cfg, model.init(cfg, seed=1)


def _tensors(params, ema_shift=None):
    ema = None if ema_shift is None else {k: v + ema_shift for k, v in params.items()}
    names = [k for k in params if not k.endswith(("running_mean", "running_var"))]
    optimizer = torch.optim.SGD([params[k] for k in names], lr=0.1)
    return TrainingTensors(params, ema, optimizer, names)


def _checkpointer(tmp_path, every=2, keep=2, writer=True):
    lines: list[str] = []
    return Checkpointer(tmp_path, every, keep, writer=writer, log=lines.append), lines


def test_interval_and_retention(tmp_path, small):
    cfg, params = small
    ckpt, _ = _checkpointer(tmp_path)
    ckpt.prepare()
    assert [s for s in range(1, 8) if ckpt.due(s, total_steps=6)] == [2, 4]
    state = TrainingState()
    for step in (2, 4, 6):
        ckpt.save(step, _tensors(params), cfg, state, CATEGORIES)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000004.safetensors", "step-00000006.safetensors"]
    restored = checkpoint.load_training(tmp_path / "checkpoints" / names[-1])
    assert restored.state.step == 6 and restored.category_map == CATEGORIES
    assert checkpoint.category_map(tmp_path / "checkpoints" / names[-1], 3) == CATEGORIES


def test_best_follows_the_metric_and_holds_ema_weights(tmp_path, small):
    cfg, params = small
    ckpt, _ = _checkpointer(tmp_path, keep=0)
    ckpt.prepare()
    state = TrainingState()
    tensors = _tensors(params, ema_shift=1.0)
    path = ckpt.save(2, tensors, cfg, state, CATEGORIES, metric=0.3)
    assert path == tmp_path / "checkpoints" / "step-00000002.safetensors" and path.is_file()
    assert state.best_step == 2 and ckpt.is_best(0.31, state) and not ckpt.is_best(0.3, state)
    ckpt.save(4, tensors, cfg, state, CATEGORIES, metric=0.2)
    assert (state.best_metric, state.best_step) == (0.3, 2)
    assert ckpt.newest() == tmp_path / "checkpoints" / "step-00000004.safetensors"
    meta = checkpoint.read_metadata(tmp_path / "best.safetensors")
    assert meta["step"] == "2"
    best, _ = checkpoint.load(tmp_path / "best.safetensors")
    assert all(torch.equal(best[k], tensors.ema[k]) for k in best)
    # The end of a run that evaluated before: a final save without a metric keeps the best.
    ckpt.save(6, tensors, cfg, state, CATEGORIES, best_if_unevaluated=True)
    assert checkpoint.read_metadata(tmp_path / "best.safetensors")["step"] == "2"
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3  # keep=0 keeps all


def test_a_run_that_never_evaluated_gets_its_final_weights_as_best(tmp_path, small):
    cfg, params = small
    ckpt, _ = _checkpointer(tmp_path)
    ckpt.prepare()
    ckpt.save(3, _tensors(params), cfg, TrainingState(), CATEGORIES, best_if_unevaluated=True)
    assert checkpoint.read_metadata(tmp_path / "best.safetensors")["step"] == "3"


def test_other_ranks_keep_the_bookkeeping_but_write_nothing(tmp_path, small):
    cfg, params = small
    ckpt, _ = _checkpointer(tmp_path, writer=False)
    ckpt.prepare()
    state = TrainingState()
    ckpt.save(2, _tensors(params), cfg, state, CATEGORIES, metric=0.5)
    assert state.best_step == 2 and list(tmp_path.iterdir()) == []


def test_prepare_removes_files_of_interrupted_writes_only(tmp_path, small):
    cfg, params = small
    ckpt, lines = _checkpointer(tmp_path)
    ckpt.prepare()
    ckpt.save(2, _tensors(params), cfg, TrainingState(), CATEGORIES)
    stale = [
        tmp_path / "checkpoints" / ".step-00000004.safetensors.abc123.tmp",
        tmp_path / ".best.safetensors.xyz.tmp",
    ]
    keep = [tmp_path / "checkpoints" / "notes.txt", tmp_path / "metrics.jsonl"]
    for path in stale + keep:
        path.write_bytes(b"partial")
    ckpt.prepare()
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert (tmp_path / "checkpoints" / "step-00000002.safetensors").exists()
    assert lines == ["removed 2 unfinished checkpoint file(s) of an interrupted write"]


def test_restore_takes_the_newest_readable_checkpoint(tmp_path, small):
    cfg, params = small
    ckpt, _ = _checkpointer(tmp_path, keep=0)
    ckpt.prepare()
    for step in (2, 4):
        ckpt.save(step, _tensors(params), cfg, TrainingState(), CATEGORIES)
    newest = tmp_path / "checkpoints" / "step-00000004.safetensors"
    assert checkpoint.restore(tmp_path, print)[0] == newest
    newest.write_bytes(newest.read_bytes()[:1000])  # killed mid-copy, say
    lines: list[str] = []
    path, restored = checkpoint.restore(tmp_path, lines.append)
    assert path.name == "step-00000002.safetensors" and restored.state.step == 2
    assert len(lines) == 1 and "skipping step-00000004.safetensors" in lines[0]
    (tmp_path / "checkpoints" / "step-00000002.safetensors").write_bytes(b"junk")
    with pytest.raises(checkpoint.CheckpointError, match="none of its 2 step checkpoints"):
        checkpoint.restore(tmp_path, lines.append)
    with pytest.raises(FileNotFoundError, match="no such file"):
        checkpoint.restore(tmp_path / "missing", lines.append)


def test_checkpoints_with_retired_runtime_fields_still_load(tmp_path, small):
    """detlite 0.1.0 stored the focal-loss and NMS implementation in the model config and the
    category map inside the training state; such files load, and the fields are dropped."""
    cfg, params = small
    old = config.to_dict(cfg)
    old["loss"]["fused"] = False
    old["postprocess"]["nms"] = "torchvision"
    assert config.from_dict(old) == cfg
    path = tmp_path / "old.safetensors"
    tensors = {k: v.contiguous() for k, v in params.items()}
    save_file(
        tensors, str(path), metadata={"format": checkpoint.FORMAT, "model_config": json.dumps(old)}
    )
    loaded, loaded_cfg = checkpoint.load(path)
    assert loaded_cfg == cfg and all(torch.equal(loaded[k], params[k]) for k in params)
    old_train = tmp_path / "old-train.safetensors"
    extra = {"category_map": CATEGORIES.to_json()}
    state = json.dumps({"step": 7, "epoch": 0, "best_metric": 0.1, "scaler": {}, "extra": extra})
    meta = {
        "format": checkpoint.TRAIN_FORMAT,
        "model_config": json.dumps(old),
        "train_state": state,
    }
    save_file({f"params/{k}": v for k, v in tensors.items()}, str(old_train), metadata=meta)
    restored = checkpoint.load_training(old_train)
    assert restored.state.step == 7 and restored.state.best_step == -1
    assert restored.category_map == CATEGORIES
    assert checkpoint.category_map(old_train, 3) == CATEGORIES
    with pytest.raises(ValueError, match="unknown model config fields"):
        config.from_dict({**old, "fused_ops": True})
