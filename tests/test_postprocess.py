"""Post-processing against effdet 0.4.1 (`_post_process` + `generate_detections`) on the same raw
head tensors, and the compiled (fullgraph) path against eager."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from effdet_ref import effdet_anchors, random_head_outputs
from oracles import plain_top_k

from detlite import config
from detlite.anchors import generate_anchors
from detlite.config import ModelConfig
from detlite.postprocess import postprocess, top_k


def _effdet_detections(cls_maps, box_maps, cfg: ModelConfig, image_scales: torch.Tensor):
    """effdet's detections for the same tensors, clipped to the input image as ours are."""
    from effdet.bench import _batch_detection, _post_process

    pp = cfg.postprocess
    cls, box, indices, classes = _post_process(
        cls_maps, box_maps, cfg.num_levels, cfg.num_classes,
        max_detection_points=pp.max_detection_points,
    )  # fmt: skip
    image_h, image_w = cfg.image_size
    # effdet clips to img_size / img_scale (original size back in input pixels), then scales.
    img_size = torch.tensor([[image_w, image_h]], dtype=torch.float32) * image_scales.unsqueeze(1)
    return _batch_detection(
        cls.shape[0], cls, box, effdet_anchors(cfg).boxes, indices, classes,
        image_scales, img_size, max_det_per_image=pp.max_det,
    )  # fmt: skip


def _canonical(rows: torch.Tensor) -> torch.Tensor:
    """Rows ordered by score (descending), then class and x1.

    Distinct logits can round to the same float32 sigmoid score; effdet orders such ties with an
    unstable sort, so rows with equal scores are compared as a set.
    """
    for column, descending in ((0, False), (5, False), (4, True)):  # least significant first
        rows = rows[rows[:, column].sort(descending=descending, stable=True).indices]
    return rows


def _assert_same_detections(ours, counts, reference):
    ref_counts = (reference[..., 4] > 0).sum(dim=1)  # effdet pads with all-zero rows
    assert torch.equal(counts, ref_counts)
    for b, n in enumerate(counts.tolist()):
        mine = _canonical(ours[b, :n])
        theirs = _canonical(reference[b, :n] - torch.tensor([0, 0, 0, 0, 0, 1.0]))  # 1-based
        torch.testing.assert_close(mine[:, :4], theirs[:, :4], rtol=0, atol=1e-4)
        torch.testing.assert_close(mine[:, 4], theirs[:, 4], rtol=0, atol=1e-6)
        assert torch.equal(mine[:, 5], theirs[:, 5])
        assert (ours[b, n:, :5] == 0).all() and (ours[b, n:, 5] == -1).all()


def _check_ranked(detections, counts):
    for b, n in enumerate(counts.tolist()):
        scores = detections[b, :n, 4]
        assert (scores[1:] <= scores[:-1]).all()


@pytest.mark.parametrize(
    "image_size, scales", [((256, 384), [1.0, 2.5]), (512, None)], ids=["256x384-scaled", "512"]
)
def test_matches_effdet(image_size, scales):
    cfg = config.preset("d0", image_size=image_size)
    g = torch.Generator().manual_seed(0)
    cls_maps, box_maps = random_head_outputs(cfg, 2, g)
    scales = None if scales is None else torch.tensor(scales)
    detections, counts = postprocess(cls_maps, box_maps, generate_anchors(cfg), cfg, scales)
    assert detections.shape == (2, 100, 6) and detections.dtype == torch.float32
    assert counts.dtype == torch.int64
    assert (counts == 100).all()
    ref_scales = torch.ones(2) if scales is None else scales
    reference = _effdet_detections(cls_maps, box_maps, cfg, ref_scales)
    _assert_same_detections(detections, counts, reference)
    _check_ranked(detections, counts)
    # Boxes lie inside the (scaled) input image.
    image_h, image_w = cfg.image_size
    limit = torch.tensor([image_w, image_h, image_w, image_h]) * ref_scales.reshape(-1, 1, 1)
    assert (detections[..., :4] <= limit).all() and (detections[..., :4] >= 0).all()


def test_matches_effdet_when_nms_leaves_fewer_than_max_det():
    # Two classes, few candidates and enlarged, heavily overlapping boxes: NMS
    # removes most candidates, so rows past `counts` must be padding.
    cfg = config.preset("d0", image_size=256, num_classes=2)
    few = dataclasses.replace(cfg.postprocess, max_detection_points=110)
    cfg = dataclasses.replace(cfg, postprocess=few)
    g = torch.Generator().manual_seed(1)
    cls_maps, box_maps = random_head_outputs(cfg, 3, g)
    box_maps = [b * 0.1 + 1.0 for b in box_maps]  # boxes e times their anchors: big overlaps
    scales = torch.ones(3)
    detections, counts = postprocess(cls_maps, box_maps, generate_anchors(cfg), cfg)
    assert (counts < 100).all() and (counts > 0).all()
    _assert_same_detections(detections, counts, _effdet_detections(cls_maps, box_maps, cfg, scales))
    _check_ranked(detections, counts)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_fullgraph_equals_eager(backend):
    cfg = config.preset("d0", image_size=256)
    g = torch.Generator().manual_seed(2)
    cls_maps, box_maps = random_head_outputs(cfg, 2, g)
    anchors = generate_anchors(cfg)
    scales = torch.tensor([0.5, 3.0])
    eager = postprocess(cls_maps, box_maps, anchors, cfg, scales)
    torch._dynamo.reset()
    compiled = torch.compile(postprocess, fullgraph=True, backend=backend)(
        cls_maps, box_maps, anchors, cfg, scales
    )
    assert torch.equal(compiled[1], eager[1])
    # Inductor may fuse the decode arithmetic differently (a few ulp of a ~1000 px coordinate).
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_top_k_equals_topk(batch, ties):
    """The top-k read from the best anchors gives torch.topk's values over all A·C logits, in
    order, with (anchor, class) pairs that hold them, each once."""
    anchors, classes, k = 49104, 90, 5000  # D0 at 512 px
    gen = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch, anchors, classes, generator=gen)
    if ties:  # few distinct values: many exact ties, also across the cut at k
        logits = (logits * 4).round()
    values, anchor_index, class_index = top_k(logits, k)
    want_values, _, _ = plain_top_k(logits, k)
    assert torch.equal(values, want_values)
    held = logits[torch.arange(batch).unsqueeze(1), anchor_index, class_index]
    assert torch.equal(held, values)
    pairs = anchor_index * classes + class_index
    assert all(row.unique().numel() == k for row in pairs)


def test_top_k_ranks_nan_logits_as_topk_does():
    """A NaN logit (a diverged network) ranks first in `Tensor.topk`; it must here too, or the
    detections of such a network would differ from the unoptimised path."""
    logits = torch.randn(2, 20000, 90, generator=torch.Generator().manual_seed(3))
    logits[0, 17, 4] = logits[1, 19999, 0] = float("nan")
    values, anchor_index, class_index = top_k(logits, 5000)
    want_values = plain_top_k(logits, 5000)[0]
    torch.testing.assert_close(values, want_values, rtol=0, atol=0, equal_nan=True)
    assert values[:, 0].isnan().all()
    assert anchor_index[:, 0].tolist() == [17, 19999] and class_index[:, 0].tolist() == [4, 0]


def test_top_k_of_few_anchors_is_plain_topk():
    """With no more anchors than candidates (small inputs) every anchor is read."""
    logits = torch.randn(2, 300, 90, generator=torch.Generator().manual_seed(0))
    for got, want in zip(top_k(logits, 5000), plain_top_k(logits, 5000), strict=True):
        assert torch.equal(got, want)


def test_top_k_exports_with_a_dynamic_batch():
    class TopK(torch.nn.Module):
        def forward(self, logits):
            return top_k(logits, 5000)

    logits = torch.randn(2, 49104, 90)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(TopK(), (logits,), dynamic_shapes=({0: batch},))
    other = torch.randn(3, 49104, 90)
    values, anchor_index, class_index = program.module()(other)
    assert torch.equal(values, plain_top_k(other, 5000)[0])
    assert torch.equal(other[torch.arange(3).unsqueeze(1), anchor_index, class_index], values)
