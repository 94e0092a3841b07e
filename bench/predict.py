"""Benchmark of whole-image prediction on this machine: prints a Markdown table.

    python bench/predict.py                                    # Lite0@320 and D0@512, batch 1 and 8
    python bench/predict.py --models lite0@320 --batches 1 --repeats 5 --skip aoti

Per model and batch: effdet 0.4.1's DetBenchPredict (eager; its input already normalised float,
which spares it the uint8 → float step detlite times), detlite's predictor eager and compiled
(torch.compile), the AOTInductor package that `python -m detlite.export` writes, and the ONNX
network (scores and boxes of every anchor, no NMS) under onnxruntime (CPU provider, its threads
not spinning between calls). Every row but ONNX includes top-k, decoding and NMS. Weights are
random (timing does not depend on them beyond NMS, which sees the same kind of candidates in
both). Times are medians over --repeats calls after --warmup calls (compilation and export
excluded), taken in rounds that call every implementation once in turn; the ratio is effdet's
time over the row's. Run on an idle machine. Before timing, each batch's detections are checked
against the unoptimised path (one `Tensor.topk` over all logits instead of the top-k from the
best anchors),
printed on stderr. Every row runs with freed host memory kept for reuse (detlite.host_memory,
as eval.py runs); --release-freed-memory times all under glibc's default.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]  # effdet helpers, timing
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from effdet_ref import effdet_config  # noqa: E402
from oracles import plain_top_k  # noqa: E402
from presets import PRESETS  # noqa: E402
from timing import add_host_memory_flag, apply_host_memory_flag, interleaved_medians  # noqa: E402

from detlite import checkpoint, config, model, ops, postprocess  # noqa: E402
from detlite.export import ExportSpec, export, formats  # noqa: E402
from detlite.export.compare import detections_agreement  # noqa: E402
from detlite.steps import Predictor, StepOptions  # noqa: E402


def plain_top_k_agreement(predictor: Predictor, params, images: torch.Tensor) -> str:
    """Detections of the eager predictor against the same with one `Tensor.topk` over every
    (anchor, class) logit instead of detlite's top-k from the best anchors (the unoptimised
    path)."""
    cfg = predictor.cfg
    with torch.no_grad():
        fast = predictor(params, images)
        detlite_top_k = postprocess.top_k
        postprocess.top_k = plain_top_k
        try:
            plain = predictor(params, images)
        finally:
            postprocess.top_k = detlite_top_k
    identical = all(torch.equal(a, b) for a, b in zip(plain, fast, strict=True))
    verdict = "identical" if identical else detections_agreement(plain, fast).line("fp32")
    what = "top-k from the best anchors against Tensor.topk"
    return f"{cfg.name} batch {len(images)}: {what}: {verdict}"


def effdet_runner(cfg, images: torch.Tensor) -> Callable[[], object]:
    from effdet import DetBenchPredict, EfficientDet

    net = EfficientDet(effdet_config(cfg), pretrained_backbone=False)
    bench = DetBenchPredict(net).eval()
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255
    normalised = (images.float() - mean) / std
    return lambda: bench(normalised)


def exported(kind: str, ckpt: Path, folder: Path):
    """The runner of an exported artefact (written and checked by detlite.export)."""
    suffix = ".onnx" if kind == "onnx" else ".pt2"
    out = folder / f"{ckpt.stem}-{kind}{suffix}"
    export(ckpt, out, ExportSpec(format=kind, batch=2))
    if kind == "aoti":
        return formats.load_aoti(out)[0]
    # Without spinning: idle onnxruntime threads would otherwise busy-wait into the next
    # runner's turn of the interleaved rounds and slow it.
    session = formats.onnxruntime_session(out, spinning=False)
    return lambda images, _scales: session.run(None, {"images": images.numpy()})


def model_rows(name: str, size: int, batches: list[int], args, folder: Path):
    # Compile each model afresh: Dynamo's record of which sizes varied (from the previous
    # model's batches) would otherwise compile this one for dynamic shapes, which is slow.
    torch._dynamo.reset()
    cfg = config.preset(name, num_classes=90, image_size=size)
    params = model.init(cfg)
    ckpt = folder / f"{name}-{size}.safetensors"
    checkpoint.save(ckpt, params, cfg)
    eager, compiled = Predictor(cfg), Predictor(cfg, StepOptions(compile="default"))
    runners = {"detlite eager": lambda i, s: eager(params, i, s)}
    runners["detlite compiled"] = lambda i, s: compiled(params, i, s)
    for kind in ("aoti", "onnx"):
        if kind not in args.skip:
            runners[f"{kind} package" if kind == "aoti" else "onnxruntime (network only)"] = (
                exported(kind, ckpt, folder)
            )
    short = f"{cfg.name.removeprefix('tf_efficientdet_')}@{size}"
    for batch in batches:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        scales = torch.ones(batch)
        print(plain_top_k_agreement(eager, params, images), file=sys.stderr)
        timed = {"effdet eager": effdet_runner(cfg, images)}
        for label, run in runners.items():
            timed[label] = lambda r=run, i=images, s=scales: r(i, s)
        with torch.no_grad():  # effdet's bench would otherwise record autograd graphs
            medians = interleaved_medians(timed, args.warmup, args.repeats)
        for label, seconds in medians.items():
            yield short, batch, label, seconds, medians["effdet eager"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="lite0@320,d0@512")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated: aoti, onnx")
    add_host_memory_flag(parser)
    args = parser.parse_args()
    memory = apply_host_memory_flag(args)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"# detlite prediction benchmark, {datetime.date.today().isoformat()}")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; {ops.status()}; "
        f"{memory}"
    )
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| model | batch | implementation | median (ms) | img/s | × effdet |")
    print("|---|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            name, size = spec.split("@")
            for row in model_rows(PRESETS.get(name, name), int(size), batches, args, Path(tmp)):
                label, batch, impl, seconds, base = row
                print(
                    f"| {label} | {batch} | {impl} | {seconds * 1e3:,.1f} | "
                    f"{batch / seconds:,.1f} | {base / seconds:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
