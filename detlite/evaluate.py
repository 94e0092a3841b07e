"""Evaluation: weights on an annotated COCO-format split → detections in original-image pixels →
the 12 COCO metrics; and `run`, everything `eval.py` does.

    split = EvalSplit.open(paths, category_map, image_size=..., batch_size=..., world=world)
    metrics, results, per_class = split.evaluate(predictor, params)

The annotation file is parsed once and shared by the dataset and pycocotools' evaluator. Boxes
are mapped back with each image's scale, clipped to the original image, and gathered from every
rank.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
from rich.console import Console

from . import checkpoint, distributed, host_memory, validate
from .data import (
    CategoryMap,
    CocoDetection,
    EvalDataConfig,
    SplitPaths,
    eval_loader,
    load_coco,
    val_split,
)
from .data.loader import shutdown_workers
from .detect import PredictBatch, batch_predictor, detections
from .detector import Detector
from .draw import draw_results
from .errors import ConfigError
from .layers import Params
from .metrics import (
    coco_scores,
    metrics_table,
    per_class_table,
    to_coco_results,
    write_per_class_csv,
    write_results,
)
from .predictions import FolderJob, predict_folder
from .steps import CompileMode, Predictor, StepOptions
from .stopping import StopRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate a detlite checkpoint (COCO mAP) or run it on a folder of images."""

    checkpoint: Annotated[Path, tyro.conf.Positional]
    """A training checkpoint (step-*.safetensors), best.safetensors, or a converted file."""
    weights: Literal["auto", "ema", "params"] = "auto"
    """For training checkpoints: the EMA weights (as the reference evaluates) or the raw ones;
    auto takes the EMA when the run kept one."""
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    """Where the val split is (default: the built-in dataset's)."""
    predict: Path | None = None
    """A folder of images to run on instead of an annotated split."""
    draw: int = 0
    """Draw this many images into drawn/: ground truth (white) and detections (a colour per
    class)."""
    min_score: float = 0.3
    """Score threshold for drawn boxes and --predict output (metrics use 0.001)."""
    batch_size: int = 8
    """Images per batch on each process."""
    compile: CompileMode = "off"
    """torch.compile mode of the inference step (worth it for large splits only)."""
    device: str = "auto"
    """"auto" = cuda:LOCAL_RANK when CUDA is available, else cpu."""
    output: Path | None = None
    """Where the results go. Default: a new folder beside the checkpoint, eval-<checkpoint name>
    (predict-<name> with --predict), numbered -2, -3, … so that no evaluation replaces another."""


def output_dir(cfg: EvalConfig) -> Path:
    """--output, or the first free `eval-<checkpoint stem>[-N]` beside the checkpoint."""
    if cfg.output is not None:
        return Path(cfg.output)
    kind = "predict" if cfg.predict is not None else "eval"
    base = Path(cfg.checkpoint).parent / f"{kind}-{Path(cfg.checkpoint).stem}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def _make_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"--output {path}: cannot create it ({error.strerror}) — choose another --output"
        ) from None


def evaluate(
    predict_batch: PredictBatch,
    loader,
    coco_gt,
    category_map: CategoryMap,
    device: torch.device,
    stop: StopRequest | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], list[dict], list[dict]]:
    """(the 12 metrics, the COCO results, the per-class AP rows) over a COCO split.
    `predict_batch(batch)` → (detections, counts) in original-image pixels (see
    `batch_predictor`); results are gathered from every rank."""
    results: list[dict] = []
    total = len(loader)
    for done, (batch, dets, counts) in enumerate(detections(predict_batch, loader, device, stop)):
        keep = (batch["image_ids"] >= 0).nonzero().flatten().tolist()
        image_ids = batch["image_ids"][keep].tolist()
        results += to_coco_results(dets[keep], counts[keep], image_ids, category_map.ids)
        if progress is not None:
            progress(done + 1, total)
    results = gather_results(results)
    metrics, per_class = coco_scores(coco_gt, results, coco_gt.getImgIds())
    return metrics, results, per_class


def gather_results(local: list[dict]) -> list[dict]:
    """All ranks' results on every rank (identity in a single process)."""
    return [r for part in distributed.all_gather_objects(local) for r in part]


@dataclass(frozen=True)
class EvalSplit:
    """An annotated split ready for evaluation: dataset, parsed annotations, sharded loader."""

    dataset: CocoDetection
    coco: Any
    """The pycocotools `COCO` of the annotation file (parsed once, shared with the dataset)."""
    loader: Any
    device: torch.device

    @property
    def category_map(self) -> CategoryMap:
        return self.dataset.category_map

    @classmethod
    def open(
        cls,
        paths: SplitPaths,
        category_map: CategoryMap | Callable[[CategoryMap], CategoryMap] | None,
        *,
        image_size: tuple[int, int],
        batch_size: int,
        world: distributed.World,
        num_workers: int,
    ) -> EvalSplit:
        """`category_map`: the labels to use, or a function of the file's own categories that
        picks them (None: the file's own)."""
        coco = load_coco(paths.annotations)
        if callable(category_map):
            category_map = category_map(CategoryMap.of_coco(coco))
        dataset = CocoDetection(paths.annotations, paths.images, category_map, coco=coco)
        loader = eval_loader(
            dataset,
            image_size=image_size,
            batch_size=batch_size,
            rank=world.rank,
            world_size=world.world_size,
            num_workers=num_workers,
        )
        return cls(dataset, coco, loader, world.device)

    def close(self) -> None:
        """Stop the loader's worker processes."""
        shutdown_workers(self.loader)

    def evaluate(
        self,
        predictor: Predictor,
        params: Params,
        stop: StopRequest | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[str, float], list[dict], list[dict]]:
        """(metrics, COCO results, per-class AP rows) of `params` on this split;
        `progress(batches done, total)` after each batch."""
        predict = batch_predictor(predictor, params)
        host_memory.return_free_memory()  # a training run's free blocks, before this peak
        return evaluate(
            predict, self.loader, self.coco, self.category_map, self.device, stop, progress
        )


def run(cfg: EvalConfig) -> dict:
    """eval.py: evaluate a checkpoint on a split, or predict on a folder (`--predict`)."""
    validate.check_eval_config(cfg)
    world = distributed.setup(cfg.device)
    try:
        # Every rank takes rank 0's choice: a folder made by one rank must not shift the others'.
        chosen = distributed.all_gather_objects(output_dir(cfg))[0]
        cfg = dataclasses.replace(cfg, output=Path(chosen))
        if cfg.predict is not None:
            detector = Detector.from_checkpoint(
                cfg.checkpoint, world.device, cfg.compile, cfg.weights, cfg.batch_size
            )
            if world.is_main:
                _make_output_dir(cfg.output)
            job = FolderJob(cfg.predict, cfg.output, cfg.draw, cfg.min_score)
            return predict_folder(job, detector)
        params, mcfg = checkpoint.load(cfg.checkpoint, device=world.device, weights=cfg.weights)
        predictor = Predictor(mcfg, StepOptions(compile=cfg.compile), world.device)
        if world.is_main:
            _make_output_dir(cfg.output)
        return _evaluate_checkpoint(cfg, predictor, params, world)
    finally:
        distributed.teardown()


def _model_categories(path: Path, num_classes: int, file_map: CategoryMap) -> CategoryMap:
    """The checkpoint's categories, with a warning when none of the data's categories has the
    name the model gives its id (e.g. a COCO model scored on other data)."""
    chosen = checkpoint.category_map(path, num_classes, file_map)
    names = dict(zip(chosen.ids, chosen.names, strict=True))
    pairs = zip(file_map.ids, file_map.names, strict=True)
    shared = [(i, names[i], theirs) for i, theirs in pairs if i in names]
    if shared and all(ours.lower() != theirs.lower() for _, ours, theirs in shared):
        logger.warning(
            "%s: its categories are not the data's (id %s is %r for the model, %r in the "
            "annotations): detections are scored against other categories that share their ids",
            path, *shared[0],
        )  # fmt: skip
    return chosen


def _evaluate_checkpoint(cfg: EvalConfig, predictor: Predictor, params: Params, world) -> dict:
    paths = val_split(cfg.data)
    assert paths is not None  # evaluation falls back to the built-in val split
    num_classes = predictor.cfg.num_classes
    split = EvalSplit.open(
        paths,
        lambda file_map: _model_categories(cfg.checkpoint, num_classes, file_map),
        image_size=predictor.cfg.image_size,
        batch_size=cfg.batch_size,
        world=world,
        num_workers=cfg.data.num_workers,
    )
    try:
        metrics, results, per_class = split.evaluate(predictor, params)
    finally:
        split.close()
    if world.is_main:
        _report(cfg, paths, split, metrics, results, per_class)
    return metrics


def _report(cfg: EvalConfig, paths: SplitPaths, split: EvalSplit, metrics, results, per_class):
    console = Console()
    out = Path(cfg.output)
    write_results(out / "detections.json", results)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_per_class_csv(out / "per_class_ap.csv", per_class)
    title = f"COCO bbox: {cfg.checkpoint.name} on {paths.annotations.name}"
    console.print(metrics_table(metrics, title=title))
    console.print(per_class_table(per_class))
    console.print(
        f"wrote {out / 'metrics.json'}, {out / 'per_class_ap.csv'} and {out / 'detections.json'}"
        f" ({len(results)} detections)"
    )
    if cfg.draw:
        folder = out / "drawn"
        count = draw_results(
            split.dataset, results, split.category_map, folder, cfg.draw, cfg.min_score
        )
        console.print(f"drew {count} images (ground truth and predictions) into {folder}")
