"""torchvision EfficientNet weights imported into detlite give torchvision's own features.

The matching detlite config is the `efficientdet_d0` preset: its backbone is timm's
`efficientnet_b0` — symmetric padding and BatchNorm eps 1e-5, exactly as torchvision builds
`efficientnet_b0` (torchvision switches to eps 1e-3 only from B5 on).
"""

import dataclasses
import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torchvision = pytest.importorskip("torchvision")

from effdet_ref import randomize_batch_norm  # noqa: E402

from detlite import config, model, weights  # noqa: E402
from detlite.weights.from_torchvision import torchvision_bn_eps  # noqa: E402

SIZE = 256
# torchvision's `features` children: 0 = stem, 1..7 = stages 0..6, 8 = classifier conv.
# detlite's features at strides 8/16/32 are the outputs of stages 2, 4, 6.
TORCHVISION_FEATURE_INDICES = (3, 5, 7)


def torchvision_features(net: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    out, x = [], images
    for i, layer in enumerate(net.features):
        x = layer(x)
        if i in TORCHVISION_FEATURE_INDICES:
            out.append(x)
        if i == max(TORCHVISION_FEATURE_INDICES):
            return out
    raise AssertionError("torchvision network has fewer stages than expected")


def max_relative_error(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours, ref, strict=True))


@pytest.fixture(scope="module")
def b0() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.efficientnet_b0(weights=None).eval()
    randomize_batch_norm(net, seed=1)
    return net


def test_b0_features_match_torchvision(b0):
    cfg = config.preset("efficientdet_d0", image_size=SIZE)
    assert cfg.backbone.bn_eps == b0.features[0][1].eps == 1e-5
    params, report = weights.convert_with_report(b0.state_dict(), cfg, "torchvision", "backbone")
    n_backbone = sum(k.startswith("backbone.") for k in params)
    assert report.imported == n_backbone and report.skipped == 0

    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.backbone(params, images, cfg)
        theirs = torchvision_features(b0, images)
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    err = max_relative_error(ours, theirs)
    print(f"torchvision efficientnet_b0 vs detlite efficientdet_d0 backbone: max rel err {err:.2e}")
    assert err <= 1e-4


def test_tf_preset_warns_about_padding_and_eps(b0, caplog):
    cfg = config.preset("tf_efficientdet_d0", image_size=SIZE)
    with caplog.at_level(logging.WARNING, logger="detlite.weights"):
        weights.convert(b0.state_dict(), cfg, "torchvision", "backbone")
    assert "tf_padding=True" in caplog.text and "eps" in caplog.text


def test_b5_maps_completely_and_uses_eps_1e3():
    net = torchvision.models.efficientnet_b5(weights=None)
    eps = net.features[0][1].eps
    assert eps == 1e-3
    # No non-TF B5 preset exists: take the D5 layout with torchvision's padding and eps.
    base = config.preset("tf_efficientdet_d5", image_size=SIZE)
    backbone = dataclasses.replace(base.backbone, tf_padding=False, bn_eps=eps)
    cfg = dataclasses.replace(base, backbone=backbone)
    renamed, unknown = weights.rename(net.state_dict(), cfg, "torchvision")
    assert unknown == []
    assert torchvision_bn_eps(renamed) == eps
    expected = {k: v.shape for k, v in model.init(cfg).items() if k.startswith("backbone.")}
    assert {k: v.shape for k, v in renamed.items()} == expected
