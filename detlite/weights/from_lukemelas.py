"""Key renaming from lukemelas' `efficientnet_pytorch` naming to `backbone.*` names.

That package numbers blocks flatly (`_blocks.0` .. `_blocks.N-1`) across all stages; the stage
and in-stage index come from detlite's own block list for the config (`backbone.blocks`), so the
config decides how the flat list splits into stages (and a wrong config shows up as unknown,
missing or mis-shaped keys in the check that follows).

Inside a block the names do not depend on the block kind: `_bn0` always follows `_expand_conv`,
`_bn1` the depthwise conv and `_bn2` the projection (stage 0 simply has no `_expand_conv`/`_bn0`).
At the top level `_bn0` is the stem's BN and `_bn1` the classifier head's.

Which detlite backbone these weights fit: efficientnet_pytorch pads TF-'same' and uses BN eps 1e-3,
i.e. the `tf_efficientnet_*` backbones of the `tf_efficientdet_*` presets (and Lite for the Lite
ports, which use the same naming).
"""

from __future__ import annotations

import re

from torch import Tensor

from ..backbone import blocks
from ..config import BackboneConfig

_TAIL = re.compile(r"^(_conv_head\.|_bn1\.|_fc\.)|num_batches_tracked$")
_STEM = re.compile(r"^(_conv_stem|_bn0)\.(weight|bias|running_mean|running_var)$")
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(weight|bias|running_mean|running_var)$")
_STEM_LAYERS = {"_conv_stem": "conv", "_bn0": "bn"}
_BLOCK_LAYERS = {
    "_expand_conv": "expand.conv", "_bn0": "expand.bn",
    "_depthwise_conv": "dw.conv", "_bn1": "dw.bn",
    "_se_reduce": "se.reduce", "_se_expand": "se.expand",
    "_project_conv": "project.conv", "_bn2": "project.bn",
}  # fmt: skip
_TF_BN_EPS = 1e-3


def from_lukemelas(
    state_dict: dict[str, Tensor], cfg: BackboneConfig
) -> tuple[dict[str, Tensor], list[str]]:
    """efficientnet_pytorch keys → `backbone.*`. Returns (renamed, keys it did not know)."""
    prefixes = [b.prefix for stage in blocks(cfg) for b in stage]
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if _TAIL.search(key):
            continue
        if m := _STEM.match(key):
            out[f"backbone.stem.{_STEM_LAYERS[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = _BLOCK.match(key)
        if m is None or int(m.group(1)) >= len(prefixes) or m.group(2) not in _BLOCK_LAYERS:
            unknown.append(key)
            continue
        index, layer, tensor = m.groups()
        out[f"{prefixes[int(index)]}.{_BLOCK_LAYERS[layer]}.{tensor}"] = value
    return out, unknown


def block_count_mismatch(state_dict: dict[str, Tensor], cfg: BackboneConfig) -> str | None:
    """A flat block list of another length means another variant: say so plainly, since every
    block after the first difference shifts into the wrong stage and shows up as a wrong shape."""
    in_file = len({m.group(1) for k in state_dict if (m := _BLOCK.match(k))})
    in_config = sum(len(stage) for stage in blocks(cfg))
    if in_file == in_config:
        return None
    return f"the file has {in_file} blocks but the config's backbone ({cfg.arch}) has {in_config}"


def config_mismatch(cfg: BackboneConfig) -> str | None:
    """Why `cfg` would not compute what efficientnet_pytorch computes, or None."""
    problems = []
    if not cfg.tf_padding:
        problems.append("efficientnet_pytorch pads TF-'same' but the config has tf_padding=False")
    if cfg.bn_eps != _TF_BN_EPS:
        problems.append(
            f"efficientnet_pytorch uses BatchNorm eps {_TF_BN_EPS:g}, the config {cfg.bn_eps:g}"
        )
    if not problems:
        return None
    return "; ".join(problems) + " — the weights load, but outputs differ until fine-tuned"
