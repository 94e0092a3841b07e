"""Train / eval transforms keep boxes on the pixels they describe."""

from __future__ import annotations

import pytest
import torch

from detlite.data.transforms import eval_transform, fit_scale, hflip_boxes, train_transform

WHITE = 255


def _scene(height: int, width: int, rects: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Black image with solid white rectangles (x1, y1, x2, y2: pixel edges)."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for x1, y1, x2, y2 in rects:
        image[:, y1:y2, x1:x2] = WHITE
    return image


def _pixel_box(mask: torch.Tensor) -> torch.Tensor | None:
    """Tight xyxy box (pixel edges) of the True pixels of a [H, W] mask."""
    if not mask.any():
        return None
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)


def _white(canvas: torch.Tensor) -> torch.Tensor:
    # Above half intensity on every channel: the rectangle, not the black ground nor the
    # (124, 116, 104) padding. Half intensity is where a resized edge crosses, so the
    # thresholded rectangle has the exact transformed extent up to rounding.
    return (canvas > 127).all(dim=0)


def test_hflip_twice_is_identity() -> None:
    boxes = torch.tensor([[0.0, 1.0, 10.0, 20.0], [33.5, 2.0, 64.0, 9.0]])
    once = hflip_boxes(boxes, width=64)
    assert torch.equal(once[1], torch.tensor([0.0, 2.0, 30.5, 9.0]))
    assert torch.equal(hflip_boxes(once, width=64), boxes)


def test_flip_without_scaling_moves_box_with_pixels() -> None:
    rect = (10, 20, 40, 30)
    image = _scene(64, 96, [rect])
    boxes = torch.tensor([rect], dtype=torch.float32)
    canvas, out_boxes, _ = train_transform(
        image, boxes, torch.tensor([0]), (64, 96), rng_seed=0, scale_range=(1.0, 1.0), hflip=1.0
    )
    assert torch.equal(out_boxes[0], torch.tensor([56.0, 20.0, 86.0, 30.0]))
    assert torch.equal(_pixel_box(_white(canvas)), out_boxes[0])


@pytest.mark.parametrize("scale_range", [(0.1, 2.0), (0.3, 0.6)])
@pytest.mark.parametrize("seed", range(16))
def test_scale_and_crop_keep_boxes_on_their_pixels(seed: int, scale_range) -> None:
    # A real box and a crowd region, far enough apart that they never merge in the mask.
    rects = [(30, 40, 110, 90), (170, 120, 260, 190)]
    image = _scene(200, 300, rects)
    boxes = torch.tensor(rects, dtype=torch.float32)
    labels = torch.tensor([2, -2])
    canvas, out_boxes, out_labels = train_transform(
        image, boxes, labels, 160, rng_seed=seed, scale_range=scale_range
    )
    assert canvas.shape == (3, 160, 160) and canvas.dtype == torch.uint8
    white = _white(canvas)
    for box, label in zip(out_boxes, out_labels, strict=True):
        # Each output box must cover the white pixels inside it: compare with the tight box
        # of the white pixels in a region around it.
        x1, y1, x2, y2 = box.tolist()
        region = torch.zeros_like(white)
        region[max(0, int(y1) - 2) : int(y2) + 3, max(0, int(x1) - 2) : int(x2) + 3] = True
        seen = _pixel_box(white & region)
        assert seen is not None, f"label {label}: no pixels under box {box}"
        assert torch.allclose(seen, box, atol=1.0), f"label {label}: box {box}, pixels {seen}"
    # Nothing white is left unboxed.
    covered = torch.zeros_like(white)
    for x1, y1, x2, y2 in out_boxes.tolist():
        covered[int(y1) : int(y2) + 1, int(x1) : int(x2) + 1] = True
    assert not (white & ~covered).any()
    assert set(out_labels.tolist()) <= {2, -2}


def test_train_transform_is_a_function_of_the_seed() -> None:
    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8)
    boxes = torch.tensor([[5.0, 5.0, 60.0, 50.0]])
    labels = torch.tensor([1])
    a = train_transform(image, boxes, labels, 128, rng_seed=7)
    b = train_transform(image, boxes, labels, 128, rng_seed=7)
    c = train_transform(image, boxes, labels, 128, rng_seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_boxes_under_one_pixel_are_dropped() -> None:
    image = _scene(100, 100, [])
    boxes = torch.tensor([[10.0, 10.0, 15.0, 15.0], [20.0, 20.0, 80.0, 80.0]])
    _, out_boxes, out_labels = train_transform(
        image, boxes, torch.tensor([0, 1]), 100, rng_seed=0, scale_range=(0.1, 0.1)
    )
    assert out_labels.tolist() == [1]
    assert torch.allclose(out_boxes, torch.tensor([[2.0, 2.0, 8.0, 8.0]]))


def test_non_square_output() -> None:
    image = _scene(120, 80, [(10, 10, 30, 50)])
    for seed in range(8):
        canvas, boxes, _ = train_transform(
            image, torch.tensor([[10.0, 10.0, 30.0, 50.0]]), torch.tensor([0]), (96, 160), seed
        )
        assert canvas.shape == (3, 96, 160)
        assert (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 96).all()


@pytest.mark.parametrize("out_size", [512, (384, 640), (640, 384)])
def test_eval_transform_scale_round_trip(out_size) -> None:
    rect = (100, 60, 400, 300)
    image = _scene(480, 640, [rect])
    canvas, scale = eval_transform(image, out_size)
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    assert canvas.shape == (3, out_h, out_w)
    assert scale == pytest.approx(min(out_h / 480, out_w / 640))
    # The resized image fills one side exactly and is pasted top-left.
    _, (rh, rw) = fit_scale((480, 640), out_size)
    assert rh == out_h or rw == out_w
    assert (canvas[:, rh:, :] == torch.tensor([124, 116, 104]).view(3, 1, 1)).all()
    # A box found on the canvas maps back to the original pixels by dividing by scale.
    model_box = _pixel_box(_white(canvas))
    original = model_box / scale
    assert torch.allclose(original, torch.tensor(rect, dtype=torch.float32), atol=1.0 / scale + 0.5)
