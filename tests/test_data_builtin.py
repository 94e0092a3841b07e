"""The built-in dataset is valid COCO, deterministic, and written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detlite.data import builtin
from detlite.data.coco import CocoDetection, load_coco


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> builtin.BuiltinPaths:
    return builtin.ensure_builtin(tmp_path_factory.mktemp("cache") / builtin.VERSION)


def test_it_is_valid_coco_with_every_class_in_both_splits(paths) -> None:
    for split, json_file, image_dir in [
        ("train", paths.train_json, paths.train_images),
        ("val", paths.val_json, paths.val_images),
    ]:
        coco = load_coco(json_file)
        assert len(coco.getImgIds()) == builtin.SPLITS[split]
        assert sorted(coco.getCatIds()) == list(builtin.CATEGORY_IDS)
        anns = coco.loadAnns(coco.getAnnIds())
        for ann in anns:
            image = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w >= 1 and h >= 1
            assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
        present = {a["category_id"] for a in anns if not a["iscrowd"]}
        assert present == set(builtin.CATEGORY_IDS), split
        assert any(a["iscrowd"] for a in anns), f"{split} has no crowd region"

        dataset = CocoDetection(json_file, image_dir)
        assert dataset.stats.degenerate == 0
        assert dataset.stats.negatives > 0
        assert dataset.category_map.names == builtin.CLASS_NAMES
        for index in range(0, len(dataset), 8):  # decodes, at the size the JSON says
            sample = dataset[index]
            assert min(sample.image.shape[1:]) >= builtin.IMAGE_SIDE[0]


def test_regenerating_gives_identical_files(paths, tmp_path: Path) -> None:
    # Image i depends only on (split, i), so a short regeneration must reproduce the first
    # images byte for byte, and their annotations exactly.
    prefix = {"train": 48, "val": 16}
    builtin.generate(tmp_path, splits=prefix)
    for split, count in prefix.items():
        for image_id in range(1, count + 1):
            name = f"{split}/{image_id:06d}.jpg"
            assert (tmp_path / name).read_bytes() == (paths.root / name).read_bytes(), name
        full = json.loads((paths.root / "annotations" / f"{split}.json").read_text())
        short = json.loads((tmp_path / "annotations" / f"{split}.json").read_text())
        assert short["images"] == full["images"][:count]
        assert short["annotations"] == [a for a in full["annotations"] if a["image_id"] <= count]
        assert short["categories"] == full["categories"]


def test_existing_dataset_is_reused_and_no_staging_is_left(paths) -> None:
    manifest = paths.root / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert builtin.ensure_builtin(paths.root) == paths
    assert manifest.stat().st_mtime_ns == stamp
    assert json.loads(manifest.read_text())["version"] == builtin.VERSION
    assert [p.name for p in paths.root.parent.iterdir()] == [paths.root.name]


def test_an_incomplete_directory_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(FileExistsError, match="manifest"):
        builtin.ensure_builtin(tmp_path / "half")


def test_default_location_can_be_overridden(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DETLITE_BUILTIN_DIR", str(tmp_path / "x"))
    assert builtin.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("DETLITE_BUILTIN_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert builtin.default_cache_dir() == tmp_path / "detlite" / builtin.VERSION
