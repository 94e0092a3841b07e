"""Class and box heads: separable convs shared across levels, BatchNorm kept per level."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import ModelConfig
from .layers import (
    INFERENCE,
    Mode,
    Params,
    activation,
    batch_norm,
    conv2d,
    init_batch_norm,
    variance_scaling,
)

# Class bias so every anchor starts at probability 0.01: keeps the focal loss from being swamped
# by the ~50k easy negatives in the first steps.
CLASS_PRIOR = 0.01


def _separable_conv(params: Params, prefix: str, x: Tensor) -> Tensor:
    x = conv2d(params, prefix + ".dw", x, groups=x.shape[1])
    return conv2d(params, prefix + ".pw", x)


def forward(
    params: Params, name: str, levels: list[Tensor], cfg: ModelConfig, *, mode: Mode = INFERENCE
) -> list[Tensor]:
    """Run head `name` ("class_head" or "box_head") over every pyramid level."""
    outputs = []
    for level, x in enumerate(levels):
        for r in range(cfg.head_repeats):
            x = _separable_conv(params, f"{name}.convs.{r}", x)
            x = batch_norm(
                params,
                f"{name}.bns.{r}.{level}",
                x,
                mode=mode,
                momentum=cfg.bn_momentum,
                eps=cfg.bn_eps,
            )
            x = activation(x, cfg.act, fresh=True)
        outputs.append(_separable_conv(params, f"{name}.predict", x))
    return outputs


def init(cfg: ModelConfig, name: str, outputs_per_anchor: int, gen: torch.Generator) -> Params:
    params: Params = {}
    ch = cfg.fpn_channels

    def separable(prefix: str, out_ch: int, bias: bool) -> None:
        params[prefix + ".dw.weight"] = variance_scaling((ch, 1, 3, 3), gen)
        params[prefix + ".pw.weight"] = variance_scaling((out_ch, ch, 1, 1), gen)
        if bias:
            params[prefix + ".pw.bias"] = torch.zeros(out_ch)

    for r in range(cfg.head_repeats):
        separable(f"{name}.convs.{r}", ch, cfg.redundant_bias)
        for level in range(cfg.num_levels):
            init_batch_norm(params, f"{name}.bns.{r}.{level}", ch)
    separable(f"{name}.predict", outputs_per_anchor * cfg.num_anchors, True)
    if name == "class_head":
        params[f"{name}.predict.pw.bias"].fill_(-math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
    return params
