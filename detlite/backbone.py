"""EfficientNet and EfficientNet-Lite feature extractors as functions over `backbone.*` params."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import BackboneConfig
from .layers import (
    INFERENCE,
    Mode,
    Params,
    activation,
    batch_norm,
    conv2d,
    drop_path,
    init_batch_norm,
    normal_fan_out,
)

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, out channels). Stage 0 is the
# depthwise-separable block (expand ratio 1, no expansion conv); the others are MBConv.
_B0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Outputs of these stages are the detector's C3, C4, C5 (strides 8, 16, 32).
FEATURE_STAGES = (2, 4, 6)
_BN_MOMENTUM_DEFAULT = 0.01


@dataclass(frozen=True)
class Block:
    """One block's static shape, derived from the config (never stored in params)."""

    prefix: str
    in_ch: int
    mid_ch: int
    out_ch: int
    kernel: int
    stride: int
    se_ch: int  # 0 = no squeeze-excitation
    drop_path_rate: float

    @property
    def expands(self) -> bool:
        return self.mid_ch != self.in_ch

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


def round_channels(channels: float, divisor: int = 8) -> int:
    """Scale-and-round channel counts to a multiple of 8, never losing more than 10%."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def stem_channels(cfg: BackboneConfig) -> int:
    return 32 if cfg.lite else round_channels(32 * cfg.width)


def blocks(cfg: BackboneConfig) -> list[list[Block]]:
    """The block list per stage, with compound scaling applied."""
    stage_defs = []
    for s, (repeats, kernel, stride, expand, out) in enumerate(_B0_STAGES):
        # Lite keeps the first and last stage at their base depth (they are cheap to keep fixed
        # and the TF-Lite models were defined that way).
        fixed = cfg.lite and s in (0, len(_B0_STAGES) - 1)
        n = repeats if fixed else math.ceil(repeats * cfg.depth)
        stage_defs.append((n, kernel, stride, expand, round_channels(out * cfg.width)))
    total = sum(d[0] for d in stage_defs)
    stages: list[list[Block]] = []
    in_ch, index = stem_channels(cfg), 0
    for s, (n, kernel, stride, expand, out) in enumerate(stage_defs):
        stage = []
        for i in range(n):
            stage.append(
                Block(
                    prefix=f"backbone.blocks.{s}.{i}",
                    in_ch=in_ch,
                    mid_ch=in_ch * expand,
                    out_ch=out,
                    kernel=kernel,
                    stride=stride if i == 0 else 1,
                    se_ch=0 if cfg.lite else max(1, in_ch // 4),
                    drop_path_rate=cfg.drop_path_rate * index / total,
                )
            )
            in_ch, index = out, index + 1
        stages.append(stage)
    return stages


def feature_channels(cfg: BackboneConfig) -> list[int]:
    """Channels of the C3, C4, C5 features."""
    stages = blocks(cfg)
    return [stages[s][-1].out_ch for s in FEATURE_STAGES]


def _conv_bn(
    params: Params,
    prefix: str,
    x: Tensor,
    cfg: BackboneConfig,
    mode: Mode,
    momentum: float,
    *,
    stride: int = 1,
    groups: int = 1,
    act: bool = True,
) -> Tensor:
    x = conv2d(params, prefix + ".conv", x, stride=stride, groups=groups, tf_padding=cfg.tf_padding)
    x = batch_norm(params, prefix + ".bn", x, mode=mode, momentum=momentum, eps=cfg.bn_eps)
    return activation(x, cfg.act, fresh=True) if act else x


def _squeeze_excite(params: Params, prefix: str, x: Tensor, act: str) -> Tensor:
    s = x.mean((2, 3), keepdim=True)
    s = activation(conv2d(params, prefix + ".reduce", s), act)
    s = conv2d(params, prefix + ".expand", s)
    return x * s.sigmoid()


def _block(
    params: Params, b: Block, x: Tensor, cfg: BackboneConfig, mode: Mode, momentum: float
) -> Tensor:
    shortcut = x
    p = b.prefix
    if b.expands:
        x = _conv_bn(params, p + ".expand", x, cfg, mode, momentum)
    x = _conv_bn(params, p + ".dw", x, cfg, mode, momentum, stride=b.stride, groups=b.mid_ch)
    if b.se_ch:
        x = _squeeze_excite(params, p + ".se", x, cfg.act)
    x = _conv_bn(params, p + ".project", x, cfg, mode, momentum, act=False)
    if b.residual:
        x = drop_path(x, b.drop_path_rate, mode.training) + shortcut
    return x


def forward(
    params: Params,
    images: Tensor,
    cfg: BackboneConfig,
    *,
    mode: Mode = INFERENCE,
    bn_momentum: float = _BN_MOMENTUM_DEFAULT,
) -> list[Tensor]:
    """C3, C4, C5 features (strides 8, 16, 32) of normalised images `[B, 3, H, W]`."""
    x = _conv_bn(params, "backbone.stem", images, cfg, mode, bn_momentum, stride=2)
    features = []
    for s, stage in enumerate(blocks(cfg)):
        for b in stage:
            x = _block(params, b, x, cfg, mode, bn_momentum)
        if s in FEATURE_STAGES:
            features.append(x)
    return features


def init(cfg: BackboneConfig, gen: torch.Generator) -> Params:
    params: Params = {}

    def conv_bn(prefix: str, out_ch: int, in_ch: int, kernel: int, groups: int = 1) -> None:
        shape = (out_ch, in_ch // groups, kernel, kernel)
        params[prefix + ".conv.weight"] = normal_fan_out(shape, gen, groups)
        init_batch_norm(params, prefix + ".bn", out_ch)

    conv_bn("backbone.stem", stem_channels(cfg), 3, 3)
    for stage in blocks(cfg):
        for b in stage:
            if b.expands:
                conv_bn(b.prefix + ".expand", b.mid_ch, b.in_ch, 1)
            conv_bn(b.prefix + ".dw", b.mid_ch, b.mid_ch, b.kernel, groups=b.mid_ch)
            if b.se_ch:
                se = b.prefix + ".se"
                params[se + ".reduce.weight"] = normal_fan_out((b.se_ch, b.mid_ch, 1, 1), gen)
                params[se + ".reduce.bias"] = torch.zeros(b.se_ch)
                params[se + ".expand.weight"] = normal_fan_out((b.mid_ch, b.se_ch, 1, 1), gen)
                params[se + ".expand.bias"] = torch.zeros(b.mid_ch)
            conv_bn(b.prefix + ".project", b.out_ch, b.mid_ch, 1)
    return params
