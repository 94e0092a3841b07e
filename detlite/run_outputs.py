"""What a training run writes for a person to read (rank 0; see `detlite.results` for the files):
the config and the label statistics at the start, a drawing of the first augmented batch, after
each evaluation the per-class AP, the precision-recall curves and a grid of val predictions
against ground truth, and the plots, redrawn after each evaluation and at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import results
from .data import CategoryMap, CocoDetection
from .draw import draw_detections, drawn_image, grid, results_by_image, save_image
from .model import num_parameters
from .rundir import TRAIN_BATCH, VAL_PREDICTIONS

_VAL_GRID_IMAGES = 16
_GRID_MIN_SCORE = 0.3


def at_start(run_dir: Path, cfg: Any, train_set: CocoDetection) -> None:
    results.write_config(run_dir, cfg)
    boxes, labels = train_set.all_annotations()
    results.write_labels(run_dir, boxes, labels, train_set.category_map.names)


def first_batch(run_dir: Path, batch: dict, names: tuple[str, ...]) -> None:
    """The first augmented training batch with its boxes, to check the augmentation (once per
    run directory: a resumed run keeps the drawing of its start)."""
    path = Path(run_dir) / TRAIN_BATCH
    if path.exists():
        return
    images = batch["images"].cpu()
    drawn = []
    for image, boxes, labels in zip(
        images, batch["boxes"].cpu(), batch["labels"].cpu(), strict=True
    ):
        keep = labels >= 0
        rows = torch.cat([boxes[keep], torch.ones(int(keep.sum()), 1), labels[keep, None]], 1)
        drawn.append(draw_detections(image, rows.float(), names, 0.0, scores=False))
    save_image(path, grid(drawn, cell=256))


def after_evaluation(
    run_dir: Path,
    step: int,
    per_class: list[dict],
    val_set: CocoDetection,
    coco_results: list[dict],
    category_map: CategoryMap,
) -> None:
    results.write_evaluation(run_dir, step, per_class)
    by_image = results_by_image(coco_results)
    count = min(_VAL_GRID_IMAGES, len(val_set))
    drawn = [drawn_image(val_set, i, by_image, category_map, _GRID_MIN_SCORE) for i in range(count)]
    save_image(Path(run_dir) / VAL_PREDICTIONS, grid(drawn))
    plots(run_dir)


def plots(run_dir: Path) -> list[Path]:
    from .plot import plot_run  # matplotlib only when plotting

    return plot_run(run_dir)


def dashboard_start(dash, run, train_set: CocoDetection) -> None:
    """What the dashboard knows from the start: the header, and the train split's boxes dropped
    at loading (under 1 px after clipping; the start-up notes list their ids)."""
    dash.set_header(header(run, len(train_set)))
    dash.warn_count("dropped boxes", train_set.stats.degenerate)


def header(run, num_images: int) -> dict[str, str]:
    """The dashboard's header: what this run is."""
    mcfg, cfg = run.model_cfg, run.cfg
    val = len(run.val.dataset) if run.val is not None else 0
    return {
        "run": str(cfg.output),
        "model": f"{mcfg.name} at {mcfg.image_size}, {mcfg.num_classes} classes, "
        f"{num_parameters(run.params) / 1e6:.2f} M parameters",
        "data": f"{num_images} train / {val} val images, global batch {run.global_batch}",
        "device": f"{run.world.device} × {run.world.world_size}, {cfg.precision.dtype}, "
        f"compile {cfg.compile}",
    }
