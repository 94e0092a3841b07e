"""Writing and reading the three artefacts, each with detlite's metadata (a JSON object: model
config, category ids and names, input size, batch, dtype, device) inside it:

    pt2   torch.export.save of the ExportedProgram; metadata in the extra file "detlite.json"
    aoti  AOTInductor package (aoti_compile_and_package); metadata under the key "detlite" of
          the package's metadata (`aoti_load_package(path).get_metadata()["detlite"]`)
    onnx  torch.onnx.export (dynamo) of the network; metadata in the model's metadata_props
          under "detlite"
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from ..errors import ConfigError, DetliteError

METADATA_KEY = "detlite"


class PackageError(DetliteError, ValueError):
    """A file that is not a readable detlite AOTInductor package."""


PT2_EXTRA_FILE = "detlite.json"
# The largest batch an artefact with a dynamic batch dimension accepts.
MAX_BATCH = 1024


def export_program(module: torch.nn.Module, example: tuple) -> tuple[ExportedProgram, str]:
    """`module` exported with a dynamic batch dimension on every input, or, where the graph
    specialises on the batch, with the example's; returns the program and which it is."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    shapes = tuple({0: batch} for _ in example)
    with torch.no_grad():
        try:
            return torch.export.export(module, example, dynamic_shapes=shapes), "dynamic"
        except torch._dynamo.exc.UserError:  # a constraint violation: the batch specialised
            return torch.export.export(module, example), f"fixed {example[0].shape[0]}"


def write_pt2(program: ExportedProgram, path: Path, metadata: dict[str, Any]) -> None:
    torch.export.save(program, path, extra_files={PT2_EXTRA_FILE: json.dumps(metadata)})


def load_pt2(path: Path) -> tuple[Callable, dict[str, Any]]:
    extra = {PT2_EXTRA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra[PT2_EXTRA_FILE])


def write_aoti(program: ExportedProgram, path: Path, metadata: dict[str, Any]) -> None:
    from torch._inductor import aoti_compile_and_package

    configs = {"aot_inductor.metadata": {METADATA_KEY: json.dumps(metadata)}}
    if not torch.cuda.is_available():  # its "No CUDA runtime is found" says nothing about CPU code
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)


def load_aoti(path: Path) -> tuple[Callable, dict[str, Any]]:
    """The package's runner (`runner(images, image_scales) -> [detections, counts]`) and
    metadata. Needs the detlite ops registered: `import detlite.ops`, or without the package,
    `torch.ops.load_library(".../libdetlite_ops.so")`."""
    from torch._inductor import aoti_load_package

    if not Path(path).is_file():
        raise PackageError(f"{path}: no such file")
    try:
        runner = aoti_load_package(str(path))
        return runner, json.loads(runner.get_metadata()[METADATA_KEY])
    except (RuntimeError, KeyError, ValueError) as error:  # not a package, or not detlite's
        reason = str(error).split("\n")[0]
        raise PackageError(
            f"{path}: not an AOTInductor package written by `python -m detlite.export` "
            f"({reason}) — export one with --format aoti"
        ) from None


def require_onnx() -> None:
    """Refuse `--format onnx` in one line when a package it needs is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not importlib.util.find_spec(m)]
    if missing:
        raise ConfigError(
            f"--format onnx needs {', '.join(missing)} (the export is written with onnx and "
            f"onnxscript, and checked under onnxruntime) — pip install {' '.join(missing)}"
        )


def _onnx_modules():
    require_onnx()
    import onnx

    return onnx


def write_onnx(module: torch.nn.Module, example: tuple, path: Path, metadata: dict) -> str:
    """Export the network module with a dynamic batch; returns "dynamic"."""
    onnx = _onnx_modules()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=["images"],
            output_names=["scores", "boxes"],
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(proto, str(path))
    return "dynamic"


def onnx_metadata(path: Path) -> dict[str, Any]:
    onnx = _onnx_modules()
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])


def onnxruntime_session(path: Path, spinning: bool = True):
    """An onnxruntime CPU session over the exported network; `spinning=False` keeps its idle
    threads from busy-waiting between calls (for timing it beside other code)."""
    require_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
