"""The whole detector: `init` builds the flat parameter dict, `forward` / `predict` run it.

    cfg = config.preset("tf_efficientdet_d0", num_classes=90, image_size=512)
    params = model.init(cfg, seed=0)
    cls_out, box_out = model.forward(params, images, cfg, training=False)
    dets, counts = model.predict(params, images, cfg)

`images` are normalised `[B, 3, H, W]` float tensors at `cfg.image_size` (see `normalize`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import anchors as anchors_lib
from . import backbone as backbone_lib
from . import bifpn, head
from .config import ModelConfig
from .layers import BatchStats, Mode, Params
from .postprocess import postprocess


def init(cfg: ModelConfig, seed: int = 0) -> Params:
    """Fresh parameters: EfficientNet init for the backbone, the TF EfficientDet init elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    params = backbone_lib.init(cfg.backbone, gen)
    params |= bifpn.init(cfg, backbone_lib.feature_channels(cfg.backbone), gen)
    params |= head.init(cfg, "class_head", cfg.num_classes, gen)
    params |= head.init(cfg, "box_head", 4, gen)
    return params


def normalize(images: Tensor, cfg: ModelConfig) -> Tensor:
    """uint8 (0..255) or float (0..1) images → the normalised float input the backbone expects."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    mean = torch.tensor(cfg.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def backbone(
    params: Params,
    images: Tensor,
    cfg: ModelConfig,
    *,
    training: bool = False,
    batch_stats: BatchStats = "local",
) -> list[Tensor]:
    """Backbone features at strides 8, 16, 32."""
    mode = Mode(training, batch_stats)
    return backbone_lib.forward(
        params, images, cfg.backbone, mode=mode, bn_momentum=cfg.bn_momentum
    )


def forward(
    params: Params,
    images: Tensor,
    cfg: ModelConfig,
    *,
    training: bool = False,
    batch_stats: BatchStats = "local",
) -> tuple[list[Tensor], list[Tensor]]:
    """Raw outputs per level P_min..P_max, in effdet's layout (see docs/parameters.md).

    `training` uses batch statistics in BatchNorm and drop path; `batch_stats` says whose
    ("local", "sync" over the process group, or "frozen": the running statistics).
    """
    mode = Mode(training, batch_stats)
    features = backbone_lib.forward(
        params, images, cfg.backbone, mode=mode, bn_momentum=cfg.bn_momentum
    )
    levels = bifpn.forward(params, features, cfg, mode=mode)
    cls_outputs = head.forward(params, "class_head", levels, cfg, mode=mode)
    box_outputs = head.forward(params, "box_head", levels, cfg, mode=mode)
    return cls_outputs, box_outputs


def predict(
    params: Params,
    images: Tensor,
    cfg: ModelConfig,
    image_scales: Tensor | None = None,
    anchors: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Detections `[B, max_det, 6]` (x1, y1, x2, y2, score, class) and the count per image.

    `image_scales` [B] maps boxes back to original-image pixels; `anchors` may be passed in to
    avoid rebuilding them on every call.
    """
    cls_outputs, box_outputs = forward(params, images, cfg, training=False)
    if anchors is None:
        anchors = anchors_lib.generate_anchors(cfg, device=images.device)
    return postprocess(cls_outputs, box_outputs, anchors, cfg, image_scales)


def num_parameters(params: Params) -> int:
    """Learnable parameters (BatchNorm running statistics excluded)."""
    return sum(
        v.numel() for k, v in params.items() if not k.endswith(("running_mean", "running_var"))
    )
