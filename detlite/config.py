"""Model configuration: frozen dataclasses and one preset per EfficientDet variant.

Every number a model needs lives here as a typed field, so a config serialised to JSON (see
`to_dict` / `from_dict`) rebuilds exactly the same network. Preset names follow effdet's
(`tf_efficientdet_d0`, ...); short aliases (`d0`, `lite0`, ...) point at the `tf_` variants.
`nvidia_efficientdet_d0` .. `d4` and `nvidia_tf_efficientdet_d0` .. `d7` are NVIDIA
DeepLearningExamples' configs of those names, on its own EfficientNet backbone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Activation = Literal["swish", "relu6", "relu"]
FpnWeighting = Literal["fastattn", "sum"]


@dataclass(frozen=True)
class BackboneConfig:
    """An EfficientNet or EfficientNet-Lite feature extractor."""

    arch: str = "tf_efficientnet_b0"
    """Name of the backbone as timm spells it (informational; the fields below define it)."""
    width: float = 1.0
    """Channel multiplier (compound scaling)."""
    depth: float = 1.0
    """Block-repeat multiplier (compound scaling)."""
    lite: bool = False
    """EfficientNet-Lite: no squeeze-excitation, fixed stem width and first/last stage depth."""
    tf_padding: bool = True
    """TensorFlow 'same' padding (asymmetric for stride 2), as the official TF weights need."""
    bn_eps: float = 1e-3
    act: Activation = "swish"
    drop_path_rate: float = 0.2
    """Stochastic depth rate of the last block; earlier blocks scale linearly from 0."""


@dataclass(frozen=True)
class LossConfig:
    """Target assignment and the detection loss (focal + Huber), as in the reference."""

    match_threshold: float = 0.5
    """Anchors with IoU >= this to a ground-truth box are positive."""
    unmatch_threshold: float = 0.5
    """Anchors with best IoU < this are background; between the two thresholds they are ignored."""
    crowd_ioa_threshold: float = 0.5
    """Background anchors covered by a crowd box at least this much (intersection / anchor area)
    are ignored rather than counted as negatives."""
    alpha: float = 0.25
    gamma: float = 1.5
    label_smoothing: float = 0.0
    huber_delta: float = 0.1
    box_loss_weight: float = 50.0


@dataclass(frozen=True)
class PostprocessConfig:
    """Turning raw head outputs into a fixed-size detection tensor."""

    max_detection_points: int = 5000
    """Candidates kept by top-k over all (anchor, class) logits before NMS."""
    max_det: int = 100
    """Detections per image in the output tensor `[B, max_det, 6]`."""
    nms_iou: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    """A whole EfficientDet: backbone, BiFPN, heads, anchors, loss and post-processing."""

    name: str = "tf_efficientdet_d0"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    num_classes: int = 90
    image_size: tuple[int, int] = (512, 512)
    """Input (height, width) in pixels; the network is built for this fixed size."""
    min_level: int = 3
    max_level: int = 7
    fpn_channels: int = 64
    fpn_cells: int = 3
    fpn_weighting: FpnWeighting = "fastattn"
    head_repeats: int = 3
    act: Activation = "swish"
    """Activation of the BiFPN and heads."""
    bn_eps: float = 1e-3
    """BatchNorm eps of the BiFPN and heads."""
    bn_momentum: float = 0.01
    """BatchNorm running-statistics momentum (PyTorch sense) for the whole network."""
    tf_padding: bool = True
    """TF 'same' padding in the BiFPN's pools (and convs, where it differs from symmetric)."""
    redundant_bias: bool = True
    """Keep a conv bias in front of BatchNorm (the TF checkpoints have one)."""
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    """Anchor (x, y) multipliers, per location."""
    anchor_scale: float = 4.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean of the [0, 1] input that the backbone was trained with."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return self.num_scales * len(self.aspect_ratios)

    def __post_init__(self) -> None:
        h, w = self.image_size
        stride = 2**self.max_level
        if h < stride or w < stride:
            raise ValueError(
                f"image_size {self.image_size} is smaller than the coarsest stride {stride} "
                f"(max_level {self.max_level}); use an image size of at least {stride}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")


# (width, depth) multipliers of EfficientNet B0-B7 and Lite0-4.
_SCALING = {
    "b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4),
    "b4": (1.4, 1.8), "b5": (1.6, 2.2), "b6": (1.8, 2.6), "b7": (2.0, 3.1),
    "lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2), "lite3": (1.2, 1.4),
    "lite4": (1.4, 1.8),
}  # fmt: skip


def _backbone(arch: str, drop_path_rate: float) -> BackboneConfig:
    tf = arch.startswith("tf_")
    # NVIDIA's own EfficientNet (DeepLearningExamples): timm's graph with symmetric padding but
    # TF's BatchNorm eps 1e-3. Its squeeze-excitation Linear layers are 1x1 convs here (the
    # same function); `weights.load(source="nvidia")` reshapes them.
    nvidia = arch.startswith("nvidia_")
    size = arch.rsplit("_", 1)[1]
    width, depth = _SCALING[size]
    lite = size.startswith("lite")
    return BackboneConfig(
        arch=arch,
        width=width,
        depth=depth,
        lite=lite,
        tf_padding=tf,
        bn_eps=1e-3 if tf or nvidia else 1e-5,
        act="relu6" if lite else "swish",
        drop_path_rate=drop_path_rate,
    )


# D6 and larger: plain sum weighting of BiFPN inputs.
_SUM = {"fpn_weighting": "sum"}
# Lite variants: sum weighting in the BiFPN, and inputs normalised to [-1, 1].
_LITE = {"fpn_weighting": "sum", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
# PyTorch-style variants: symmetric padding in the BiFPN and heads, no conv bias before BN.
_SYMMETRIC = {"tf_padding": False, "redundant_bias": False}

# name: (backbone, drop path, image, fpn channels, fpn cells, head repeats, anchor scale, extra)
# fmt: off
_TABLE: dict[str, tuple] = {
    "tf_efficientdet_d0": ("tf_efficientnet_b0", 0.2, 512, 64, 3, 3, 4.0, {}),
    "tf_efficientdet_d1": ("tf_efficientnet_b1", 0.2, 640, 88, 4, 3, 4.0, {}),
    "tf_efficientdet_d2": ("tf_efficientnet_b2", 0.2, 768, 112, 5, 3, 4.0, {}),
    "tf_efficientdet_d3": ("tf_efficientnet_b3", 0.2, 896, 160, 6, 4, 4.0, {}),
    "tf_efficientdet_d4": ("tf_efficientnet_b4", 0.2, 1024, 224, 7, 4, 4.0, {}),
    "tf_efficientdet_d5": ("tf_efficientnet_b5", 0.2, 1280, 288, 7, 4, 4.0, {}),
    "tf_efficientdet_d6": ("tf_efficientnet_b6", 0.2, 1280, 384, 8, 5, 4.0, _SUM),
    "tf_efficientdet_d7": ("tf_efficientnet_b6", 0.2, 1536, 384, 8, 5, 5.0, _SUM),
    "tf_efficientdet_d7x": (
        "tf_efficientnet_b7", 0.2, 1536, 384, 8, 5, 4.0, {"fpn_weighting": "sum", "max_level": 8},
    ),
    "tf_efficientdet_lite0": ("tf_efficientnet_lite0", 0.0, 320, 64, 3, 3, 3.0, _LITE),
    "tf_efficientdet_lite1": ("tf_efficientnet_lite1", 0.2, 384, 88, 4, 3, 3.0, _LITE),
    "tf_efficientdet_lite2": ("tf_efficientnet_lite2", 0.2, 448, 112, 5, 3, 3.0, _LITE),
    "tf_efficientdet_lite3": ("tf_efficientnet_lite3", 0.2, 512, 160, 6, 4, 4.0, _LITE),
    "tf_efficientdet_lite3x": ("tf_efficientnet_lite3", 0.2, 640, 200, 6, 4, 3.0, _LITE),
    "tf_efficientdet_lite4": ("tf_efficientnet_lite4", 0.2, 640, 224, 7, 4, 4.0, _LITE),
    # The one non-TF variant: timm's efficientnet_b0 (symmetric padding, backbone BN eps 1e-5).
    "efficientdet_d0": ("efficientnet_b0", 0.1, 512, 64, 3, 3, 4.0, _SYMMETRIC),
}
# NVIDIA DeepLearningExamples' configs on its own backbone, which always drops paths at rate 0.2
# (survival 0.8) and ignores the configs' backbone drop_path_rate. Its `efficientdet_d0`-`d3`
# pad symmetrically without redundant biases; its `efficientdet_d4` keeps the defaults (TF-'same'
# BiFPN, redundant biases), as do the `tf_` configs. The class head's padding to a multiple of
# 8 classes (--fused-focal-loss) is an artefact of the file, cut on import.
_NVIDIA_TABLE: dict[str, tuple] = {
    "nvidia_efficientdet_d0": ("nvidia_efficientnet_b0", 0.2, 512, 64, 3, 3, 4.0, _SYMMETRIC),
    "nvidia_efficientdet_d1": ("nvidia_efficientnet_b1", 0.2, 640, 88, 4, 3, 4.0, _SYMMETRIC),
    "nvidia_efficientdet_d2": ("nvidia_efficientnet_b2", 0.2, 768, 112, 5, 3, 4.0, _SYMMETRIC),
    "nvidia_efficientdet_d3": ("nvidia_efficientnet_b3", 0.2, 896, 160, 6, 4, 4.0, _SYMMETRIC),
    "nvidia_efficientdet_d4": ("nvidia_efficientnet_b4", 0.2, 1024, 224, 7, 4, 4.0, {}),
    **{
        "nvidia_" + name: ("nvidia_efficientnet_" + row[0].rsplit("_", 1)[1], *row[1:])
        for name, row in _TABLE.items()
        if name.startswith("tf_efficientdet_d") and name != "tf_efficientdet_d7x"
    },
}
# fmt: on
_TABLE.update(_NVIDIA_TABLE)
NVIDIA_PRESETS: tuple[str, ...] = tuple(_NVIDIA_TABLE)
"""NVIDIA's architectures (its checkpoints import with `weights.load(source="nvidia")`)."""

ALIASES: dict[str, str] = {
    **{f"d{i}": f"tf_efficientdet_d{i}" for i in range(8)},
    "d7x": "tf_efficientdet_d7x",
    **{f"lite{i}": f"tf_efficientdet_lite{i}" for i in range(5)},
    "lite3x": "tf_efficientdet_lite3x",
}

PRESETS: tuple[str, ...] = tuple(_TABLE) + tuple(ALIASES)


def _build(name: str) -> ModelConfig:
    arch, drop_path, size, fpn_ch, cells, repeats, anchor_scale, extra = _TABLE[name]
    backbone = _backbone(arch, drop_path)
    return ModelConfig(
        name=name,
        backbone=backbone,
        image_size=(size, size),
        fpn_channels=fpn_ch,
        fpn_cells=cells,
        head_repeats=repeats,
        anchor_scale=anchor_scale,
        act=backbone.act,
        fpn_weighting=extra.get("fpn_weighting", "fastattn"),
        max_level=extra.get("max_level", 7),
        tf_padding=extra.get("tf_padding", True),
        redundant_bias=extra.get("redundant_bias", True),
        mean=extra.get("mean", ModelConfig.mean),
        std=extra.get("std", ModelConfig.std),
    )


def preset(
    name: str,
    *,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    **overrides: Any,
) -> ModelConfig:
    """The config of a named variant, optionally with another class count or input size.

    `image_size` takes one int for a square input or (height, width). Other keyword arguments
    replace fields of `ModelConfig` as they are.
    """
    canonical = ALIASES.get(name, name)
    if canonical not in _TABLE:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    cfg = _build(canonical)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if image_size is not None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        overrides["image_size"] = (int(image_size[0]), int(image_size[1]))
    return replace(cfg, **overrides) if overrides else cfg


def feature_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(height, width) of the feature maps at levels min_level..max_level.

    Each stride-2 step rounds up, as a TF-'same' conv does, so odd sizes stay consistent between
    the backbone, the BiFPN resampling and the anchor grid.
    """
    h, w = cfg.image_size
    sizes = []
    for level in range(1, cfg.max_level + 1):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        if level >= cfg.min_level:
            sizes.append((h, w))
    return sizes


def to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """A JSON-serialisable dict that `from_dict` turns back into an equal config."""
    return dataclasses.asdict(cfg)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


# Fields that older detlite versions stored although they are runtime choices, not part of the
# model (which kernel computes the focal loss or NMS). Checkpoints holding them still load.
_RETIRED_FIELDS = {"loss": ("fused",), "postprocess": ("nms",)}


def from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a config from `to_dict` output (lists become tuples again); unknown keys are
    errors, except fields that older versions stored and that are no longer part of a model."""
    nested = {
        "backbone": BackboneConfig,
        "loss": LossConfig,
        "postprocess": PostprocessConfig,
    }
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown model config fields: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in nested:
            retired = _RETIRED_FIELDS.get(key, ())
            fields = {k: _tuples(v) for k, v in value.items() if k not in retired}
            kwargs[key] = nested[key](**fields)
        else:
            kwargs[key] = _tuples(value)
    return ModelConfig(**kwargs)


def to_json(cfg: ModelConfig) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def from_json(text: str) -> ModelConfig:
    return from_dict(json.loads(text))
