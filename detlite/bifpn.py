"""BiFPN: extra pyramid levels, then repeated top-down + bottom-up cells over `fpn.*` params."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig, feature_sizes
from .layers import (
    INFERENCE,
    Mode,
    Params,
    activation,
    batch_norm,
    conv2d,
    glorot_uniform,
    init_batch_norm,
    max_pool,
)

_ATTENTION_EPS = 1e-4


@dataclass(frozen=True)
class Node:
    level: int
    inputs: tuple[int, ...]  # offsets into the cell's growing node list


def cell_nodes(min_level: int, max_level: int) -> list[Node]:
    """The BiFPN graph: a top-down pass, then a bottom-up pass that also takes the lateral inputs.

    The cell's inputs are offsets 0..L-1 (P_min..P_max); every new node is appended after them.
    """
    num_levels = max_level - min_level + 1
    ids = {min_level + i: [i] for i in range(num_levels)}
    next_id = num_levels
    nodes = []
    for level in range(max_level - 1, min_level - 1, -1):
        nodes.append(Node(level, (ids[level][-1], ids[level + 1][-1])))
        ids[level].append(next_id)
        next_id += 1
    for level in range(min_level + 1, max_level + 1):
        nodes.append(Node(level, (*ids[level], ids[level - 1][-1])))
        ids[level].append(next_id)
        next_id += 1
    return nodes


def _resample(
    params: Params,
    prefix: str,
    x: Tensor,
    out_size: tuple[int, int],
    cfg: ModelConfig,
    mode: Mode,
) -> Tensor:
    """Bring a feature map to `fpn_channels` (1x1 conv + BN, when needed) and to `out_size`."""
    if prefix + ".conv.weight" in params:
        x = conv2d(params, prefix + ".conv", x)
        x = batch_norm(
            params, prefix + ".bn", x, mode=mode, momentum=cfg.bn_momentum, eps=cfg.bn_eps
        )
    in_h, in_w = x.shape[-2:]
    out_h, out_w = out_size
    if in_h > out_h and in_w > out_w:
        stride = (in_h - 1) // out_h + 1
        x = max_pool(x, stride + 1, stride, cfg.tf_padding)
    elif in_h < out_h and in_w < out_w:
        x = F.interpolate(x, size=out_size, mode="nearest")
    return x


def _combine(params: Params, prefix: str, inputs: list[Tensor], cfg: ModelConfig) -> Tensor:
    if cfg.fpn_weighting == "sum":
        return _sum(inputs)
    # Fast normalised fusion: non-negative weights, normalised by their sum.
    w = F.relu(params[prefix + ".weights"].to(inputs[0].dtype))
    scale = w / (w.sum() + _ATTENTION_EPS)
    return _sum([x * scale[i] for i, x in enumerate(inputs)])


def _sum(terms: list[Tensor]) -> Tensor:
    """terms[0] + terms[1] + ..., in order: the same bits as stacking them and summing the new
    axis, but in the terms' memory format (a stack of channels_last maps sums to an NCHW one,
    which sent every later BiFPN and head convolution back to NCHW). A node has two or three
    inputs, so the sum is a new tensor, which the activation after it may overwrite."""
    return functools.reduce(torch.add, terms)


def _separable_conv_bn(
    params: Params, prefix: str, x: Tensor, cfg: ModelConfig, mode: Mode
) -> Tensor:
    x = conv2d(params, prefix + ".conv.dw", x, groups=x.shape[1])
    x = conv2d(params, prefix + ".conv.pw", x)
    return batch_norm(
        params, prefix + ".bn", x, mode=mode, momentum=cfg.bn_momentum, eps=cfg.bn_eps
    )


def forward(
    params: Params, features: list[Tensor], cfg: ModelConfig, *, mode: Mode = INFERENCE
) -> list[Tensor]:
    """Backbone features C3..C5 in, fused P_min..P_max out (all with `fpn_channels`)."""
    sizes = feature_sizes(cfg)
    levels = list(features)
    for level in range(cfg.min_level + len(features), cfg.max_level + 1):
        i = level - cfg.min_level
        levels.append(_resample(params, f"fpn.extra.{level}", levels[-1], sizes[i], cfg, mode))

    nodes = cell_nodes(cfg.min_level, cfg.max_level)
    for c in range(cfg.fpn_cells):
        x = list(levels)
        for n, node in enumerate(nodes):
            prefix = f"fpn.cells.{c}.nodes.{n}"
            out_size = sizes[node.level - cfg.min_level]
            inputs = [
                _resample(params, f"{prefix}.inputs.{k}", x[k], out_size, cfg, mode)
                for k in node.inputs
            ]
            y = activation(_combine(params, prefix, inputs, cfg), cfg.act, fresh=True)
            x.append(_separable_conv_bn(params, prefix, y, cfg, mode))
        levels = x[-cfg.num_levels :]
    return levels


def init(cfg: ModelConfig, backbone_channels: list[int], gen: torch.Generator) -> Params:
    params: Params = {}
    ch = cfg.fpn_channels

    def resample_conv(prefix: str, in_ch: int) -> None:
        if in_ch == ch:
            return
        params[prefix + ".conv.weight"] = glorot_uniform((ch, in_ch, 1, 1), gen)
        if cfg.redundant_bias:
            params[prefix + ".conv.bias"] = torch.zeros(ch)
        init_batch_norm(params, prefix + ".bn", ch)

    level_channels = list(backbone_channels)
    for level in range(cfg.min_level + len(backbone_channels), cfg.max_level + 1):
        resample_conv(f"fpn.extra.{level}", level_channels[-1])
        level_channels.append(ch)

    nodes = cell_nodes(cfg.min_level, cfg.max_level)
    for c in range(cfg.fpn_cells):
        channels = list(level_channels) if c == 0 else [ch] * cfg.num_levels
        for n, node in enumerate(nodes):
            prefix = f"fpn.cells.{c}.nodes.{n}"
            if cfg.fpn_weighting == "fastattn":
                params[prefix + ".weights"] = torch.ones(len(node.inputs))
            for k in node.inputs:
                resample_conv(f"{prefix}.inputs.{k}", channels[k])
            params[prefix + ".conv.dw.weight"] = glorot_uniform((ch, 1, 3, 3), gen, groups=ch)
            params[prefix + ".conv.pw.weight"] = glorot_uniform((ch, ch, 1, 1), gen)
            if cfg.redundant_bias:
                params[prefix + ".conv.pw.bias"] = torch.zeros(ch)
            init_batch_norm(params, prefix + ".bn", ch)
            channels.append(ch)
    return params
