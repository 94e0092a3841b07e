"""Anchor grid, box coder and output flattening against effdet 0.4.1."""

from __future__ import annotations

import pytest
import torch
from effdet_ref import effdet_anchors, swap_xy

from detlite import config
from detlite.anchors import (
    EPS,
    decode,
    encode,
    flatten_outputs,
    generate_anchors,
    num_anchors_total,
)


@pytest.mark.parametrize(
    "name, image_size, expected_count",
    [
        ("tf_efficientdet_d0", 512, 49_104),
        ("tf_efficientdet_d0", (384, 256), 18_414),
        # Not a multiple of 128: fractional strides, where numpy's arange rounding shows.
        ("tf_efficientdet_d0", (500, 333), None),
        ("tf_efficientdet_lite0", None, None),
    ],
)
def test_anchors_equal_effdet(name, image_size, expected_count):
    cfg = config.preset(name, image_size=image_size)
    ours = generate_anchors(cfg)
    reference = swap_xy(effdet_anchors(cfg).boxes)
    assert ours.dtype == torch.float32
    assert ours.shape == reference.shape == (num_anchors_total(cfg), 4)
    if expected_count is not None:
        assert ours.shape[0] == expected_count
    assert torch.equal(ours, reference)


def test_anchors_device_and_dtype():
    cfg = config.preset("d0", image_size=256)
    anchors = generate_anchors(cfg, device="cpu", dtype=torch.float64)
    assert anchors.dtype == torch.float64
    assert torch.equal(anchors.float(), generate_anchors(cfg))


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 400
    wh = torch.rand(n, 2, generator=generator) * 200 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    boxes, anchors = _random_boxes(1000, g), _random_boxes(1000, g)
    codes = encode(boxes, anchors)
    torch.testing.assert_close(decode(codes, anchors), boxes, rtol=0, atol=1e-3)
    # Broadcasting over a batch dimension against shared anchors.
    batched = encode(boxes.reshape(10, 100, 4), anchors[:100])
    torch.testing.assert_close(batched[3], encode(boxes[300:400], anchors[:100]))


def test_coder_matches_effdet():
    from effdet.anchors import decode_box_outputs
    from effdet.object_detection import BoxList, FasterRcnnBoxCoder

    g = torch.Generator().manual_seed(1)
    boxes, anchors = _random_boxes(1000, g), _random_boxes(1000, g)
    coder = FasterRcnnBoxCoder(eps=EPS)
    ref_codes = coder.encode(BoxList(swap_xy(boxes)), BoxList(swap_xy(anchors)))
    assert torch.equal(encode(boxes, anchors), ref_codes)
    codes = torch.randn(1000, 4, generator=g) * 0.5
    ref_boxes = decode_box_outputs(codes, swap_xy(anchors), output_xyxy=True)
    assert torch.equal(decode(codes, anchors), ref_boxes)


def test_flatten_outputs_follows_channel_layout():
    cfg = config.preset("d0", image_size=(256, 384), num_classes=5)
    g = torch.Generator().manual_seed(2)
    a, c, batch = cfg.num_anchors, cfg.num_classes, 2
    sizes = config.feature_sizes(cfg)
    cls_maps = [torch.randn(batch, a * c, h, w, generator=g) for h, w in sizes]
    box_maps = [torch.randn(batch, a * 4, h, w, generator=g) for h, w in sizes]
    cls_flat, box_flat = flatten_outputs(cls_maps, box_maps, cfg)
    assert cls_flat.shape == (batch, num_anchors_total(cfg), c)
    assert box_flat.shape == (batch, num_anchors_total(cfg), 4)

    offset = 0
    for level, (h, w) in enumerate(sizes):
        for b, y, x, anchor in [(0, 0, 0, 0), (1, h - 1, w - 1, a - 1), (1, h // 2, w // 3, 4)]:
            index = offset + (y * w + x) * a + anchor
            for cls in range(c):
                assert cls_flat[b, index, cls] == cls_maps[level][b, anchor * c + cls, y, x]
            for k in range(4):
                assert box_flat[b, index, k] == box_maps[level][b, anchor * 4 + k, y, x]
        offset += h * w * a
