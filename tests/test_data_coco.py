"""COCO loading on a tiny hand-written annotation file with sparse category ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import write_jpeg, write_png

from detlite.data.coco import CategoryMap, CocoDetection, UnreadableImageError
from detlite.errors import DataError
from detlite.labels import IGNORE

CATEGORIES = [
    {"id": 90, "name": "toothbrush"},
    {"id": 1, "name": "person"},
    {"id": 7, "name": "train"},
]


def _ann(ann_id: int, image_id: int, category_id: int, bbox: list[float], **extra) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
        **extra,
    }


@pytest.fixture()
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    write_jpeg(torch.full((3, 40, 60), 200, dtype=torch.uint8), str(images / "rgb.jpg"))
    write_png(torch.full((1, 30, 20), 90, dtype=torch.uint8), str(images / "gray.png"))
    # torchvision cannot encode RGBA; PIL can.
    Image.new("RGBA", (24, 16), (50, 60, 70, 128)).save(images / "rgba.png")
    data = {
        "images": [
            {"id": 11, "file_name": "rgb.jpg", "height": 40, "width": 60},
            {"id": 3, "file_name": "gray.png", "height": 30, "width": 20},
            {"id": 25, "file_name": "rgba.png", "height": 16, "width": 24},
        ],
        "annotations": [
            _ann(1, 11, 7, [1, 2, 10, 20]),
            _ann(2, 11, 90, [5, 5, 30, 30], iscrowd=1),
            _ann(3, 11, 1, [40, 10, 0.5, 10]),  # degenerate: 0.5 px wide
            _ann(4, 11, 1, [50, 30, 20, 20]),  # runs off the image: clipped to x2=60, y2=40
            _ann(5, 11, 7, [0, 0, 8, 8], ignore=1),
            _ann(6, 25, 1, [2, 3, 4, 5]),
            _ann(7, 25, 90, [23.5, 0, 5, 5]),  # clipped to 0.5 px wide: degenerate
        ],
        "categories": CATEGORIES,
    }
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(data))
    return annotation_file, images


def test_category_map_round_trip() -> None:
    cmap = CategoryMap.from_categories(CATEGORIES)
    assert cmap.ids == (1, 7, 90)
    assert cmap.names == ("person", "train", "toothbrush")
    for label, cid in enumerate(cmap.ids):
        assert cmap.label_to_id(label) == cid
        assert cmap.id_to_label(cid) == label
    assert CategoryMap.from_json(cmap.to_json()) == cmap
    assert cmap.labels_to_ids(torch.tensor([[2, 0], [1, 1]])).tolist() == [[90, 1], [7, 7]]
    with pytest.raises(KeyError, match="42"):
        cmap.id_to_label(42)


def test_loading_remaps_ids_and_keeps_crowds_and_negatives(tiny_coco) -> None:
    dataset = CocoDetection(*tiny_coco)
    assert len(dataset) == 3
    assert dataset.category_map.ids == (1, 7, 90)
    # Ordered by image id; the middle one has no annotations and is kept as a negative.
    assert [dataset.image_id(i) for i in range(3)] == [3, 11, 25]
    assert dataset.stats.images == 3
    assert dataset.stats.negatives == 1
    assert dataset.stats.degenerate == 2
    assert dataset.stats.crowd == 2
    assert dataset.stats.boxes == 3

    gray = dataset[0]
    assert gray.image.shape == (3, 30, 20) and gray.image.dtype == torch.uint8
    assert gray.boxes.shape == (0, 4) and gray.labels.shape == (0,)
    assert gray.image_id == 3

    rgb = dataset[1]
    assert rgb.image.shape == (3, 40, 60)
    assert rgb.labels.tolist() == [1, IGNORE, 0, IGNORE]  # train -> 1, crowd, person -> 0, ignore
    expected = torch.tensor(
        [[1, 2, 11, 22], [5, 5, 35, 35], [50, 30, 60, 40], [0, 0, 8, 8]], dtype=torch.float32
    )
    assert torch.equal(rgb.boxes, expected)
    assert rgb.boxes.dtype == torch.float32 and rgb.labels.dtype == torch.int64

    rgba = dataset[2]
    assert rgba.image.shape == (3, 16, 24)
    assert rgba.image[:, 0, 0].tolist() == [50, 60, 70]  # alpha dropped, colour kept
    assert rgba.labels.tolist() == [0]


def test_dropped_boxes_are_counted_and_named(tiny_coco) -> None:
    stats = CocoDetection(*tiny_coco).stats
    assert stats.degenerate == 2 and stats.degenerate_ids == (3, 7)
    assert stats.report("train") == (
        "train: dropped 2 box(es) under 1 px wide or high after clipping to their image "
        "(annotation ids 3, 7)"
    )


def test_given_category_map_is_used_and_checked(tiny_coco) -> None:
    wider = CategoryMap(ids=(1, 5, 7, 90), names=("person", "bus", "train", "toothbrush"))
    dataset = CocoDetection(*tiny_coco, category_map=wider)
    assert dataset[1].labels.tolist() == [2, IGNORE, 0, IGNORE]
    narrower = CategoryMap(ids=(1, 90), names=("person", "toothbrush"))
    with pytest.raises(ValueError, match="category id 7"):
        CocoDetection(*tiny_coco, category_map=narrower)


def test_unreadable_image_names_the_file(tiny_coco) -> None:
    annotation_file, images = tiny_coco
    (images / "rgb.jpg").write_bytes(b"this is not a jpeg")
    dataset = CocoDetection(annotation_file, images)
    (images / "gray.png").unlink()  # gone after the dataset was built
    with pytest.raises(UnreadableImageError, match=r"rgb\.jpg"):
        dataset[1]
    with pytest.raises(UnreadableImageError, match=r"gray\.png"):
        dataset[0]
    # Missing when the dataset is built: found then, every missing file counted.
    with pytest.raises(DataError, match=r"1 of 3 image files are not in .*\(gray\.png\)"):
        CocoDetection(annotation_file, images)


def test_size_mismatch_with_the_json_is_an_error(tiny_coco) -> None:
    annotation_file, images = tiny_coco
    write_png(torch.zeros(3, 17, 24, dtype=torch.uint8), str(images / "rgba.png"))
    with pytest.raises(UnreadableImageError, match=r"rgba\.png"):
        CocoDetection(annotation_file, images)[2]
