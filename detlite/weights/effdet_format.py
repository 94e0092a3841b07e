"""Key renaming from effdet / timm state dicts to detlite's flat names (docs/parameters.md).

Pure functions over dicts: they rename and drop, never reshape; shape checks happen in `load`.
"""

from __future__ import annotations

import re

from torch import Tensor

# timm's classifier tail and BN counters: present in their files, meaningless for a detector.
_TIMM_UNUSED = re.compile(r"^(conv_head\.|bn2\.|classifier\.|global_pool\.)|num_batches_tracked$")

# Within a timm block, the meaning of bn1/bn2 depends on the block kind: an MBConv
# (has conv_pwl) has expand/dw/project = conv_pw/conv_dw/conv_pwl; a depthwise-separable block
# has dw/project = conv_dw/conv_pw.
_MBCONV = {
    "conv_pw": "expand.conv", "bn1": "expand.bn",
    "conv_dw": "dw.conv", "bn2": "dw.bn",
    "conv_pwl": "project.conv", "bn3": "project.bn",
    "se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand",
}  # fmt: skip
_SEPARABLE = {
    "conv_dw": "dw.conv", "bn1": "dw.bn",
    "conv_pw": "project.conv", "bn2": "project.bn",
    "se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand",
}  # fmt: skip
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)\.(weight|bias|running_mean|running_var)$")


def from_timm_backbone(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """timm EfficientNet(-Lite) keys → `backbone.*`. Returns (renamed, keys it did not know)."""
    mbconv_blocks = {
        tuple(k.split(".")[1:3])
        for k in state_dict
        if k.startswith("blocks.") and ".conv_pwl." in k
    }
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if _TIMM_UNUSED.search(key):
            continue
        if key.startswith("conv_stem."):
            out["backbone.stem.conv." + key.split(".", 1)[1]] = value
        elif key.startswith("bn1."):
            out["backbone.stem.bn." + key.split(".", 1)[1]] = value
        elif m := _BLOCK_KEY.match(key):
            stage, index, layer, tensor = m.groups()
            table = _MBCONV if (stage, index) in mbconv_blocks else _SEPARABLE
            if layer not in table:
                unknown.append(key)
                continue
            out[f"backbone.blocks.{stage}.{index}.{table[layer]}.{tensor}"] = value
        else:
            unknown.append(key)
    return out, unknown


# effdet BiFPN cell and head names → detlite names (fpn.resample is handled in from_effdet).
_EFFDET_RULES = [
    (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights$", r"fpn.cells.\1.nodes.\2.weights"),
    (
        r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.conv\.",
        r"fpn.cells.\1.nodes.\2.inputs.\3.conv.",
    ),
    (
        r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.bn\.",
        r"fpn.cells.\1.nodes.\2.inputs.\3.bn.",
    ),
    (
        r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_dw\.",
        r"fpn.cells.\1.nodes.\2.conv.dw.",
    ),
    (
        r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_pw\.",
        r"fpn.cells.\1.nodes.\2.conv.pw.",
    ),
    (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.bn\.", r"fpn.cells.\1.nodes.\2.bn."),
    (r"^(class|box)_net\.conv_rep\.(\d+)\.conv_dw\.", r"\1_head.convs.\2.dw."),
    (r"^(class|box)_net\.conv_rep\.(\d+)\.conv_pw\.", r"\1_head.convs.\2.pw."),
    (r"^(class|box)_net\.bn_rep\.(\d+)\.(\d+)\.bn\.", r"\1_head.bns.\2.\3."),
    (r"^(class|box)_net\.predict\.conv_dw\.", r"\1_head.predict.dw."),
    (r"^(class|box)_net\.predict\.conv_pw\.", r"\1_head.predict.pw."),
]
_EFFDET_COMPILED = [(re.compile(p), r) for p, r in _EFFDET_RULES]


def from_effdet(
    state_dict: dict[str, Tensor], min_level: int = 3
) -> tuple[dict[str, Tensor], list[str]]:
    """effdet `EfficientDet.state_dict()` → detlite names. Returns (renamed, unknown keys)."""
    backbone = {
        k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")
    }
    out, unknown = from_timm_backbone(backbone)
    unknown = ["backbone." + k for k in unknown]
    for key, value in state_dict.items():
        if key.startswith("backbone.") or key.endswith("num_batches_tracked"):
            continue
        m = re.match(r"^fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$", key)
        if m:
            # effdet numbers the extra levels by position in the pyramid (3 = P6 at min_level 3).
            level = min_level + int(m.group(1))
            out[f"fpn.extra.{level}.{m.group(2)}.{m.group(3)}"] = value
            continue
        for pattern, replacement in _EFFDET_COMPILED:
            if pattern.match(key):
                out[pattern.sub(replacement, key)] = value
                break
        else:
            unknown.append(key)
    return out, unknown
