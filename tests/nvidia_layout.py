"""NVIDIA EfficientDet-PyTorch state dicts, built from the published facts (tests only).

NVIDIA's model code is not installable, so these helpers write down its layout independently of
detlite's importer (never by running detlite's mapping backwards): the backbone from NVIDIA's
EfficientNet definition (its stage table, width/depth coefficients, channel rounding, squeeze
width and key names), the BiFPN and heads from effdet 0.4.1, whose names and shapes NVIDIA's are.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

# NVIDIA's EfficientNet-B0 stages: (kernel, stride, repeats, in, out, expand ratio).
STAGES = [
    (3, 1, 1, 32, 16, 1), (3, 2, 2, 16, 24, 6), (5, 2, 2, 24, 40, 6), (3, 2, 3, 40, 80, 6),
    (5, 1, 3, 80, 112, 6), (5, 2, 4, 112, 192, 6), (3, 1, 1, 192, 320, 6),
]  # fmt: skip
COEFFS = {
    0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2), 3: (1.2, 1.4),
    4: (1.4, 1.8), 5: (1.6, 2.2), 6: (1.8, 2.6), 7: (2.0, 3.1),
}  # fmt: skip
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
PADDED_CLASSES = 96  # 90 rounded up to a multiple of 8 by --fused-focal-loss


def scale_width(channels: int, coeff: float) -> int:
    scaled = channels * coeff
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def backbone_shapes(variant: int, prefix: str = "backbone.") -> dict[str, tuple[int, ...]]:
    """Every backbone tensor of NVIDIA's EfficientNet-B<variant> with its shape."""
    width, depth = COEFFS[variant]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(name: str, out: int, in_per_group: int, kernel: int) -> None:
        shapes[f"{prefix}{name}.0.weight"] = (out, in_per_group, kernel, kernel)
        for t in BN:
            shapes[f"{prefix}{name}.1.{t}"] = () if t == "num_batches_tracked" else (out,)

    conv_bn("input_conv", scale_width(32, width), 3, 3)
    n = 0
    for kernel, _, repeats, c_in, c_out, expand in STAGES:
        c_in, c_out = scale_width(c_in, width), scale_width(c_out, width)
        for _ in range(math.ceil(repeats * depth)):
            hidden, squeeze = c_in * expand, max(1, int(c_in * 0.25))
            block = f"mbconv_blocks.{n}"
            if expand != 1:
                conv_bn(f"{block}.expand_conv", hidden, c_in, 1)
            conv_bn(f"{block}.depthwise_conv", hidden, 1, kernel)
            se = f"{prefix}{block}.squeeze_and_excitation"
            shapes[f"{se}.squeeze.weight"], shapes[f"{se}.squeeze.bias"] = (
                (squeeze, hidden),
                (squeeze,),
            )
            shapes[f"{se}.expand.weight"], shapes[f"{se}.expand.bias"] = (
                (hidden, squeeze),
                (hidden,),
            )
            conv_bn(f"{block}.project_conv", c_out, hidden, 1)
            c_in, n = c_out, n + 1
    return shapes


def effdet_equivalent(preset: str):
    """effdet's config with NVIDIA's BiFPN/head settings for an nvidia_* preset (96 classes)."""
    import effdet

    variant = int(preset[-1])
    config = effdet.get_efficientdet_config(f"tf_efficientdet_d{variant}")
    if not preset.startswith("nvidia_tf_") and variant < 4:  # NVIDIA's efficientdet_d0..d3
        config.pad_type, config.redundant_bias = "", False
    config.num_classes = PADDED_CLASSES
    return config


def head_and_fpn_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    import effdet

    with torch.device("meta"):
        net = effdet.EfficientDet(effdet_equivalent(preset), pretrained_backbone=False)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("backbone.")}


def backbone_variant(preset: str) -> int:
    variant = int(preset[-1])
    return 6 if preset.endswith("tf_efficientdet_d7") else variant  # D7 keeps the B6 backbone


def checkpoint_state(preset: str, seed: int = 0) -> dict[str, Tensor]:
    """A training-wrapper state dict (`model.` prefix, `anchors.boxes`) of random tensors."""
    shapes = {**backbone_shapes(backbone_variant(preset)), **head_and_fpn_shapes(preset)}
    gen = torch.Generator().manual_seed(seed)
    state = {
        "model." + k: torch.randn(s, generator=gen) if s else torch.tensor(7)
        for k, s in shapes.items()
    }
    state["anchors.boxes"] = torch.zeros(49104, 4)
    return state


# timm (effdet) backbone names → NVIDIA's, per block kind: used to write an effdet efficientdet_d0
# in NVIDIA's layout, so that effdet computes what NVIDIA's model would with those weights.
_TIMM_LAYER = {"conv_pw": "expand_conv.0", "bn1": "expand_conv.1",
               "conv_dw": "depthwise_conv.0", "bn2": "depthwise_conv.1",
               "conv_pwl": "project_conv.0", "bn3": "project_conv.1"}  # fmt: skip
_TIMM_SEPARABLE = {"conv_dw": "depthwise_conv.0", "bn1": "depthwise_conv.1",
                   "conv_pw": "project_conv.0", "bn2": "project_conv.1"}  # fmt: skip
_TIMM_SE = {"se.conv_reduce": "squeeze_and_excitation.squeeze",
            "se.conv_expand": "squeeze_and_excitation.expand"}  # fmt: skip


def timm_backbone_as_nvidia(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An effdet EfficientNet backbone state dict (without `backbone.`) under NVIDIA's names."""
    flat = sorted({tuple(map(int, k.split(".")[1:3])) for k in state if k.startswith("blocks.")})
    index = {block: n for n, block in enumerate(flat)}
    out = {}
    for key, value in state.items():
        if key.startswith("conv_stem."):
            out["input_conv.0." + key.split(".", 1)[1]] = value
        elif key.startswith("bn1."):
            out["input_conv.1." + key.split(".", 1)[1]] = value
        elif m := re.match(r"^blocks\.(\d+)\.(\d+)\.(se\.conv_\w+|\w+)\.(\w+)$", key):
            stage, i, layer, tensor = m.groups()
            block = f"mbconv_blocks.{index[int(stage), int(i)]}"
            if layer in _TIMM_SE:
                linear = value[:, :, 0, 0] if tensor == "weight" else value
                out[f"{block}.{_TIMM_SE[layer]}.{tensor}"] = linear
            else:
                table = _TIMM_SEPARABLE if int(stage) == 0 else _TIMM_LAYER
                out[f"{block}.{table[layer]}.{tensor}"] = value
    return out
