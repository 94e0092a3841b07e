"""NVIDIA DeepLearningExamples EfficientDet-PyTorch state dicts → detlite names.

NVIDIA's BiFPN and heads carry effdet's names (renamed by `from_effdet`); its backbone is its own
EfficientNet:

    backbone.input_conv.{0: conv, 1: bn}                         → backbone.stem.{conv, bn}
    backbone.mbconv_blocks.N.{expand,depthwise,project}_conv.{0,1} → <block N>.{expand,dw,project}
    backbone.mbconv_blocks.N.squeeze_and_excitation.{squeeze,expand} → <block N>.se.{reduce,expand}

`N` counts blocks over all stages; the config's block list (`backbone.blocks`) splits it into
stages, so a wrong preset shows up as missing, unknown or mis-shaped tensors. Two tensors change
shape on the way: the squeeze-excitation layers are `nn.Linear` (`[out, in]`) where detlite has
1x1 convs (`[out, in, 1, 1]`, the same function on a pooled input), and a class head trained with
`--fused-focal-loss` predicts a multiple of 8 classes (90 → 96, anchor-major: channel a·96 + c),
whose padding classes are cut away. A bare NVIDIA backbone (`input_conv.…` without the prefix,
e.g. its ImageNet classifier) maps too; its classifier tail is dropped.
"""

from __future__ import annotations

import re

from torch import Tensor

from ..backbone import blocks
from ..config import ModelConfig
from .effdet_format import from_effdet

_TENSOR = r"(weight|bias|running_mean|running_var)"
_STEM = re.compile(rf"^input_conv\.([01])\.{_TENSOR}$")
_CONV_BN = re.compile(
    rf"^mbconv_blocks\.(\d+)\.(expand|depthwise|project)_conv\.([01])\.{_TENSOR}$"
)
_SE = re.compile(r"^mbconv_blocks\.(\d+)\.squeeze_and_excitation\.(squeeze|expand)\.(weight|bias)$")
_LAYERS = {"expand": "expand", "depthwise": "dw", "project": "project"}
# The classifier tail of an NVIDIA ImageNet EfficientNet, and BatchNorm counters.
_UNUSED = re.compile(r"^(features_conv\.|fc\.)|num_batches_tracked$")
_CLASS_PREDICT = ("class_head.predict.pw.weight", "class_head.predict.pw.bias")
# NVIDIA's fused focal loss rounds the class count up to a multiple of this.
_CLASS_ROUNDING = 8


def from_nvidia(
    state_dict: dict[str, Tensor], cfg: ModelConfig
) -> tuple[dict[str, Tensor], list[str]]:
    """NVIDIA EfficientDet keys → detlite names. Returns (renamed, keys it did not know)."""
    # Its training wrapper is saved whole: `model.` before every weight, and the anchor grid
    # (detlite computes that from the config).
    if any(k.startswith("model.") for k in state_dict):
        state_dict = {
            k.removeprefix("model."): v
            for k, v in state_dict.items()
            if not k.startswith("anchors.")
        }
    if not any(k.startswith("backbone.") for k in state_dict):  # a bare backbone
        state_dict = {"backbone." + k: v for k, v in state_dict.items()}
    backbone = {
        k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")
    }
    out, unknown = _backbone(backbone, cfg)
    rest, rest_unknown = from_effdet(
        {k: v for k, v in state_dict.items() if not k.startswith("backbone.")}, cfg.min_level
    )
    out.update(rest)
    _cut_class_padding(out, cfg)
    return out, ["backbone." + k for k in unknown] + rest_unknown


def _backbone(
    state_dict: dict[str, Tensor], cfg: ModelConfig
) -> tuple[dict[str, Tensor], list[str]]:
    prefixes = [b.prefix for stage in blocks(cfg.backbone) for b in stage]
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if _UNUSED.search(key):
            continue
        if m := _STEM.match(key):
            out[f"backbone.stem.{'conv' if m[1] == '0' else 'bn'}.{m[2]}"] = value
        elif (m := _CONV_BN.match(key)) and int(m[1]) < len(prefixes):
            layer = "conv" if m[3] == "0" else "bn"
            out[f"{prefixes[int(m[1])]}.{_LAYERS[m[2]]}.{layer}.{m[4]}"] = value
        elif (m := _SE.match(key)) and int(m[1]) < len(prefixes):
            se = "reduce" if m[2] == "squeeze" else "expand"
            linear_as_conv = value[:, :, None, None] if m[3] == "weight" else value
            out[f"{prefixes[int(m[1])]}.se.{se}.{m[3]}"] = linear_as_conv
        else:
            unknown.append(key)
    return out, unknown


def _per_anchor(params: dict[str, Tensor], cfg: ModelConfig) -> int | None:
    weight = params.get(_CLASS_PREDICT[0])
    if weight is None or weight.shape[0] % cfg.num_anchors:
        return None
    return weight.shape[0] // cfg.num_anchors


def _padded(num_classes: int) -> int:
    return -(-num_classes // _CLASS_ROUNDING) * _CLASS_ROUNDING


def _cut_class_padding(params: dict[str, Tensor], cfg: ModelConfig) -> None:
    """Drop the padding classes of a head trained with NVIDIA's fused focal loss, in place. A
    head that cannot hold `cfg.num_classes` stays as it is, for the shape check to report."""
    per_anchor = _per_anchor(params, cfg)
    if (
        per_anchor is None
        or per_anchor == cfg.num_classes
        or per_anchor != _padded(cfg.num_classes)
    ):
        return
    for name in _CLASS_PREDICT:
        if name in params:
            tensor = params[name]
            by_anchor = tensor.reshape(cfg.num_anchors, per_anchor, *tensor.shape[1:])
            kept = by_anchor[:, : cfg.num_classes]
            params[name] = kept.reshape(cfg.num_anchors * cfg.num_classes, *tensor.shape[1:])


def class_head_hint(renamed: dict[str, Tensor], cfg: ModelConfig) -> str | None:
    """What class counts an NVIDIA class head that does not fit `cfg` was trained for."""
    per_anchor = _per_anchor(renamed, cfg)
    if per_anchor is None or per_anchor == cfg.num_classes:
        return None
    if per_anchor % _CLASS_ROUNDING:
        trained = f"{per_anchor} classes"
    else:
        trained = f"{per_anchor - _CLASS_ROUNDING + 1}..{per_anchor} classes (NVIDIA's fused "
        trained += f"focal loss pads the class count to a multiple of {_CLASS_ROUNDING})"
    return (
        f"the file's class head predicts {per_anchor} classes per anchor, so it was trained for "
        f"{trained}, and cannot hold num_classes={cfg.num_classes}: give the file's count "
        "(CLI: --num-classes N), 90 for COCO"
    )


def block_count_hint(state_dict: dict[str, Tensor], cfg: ModelConfig) -> str | None:
    """A flat block list of another length means another variant: every block after the first
    difference shifts into the wrong stage and shows up as a wrong shape, so say it plainly."""
    in_file = len({m[1] for k in state_dict if (m := re.search(r"mbconv_blocks\.(\d+)\.", k))})
    in_config = sum(len(stage) for stage in blocks(cfg.backbone))
    if in_file in (0, in_config):
        return None
    return (
        f"the file has {in_file} backbone blocks but the config's backbone ({cfg.backbone.arch}) "
        f"has {in_config}: choose the nvidia_* preset of the file's variant (CLI: --preset NAME)"
    )
