"""A short look at the model: `python -m detlite.demo [--preset lite0] [--compile]`.

Builds a preset, runs the inference step on a synthetic batch eagerly (and compiled, if asked), and
prints shapes, parameter count and timings. It exists so that a fresh install can be checked in
seconds; training and evaluation are `train.py` / `eval.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import tyro
from rich.console import Console
from rich.table import Table

from . import config, errors, model, validate
from .steps import Predictor, StepOptions


@dataclass(frozen=True)
class DemoArgs:
    preset: str = "lite0"
    """Model preset (see detlite.config.PRESETS)."""
    image_size: int = 320
    batch_size: int = 2
    compile: bool = False
    """Also time a torch.compile'd predict (first call includes compilation)."""


def _time(fn, *args, repeats: int = 3) -> tuple[float, object]:
    out = fn(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    return (time.perf_counter() - start) / repeats, out


def main(args: DemoArgs) -> None:
    cfg = config.preset(args.preset, image_size=args.image_size)
    params = model.init(cfg, seed=0)
    images = torch.randint(0, 256, (args.batch_size, 3, *cfg.image_size), dtype=torch.uint8)
    table = Table(title=f"detlite demo: {cfg.name} at {cfg.image_size}, batch {args.batch_size}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{model.num_parameters(params):,}")
    seconds, (dets, counts) = _time(Predictor(cfg), params, images)
    table.add_row("detections tensor", str(tuple(dets.shape)))
    table.add_row("detections per image", str(counts.tolist()))
    table.add_row("eager predict", f"{seconds * 1000:.0f} ms")
    if args.compile:
        seconds, _ = _time(Predictor(cfg, StepOptions(compile="default")), params, images)
        table.add_row("compiled predict", f"{seconds * 1000:.0f} ms")
    Console().print(table)


def cli(argv: list[str] | None = None) -> int:
    def demo(arguments: list[str]) -> None:
        args = tyro.cli(DemoArgs, args=arguments, prog="python -m detlite.demo")
        validate.check_rules(args, validate.DEMO_RULES)
        validate.check_model_choice(args.preset, args.image_size, prefix="--")
        main(args)

    return errors.command(demo, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
