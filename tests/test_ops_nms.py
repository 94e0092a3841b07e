"""detlite::batched_nms on the CPU: operator checks, equality with torchvision's batched_nms per
image, deterministic ties, fixed-size output, and post-processing through the op (compiled with
fullgraph and no dynamo special settings)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from effdet_ref import random_head_outputs
from kernel_choice import cpu_kernels  # noqa: F401  (the fixture)
from nms_inputs import random_candidates
from oracles import with_torchvision_nms

from detlite import config, ops
from detlite.anchors import generate_anchors
from detlite.postprocess import postprocess

# Every test here runs on the C++ CPU kernels and on the reference kernels.
pytestmark = pytest.mark.usefixtures("cpu_kernels")

OP = torch.ops.detlite.batched_nms.default


def _candidates(batch=3, num=400, classes=5, *, seed=0, size=200.0, max_wh=60.0):
    return random_candidates(batch, num, classes, seed=seed, size=size, max_wh=max_wh)


def _check_against_torchvision(boxes, scores, classes, iou, max_det):
    keep, count = ops.batched_nms(boxes, scores, classes, iou, max_det)
    assert keep.shape == (boxes.shape[0], max_det) and count.shape == (boxes.shape[0],)
    assert keep.dtype == count.dtype == torch.int64
    for b in range(boxes.shape[0]):
        reference = torchvision.ops.batched_nms(boxes[b], scores[b], classes[b], iou)[:max_det]
        n = int(count[b])
        assert n == reference.numel()
        assert torch.equal(keep[b, :n], reference)
        assert (keep[b, n:] == -1).all()
    return keep, count


def test_opcheck():
    boxes, scores, classes = _candidates(2, 60, 3)
    torch.library.opcheck(OP, (boxes, scores, classes, 0.5, 10))
    torch.library.opcheck(OP, (boxes.double(), scores.requires_grad_(), classes.int(), 0.3, 100))


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("max_det", [20, 100, 1000])
def test_equals_torchvision_per_image(iou, max_det):
    boxes, scores, classes = _candidates(3, 500, 5, seed=1)
    _check_against_torchvision(boxes, scores, classes, iou, max_det)


def test_equals_torchvision_large_image_many_classes():
    # Coordinates and class counts as in post-processing at D0 (512 px, 90 classes).
    boxes, scores, classes = _candidates(2, 2000, 90, seed=2, size=512.0, max_wh=200.0)
    _check_against_torchvision(boxes, scores, classes, 0.5, 100)
    # One class: plain NMS; float64 and float16 boxes, int32 classes.
    _check_against_torchvision(boxes, scores, torch.zeros_like(classes), 0.5, 100)
    _check_against_torchvision(boxes.double(), scores.double(), classes.int(), 0.5, 100)
    half = boxes.half().float()
    keep16 = ops.batched_nms(half.half(), scores.half(), classes, 0.5, 100)
    keep32 = ops.batched_nms(half, scores.half().float(), classes, 0.5, 100)
    assert torch.equal(keep16[0], keep32[0]) and torch.equal(keep16[1], keep32[1])


@pytest.mark.parametrize("first_prefix", [1, 7, 256, 10**6])
def test_prefix_growth_keeps_the_full_result(monkeypatch, first_prefix):
    """The reference kernel runs NMS on a growing prefix of the visiting order; any starting
    length gives the result of NMS over all candidates (and torchvision's)."""
    monkeypatch.setattr(ops.nms, "_FIRST_PREFIX", first_prefix)
    g = torch.Generator().manual_seed(7)
    # 40 clusters of near-identical boxes: most candidates are suppressed, so the prefix grows.
    centres = torch.rand(2, 40, 2, generator=g) * 400
    member = torch.randint(0, 40, (2, 1500), generator=g)
    xy = centres.gather(1, member.unsqueeze(-1).expand(-1, -1, 2))
    xy = xy + torch.rand(2, 1500, 2, generator=g) * 3
    boxes = torch.cat([xy, xy + 40.0], dim=-1)
    scores = torch.rand(2, 1500, generator=g)
    classes = torch.randint(0, 2, (2, 1500), generator=g)
    for max_det in (10, 60, 100):
        _check_against_torchvision(boxes, scores, classes, 0.5, max_det)


def test_ties_are_broken_by_lower_index():
    box = torch.tensor([10.0, 10.0, 50.0, 50.0])
    boxes = box.expand(1, 6, 4).clone()
    boxes[0, 4] = torch.tensor([100.0, 100.0, 140.0, 140.0])
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.9, 0.9, 0.2]])
    classes = torch.tensor([[0, 0, 0, 1, 0, 1]])
    keep, count = ops.batched_nms(boxes, scores, classes, 0.5, 10)
    # Candidates 1, 2 (class 0) tie; 1 wins and suppresses 2 and 0. 3 is class 1: kept, and it
    # suppresses 5 (same box, class 1). 4 is elsewhere; all at 0.9 come in index order.
    assert count.tolist() == [3]
    assert keep[0].tolist() == [1, 3, 4] + [-1] * 7
    # Deterministic across calls and against permutation of equal-score candidates' storage.
    for _ in range(3):
        again = ops.batched_nms(boxes, scores, classes, 0.5, 10)
        assert torch.equal(again[0], keep) and torch.equal(again[1], count)


def test_identical_boxes_and_scores_keep_only_the_first():
    boxes = torch.tensor([5.0, 5.0, 25.0, 30.0]).expand(2, 50, 4).contiguous()
    scores = torch.full((2, 50), 0.7)
    classes = torch.zeros(2, 50, dtype=torch.long)
    classes[1, 1::2] = 1
    keep, count = ops.batched_nms(boxes, scores, classes, 0.5, 100)
    assert count.tolist() == [1, 2]
    assert keep[0, :1].tolist() == [0] and keep[1, :2].tolist() == [0, 1]
    # Zero-area identical boxes never suppress each other (IoU 0/0 is not > threshold), as in
    # torchvision.
    flat = torch.zeros(1, 4, 4)
    keep, count = ops.batched_nms(
        flat, torch.rand(1, 4), torch.zeros(1, 4, dtype=torch.long), 0.5, 10
    )
    assert count.tolist() == [4]


def test_fewer_candidates_than_max_det_and_empty_inputs():
    boxes, scores, classes = _candidates(2, 7, 2, seed=3)
    keep, count = _check_against_torchvision(boxes, scores, classes, 0.5, 100)
    assert (count <= 7).all() and (keep[:, 7:] == -1).all()
    for b, s, c, max_det in [
        (boxes[:, :0], scores[:, :0], classes[:, :0], 5),
        (boxes[:0], scores[:0], classes[:0], 5),
        (boxes, scores, classes, 0),
    ]:
        keep, count = ops.batched_nms(b, s, c, 0.5, max_det)
        assert keep.shape == (b.shape[0], max_det) and (keep == -1).all() and (count == 0).all()


def test_input_checks():
    boxes, scores, classes = _candidates(2, 10, 2)
    with pytest.raises(RuntimeError, match=r"boxes must be \[B, K, 4\]"):
        ops.batched_nms(boxes[..., :3], scores, classes, 0.5, 5)
    with pytest.raises(RuntimeError, match=r"scores must be \[B, K\]"):
        ops.batched_nms(boxes, scores[:, :4], classes, 0.5, 5)
    with pytest.raises(RuntimeError, match="classes must be int64 or int32"):
        ops.batched_nms(boxes, scores, classes.float(), 0.5, 5)
    with pytest.raises(RuntimeError, match="max_det must be >= 0"):
        ops.batched_nms(boxes, scores, classes, 0.5, -1)


def test_compiled_fullgraph_without_dynamo_settings():
    boxes, scores, classes = _candidates(2, 300, 4, seed=4)
    eager = ops.batched_nms(boxes, scores, classes, 0.5, 50)
    torch._dynamo.reset()
    # No capture_dynamic_output_shape_ops: the op's output shape is static.
    compiled = torch.compile(
        lambda b, s, c: ops.batched_nms(b * 1.0, s, c, 0.5, 50), fullgraph=True, backend="aot_eager"
    )
    result = compiled(boxes, scores, classes)
    assert torch.equal(result[0], eager[0]) and torch.equal(result[1], eager[1])


def _head_outputs(cfg, batch, seed, *, spread=False):
    g = torch.Generator().manual_seed(seed)
    cls_maps, box_maps = random_head_outputs(cfg, batch, g)
    if spread:  # enlarged, heavily overlapping boxes: NMS removes most candidates
        box_maps = [b * 0.1 + 1.0 for b in box_maps]
    return cls_maps, box_maps


@pytest.mark.parametrize("num_classes, points, spread", [(90, 5000, False), (2, 110, True)])
def test_postprocess_equals_torchvision_nms_path(num_classes, points, spread):
    cfg = config.preset("d0", image_size=256, num_classes=num_classes)
    cfg = dataclasses.replace(
        cfg, postprocess=dataclasses.replace(cfg.postprocess, max_detection_points=points)
    )
    cls_maps, box_maps = _head_outputs(cfg, 3, seed=5, spread=spread)
    anchors = generate_anchors(cfg)
    scales = torch.tensor([1.0, 0.5, 2.0])
    ours = postprocess(cls_maps, box_maps, anchors, cfg, scales)
    with with_torchvision_nms():
        reference = postprocess(cls_maps, box_maps, anchors, cfg, scales)
    assert torch.equal(ours[1], reference[1])
    assert torch.equal(ours[0], reference[0])
    if spread:
        assert (ours[1] < cfg.postprocess.max_det).all()


def test_compiled_postprocess_through_the_op():
    cfg = config.preset("d0", image_size=256)
    cls_maps, box_maps = _head_outputs(cfg, 2, seed=6)
    anchors = generate_anchors(cfg)
    eager = postprocess(cls_maps, box_maps, anchors, cfg)
    torch._dynamo.reset()
    # Plain torch.compile, no special dynamo settings: no shape depends on the data.
    compiled = torch.compile(
        lambda c, b: postprocess(c, b, anchors, cfg), fullgraph=True, backend="aot_eager"
    )
    detections, counts = compiled(cls_maps, box_maps)
    assert torch.equal(counts, eager[1])
    torch.testing.assert_close(detections, eager[0], rtol=0, atol=0)
    # The module function itself, compiled with its arguments as inputs.
    torch._dynamo.reset()
    again = torch.compile(postprocess, fullgraph=True, backend="aot_eager")(
        cls_maps, box_maps, anchors, cfg
    )
    assert torch.equal(again[1], eager[1])
