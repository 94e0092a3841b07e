"""Export a detlite checkpoint for deployment, checked against eager prediction.

    python -m detlite.export runs/builtin/best.safetensors det.pt2                 # AOTInductor
    python -m detlite.export CKPT det_program.pt2 --format pt2 --batch 4
    python -m detlite.export CKPT det.onnx --format onnx                           # network only

Prints where the artefact went, its batch (dynamic, or fixed), the check's differences, and how
to load it. See docs/deploy.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from .. import errors, ops, validate
from ..errors import ConfigError
from . import ExportDtype, ExportReport, ExportSpec, Format, export, formats

SUFFIXES = {"aoti": ".pt2", "pt2": ".pt2", "onnx": ".onnx"}


@dataclass(frozen=True)
class ExportArgs:
    """Export a checkpoint as an AOTInductor package, a torch.export program, or ONNX."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CKPT")]
    """A detlite checkpoint (training checkpoint, best.safetensors or converted weights)."""
    output: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """The file to write: .pt2 for aoti and pt2, .onnx for onnx."""
    format: Format = "aoti"
    """aoti: compiled predictor package (C++ or Python, no detlite needed); pt2: the
    ExportedProgram; onnx: network + box decoding, NMS left to the runtime."""
    batch: int = 1
    """Images in the check batch (and the batch, if the graph cannot take a dynamic one)."""
    image_size: int | None = None
    """Square input size in pixels (default: the checkpoint's)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Device the artefact runs on."""
    dtype: ExportDtype = "fp32"
    """Autocast dtype of the network (the decode and NMS stay float32); onnx: fp32 only."""
    weights: Literal["auto", "ema", "params"] = "auto"
    """For training checkpoints: EMA weights (auto: when the run kept them) or raw ones."""
    overwrite: bool = False
    """Replace OUT if it exists (otherwise an existing file is never overwritten)."""


def check(args: ExportArgs) -> None:
    """Refuse arguments that cannot work, before loading anything."""
    validate.check_existing(args.checkpoint, "CKPT")
    suffix = SUFFIXES[args.format]
    if args.output.suffix != suffix:
        raise ConfigError(f"OUT {args.output}: --format {args.format} writes a {suffix} file")
    if args.output.is_dir():
        raise ConfigError(f"OUT {args.output}: a directory — give the file name to write")
    if args.output.exists() and not args.overwrite:
        raise ConfigError(f"OUT {args.output} exists — choose another name, or pass --overwrite")
    validate.check_output_dir(args.output.parent, "OUT's folder")
    if args.batch < 1:
        raise ConfigError(f"--batch must be an integer ≥ 1, got {args.batch}")
    if args.image_size is not None and args.image_size < 1:
        raise ConfigError(f"--image-size must be a positive integer, got {args.image_size}")
    if args.format == "onnx" and args.dtype != "fp32":
        raise ConfigError(
            "--format onnx exports float32 (runtimes such as TensorRT lower precision "
            "themselves) — drop --dtype"
        )
    validate.check_device(args.device)
    if args.format == "onnx":
        formats.require_onnx()


def summary(report: ExportReport, args: ExportArgs) -> str:
    size = report.path.stat().st_size / 2**20
    lines = [
        f"wrote {report.path} ({args.format}, {args.dtype}, {args.device}, batch "
        f"{report.batch}, {size:.1f} MiB) in {report.seconds:.0f} s",
        f"check on {args.batch} image(s) against eager predict: "
        f"{report.agreement.line(args.dtype)}",
    ]
    if args.format == "aoti":
        library = ops.library_path() or "<the detlite ops library: see docs/ops.md>"
        lines.append(
            f"load without detlite: torch.ops.load_library('{library}'); "
            f"torch._inductor.aoti_load_package('{report.path}')"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def run(arguments: list[str]) -> None:
        args = tyro.cli(ExportArgs, args=arguments, prog="python -m detlite.export")
        check(args)
        spec = ExportSpec(
            args.format, args.batch, args.image_size, args.device, args.dtype, args.weights
        )
        print(summary(export(args.checkpoint, args.output, spec), args))

    return errors.command(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
