"""Key renaming from torchvision's `efficientnet_b0` .. `efficientnet_b7` to `backbone.*` names.

torchvision's layout: `features.0` is the stem (`.0` conv, `.1` BN), `features.1` .. `features.7`
are EfficientNet stages 0..6, `features.8` is the classifier's 1x1 conv and `classifier.1` its
linear layer (both dropped). Inside a block, `block.{j}` numbers the sub-layers in order —
[expand,] depthwise, squeeze-excitation, project — so `j` means something different in a block
that expands (4 sub-layers) and in stage 0's depthwise-separable blocks (3 sub-layers).

Which detlite backbone these weights fit: torchvision pads symmetrically (`tf_padding=False`) and
builds B0-B4 with BatchNorm eps 1e-5 but B5-B7 with eps 1e-3. timm's `efficientnet_b0` (the
backbone of the `efficientdet_d0` preset) has the same layout, padding and eps 1e-5, so torchvision
B0 weights fit that preset exactly. The TF presets (`tf_efficientdet_d*`) pad TF-'same' and use
eps 1e-3: the shapes fit, the numbers would be slightly off, and `config_mismatch` says so.
"""

from __future__ import annotations

import re

from torch import Tensor

from ..config import BackboneConfig

_TAIL = re.compile(r"^(features\.8\.|classifier\.)|num_batches_tracked$")
_STEM = re.compile(r"^features\.0\.([01])\.(weight|bias|running_mean|running_var)$")
_BLOCK = re.compile(r"^features\.([1-7])\.(\d+)\.block\.(\d+)\.(.+)$")
_EXPANDING = ("expand", "dw", "se", "project")
_SEPARABLE = ("dw", "se", "project")
# Inside a Conv2dNormActivation, `.0` is the conv and `.1` the BN; the SE module names its convs.
_CONV_BN = re.compile(r"^([01])\.(weight|bias|running_mean|running_var)$")
_SE = {"fc1.weight": "reduce.weight", "fc1.bias": "reduce.bias",
       "fc2.weight": "expand.weight", "fc2.bias": "expand.bias"}  # fmt: skip
# Last-stage channels from B5 on (320 x 1.6 and up), where torchvision switches BN eps to 1e-3.
_B5_LAST_CHANNELS = 512


def from_torchvision(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """torchvision EfficientNet keys → `backbone.*`. Returns (renamed, keys it did not know)."""
    # A block expands iff it has a fourth sub-layer (the projection after expand, dw, se).
    expanding = {m.group(1, 2) for k in state_dict if (m := _BLOCK.match(k)) and m.group(3) == "3"}
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if _TAIL.search(key):
            continue
        if m := _STEM.match(key):
            layer = "conv" if m.group(1) == "0" else "bn"
            out[f"backbone.stem.{layer}.{m.group(2)}"] = value
            continue
        name = _block_name(key, expanding)
        if name is None:
            unknown.append(key)
        else:
            out[name] = value
    return out, unknown


def _block_name(key: str, expanding: set[tuple[str, str]]) -> str | None:
    m = _BLOCK.match(key)
    if m is None:
        return None
    stage, index, sub, rest = m.groups()
    layers = _EXPANDING if (stage, index) in expanding else _SEPARABLE
    if int(sub) >= len(layers):
        return None
    prefix = f"backbone.blocks.{int(stage) - 1}.{index}.{layers[int(sub)]}"
    if layers[int(sub)] == "se":
        return f"{prefix}.{_SE[rest]}" if rest in _SE else None
    conv_bn = _CONV_BN.match(rest)
    if conv_bn is None:
        return None
    layer = "conv" if conv_bn.group(1) == "0" else "bn"
    return f"{prefix}.{layer}.{conv_bn.group(2)}"


def torchvision_bn_eps(renamed: dict[str, Tensor]) -> float:
    """The BatchNorm eps torchvision built these weights with (from the last stage's width)."""
    last = renamed.get("backbone.blocks.6.0.project.conv.weight")
    channels = last.shape[0] if last is not None else 0
    return 1e-3 if channels >= _B5_LAST_CHANNELS else 1e-5


def config_mismatch(cfg: BackboneConfig, renamed: dict[str, Tensor]) -> str | None:
    """Why `cfg` would not compute what torchvision computes with these weights, or None."""
    problems = []
    if cfg.tf_padding:
        problems.append("torchvision pads symmetrically but the config has tf_padding=True")
    eps = torchvision_bn_eps(renamed)
    if cfg.bn_eps != eps:
        problems.append(f"torchvision used BatchNorm eps {eps:g} but the config has {cfg.bn_eps:g}")
    if not problems:
        return None
    return (
        "; ".join(problems) + " — the weights load, but outputs differ from torchvision's until "
        f"fine-tuned. An exact match is a backbone with tf_padding=False, bn_eps={eps:g} "
        "(for B0: the `efficientdet_d0` preset)"
    )
