"""The anchor grid, the box coder and the flattening of raw head outputs into anchor order.

Public boxes are `x1, y1, x2, y2` in input pixels. Box *codes* keep the raw head layout
`(ty, tx, th, tw)` (y before x), because that is what the imported TF/effdet weights predict.

Anchor order (shared by targets, loss and post-processing): level-major (P3 first), then
row-major over the feature map (y, then x), then the `cfg.num_anchors` anchors of a location,
`a = octave * len(aspect_ratios) + aspect`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detlite.config import ModelConfig, feature_sizes

# Keeps widths/heights away from zero in `encode` (1e-8 overflowed in fp16, effdet issue #291).
EPS = 1e-7


def _numpy_style_arange(start: float, step: float, count: int) -> Tensor:
    """`numpy.arange(start, ..., step)` bit for bit, in float64.

    numpy fills a float range as `start + i * (x1 - start)` with `x1 = start + step`, which is
    not always `start + i * step` when the stride is not a dyadic number (non-square or odd image
    sizes); the reference anchors are built that way, so ours are too.
    """
    delta = (start + step) - start
    return start + torch.arange(count, dtype=torch.float64) * delta


def _level_anchors(cfg: ModelConfig, feat_h: int, feat_w: int) -> Tensor:
    """Anchors of one pyramid level, [feat_h * feat_w * num_anchors, 4] xyxy, float64."""
    image_h, image_w = cfg.image_size
    # The stride is the exact ratio of image to feature size, not 2**level, so that anchor
    # centres stay on the feature grid when the image size is not a multiple of 2**max_level.
    stride_y = image_h / float(feat_h)
    stride_x = image_w / float(feat_w)
    center_y = _numpy_style_arange(stride_y / 2, stride_y, feat_h)
    center_x = _numpy_style_arange(stride_x / 2, stride_x, feat_w)
    cy, cx = torch.meshgrid(center_y, center_x, indexing="ij")
    cy, cx = cy.reshape(-1, 1), cx.reshape(-1, 1)

    half_sizes = []
    for octave in range(cfg.num_scales):
        octave_scale = 2 ** (octave / float(cfg.num_scales))
        for aspect_x, aspect_y in cfg.aspect_ratios:
            half_w = cfg.anchor_scale * stride_x * octave_scale * aspect_x / 2.0
            half_h = cfg.anchor_scale * stride_y * octave_scale * aspect_y / 2.0
            half_sizes.append((half_w, half_h))
    half = torch.tensor(half_sizes, dtype=torch.float64)  # [num_anchors, 2]
    half_w, half_h = half[:, 0], half[:, 1]

    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    return boxes.reshape(-1, 4)


def generate_anchors(
    cfg: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """All anchors of the model, [A_total, 4] as x1, y1, x2, y2 in input pixels.

    Computed in float64 and rounded once at the end, which reproduces the reference values
    exactly in float32.
    """
    levels = [_level_anchors(cfg, h, w) for h, w in feature_sizes(cfg)]
    return torch.cat(levels, dim=0).to(device=device, dtype=dtype)


def num_anchors_total(cfg: ModelConfig) -> int:
    """Number of anchors over all levels (49,104 for D0 at 512)."""
    return sum(h * w for h, w in feature_sizes(cfg)) * cfg.num_anchors


def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Faster R-CNN regression codes (ty, tx, th, tw) of xyxy `boxes` relative to xyxy `anchors`.

    Broadcasts over leading dimensions. No scale factors. Centres are taken as `min + size / 2`
    and EPS is added to every size, as the reference coder does, so targets match to float
    rounding.
    """
    anchor_w = anchors[..., 2] - anchors[..., 0]
    anchor_h = anchors[..., 3] - anchors[..., 1]
    anchor_cx = anchors[..., 0] + anchor_w / 2.0
    anchor_cy = anchors[..., 1] + anchor_h / 2.0
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    cx = boxes[..., 0] + w / 2.0
    cy = boxes[..., 1] + h / 2.0

    anchor_w, anchor_h = anchor_w + EPS, anchor_h + EPS
    w, h = w + EPS, h + EPS
    ty = (cy - anchor_cy) / anchor_h
    tx = (cx - anchor_cx) / anchor_w
    th = torch.log(h / anchor_h)
    tw = torch.log(w / anchor_w)
    return torch.stack([ty, tx, th, tw], dim=-1)


def decode(codes: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of `encode`: xyxy boxes from (ty, tx, th, tw) codes and xyxy anchors.

    Broadcasts over leading dimensions. Anchor centres are `(min + max) / 2` and no EPS is
    used here, matching the reference decoder (its encoder and decoder differ in that detail).
    """
    anchor_cx = (anchors[..., 0] + anchors[..., 2]) / 2
    anchor_cy = (anchors[..., 1] + anchors[..., 3]) / 2
    anchor_w = anchors[..., 2] - anchors[..., 0]
    anchor_h = anchors[..., 3] - anchors[..., 1]
    ty, tx, th, tw = codes.unbind(dim=-1)

    w = torch.exp(tw) * anchor_w
    h = torch.exp(th) * anchor_h
    cy = ty * anchor_h + anchor_cy
    cx = tx * anchor_w + anchor_cx
    return torch.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], dim=-1)


def flatten_outputs(
    cls_outputs: list[Tensor], box_outputs: list[Tensor], cfg: ModelConfig
) -> tuple[Tensor, Tensor]:
    """Per-level raw head maps -> (class logits [B, A_total, C], box codes [B, A_total, 4]).

    Channel `a * C + c` of a class map and `a * 4 + k` of a box map become anchor
    `(y * W + x) * num_anchors + a` of their level, levels concatenated in order.
    """
    batch = cls_outputs[0].shape[0]
    cls = [c.permute(0, 2, 3, 1).reshape(batch, -1, cfg.num_classes) for c in cls_outputs]
    box = [b.permute(0, 2, 3, 1).reshape(batch, -1, 4) for b in box_outputs]
    return torch.cat(cls, dim=1), torch.cat(box, dim=1)
