"""safetensors checkpoints: exact round trip, config in the metadata, corrupt files refused."""

import pytest
import torch

from detlite import checkpoint, config, model


@pytest.fixture(scope="module")
def small():
    cfg = config.preset("lite0", num_classes=5, image_size=128)
    return cfg, model.init(cfg, seed=3)


def test_round_trip_gives_identical_outputs(tmp_path, small):
    cfg, params = small
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, params, cfg)
    loaded, loaded_cfg = checkpoint.load(path)
    assert loaded_cfg == cfg
    assert set(loaded) == set(params) and all(torch.equal(loaded[k], params[k]) for k in params)
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a = model.forward(params, images, cfg)
        b = model.forward(loaded, images, loaded_cfg)
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert torch.equal(x, y)


def test_truncated_file_is_refused(tmp_path, small):
    cfg, params = small
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, params, cfg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        checkpoint.load(path)


def test_foreign_safetensors_points_to_the_converter(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(checkpoint.CheckpointError, match=r"detlite\.weights"):
        checkpoint.load(path)


def test_tensors_that_do_not_fit_the_config_are_refused(tmp_path, small):
    cfg, params = small
    path = tmp_path / "model.safetensors"
    bad = dict(params)
    bad["class_head.predict.pw.bias"] = torch.zeros(3)
    checkpoint.save(path, bad, cfg)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"wrong shape class_head\.predict\.pw\.bias"
    ):
        checkpoint.load(path)


def test_failed_save_leaves_previous_file_intact(tmp_path, small):
    cfg, params = small
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, params, cfg)
    before = path.read_bytes()
    with pytest.raises((TypeError, ValueError, AttributeError)):
        checkpoint.save(path, {"a": torch.zeros(2), "b": "not a tensor"}, cfg)  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
