"""Evaluate a checkpoint on a COCO-format split, or predict on a folder of images.

    python eval.py runs/builtin/best.safetensors                 # built-in val split
    python eval.py runs/coco/checkpoints/step-00100000.safetensors --data.root /data/coco
    python eval.py CKPT --predict photos/ --draw 8                # unannotated images, drawn boxes

Writes to --output: metrics.json (the 12 COCO numbers), detections.json (COCO results format:
original category ids, original-image pixels), and with --draw N, N images with boxes drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro
from rich.console import Console
from torchvision.io import write_jpeg
from torchvision.utils import draw_bounding_boxes

from detlite import checkpoint, distributed
from detlite.anchors import generate_anchors
from detlite.data import CategoryMap, CocoDetection, DevicePrefetcher, ImageFolder, eval_loader, load_coco, read_image
from detlite.postprocess import DYNAMO_CONFIG
from detlite.train_config import DataConfig, TrainConfig
from detlite.evaluate import clip_to_images, evaluate, metrics_table, write_results
from detlite.trainer import make_predict, resolve_data


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate a detlite checkpoint (COCO mAP) or run it on a folder of images."""

    checkpoint: Annotated[Path, tyro.conf.Positional]
    """A training checkpoint (step-*.safetensors), best.safetensors, or a converted file."""
    weights: Literal["ema", "params"] = "ema"
    """For training checkpoints: the EMA weights (as the reference evaluates) or the raw ones."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the val split is (default: the built-in dataset's)."""
    predict: Path | None = None
    """A folder of images to run on instead of an annotated split."""
    draw: int = 0
    """Write this many images with their detections drawn."""
    min_score: float = 0.3
    """Score threshold for drawn boxes and --predict output (metrics use 0.001)."""
    batch_size: int = 8
    compile: Literal["off", "default", "max-autotune"] = "off"
    device: str = "auto"
    output: Path = Path("runs/eval")


def category_map_of(path: Path, num_classes: int, dataset_map: CategoryMap | None) -> CategoryMap:
    """The label → category mapping the checkpoint was trained with.

    detlite checkpoints store it. For imported weights (no mapping stored), a 90-class model is
    taken as COCO's (label + 1, as effdet), otherwise the dataset's own mapping is used.
    """
    meta = checkpoint.read_metadata(path)
    if "category_map" in meta:
        return CategoryMap.from_json(meta["category_map"])
    if "train_state" in meta:
        extra = json.loads(meta["train_state"]).get("extra", {})
        if "category_map" in extra:
            return CategoryMap.from_json(extra["category_map"])
    if dataset_map is not None and dataset_map.num_classes == num_classes:
        return dataset_map
    if num_classes == 90:
        return CategoryMap(ids=tuple(range(1, 91)), names=tuple(f"class{i}" for i in range(1, 91)))
    raise ValueError(
        f"{path}: no category mapping stored and the data has a different class count than the "
        f"model ({num_classes}); evaluate on the data it was trained on"
    )


def _draw(image: torch.Tensor, dets: torch.Tensor, names: tuple[str, ...], min_score: float) -> torch.Tensor:
    keep = dets[:, 4] >= min_score
    dets = dets[keep]
    labels = [f"{names[int(c)]} {s:.2f}" for c, s in zip(dets[:, 5].tolist(), dets[:, 4].tolist())]
    return draw_bounding_boxes(image, dets[:, :4], labels=labels, width=2, colors="red")


def run(cfg: EvalConfig) -> dict:
    world = distributed.setup(cfg.device)
    console = Console()
    try:
        params, mcfg = checkpoint.load(cfg.checkpoint, device=world.device, weights=cfg.weights)
        predict = make_predict(mcfg, cfg.compile, world.device)
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.predict is not None:
            return _predict_folder(cfg, params, mcfg, predict, world, console)

        paths = resolve_data(TrainConfig(data=cfg.data))
        if paths.val_json is None or paths.val_images is None:
            raise ValueError("no val split: set --data.root or --data.val-json and --data.val-images")
        plain = CocoDetection(paths.val_json, paths.val_images)
        category_map = category_map_of(cfg.checkpoint, mcfg.num_classes, plain.category_map)
        dataset = CocoDetection(paths.val_json, paths.val_images, category_map)
        loader = eval_loader(
            dataset, image_size=mcfg.image_size, batch_size=cfg.batch_size,
            rank=world.rank, world_size=world.world_size, num_workers=cfg.data.num_workers,
        )
        anchors = generate_anchors(mcfg, device=world.device)

        def predict_batch(batch):
            return predict(params, batch["images"], 1.0 / batch["scales"], anchors)

        metrics, results = evaluate(predict_batch, loader, load_coco(paths.val_json), category_map, world.device)
        if world.is_main:
            write_results(out / "detections.json", results)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
            console.print(metrics_table(metrics, title=f"COCO bbox: {cfg.checkpoint.name} on {paths.val_json.name}"))
            console.print(f"wrote {out / 'metrics.json'} and {out / 'detections.json'} ({len(results)} detections)")
            if cfg.draw:
                _draw_dataset(cfg, dataset, results, category_map, out / "draw", console)
        return metrics
    finally:
        distributed.teardown()


def _draw_dataset(cfg, dataset, results, category_map, folder: Path, console) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    for index in range(min(cfg.draw, len(dataset))):
        image_id = dataset.image_id(index)
        rows = [
            [*r["bbox"][:2], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3], r["score"],
             category_map.id_to_label(r["category_id"])]
            for r in by_image.get(image_id, [])
        ]
        dets = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
        image = read_image(dataset.image_path(index))
        write_jpeg(_draw(image, dets, category_map.names, cfg.min_score), str(folder / f"{image_id}.jpg"))
    console.print(f"drew {min(cfg.draw, len(dataset))} images into {folder}")


@torch.no_grad()
def _predict_folder(cfg, params, mcfg, predict, world, console) -> dict:
    folder = ImageFolder(cfg.predict)
    try:
        category_map = category_map_of(cfg.checkpoint, mcfg.num_classes, None)
    except ValueError:
        category_map = CategoryMap(
            ids=tuple(range(mcfg.num_classes)), names=tuple(str(i) for i in range(mcfg.num_classes))
        )
    loader = eval_loader(folder, image_size=mcfg.image_size, batch_size=cfg.batch_size, num_workers=0)
    anchors = generate_anchors(mcfg, device=world.device)
    out = Path(cfg.output)
    predictions = []
    drawn = 0
    with torch._dynamo.config.patch(**DYNAMO_CONFIG):
        for batch in DevicePrefetcher(loader, world.device):
            dets, counts = predict(params, batch["images"], 1.0 / batch["scales"], anchors)
            dets = clip_to_images(dets, batch["orig_sizes"]).cpu()
            for row, n, index in zip(dets, counts.tolist(), batch["image_ids"].tolist()):
                if index < 0:
                    continue
                kept = row[:n][row[:n, 4] >= cfg.min_score]
                path = folder.paths[index]
                predictions.append(
                    {
                        "file": str(path),
                        "detections": [
                            {
                                "bbox_xyxy": [round(v, 2) for v in d[:4].tolist()],
                                "score": round(float(d[4]), 4),
                                "category_id": category_map.ids[int(d[5])],
                                "category": category_map.names[int(d[5])],
                            }
                            for d in kept
                        ],
                    }
                )
                if drawn < cfg.draw:
                    (out / "draw").mkdir(parents=True, exist_ok=True)
                    write_jpeg(_draw(read_image(path), kept, category_map.names, cfg.min_score), str(out / "draw" / f"{path.stem}.jpg"))
                    drawn += 1
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    console.print(f"{len(predictions)} images → {out / 'predictions.json'}" + (f"; drew {drawn} into {out / 'draw'}" if drawn else ""))
    return {"images": len(predictions)}


def main(argv: list[str] | None = None) -> int:
    run(tyro.cli(EvalConfig, args=argv, description=__doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
