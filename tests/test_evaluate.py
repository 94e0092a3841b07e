"""The evaluation path: ground truth turned into raw head outputs, post-processed, mapped back to
original pixels and scored by pycocotools must give mAP 1.0."""

import json

import pytest
import torch
from pycocotools.coco import COCO
from torchvision.io import write_jpeg

from detlite import anchors as anchors_lib
from detlite import config, targets
from detlite.data import CocoDetection, eval_loader
from detlite.evaluate import evaluate
from detlite.metrics import coco_metrics, to_coco_results
from detlite.postprocess import postprocess

# (width, height) of each image and its non-overlapping boxes [x, y, w, h, category id]: several
# aspect ratios, so the fit-to-input scale differs per image and the mapping back is exercised.
IMAGES = {
    1: ((300, 200), [[10, 20, 60, 40, 3], [150, 90, 100, 80, 7]]),
    2: ((150, 400), [[5, 5, 40, 120, 7], [60, 250, 70, 90, 90]]),
    3: ((128, 128), [[30, 30, 64, 64, 90]]),
    4: ((640, 480), [[0, 0, 200, 150, 3], [300, 200, 250, 260, 3], [420, 20, 90, 60, 7]]),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("gt")
    images, annotations = [], []
    for image_id, ((w, h), boxes) in IMAGES.items():
        write_jpeg(torch.full((3, h, w), 100, dtype=torch.uint8), str(root / f"{image_id}.jpg"))
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": w, "height": h})
        for x, y, bw, bh, cat in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                 "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": c, "name": f"c{c}"} for c in (3, 7, 90)]
    (root / "gt.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root / "gt.json", root


def _levels(flat: torch.Tensor, cfg: config.ModelConfig) -> list[torch.Tensor]:
    """Inverse of anchors.flatten_outputs for one output kind: [B, A_total, K] → per-level maps."""
    out, start = [], 0
    for h, w in config.feature_sizes(cfg):
        n = h * w * cfg.num_anchors
        part = flat[:, start : start + n].reshape(flat.shape[0], h, w, -1)
        out.append(part.permute(0, 3, 1, 2).contiguous())
        start += n
    return out


def test_ground_truth_as_detections_scores_map_one(dataset):
    gt_json, image_dir = dataset
    cfg = config.preset("d0", num_classes=3, image_size=256)
    ds = CocoDetection(gt_json, image_dir)
    loader = eval_loader(ds, image_size=cfg.image_size, batch_size=3, num_workers=0)
    anchors = anchors_lib.generate_anchors(cfg)
    index_of = {ds.image_id(i): i for i in range(len(ds))}

    def predict_batch(batch):
        # Ground truth in model pixels → the raw outputs a perfect model would give.
        gt_boxes = torch.zeros(len(batch["image_ids"]), 8, 4)
        gt_labels = torch.full((len(batch["image_ids"]), 8), -1)
        for row, (image_id, scale) in enumerate(
            zip(batch["image_ids"].tolist(), batch["scales"], strict=True)
        ):
            if image_id < 0:
                continue
            boxes, labels = ds.annotations(index_of[image_id])
            gt_boxes[row, : len(boxes)] = boxes * scale
            gt_labels[row, : len(labels)] = labels
        cls_t, box_t, _ = targets.assign(anchors, gt_boxes, gt_labels, cfg)
        logits = torch.full((*cls_t.shape, cfg.num_classes), -20.0)
        positive = cls_t >= 0
        logits[positive] = (
            torch.nn.functional.one_hot(cls_t[positive], cfg.num_classes) * 40.0 - 20.0
        )
        return postprocess(
            _levels(logits, cfg),
            _levels(box_t, cfg),
            anchors,
            cfg,
            image_scales=1.0 / batch["scales"],
        )

    metrics, results, per_class = evaluate(
        predict_batch, loader, COCO(str(gt_json)), ds.category_map, torch.device("cpu")
    )
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert {r["category_id"] for r in results} == {3, 7, 90}  # original ids, not labels
    assert [(r["category_id"], r["instances"], r["AP"]) for r in per_class] == [
        (3, 3, pytest.approx(1.0)), (7, 3, pytest.approx(1.0)), (90, 2, pytest.approx(1.0))
    ]  # fmt: skip


def test_no_detections_scores_zero(dataset):
    gt_json, _ = dataset
    metrics = coco_metrics(COCO(str(gt_json)), [])
    assert metrics["AP"] == 0.0


def test_results_use_original_ids_and_xywh():
    dets = torch.tensor([[[10.0, 20.0, 50.0, 80.0, 0.9, 1.0], [0, 0, 0, 0, 0.0005, 0.0]]])
    results = to_coco_results(dets, torch.tensor([2]), [42], label_to_category=[5, 17])
    assert results == [
        {
            "image_id": 42,
            "category_id": 17,
            "bbox": [10.0, 20.0, 40.0, 60.0],
            "score": pytest.approx(0.9),
        }
    ]


def test_a_split_parses_its_annotation_file_once(dataset, monkeypatch):
    from detlite import distributed
    from detlite.data import SplitPaths
    from detlite.evaluate import EvalSplit

    gt_json, image_dir = dataset
    parsed = []
    real_load = json.load

    def counting_load(file, *args, **kwargs):
        parsed.append(file.name)
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(json, "load", counting_load)  # what pycocotools and detlite parse with
    world = distributed.World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    split = EvalSplit.open(
        SplitPaths(gt_json, image_dir),
        lambda file_map: file_map,
        image_size=(128, 128),
        batch_size=2,
        world=world,
        num_workers=0,
    )
    assert parsed == [str(gt_json)]
    assert split.category_map.ids == (3, 7, 90) and len(split.dataset) == 4
    assert split.coco.getImgIds() == [1, 2, 3, 4]


def test_per_class_ap_equals_cocoeval_restricted_to_each_category(dataset):
    """Imperfect detections (shifted, missed, false, low-scored): each category's AP and AP50
    equal what COCOeval itself reports when evaluating that category alone."""
    import contextlib
    import io
    import random

    from pycocotools.cocoeval import COCOeval

    from detlite.metrics import coco_scores

    gt_json, _ = dataset
    coco = COCO(str(gt_json))
    rng = random.Random(0)
    results = []
    for image_id, (_, boxes) in IMAGES.items():
        for x, y, w, h, cat in boxes:
            for spread in (0.03, 0.15, 0.6):  # near, shifted and far copies, random scores
                dx, dy = rng.uniform(-spread, spread) * w, rng.uniform(-spread, spread) * h
                bbox = [x + dx, y + dy, w * (1 + rng.uniform(-spread, spread) / 2), h]
                results.append(
                    {"image_id": image_id, "category_id": cat, "bbox": bbox,
                     "score": rng.random()}
                )  # fmt: skip
        results.append(
            {"image_id": image_id, "category_id": 90, "bbox": [1, 1, 9, 9], "score": 0.5}
        )
    _, per_class = coco_scores(coco, results)
    for row in per_class:
        with contextlib.redirect_stdout(io.StringIO()):
            alone = COCOeval(coco, coco.loadRes([dict(r) for r in results]), iouType="bbox")
            alone.params.catIds = [row["category_id"]]
            alone.evaluate()
            alone.accumulate()
            alone.summarize()
        assert row["AP"] == pytest.approx(alone.stats[0], abs=1e-12)
        assert row["AP50"] == pytest.approx(alone.stats[1], abs=1e-12)
    assert len({round(r["AP"], 6) for r in per_class}) > 1  # the categories differ: a real check
    assert all(0 < r["AP"] < 1 for r in per_class), per_class


def test_no_detections_give_zero_ap_and_unreached_curves(dataset, tmp_path):
    """A model that detects nothing (e.g. freshly imported weights at a tiny size) is scored and
    plotted like any other: AP 0 and precision-recall curves that reach no recall point."""
    from detlite.metrics import coco_scores
    from detlite.plot import _pr_curves

    gt_json, _ = dataset
    metrics, per_class = coco_scores(COCO(str(gt_json)), [])
    assert metrics["AP"] == 0.0 and per_class
    assert all(r["pr50"] == r["pr"] == [-1.0] * 101 for r in per_class)
    curves = {"step": 1, "recall": [i / 100 for i in range(101)], "classes": per_class}
    assert _pr_curves(curves, tmp_path / "pr.png").is_file()


def test_model_with_other_categories_than_the_data_is_warned_about(tmp_path, caplog):
    from detlite import checkpoint, config, model
    from detlite.checkpoint.files import CATEGORY_MAP_KEY
    from detlite.data import CategoryMap
    from detlite.data.coco_categories import coco90_category_map
    from detlite.evaluate import _model_categories

    cfg = config.preset("lite0", num_classes=90, image_size=128)
    path = tmp_path / "coco.safetensors"
    coco = coco90_category_map()
    checkpoint.save(path, model.init(cfg), cfg, metadata={CATEGORY_MAP_KEY: coco.to_json()})
    shapes = CategoryMap(ids=(1, 3), names=("ellipse", "rectangle"))
    assert _model_categories(path, 90, shapes) == coco
    assert "id 1 is 'person' for the model, 'ellipse' in the annotations" in caplog.text
    caplog.clear()
    coco_val = CategoryMap(ids=(1, 3), names=("person", "car"))  # COCO's own, a subset
    assert _model_categories(path, 90, coco_val) == coco and not caplog.text
