"""`weights.load` / `weights.convert` and the `python -m detlite.weights` converter."""

import argparse
import logging
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
effdet = pytest.importorskip("effdet")
timm = pytest.importorskip("timm")

from effdet_ref import randomize_batch_norm  # noqa: E402

from detlite import checkpoint, config, model, weights  # noqa: E402
from detlite.weights.__main__ import main as cli_main  # noqa: E402
from detlite.weights.effdet_format import from_effdet, from_timm_backbone  # noqa: E402

SIZE = 256
PRESET = "tf_efficientdet_d0"


@pytest.fixture(scope="module")
def cfg() -> config.ModelConfig:
    return config.preset(PRESET, image_size=SIZE)  # 90 classes, as effdet's COCO models


@pytest.fixture(scope="module")
def effdet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ecfg = effdet.get_efficientdet_config(PRESET)
    ecfg.image_size = (SIZE, SIZE)
    net = effdet.EfficientDet(ecfg, pretrained_backbone=False)
    randomize_batch_norm(net, seed=1)
    return net.state_dict()


@pytest.fixture(scope="module")
def expected(effdet_state, cfg) -> dict[str, torch.Tensor]:
    converted, unknown = from_effdet(effdet_state, cfg.min_level)
    assert unknown == []
    return converted


def assert_same_tensors(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert ours[key].dtype == torch.float32, key
        assert torch.equal(ours[key], value.float()), key


def _plain(state):
    return state


def _training_checkpoint(state):
    # timm/effdet's training scripts: DDP-prefixed weights next to pickled args and EMA weights.
    return {
        "epoch": 3,
        "args": argparse.Namespace(lr=0.1, model=PRESET),
        "state_dict": {"module." + k: v for k, v in state.items()},
        "state_dict_ema": {k: torch.zeros_like(v) for k, v in state.items()},
    }


def _bench(state):
    # effdet's DetBenchTrain nests the model under `model.` next to its anchor grid.
    return {**{"model." + k: v for k, v in state.items()}, "anchors.boxes": torch.zeros(10, 4)}


@pytest.mark.parametrize("wrap", [_plain, _training_checkpoint, _bench], ids=lambda f: f.__name__)
def test_effdet_pth_round_trip(tmp_path, effdet_state, expected, cfg, wrap):
    path = tmp_path / "effdet.pth"
    torch.save(wrap(effdet_state), path)
    params = weights.load(path, cfg, source="effdet")
    assert set(params) == set(model.init(cfg))
    assert_same_tensors(params, expected)


def test_effdet_safetensors_and_half_precision(tmp_path, effdet_state, expected, cfg):
    from safetensors.torch import save_file

    path = tmp_path / "effdet.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in effdet_state.items()}, path)
    params = weights.load(path, cfg, source="effdet")
    assert_same_tensors(params, {k: v.half().float() for k, v in expected.items()})


def test_timm_classifier_as_backbone(tmp_path, cfg):
    classifier = timm.create_model("tf_efficientnet_b0", pretrained=False)
    randomize_batch_norm(classifier, seed=3)
    path = tmp_path / "tf_efficientnet_b0.pth"
    torch.save(classifier.state_dict(), path)

    params = weights.load(path, cfg, source="timm", part="backbone", seed=5)
    backbone, unknown = from_timm_backbone(classifier.state_dict())
    assert unknown == []
    fresh = model.init(cfg, seed=5)
    assert set(params) == set(fresh)
    for key, value in params.items():
        ref = backbone[key] if key.startswith("backbone.") else fresh[key]
        assert torch.equal(value, ref), key

    with pytest.raises(ValueError, match="--part backbone"):
        weights.load(path, cfg, source="timm")  # part="all": no BiFPN/heads in a classifier


def _add_unknown(state):
    return {**state, "bogus.extra.weight": torch.zeros(3)}, "bogus.extra.weight"


def _drop_one(state):
    key = "fpn.cell.1.fnode.2.after_combine.conv.conv_dw.weight"
    return {k: v for k, v in state.items() if k != key}, "fpn.cells.1.nodes.2.conv.dw.weight"


def _wrong_shape(state):
    key = "box_net.predict.conv_pw.bias"
    return {**state, key: torch.zeros(5)}, "box_head.predict.pw.bias: expected (36,), got (5,)"


@pytest.mark.parametrize(
    "damage", [_add_unknown, _drop_one, _wrong_shape], ids=lambda f: f.__name__
)
def test_mismatch_is_an_error_naming_the_key(effdet_state, cfg, damage):
    state, named = damage(effdet_state)
    with pytest.raises(ValueError) as info:
        weights.convert(state, cfg, source="effdet")
    assert named in str(info.value)
    assert "--partial" in str(info.value)


def test_wrong_source_is_hinted(cfg):
    classifier = timm.create_model("tf_efficientnet_b0", pretrained=False)
    with pytest.raises(ValueError, match="--source timm"):
        weights.convert(classifier.state_dict(), cfg, source="torchvision", part="backbone")


def test_partial_keeps_fresh_class_head(effdet_state, expected, caplog):
    cfg3 = config.preset(PRESET, image_size=SIZE, num_classes=3)
    with pytest.raises(ValueError, match="--num-classes"):
        weights.convert(effdet_state, cfg3, source="effdet")

    with caplog.at_level(logging.WARNING, logger="detlite.weights"):
        params, report = weights.convert_with_report(effdet_state, cfg3, "effdet", strict=False)
    fresh_head = {"class_head.predict.pw.weight", "class_head.predict.pw.bias"}
    assert {k for k, _, _ in report.misshaped} == fresh_head
    assert report.imported == len(params) - 2 and not report.missing and not report.unknown
    assert "class_head.predict.pw.weight" in caplog.text
    fresh = model.init(cfg3, seed=0)
    for key, value in params.items():
        ref = fresh[key] if key in fresh_head else expected[key]
        assert torch.equal(value, ref), key


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.safetensors"])
def test_random_bytes_are_refused_naming_the_file(tmp_path, cfg, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError) as info:
        weights.load(path, cfg, source="effdet")
    assert str(path) in str(info.value)


def test_cli_converts_effdet_checkpoint(tmp_path, effdet_state, expected, capsys):
    src, dst = tmp_path / "effdet_d0.pth", tmp_path / "d0.safetensors"
    torch.save(effdet_state, src)
    cli_main([str(src), str(dst), "--preset", "d0", "--source", "effdet", f"--image-size={SIZE}"])
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0 and f"imported {len(expected)} tensors, skipped 0" in summary

    params, cfg = checkpoint.load(dst)
    assert cfg == config.preset("d0", image_size=SIZE)
    assert_same_tensors(params, expected)


def test_cli_mismatch_exits_with_the_message(tmp_path, effdet_state):
    src, dst = tmp_path / "effdet_d0.pth", tmp_path / "d0_3cls.safetensors"
    torch.save(effdet_state, src)
    args = [str(src), str(dst), "--preset", "d0", "--source", "effdet", "--image-size", str(SIZE),
            "--num-classes", "3"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    failed = subprocess.run(
        [sys.executable, "-m", "detlite.weights", *args], capture_output=True, text=True, env=env
    )
    assert failed.returncode != 0 and not dst.exists()
    assert "class_head.predict.pw.weight" in failed.stderr and "Traceback" not in failed.stderr

    cli_main([*args, "--partial"])
    params, cfg = checkpoint.load(dst)
    assert cfg.num_classes == 3
    assert params["class_head.predict.pw.bias"].shape == (cfg.num_anchors * 3,)


def test_whole_pickled_module_is_refused_naming_its_class(tmp_path, cfg):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Conv2d(3, 8, 3), path)  # the module, not its state dict
    with pytest.raises(ValueError) as info:
        weights.load(path, cfg, source="effdet")
    message = str(info.value)
    assert "torch.nn.modules.conv.Conv2d" in message and "state_dict()" in message
    assert message.count("\n") == 0
