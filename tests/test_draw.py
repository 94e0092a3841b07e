"""Drawings: ground truth and predictions in different colours, one colour per class, labels that
do not pile up, the input's own file format."""

import torch
from torchvision.io import decode_image

from detlite.draw import (
    TRUTH_COLOUR,
    _labels_that_fit,
    class_colour,
    draw_detections,
    drawing_name,
    save_image,
)


def _pixel(image: torch.Tensor, x: int, y: int) -> tuple[int, ...]:
    return tuple(image[:, y, x].tolist())


def test_truth_and_predictions_differ_and_each_class_has_its_colour():
    image = torch.zeros(3, 120, 200, dtype=torch.uint8)
    truth = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    dets = torch.tensor(
        [[100.0, 20.0, 150.0, 70.0, 0.9, 0.0], [20.0, 80.0, 180.0, 110.0, 0.8, 1.0]]
    )
    drawn = draw_detections(image, dets, ("cat", "dog"), 0.3, truth)
    assert _pixel(drawn, 10, 35) == TRUTH_COLOUR  # left edge of the ground-truth box
    assert _pixel(drawn, 150, 50) == class_colour(0)  # right edge of the first prediction
    assert _pixel(drawn, 180, 95) == class_colour(1)  # right edge of the second
    assert len({TRUTH_COLOUR, class_colour(0), class_colour(1)}) == 3
    assert _pixel(drawn, 35, 35) == (0, 0, 0)  # inside a box nothing is painted


def test_below_min_score_is_not_drawn_and_no_detection_leaves_the_image():
    image = torch.zeros(3, 50, 50, dtype=torch.uint8)
    dets = torch.tensor([[5.0, 5.0, 40.0, 40.0, 0.1, 0.0]])
    assert torch.equal(draw_detections(image, dets, ("a",), 0.3), image)
    assert torch.equal(draw_detections(image, dets[:0], ("a",), 0.3), image)


def test_a_label_over_an_earlier_one_is_left_off():
    boxes = torch.tensor([[10.0, 10.0, 90.0, 90.0], [12.0, 12.0, 80.0, 80.0], [10.0, 60.0, 50, 90]])
    assert _labels_that_fit(boxes, ["a 0.9", "b 0.8", "c 0.7"]) == ["a 0.9", "", "c 0.7"]


def test_drawings_keep_the_input_format(tmp_path):
    image = torch.randint(0, 255, (3, 20, 30), dtype=torch.uint8)
    assert drawing_name(tmp_path / "x.PNG") == "x.PNG"
    assert drawing_name(tmp_path / "y.webp") == "y.jpg"
    save_image(tmp_path / "x.png", image)
    assert torch.equal(decode_image(str(tmp_path / "x.png")), image)  # PNG: lossless
    save_image(tmp_path / "x.jpg", image)
    assert (tmp_path / "x.jpg").read_bytes()[:2] == b"\xff\xd8"
