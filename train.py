"""Train an EfficientDet, then evaluate it.

    python train.py                                   # Lite0 on the built-in dataset (CPU: minutes)
    python train.py coco --data.root /data/coco --model.preset d0
    python train.py builtin --steps 200 --batch-size 4
    python train.py --help / python train.py coco --help

The first word picks a recipe (default: builtin); every field of it can be overridden by a flag.
Runs under detlite-launch or torchrun unchanged (RANK / WORLD_SIZE / LOCAL_RANK).
"""

from __future__ import annotations

import sys

import tyro

from detlite.train_config import RECIPES, TrainConfig
from detlite.trainer import train


def parse(argv: list[str]) -> TrainConfig:
    # No recipe named (no arguments, or flags only): the built-in recipe.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["builtin", *argv]
    return tyro.extras.overridable_config_cli(
        RECIPES, args=argv, prog="train.py", description=__doc__
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse(list(sys.argv[1:] if argv is None else argv))
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
