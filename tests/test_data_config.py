"""Where the `--data.*` flags point: explicit files, a COCO root, or the built-in dataset; and
every path that would be used checked to exist, naming its flag."""

import pytest

from detlite.data import DataConfig, EvalDataConfig, train_split, uses_builtin, val_split


@pytest.fixture
def coco_root(tmp_path):
    (tmp_path / "annotations").mkdir()
    for name in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{name}2017.json").write_text("{}")
        (tmp_path / f"{name}2017").mkdir()
    return tmp_path


def test_root_gives_both_splits_and_explicit_flags_win(coco_root, tmp_path_factory):
    cfg = DataConfig(root=coco_root)
    assert not uses_builtin(cfg)
    train = train_split(cfg)
    assert train.annotations == coco_root / "annotations" / "instances_train2017.json"
    assert train.images == coco_root / "train2017"
    assert val_split(cfg).images == coco_root / "val2017"
    other = tmp_path_factory.mktemp("other") / "val.json"
    other.write_text("{}")
    assert val_split(DataConfig(root=coco_root, val_json=other)).annotations == other


def test_nothing_named_is_the_builtin_dataset(builtin_paths):
    cfg = DataConfig(builtin_dir=builtin_paths.root)
    assert uses_builtin(cfg)
    assert train_split(cfg).annotations == builtin_paths.train_json
    assert val_split(cfg).annotations == builtin_paths.val_json
    assert val_split(EvalDataConfig(builtin_dir=builtin_paths.root)).images == (
        builtin_paths.val_images
    )


def test_explicit_train_files_without_val_flags_evaluate_nothing(coco_root):
    cfg = DataConfig(
        train_json=coco_root / "annotations" / "instances_train2017.json",
        train_images=coco_root / "train2017",
    )
    assert train_split(cfg).images == coco_root / "train2017"
    assert val_split(cfg, builtin_default=uses_builtin(cfg)) is None


def test_val_flags_are_never_silently_replaced(tmp_path, builtin_paths):
    """eval.py with --data.val-json/--data.val-images that do not exist must fail, not fall
    back to the built-in split."""
    images = tmp_path / "images"
    images.mkdir()
    missing = EvalDataConfig(val_json=tmp_path / "nope.json", val_images=images)
    expected = r"nope\.json does not exist \(set --data\.val-json"
    with pytest.raises(FileNotFoundError, match=expected):
        val_split(missing)
    with pytest.raises(ValueError, match=r"--data\.val-json and --data\.val-images must be given"):
        val_split(EvalDataConfig(val_images=images, builtin_dir=builtin_paths.root))
    with pytest.raises(ValueError, match=r"--data\.train-json and --data\.train-images"):
        train_split(DataConfig(train_json=tmp_path / "x.json"))


def test_missing_root_names_the_flags(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--data\.train-json or --data\.root"):
        train_split(DataConfig(root=tmp_path / "nowhere"))
