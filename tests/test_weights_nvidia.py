"""Importing NVIDIA DeepLearningExamples EfficientDet-PyTorch checkpoints (`source="nvidia"`).

NVIDIA's model code is not installable; its layout is written down from the facts in
tests/nvidia_layout.py. Numerically, an effdet efficientdet_d0 with NVIDIA's backbone BatchNorm
eps (the one difference between the two graphs) is written in NVIDIA's layout and imported;
`bench/nvidia_parity.py` runs NVIDIA's own code beside detlite where a checkout of it exists.
"""

import argparse
import logging
import math

import pytest
import torch

effdet = pytest.importorskip("effdet")

import nvidia_layout  # noqa: E402
from effdet_ref import randomize_batch_norm  # noqa: E402

from detlite import checkpoint, config, model, weights  # noqa: E402
from detlite.weights.__main__ import main as cli_main  # noqa: E402

SIZE = 256
D0 = "nvidia_efficientdet_d0"


@pytest.fixture(scope="module")
def d0_state() -> dict[str, torch.Tensor]:
    return nvidia_layout.checkpoint_state(D0)


def test_facts_layout_has_nvidia_parameter_count():
    # NVIDIA's published count for efficientdet_d0 with the 96-class head: the layout the other
    # tests hold detlite to is NVIDIA's.
    shapes = {**nvidia_layout.backbone_shapes(0), **nvidia_layout.head_and_fpn_shapes(D0)}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    count = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(stats))
    assert count == 3_881_273


@pytest.mark.parametrize("preset", config.NVIDIA_PRESETS)
def test_every_tensor_of_every_preset_maps(preset):
    cfg = config.preset(preset)
    state = nvidia_layout.checkpoint_state(preset)
    params, report = weights.convert_with_report(state, cfg, source="nvidia")
    assert report.skipped == 0
    assert report.imported == len(model.init(cfg)) == len(params)


def test_padded_class_head_keeps_channel_a96_plus_c_as_a90_plus_c(d0_state):
    cfg = config.preset(D0, image_size=SIZE)
    state = dict(d0_state)
    channels = 9 * nvidia_layout.PADDED_CLASSES
    state["model.class_net.predict.conv_pw.bias"] = torch.arange(channels, dtype=torch.float32)
    weight = torch.arange(channels, dtype=torch.float32)[:, None, None, None].expand(-1, 64, 1, 1)
    state["model.class_net.predict.conv_pw.weight"] = weight.clone()
    params = weights.convert(state, cfg, source="nvidia")
    expected = torch.tensor([a * 96 + c for a in range(9) for c in range(90)], dtype=torch.float32)
    assert torch.equal(params["class_head.predict.pw.bias"], expected)
    assert torch.equal(params["class_head.predict.pw.weight"][:, 0, 0, 0], expected)


def test_squeeze_excitation_linear_becomes_1x1_conv(d0_state):
    cfg = config.preset(D0, image_size=SIZE)
    params = weights.convert(d0_state, cfg, source="nvidia")
    for nvidia, ours in [("squeeze", "reduce"), ("expand", "expand")]:
        linear = d0_state[f"model.backbone.mbconv_blocks.3.squeeze_and_excitation.{nvidia}.weight"]
        conv = params[
            f"backbone.blocks.2.0.se.{ours}.weight"
        ]  # block 3 = stage 2's first (1 + 2 before it)
        assert conv.shape == (*linear.shape, 1, 1)
        assert torch.equal(conv[:, :, 0, 0], linear)


@pytest.fixture(scope="module")
def effdet_d0_with_nvidia_eps():
    """effdet's efficientdet_d0 with BatchNorm eps 1e-3 in the backbone: NVIDIA's graph."""
    ecfg = effdet.get_efficientdet_config("efficientdet_d0")
    ecfg.image_size = (SIZE, SIZE)
    torch.manual_seed(0)
    net = effdet.EfficientDet(ecfg, pretrained_backbone=False)
    randomize_batch_norm(net, seed=2)
    for m in net.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
            # Small variances, so that eps 1e-3 vs 1e-5 shows (the gain stays about 1).
            m.running_var.mul_(0.02)
            m.weight.data.mul_(0.15)
    return net.eval()


def _as_nvidia_file(net) -> dict:
    state = net.state_dict()
    backbone = {
        k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
    }
    nvidia = {
        "backbone." + k: v for k, v in nvidia_layout.timm_backbone_as_nvidia(backbone).items()
    }
    nvidia.update({k: v for k, v in state.items() if not k.startswith("backbone.")})
    for name in ("class_net.predict.conv_pw.weight", "class_net.predict.conv_pw.bias"):
        by_anchor = nvidia[name].reshape(9, 90, *nvidia[name].shape[1:])
        junk = torch.full((9, 6, *by_anchor.shape[2:]), 1e3)  # padding classes: must be cut
        nvidia[name] = torch.cat([by_anchor, junk], 1).reshape(9 * 96, *by_anchor.shape[2:])
    wrapped = {"model." + k: v for k, v in nvidia.items()}
    return {"epoch": 9, "arch": "efficientdet_d0", "version": 2, "state_dict": wrapped}


def test_imported_model_computes_what_nvidia_graph_computes(tmp_path, effdet_d0_with_nvidia_eps):
    net = effdet_d0_with_nvidia_eps
    path = tmp_path / "model_best.pth.tar"
    torch.save(_as_nvidia_file(net), path)
    cfg = config.preset(D0, image_size=SIZE)
    params = weights.load(path, cfg, source="nvidia")
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_classes, ref_boxes = net(images)
        classes, boxes = model.forward(params, images, cfg)
    for ours, theirs in zip(classes + boxes, ref_classes + ref_boxes, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # The control: detlite's own efficientdet_d0 (backbone eps 1e-5) differs, by far more.
    other = config.preset("efficientdet_d0", image_size=SIZE)
    with torch.no_grad():
        outputs = model.forward(weights.load(path, other, source="nvidia"), images, other)
    pairs = zip(outputs[0] + outputs[1], ref_classes + ref_boxes, strict=True)
    differences = [(ours - theirs).abs().max() for ours, theirs in pairs]
    assert max(differences) > 1e-4


def _module(state):
    return {"module." + k.removeprefix("model."): v for k, v in state.items() if "anchors" not in k}


def _bare(state):  # utils/checkpoint_processing.py: the EMA weights without prefixes
    return {k.removeprefix("model."): v for k, v in state.items() if "anchors" not in k}


class _Unpicklable:  # e.g. an optimizer object the weights-only unpickler refuses
    def __init__(self):
        self.lr = 0.1


def _training_file(state):
    return {
        "epoch": 10,
        "arch": D0,
        "version": 2,
        "state_dict": state,
        "state_dict_ema": {k: v + 1 for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}], "extra": _Unpicklable()},
        "args": argparse.Namespace(model=D0, fused_focal_loss=True),
        "metric": 0.34,
    }


@pytest.mark.parametrize("wrap", [_module, _bare, _training_file], ids=lambda f: f.__name__)
def test_checkpoint_forms_load(tmp_path, d0_state, wrap, caplog):
    cfg = config.preset(D0, image_size=SIZE)
    path = tmp_path / "checkpoint_10.pth.tar"
    torch.save(wrap(d0_state), path)
    with caplog.at_level(logging.WARNING):
        params = weights.load(path, cfg, source="nvidia")
    stem = "backbone.stem.conv.weight"
    assert torch.equal(params[stem], d0_state["model.backbone.input_conv.0.weight"])
    if wrap is _training_file:
        assert "_Unpicklable" in caplog.text and "not loaded for safety" in caplog.text
        ema = weights.load(path, cfg, source="nvidia", ema=True)
        assert torch.equal(ema[stem], params[stem] + 1)
    else:
        with pytest.raises(ValueError, match="holds no EMA weights"):
            weights.load(path, cfg, source="nvidia", ema=True)


def test_wrong_preset_lists_the_mismatches_and_names_the_nvidia_presets(d0_state):
    with pytest.raises(ValueError) as info:
        weights.convert(d0_state, config.preset("nvidia_efficientdet_d1"), source="nvidia")
    text = str(info.value)
    assert "wrong shape  backbone.blocks.1.1.project.conv.weight" in text  # blocks shift stage
    assert "missing      backbone.blocks.6.1.project.conv.weight" in text  # B1's 23 blocks > 16
    assert "wrong shape  fpn.cells.0.nodes.0.conv.dw.weight" in text  # 64 vs 88 BiFPN channels
    assert "the file has 16 backbone blocks but the config's backbone" in text
    with pytest.raises(ValueError, match="nvidia_efficientdet_d0"):
        weights.convert(d0_state, config.preset("tf_efficientdet_d0"), source="nvidia")


def test_class_count_the_head_cannot_hold_is_explained(d0_state):
    cfg = config.preset(D0, num_classes=100, image_size=SIZE)
    with pytest.raises(ValueError, match=r"trained for 89\.\.96 classes"):
        weights.convert(d0_state, cfg, source="nvidia")
    # A fresh head for another class count, the rest from the file.
    three = config.preset(D0, num_classes=3, image_size=SIZE)
    _, report = weights.convert_with_report(d0_state, three, source="nvidia", strict=False)
    assert report.misshaped and all(
        k.startswith("class_head.predict") for k, *_ in report.misshaped
    )


def test_source_is_guessed_and_hinted(d0_state):
    assert weights.guess_source(list(d0_state)) == "nvidia"
    with pytest.raises(ValueError, match="--source nvidia"):
        weights.convert(d0_state, config.preset(D0), source="effdet")


def test_bare_backbone_classifier_as_backbone():
    shapes = nvidia_layout.backbone_shapes(0, prefix="")
    shapes |= {"features_conv.0.weight": (1280, 320, 1, 1), "fc.weight": (1000, 1280)}
    state = {k: torch.randn(s) if s else torch.tensor(1) for k, s in shapes.items()}
    cfg = config.preset(D0, num_classes=3, image_size=SIZE)
    params, report = weights.convert_with_report(state, cfg, source="nvidia", part="backbone")
    assert report.skipped == 0
    assert report.imported == sum(k.startswith("backbone.") for k in params)


def test_cli_writes_coco_categories_for_a_90_class_import(tmp_path, d0_state, capsys):
    src, dst = tmp_path / "model_best.pth.tar", tmp_path / "d0.safetensors"
    torch.save(_training_file(d0_state), src)
    argv = [
        str(src),
        str(dst),
        "--preset",
        D0,
        "--source",
        "nvidia",
        "--ema",
        "--image-size",
        "256",
    ]
    assert cli_main(argv) == 0
    assert "imported" in capsys.readouterr().out
    categories = checkpoint.category_map(dst, 90)
    assert categories.ids == tuple(range(1, 91))
    assert categories.names[0] == "person" and categories.names[89] == "toothbrush"
    assert categories.names[11] == "unused_12"  # COCO id 12 has no category
    params, cfg = checkpoint.load(dst)
    assert cfg.name == D0 and torch.equal(
        params["backbone.stem.conv.weight"], d0_state["model.backbone.input_conv.0.weight"] + 1
    )
