"""Convert a foreign checkpoint into a detlite checkpoint (safetensors + model config).

    python -m detlite.weights tf_efficientdet_d0.pth d0.safetensors --preset d0 --source effdet
    python -m detlite.weights efficientnet_b0.pth b0.safetensors --preset efficientdet_d0 \\
        --source torchvision --part backbone --num-classes 3
    python -m detlite.weights model_best.pth.tar d0.safetensors --preset nvidia_efficientdet_d0 \\
        --source nvidia --ema
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from .. import checkpoint, config, errors, validate
from ..checkpoint.files import CATEGORY_MAP_KEY
from ..data.coco_categories import COCO_NUM_CLASSES, coco90_category_map
from ..errors import ConfigError
from . import Part, Source, convert_with_report, read_state_dict

# tyro lists these as the choices of --preset; Literal over a tuple expands to its items.
PresetName = Literal[config.PRESETS]  # type: ignore[valid-type]


@dataclass(frozen=True)
class ConvertArgs:
    """Import weights from an effdet, timm, torchvision, efficientnet_pytorch or NVIDIA
    EfficientDet-PyTorch checkpoint and write them, with the model config, as a detlite
    checkpoint."""

    src: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SRC")]
    """Checkpoint to import: .pth / .pth.tar / .pt / .bin (torch.load, weights only) or
    .safetensors."""
    dst: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="DST")]
    """Where to write the detlite checkpoint (safetensors, with the model config)."""
    preset: PresetName
    """Model variant the weights are for (e.g. tf_efficientdet_d0, d0, lite0, efficientdet_d0)."""
    source: Source
    """Key naming; timm, torchvision, lukemelas (efficientnet_pytorch) are classifier files;
    nvidia: NVIDIA DeepLearningExamples' EfficientDet (with an nvidia_* preset)."""
    part: Part = "all"
    """Import everything, or only the backbone (classifier files; BiFPN and heads start fresh)."""
    num_classes: int | None = None
    """Number of classes of the model (default: the preset's, 90)."""
    image_size: int | None = None
    """Square input size in pixels (default: the preset's)."""
    partial: bool = False
    """Skip tensors that do not fit, keeping initialised values (e.g. a fresh class head)."""
    seed: int = 0
    """Seed of the initialisation of every tensor that does not come from the file."""
    overwrite: bool = False
    """Replace DST if it exists (otherwise an existing file is never overwritten)."""
    ema: bool = False
    """Import a training checkpoint's EMA weights (state_dict_ema) instead of its plain ones."""


def check(args: ConvertArgs) -> None:
    """Refuse arguments that cannot work, before reading anything."""
    validate.check_existing(args.src, "SRC")
    if args.dst.is_dir():
        raise ConfigError(f"DST {args.dst}: a directory — give the file name to write")
    if args.dst.exists() and args.dst.resolve() == args.src.resolve():
        raise ConfigError(f"DST {args.dst} is SRC: choose another file to write")
    if args.dst.exists() and not args.overwrite:
        raise ConfigError(f"DST {args.dst} exists — choose another name, or pass --overwrite")
    validate.check_output_dir(args.dst.parent, "DST's folder")
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes must be an integer ≥ 1, got {args.num_classes}")
    validate.check_model_choice(args.preset, args.image_size, prefix="--")


def run(args: ConvertArgs) -> str:
    """Do the conversion; returns the one-line summary."""
    cfg = config.preset(args.preset, num_classes=args.num_classes, image_size=args.image_size)
    state_dict = read_state_dict(args.src, ema=args.ema)
    params, report = convert_with_report(
        state_dict,
        cfg,
        args.source,
        args.part,
        strict=not args.partial,
        seed=args.seed,
        origin=str(args.src),
    )
    metadata = {"imported_from": args.src.name, "import_source": args.source}
    if cfg.num_classes == COCO_NUM_CLASSES and args.part == "all":
        # A whole 90-class detector was trained on COCO: its labels are COCO ids 1..90.
        metadata[CATEGORY_MAP_KEY] = coco90_category_map().to_json()
    checkpoint.save(args.dst, params, cfg, metadata=metadata)
    return f"{args.src} -> {args.dst} ({cfg.name}, {args.part}): {report.summary()}"


def main(argv: list[str] | None = None) -> int:
    def convert(arguments: list[str]) -> None:
        args = tyro.cli(ConvertArgs, args=arguments, prog="python -m detlite.weights")
        check(args)
        print(run(args))

    return errors.command(convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
