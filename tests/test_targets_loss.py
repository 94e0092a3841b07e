"""Batched target assignment and the detection loss against effdet 0.4.1's AnchorLabeler and
DetectionLoss, plus the behaviours effdet has no counterpart for (crowd regions, ignore band,
padding, external normaliser)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from effdet_ref import effdet_config, effdet_targets, random_head_outputs
from oracles import per_box_crowd_coverage, torchvision_overlaps, with_torchvision_overlaps

from detlite import config
from detlite.anchors import flatten_outputs, generate_anchors
from detlite.loss import detection_loss
from detlite.targets import _crowd_coverage, assign, overlaps

IMAGE = 256
MAX_GT = 64


def _random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=g) * IMAGE
    size = torch.exp(torch.rand(n, 2, generator=g) * 5.0) + 2.0  # 3 to ~150 px, log-uniform
    return torch.cat([centre - size / 2, centre + size / 2], dim=1).clamp(0, IMAGE)


@pytest.fixture(scope="module")
def cfg():
    return config.preset("d0", image_size=IMAGE)


@pytest.fixture(scope="module")
def anchors(cfg):
    return generate_anchors(cfg)


@pytest.fixture(scope="module")
def batch():
    """Four images: no boxes, 3 boxes, 60 boxes, and awkward cases with padding in between."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.zeros(4, MAX_GT, 4)
    labels = torch.full((4, MAX_GT), -1, dtype=torch.long)
    boxes[1, :3] = _random_boxes(3, g)
    labels[1, :3] = torch.tensor([5, 0, 89])
    boxes[2, :60] = _random_boxes(60, g)
    labels[2, :60] = torch.randint(0, 90, (60,), generator=g)
    boxes[2, 60:] = torch.tensor([0.0, 0.0, IMAGE, IMAGE])  # padding rows holding a plausible box
    # Image 3: duplicate boxes with different classes (both force-match the same anchor: the
    # lower row must win), a tiny box (force-matched far below the IoU threshold), a box across
    # the border, and padding rows between the real ones.
    rows = {
        0: ([40.0, 40.0, 90.0, 100.0], 7),
        2: ([40.0, 40.0, 90.0, 100.0], 12),
        3: ([120.0, 130.0, 123.0, 132.0], 3),
        5: ([200.0, 10.0, 256.0, 250.0], 50),
        6: ([64.0, 64.0, 128.0, 128.0], 1),
    }
    for row, (box, label) in rows.items():
        boxes[3, row] = torch.tensor(box)
        labels[3, row] = label
    boxes[3, 1] = torch.tensor([0.0, 0.0, 50.0, 50.0])  # padding (label -1) with a plausible box
    return boxes, labels


@pytest.fixture(scope="module")
def reference_targets(cfg, batch):
    return effdet_targets(cfg, *batch)


def test_targets_equal_effdet(cfg, anchors, batch, reference_targets):
    boxes, labels = batch
    cls, box, num_pos = assign(anchors, boxes, labels, cfg)
    ref_cls, ref_box, ref_num_pos, _, _ = reference_targets
    assert cls.dtype == torch.int64
    assert box.dtype == num_pos.dtype == torch.float32
    assert torch.equal(cls, ref_cls)
    torch.testing.assert_close(box, ref_box, rtol=0, atol=1e-5)
    assert torch.equal(num_pos, ref_num_pos)
    assert num_pos[0] == 0 and num_pos[1] > 0 and num_pos[2] > num_pos[1]
    # The duplicate boxes of image 3 (rows 0 and 2) share anchors: the lower row's class wins.
    assert (cls[3] == 7).any() and not (cls[3] == 12).any()
    assert (box[cls < 0] == 0).all()


def test_padding_rows_are_inert(cfg, anchors, batch):
    boxes, labels = batch
    expected = assign(anchors, boxes, labels, cfg)
    # More padding rows, holding boxes that would match many anchors if they were real.
    extra_boxes = torch.tensor([0.0, 0.0, 128.0, 128.0]).expand(4, 16, 4)
    padded = assign(
        anchors,
        torch.cat([boxes, extra_boxes], dim=1),
        torch.cat([labels, torch.full((4, 16), -1)], dim=1),
        cfg,
    )
    for ours, theirs in zip(padded, expected, strict=True):
        assert torch.equal(ours, theirs)


def test_crowd_region_is_ignored_and_never_positive(cfg, anchors, batch):
    boxes, labels = batch
    crowd_box = torch.tensor([130.0, 20.0, 250.0, 120.0])
    boxes, labels = boxes.clone(), labels.clone()
    boxes[1, 10], labels[1, 10] = crowd_box, -2
    boxes[0, 0], labels[0, 0] = crowd_box, -2  # an image with only a crowd region

    cls, box, num_pos = assign(anchors, boxes, labels, cfg)
    plain_cls, plain_box, plain_num_pos = assign(anchors, *batch, cfg)

    bottom_right = torch.minimum(anchors[:, 2:], crowd_box[2:])
    inter_wh = (bottom_right - torch.maximum(anchors[:, :2], crowd_box[:2])).clamp(min=0)
    anchor_area = (anchors[:, 2:] - anchors[:, :2]).prod(dim=1)
    covered = inter_wh.prod(dim=1) / anchor_area >= cfg.loss.crowd_ioa_threshold
    assert covered.sum() > 100

    assert num_pos[0] == 0 and (cls[0] >= 0).sum() == 0
    assert torch.equal(cls[0] == -2, covered)
    # Positives are unchanged by the crowd region; covered background becomes ignored.
    assert torch.equal(num_pos, plain_num_pos)
    assert torch.equal(box, plain_box)
    expected = torch.where(covered & (plain_cls[1] == -1), -2, plain_cls[1])
    assert torch.equal(cls[1], expected)


def test_ignore_band_between_thresholds(cfg, anchors, batch):
    boxes, labels = batch
    band_cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, unmatch_threshold=0.4))
    cls, _, num_pos = assign(anchors, boxes, labels, band_cfg)
    plain_cls, _, plain_num_pos = assign(anchors, boxes, labels, cfg)
    from torchvision.ops import box_iou

    iou = box_iou(boxes[2, :60], anchors).amax(dim=0)
    in_band = (iou >= 0.4) & (iou < 0.5) & (plain_cls[2] == -1)
    assert in_band.sum() > 0
    assert (cls[2][in_band] == -2).all()
    assert torch.equal(cls[2][~in_band], plain_cls[2][~in_band])
    assert torch.equal(num_pos, plain_num_pos)


def test_overlaps_are_box_iou_to_the_bit(cfg, anchors, batch):
    """The vectorised IoU and intersection equal torchvision's exactly (no tolerance: the
    matcher's thresholds and argmax ties must not move), and the crowd coverage is the largest
    per-box fraction of the anchor's area, on boxes that nest, touch, cross the border, have no
    area, or miss every anchor; so the whole assignment is what it was through torchvision."""
    boxes, labels = batch
    odd = torch.tensor(
        [
            [10.0, 10.0, 10.0, 60.0],  # zero width
            [-50.0, -50.0, -10.0, -10.0],  # outside the image: no anchor overlaps much
            [-12.0, -12.0, 20.0, 20.0],  # exactly the first anchor
            [100.5, 30.25, 100.75, 200.0],  # thin, fractional
        ]
    )
    gt = torch.cat([boxes, odd.expand(4, -1, -1)], dim=1)
    iou, inter = overlaps(gt, anchors)
    expected_iou, expected_inter = torchvision_overlaps(gt, anchors)
    assert torch.equal(iou, expected_iou) and torch.equal(inter, expected_inter)
    assert (iou == 0.0).any() and (iou > 0.9).any()

    crowd = torch.rand(gt.shape[:2], generator=torch.Generator().manual_seed(1)) < 0.3
    coverage = _crowd_coverage(inter, anchors, crowd)
    assert torch.equal(coverage, per_box_crowd_coverage(inter, anchors, crowd))
    assert (coverage == 1.0).any()

    odd_labels = torch.tensor([3, 4, -2, -2]).expand(4, -1)
    gt_labels = torch.cat([labels.where(~crowd[:, :MAX_GT], -2), odd_labels], dim=1)
    ours = assign(anchors, gt, gt_labels, cfg)
    with with_torchvision_overlaps():
        theirs = assign(anchors, gt, gt_labels, cfg)
    assert (ours[0] == -2).sum() > 1000  # the crowd regions ignore anchors
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_equals_effdet(cfg, anchors, batch, reference_targets, label_smoothing):
    from effdet.loss import DetectionLoss

    cfg = dataclasses.replace(
        cfg, loss=dataclasses.replace(cfg.loss, label_smoothing=label_smoothing)
    )
    boxes, labels = batch
    g = torch.Generator().manual_seed(3)
    cls_maps, box_maps = random_head_outputs(cfg, boxes.shape[0], g, logit_scale=1.5)
    _, _, ref_num_pos, ref_cls_levels, ref_box_levels = reference_targets
    reference = DetectionLoss(effdet_config(cfg))(
        cls_maps, box_maps, ref_cls_levels, ref_box_levels, ref_num_pos
    )

    cls_t, box_t, num_pos = assign(anchors, boxes, labels, cfg)
    cls_flat, box_flat = flatten_outputs(cls_maps, box_maps, cfg)
    ours = detection_loss(cls_flat, box_flat, cls_t, box_t, num_pos, cfg)
    for value, ref in zip(ours, reference, strict=True):
        assert value.dtype == torch.float32 and value.ndim == 0
        torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6)


def test_loss_masks_ignored_anchors_and_takes_external_normaliser(cfg, anchors, batch):
    boxes, labels = batch
    g = torch.Generator().manual_seed(4)
    cls_maps, box_maps = random_head_outputs(cfg, boxes.shape[0], g)
    cls_flat, box_flat = flatten_outputs(cls_maps, box_maps, cfg)
    cls_t, box_t, num_pos = assign(anchors, boxes, labels, cfg)
    ignored = torch.zeros_like(cls_t, dtype=torch.bool)
    ignored[:, ::7] = cls_t[:, ::7] == -1
    cls_t = torch.where(ignored, -2, cls_t)

    cls_flat = cls_flat.clone().requires_grad_()
    total, cls_loss, box_loss = detection_loss(cls_flat, box_flat, cls_t, box_t, num_pos, cfg)
    total.backward()
    assert (cls_flat.grad[ignored] == 0).all()
    assert (cls_flat.grad[~ignored] != 0).any()
    wild = torch.where(ignored.unsqueeze(-1), cls_flat.detach() * 100, cls_flat.detach())
    wild_total = detection_loss(wild, box_flat, cls_t, box_t, num_pos, cfg)[0]
    torch.testing.assert_close(wild_total, total.detach())

    # An all-reduced total replaces the local sum (the +1 stays).
    targets = (cls_t, box_t, num_pos)
    same = detection_loss(cls_flat, box_flat, *targets, cfg, num_positives_total=num_pos.sum())
    torch.testing.assert_close(same[0], total)
    doubled = 2 * num_pos.sum() + 1
    scaled = detection_loss(cls_flat, box_flat, *targets, cfg, num_positives_total=doubled)
    factor = (num_pos.sum() + 1) / (doubled + 1)
    torch.testing.assert_close(scaled[1], cls_loss * factor)
    torch.testing.assert_close(scaled[2], box_loss * factor)


def test_half_logits_are_computed_in_float32(cfg, anchors, batch):
    boxes, labels = batch
    g = torch.Generator().manual_seed(5)
    cls_maps, box_maps = random_head_outputs(cfg, boxes.shape[0], g)
    cls_flat, box_flat = flatten_outputs(cls_maps, box_maps, cfg)
    cls_t, box_t, num_pos = assign(anchors, boxes, labels, cfg)
    half = detection_loss(cls_flat.half(), box_flat.half(), cls_t, box_t, num_pos, cfg)
    upcast = detection_loss(
        cls_flat.half().float(), box_flat.half().float(), cls_t, box_t, num_pos, cfg
    )
    for h, f in zip(half, upcast, strict=True):
        assert h.dtype == torch.float32
        torch.testing.assert_close(h, f, rtol=0, atol=0)


def test_compiled_targets_and_loss_equal_eager(cfg, anchors, batch):
    boxes, labels = batch
    g = torch.Generator().manual_seed(6)
    cls_maps, box_maps = random_head_outputs(cfg, boxes.shape[0], g)

    def step(cls_maps, box_maps, boxes, labels):
        cls_t, box_t, num_pos = assign(anchors, boxes, labels, cfg)
        cls_flat, box_flat = flatten_outputs(cls_maps, box_maps, cfg)
        loss = detection_loss(cls_flat, box_flat, cls_t, box_t, num_pos, cfg)
        return (cls_t, box_t, num_pos), loss

    eager_targets, eager_loss = step(cls_maps, box_maps, boxes, labels)
    # aot_eager traces exactly what inductor would (fullgraph, functionalised) without a C++
    # compile on the test machine.
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    compiled_targets, compiled_loss = compiled(cls_maps, box_maps, boxes, labels)
    for ours, ref in zip(compiled_targets, eager_targets, strict=True):
        assert torch.equal(ours, ref)
    for ours, ref in zip(compiled_loss, eager_loss, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
