"""Export a checkpoint for deployment: the whole predictor (`pt2`, `aoti`) or the network with
box decoding (`onnx`), each checked against eager prediction before it is kept.

    python -m detlite.export runs/builtin/best.safetensors det.pt2 --format aoti
    report = detlite.export.export(checkpoint, output, ExportSpec(format="pt2"))

`pt2` and `aoti` take uint8 images [B, 3, H, W] (H, W the model's input size) and image scales
[B] (original pixels per model pixel) and return detections [B, max_det, 6] (x1, y1, x2, y2,
score, class index) and counts [B]: normalisation, network, decode and NMS are inside. `onnx`
takes the images and returns every anchor's scores [B, A, C] and boxes [B, A, 4] (input pixels);
NMS is left to the target runtime (docs/deploy.md). The artefact is written under a temporary
name and renamed into place only once the check passed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

import detlite

from .. import checkpoint
from ..config import ModelConfig
from ..config import to_dict as config_to_dict
from ..data.transforms import DEFAULT_FILL
from ..errors import ConfigError, DetliteError
from ..steps import StepOptions
from . import formats
from .compare import Agreement, dense_agreement, detections_agreement
from .modules import network_module, predictor_module

Format = Literal["aoti", "pt2", "onnx"]
ExportDtype = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class ExportSpec:
    format: Format = "aoti"
    batch: int = 1
    image_size: int | None = None
    device: str = "cpu"
    dtype: ExportDtype = "fp32"
    weights: Literal["auto", "ema", "params"] = "auto"


@dataclass(frozen=True)
class ExportReport:
    path: Path
    batch: str
    agreement: Agreement
    seconds: float
    metadata: dict[str, Any]


class ExportCheckError(DetliteError):
    """The artefact does not reproduce eager prediction (it is not kept)."""


def _with_image_size(cfg: ModelConfig, size: int | None) -> ModelConfig:
    if size is None:
        return cfg
    try:
        return dataclasses.replace(cfg, image_size=(size, size))
    except ValueError as error:
        raise ConfigError(f"--image-size {size}: {error}") from None


def example_batch(batch: int, cfg: ModelConfig, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed pseudo-random batch (uint8 images, image scales) to trace and check with."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, *cfg.image_size), generator=generator)
    scales = torch.linspace(1.0, 2.0, batch)
    return images.to(torch.uint8).to(device), scales.to(device)


def metadata(cfg: ModelConfig, source: Path, spec: ExportSpec, batch: str) -> dict[str, Any]:
    """What a deployment needs to know about the artefact, stored inside it."""
    categories = checkpoint.prediction_category_map(source, cfg.num_classes)
    return {
        "detlite_version": detlite.__version__,
        "torch_version": torch.__version__,
        "format": spec.format,
        "source": source.name,
        "image_size": list(cfg.image_size),
        "fill": list(DEFAULT_FILL),  # the canvas colour around a fitted image
        "batch": batch,
        "dtype": spec.dtype,
        "device": spec.device,
        "category_ids": list(categories.ids),
        "category_names": list(categories.names),
        "model_config": config_to_dict(cfg),
    }


def _write_and_check(path: Path, spec: ExportSpec, params, cfg, source: Path):
    """Write the artefact to `path`; returns (batch kind, metadata, agreement)."""
    options = StepOptions(dtype=spec.dtype)
    images, scales = example_batch(spec.batch, cfg, spec.device)
    if spec.format == "onnx":
        module = network_module(params, cfg, options)
        trace = example_batch(max(spec.batch, 2), cfg, spec.device)[:1]
        meta = metadata(cfg, source, spec, "dynamic")
        formats.write_onnx(module, trace, path, meta)
        session = formats.onnxruntime_session(path)
        got = session.run(None, {"images": images.cpu().numpy()})
        with torch.no_grad():
            return "dynamic", meta, dense_agreement(module(images), got)
    module = predictor_module(params, cfg, options)
    program, batch = formats.export_program(
        module, example_batch(max(spec.batch, 2), cfg, spec.device)
    )
    if batch != "dynamic":  # the graph specialised: export at the batch asked for
        program, batch = formats.export_program(module, (images, scales))
    meta = metadata(cfg, source, spec, batch)
    write, load = {
        "pt2": (formats.write_pt2, formats.load_pt2),
        "aoti": (formats.write_aoti, formats.load_aoti),
    }[spec.format]
    write(program, path, meta)
    runner, _ = load(path)
    with torch.no_grad():
        return (
            batch,
            meta,
            detections_agreement(module(images, scales), runner(images, scales), spec.dtype),
        )


def export(source: Path, output: Path, spec: ExportSpec) -> ExportReport:
    """Export the checkpoint at `source` to `output` (see the module docstring). The artefact
    is kept only if it reproduces eager prediction on an example batch within
    `compare.TOLERANCES`; otherwise `ExportCheckError` says by how much it differs."""
    started = time.perf_counter()
    params, cfg = checkpoint.load(source, device=spec.device, weights=spec.weights)
    cfg = _with_image_size(cfg, spec.image_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name  # same suffix: the writers require .pt2 / .onnx
        batch, meta, agreement = _write_and_check(staged, spec, params, cfg, source)
        if not agreement.within(spec.dtype):
            raise ExportCheckError(
                f"{output}: the {spec.format} export does not reproduce eager prediction "
                f"({agreement.line(spec.dtype)}); nothing was written — please report this"
            )
        os.replace(staged, output)
    return ExportReport(output, batch, agreement, time.perf_counter() - started, meta)
