"""`detlite.Detector`: images of any size and kind (paths, uint8 tensors, PIL, numpy; RGB,
grayscale, RGBA) give boxes in each image's own pixels, equal to what the predictor gives on the
fitted image mapped back; category ids and names come from the checkpoint; bad inputs are
refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import named_checkpoint
from PIL import Image

import detlite
from detlite.data import CategoryMap
from detlite.data.transforms import eval_transform
from detlite.errors import DataError, DetliteError
from detlite.steps import Predictor

CATEGORIES = CategoryMap(ids=(5, 9), names=("cat", "dog"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("detector") / "tiny.safetensors"
    return named_checkpoint(path, CATEGORIES, image_size=128, seed=1)


def _pictures(tmp_path):
    generator = torch.Generator().manual_seed(0)
    rgba = torch.randint(0, 256, (4, 150, 90), generator=generator, dtype=torch.uint8)
    png = tmp_path / "rgba.png"
    Image.fromarray(rgba.permute(1, 2, 0).numpy(), mode="RGBA").save(png)
    gray = np.random.default_rng(1).integers(0, 256, (70, 310), dtype=np.uint8)
    return {
        "rgb tensor": torch.randint(0, 256, (3, 300, 100), generator=generator, dtype=torch.uint8),
        "gray tensor": torch.randint(0, 256, (1, 64, 64), generator=generator, dtype=torch.uint8),
        "rgba png path": png,
        "grayscale PIL": Image.fromarray(gray, mode="L"),
        "numpy hwc": np.random.default_rng(2).integers(0, 256, (200, 260, 3), dtype=np.uint8),
    }


def test_mixed_inputs_give_boxes_inside_each_image(tiny, tmp_path):
    path, _, _ = tiny
    pictures = _pictures(tmp_path)
    sizes = [(300, 100), (64, 64), (150, 90), (70, 310), (200, 260)]
    detector = detlite.Detector.from_checkpoint(path, device="cpu", batch_size=2)
    found = detector.predict(list(pictures.values()), min_score=0.0)
    assert len(found) == len(pictures)
    for result, (height, width) in zip(found, sizes, strict=True):
        boxes = result["boxes"]
        assert len(boxes) > 0
        assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
        assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert set(result["labels"].tolist()) <= {5, 9}
        assert result["names"] == [{5: "cat", 9: "dog"}[i] for i in result["labels"].tolist()]
        assert (result["scores"][:-1] >= result["scores"][1:]).all()


def test_a_result_is_the_predictor_on_the_fitted_image_mapped_back(tiny):
    path, params, cfg = tiny
    picture = torch.randint(0, 256, (3, 90, 250), dtype=torch.uint8)
    detector = detlite.Detector.from_checkpoint(path, device="cpu", batch_size=1)
    found = detector.predict(picture, min_score=0.0)
    canvas, scale = eval_transform(picture, cfg.image_size)
    dets, counts = Predictor(cfg)(params, canvas[None], torch.tensor([1.0 / scale]))
    rows = dets[0, : counts[0]]
    expected = rows[:, :4].clone()
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 250)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 90)
    torch.testing.assert_close(found["boxes"], expected)
    torch.testing.assert_close(found["scores"], rows[:, 4])
    assert found["labels"].tolist() == [CATEGORIES.ids[int(c)] for c in rows[:, 5]]


def test_min_score_and_batched_tensor_input(tiny):
    path, _, _ = tiny
    detector = detlite.Detector.from_checkpoint(path, device="cpu")
    batch = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
    everything = detector.predict(batch, min_score=0.0)
    assert isinstance(everything, list) and len(everything) == 3
    cut = float(everything[0]["scores"].median())
    some = detector.predict(batch[0], min_score=cut)
    assert (some["scores"] >= cut).all()
    assert len(some["scores"]) == int((everything[0]["scores"] >= cut).sum())


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.rand(3, 32, 32), "a torch.float32 tensor — pass uint8 pixels"),
        (torch.zeros(2, 32, 32, dtype=torch.uint8), "a tensor of shape (2, 32, 32)"),
        (np.zeros((5, 5, 5, 5), dtype=np.uint8), "an array of shape (5, 5, 5, 5)"),
        ("no/such/file.jpg", "cannot read image no/such/file.jpg"),
        (3.5, "a float — pass a file path"),
    ],
)
def test_bad_images_are_refused_with_one_line(tiny, image, message):
    detector = detlite.Detector.from_checkpoint(tiny[0], device="cpu")
    with pytest.raises(DataError) as raised:
        detector.predict([torch.zeros(3, 8, 8, dtype=torch.uint8), image])
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert str(raised.value).startswith(("image 1", "cannot read"))


@pytest.mark.parametrize("content", [None, b"not a zip archive"])
def test_a_file_that_is_not_a_package_is_refused_with_one_line(tmp_path, content):
    path = tmp_path / "det.pt2"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DetliteError) as raised:
        detlite.Detector.from_package(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert ("no such file" if content is None else "not an AOTInductor package") in message
