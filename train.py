"""Train an EfficientDet, then evaluate it.

    python train.py                                   # Lite0 on the built-in dataset (CPU: minutes)
    python train.py coco --data.root /data/coco --model.preset d0
    python train.py builtin --steps 200 --batch-size 4
    python train.py --resume runs/builtin             # continue a run with its own settings
    python train.py --help / python train.py coco --help

The first word picks a recipe (default: builtin); every field of it can be overridden by a flag.
Runs under detlite-launch or torchrun unchanged (RANK / WORLD_SIZE / LOCAL_RANK). SIGTERM,
SIGINT or SIGUSR1 stop a run after saving a checkpoint. Errors print one line (--debug: with
the traceback).
"""

from __future__ import annotations

import tyro

from detlite import errors, host_memory, resume
from detlite.train_config import RECIPES, TrainConfig
from detlite.trainer import train


def parse(argv: list[str]) -> TrainConfig:
    if argv in (["-h"], ["--help"]):
        _default_recipe_help(argv)
    # No recipe named (no arguments, or flags only): the built-in recipe.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["builtin", *argv]
    cfg = tyro.extras.overridable_config_cli(
        RECIPES, args=argv, prog="train.py", description=__doc__
    )
    if cfg.resume is not None:
        cfg = resume.resume_config(cfg, resume.given_fields(argv))
    return cfg


def _default_recipe_help(argv: list[str]) -> None:
    """`train.py --help`: the recipes, then every flag with the default recipe's values."""
    recipes = "\n".join(
        f"    {name + (' (default)' if name == 'builtin' else ''):<18}{text}"
        for name, (text, _) in RECIPES.items()
    )
    description = (
        f"{__doc__}\nRecipes (the first word; `train.py RECIPE --help` shows its values):\n"
        f"{recipes}\n\nFlags, with the builtin recipe's values:"
    )
    tyro.cli(
        TrainConfig,
        default=RECIPES["builtin"][1],
        args=argv,
        prog="train.py [builtin|coco]",
        description=description,
    )


def main(argv: list[str] | None = None, *, as_program: bool = False) -> int:
    def run(args: list[str]) -> None:
        if as_program:  # a process-wide choice: the program's, not a library call's
            host_memory.keep_freed_memory()
        train(parse(args))

    return errors.command(run, argv)


if __name__ == "__main__":
    raise SystemExit(main(as_program=True))
