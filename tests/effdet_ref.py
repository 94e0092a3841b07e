"""Helpers for comparing detlite against the reference package effdet 0.4.1 (tests only).

effdet keeps boxes as y1, x1, y2, x2 and class labels 1-based; detlite uses x1, y1, x2, y2 and
0-based labels. Conversions live here so every test converts the same way.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from tests

import torch
from torch import Tensor

from detlite.config import ModelConfig


def swap_xy(boxes: Tensor) -> Tensor:
    """xyxy <-> yxyx (the same swap both ways)."""
    return boxes[..., [1, 0, 3, 2]]


def effdet_config(cfg: ModelConfig, **overrides):
    """The effdet config of the same variant, with detlite's size, classes and loss settings."""
    import effdet

    config = effdet.get_efficientdet_config(cfg.name)
    config.image_size = tuple(cfg.image_size)
    config.num_classes = cfg.num_classes
    config.alpha = cfg.loss.alpha
    config.gamma = cfg.loss.gamma
    config.delta = cfg.loss.huber_delta
    config.box_loss_weight = cfg.loss.box_loss_weight
    config.label_smoothing = cfg.loss.label_smoothing
    config.legacy_focal = False
    config.jit_loss = False
    config.max_detection_points = cfg.postprocess.max_detection_points
    config.max_det_per_image = cfg.postprocess.max_det
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def effdet_anchors(cfg: ModelConfig):
    """effdet's `Anchors` module for the same config (boxes are yxyx)."""
    from effdet.anchors import Anchors

    return Anchors.from_config(effdet_config(cfg))


def effdet_targets(cfg: ModelConfig, gt_boxes: Tensor, gt_labels: Tensor):
    """effdet AnchorLabeler targets for padded detlite ground truth, flattened to anchor order.

    Returns (cls [B, A] 0-based with -1 background, box [B, A, 4] codes, num_positives [B]) plus
    effdet's raw per-level lists (cls_levels, box_levels) for effdet's own loss. Rows with a
    negative label (padding, crowd) are dropped, which is what effdet's labeler does with them.
    """
    from effdet.anchors import AnchorLabeler

    labeler = AnchorLabeler(
        effdet_anchors(cfg), cfg.num_classes, match_threshold=cfg.loss.match_threshold
    )
    boxes = [swap_xy(b) for b in gt_boxes]
    # effdet labels are 1-based and its labeler drops rows labelled <= -1.
    labels = [torch.where(c >= 0, c + 1, -1).to(torch.float32) for c in gt_labels]
    cls_levels, box_levels, num_pos = labeler.batch_label_anchors(boxes, labels)
    batch = gt_boxes.shape[0]
    cls = torch.cat([c.reshape(batch, -1) for c in cls_levels], dim=1)
    box = torch.cat([b.reshape(batch, -1, 4) for b in box_levels], dim=1)
    return cls, box, num_pos, cls_levels, box_levels


def random_head_outputs(
    cfg: ModelConfig, batch: int, generator: torch.Generator, logit_scale: float = 1.5
) -> tuple[list[Tensor], list[Tensor]]:
    """Raw per-level head maps with spread-out logits.

    The default scale keeps the top logits around 5, where float32 sigmoid scores are still
    distinct (larger logits saturate to equal scores and make the NMS order ambiguous).
    """
    from detlite.config import feature_sizes

    a, c = cfg.num_anchors, cfg.num_classes
    cls, box = [], []
    for h, w in feature_sizes(cfg):
        cls.append(torch.randn(batch, a * c, h, w, generator=generator) * logit_scale - 2.0)
        box.append(torch.randn(batch, a * 4, h, w, generator=generator) * 0.5)
    return cls, box


def randomize_batch_norm(module: torch.nn.Module, seed: int) -> None:
    """Fresh BN is nearly the identity and would hide eps/ordering bugs: give it real statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
