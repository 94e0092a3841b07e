"""The C++ CPU kernels of libdetlite_ops.so against the Python reference kernels, element for
element, on random and edge-case inputs; results that do not depend on the thread count; and
(in CI, where the install builds them) that they are built and serve CPU tensors. The
behaviour tests of test_ops_focal_loss.py and test_ops_nms.py also run on both kernels."""

from __future__ import annotations

import os

import pytest
import torch
from nms_inputs import random_candidates

from detlite import ops
from detlite.ops import focal_loss, nms

needs_cpp = pytest.mark.skipif(not ops.cpu_kernels_loaded(), reason=ops.status())
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _focal_inputs(batch, anchors, classes, dtype, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, anchors, classes, generator=g, dtype=torch.float64) * scale
    logits[0, :3] = torch.tensor([60.0, -60.0, 0.0]).unsqueeze(1)  # saturated and zero logits
    # -2 ignore, -1 background, 0..C-1 positives, >= C background too.
    labels = torch.randint(-2, classes + 3, (batch, anchors), generator=g)
    return logits.to(dtype), labels


def _grad_tolerance(dtype, grads):
    return 32 * torch.finfo(dtype).eps * max(1.0, grads.abs().max().item())  # a few ulps


@pytest.mark.skipif(
    not os.environ.get("CI") or os.environ.get("DETLITE_OPS_LIBRARY"), reason="CI only"
)
def test_ci_install_serves_cpu_tensors_with_the_cpp_kernels():
    assert ops.cpu_kernels_loaded(), ops.status()


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_loss_equals_the_reference(dtype, gamma, smoothing):
    logits, labels = _focal_inputs(3, 300, 37, dtype)
    args = (0.25, gamma, smoothing)
    ours = torch.ops.detlite.sigmoid_focal_loss(logits, labels.int(), *args)
    ref = focal_loss.forward_reference(logits, labels, *args)
    assert ours.dtype == ref.dtype
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=0)
    grad = torch.tensor([1.0, 0.5, 2.0], dtype=ref.dtype)
    ours_dx = torch.ops.detlite.sigmoid_focal_loss_backward(grad, logits, labels, *args)
    ref_dx = focal_loss.backward_reference(grad, logits, labels, *args)
    assert ours_dx.dtype == dtype and ours_dx.shape == logits.shape
    tol = _grad_tolerance(dtype, ref_dx.double())
    torch.testing.assert_close(ours_dx.double(), ref_dx.double(), rtol=0, atol=tol)
    assert (ours_dx[labels == -2] == 0).all()


@needs_cpp
def test_focal_loss_of_empty_and_strided_inputs():
    for shape in [(0, 5, 3), (2, 0, 3), (2, 5, 0)]:
        logits, labels = torch.randn(shape), torch.zeros(shape[:2], dtype=torch.long)
        assert torch.equal(
            torch.ops.detlite.sigmoid_focal_loss(logits, labels, 0.25, 2.0, 0.0),
            torch.zeros(shape[0]),
        )
    logits, labels = _focal_inputs(2, 64, 9, torch.float32)
    strided = logits.transpose(0, 1).contiguous().transpose(0, 1)  # not contiguous
    assert torch.equal(
        torch.ops.detlite.sigmoid_focal_loss(strided, labels, 0.25, 2.0, 0.0),
        torch.ops.detlite.sigmoid_focal_loss(logits, labels, 0.25, 2.0, 0.0),
    )


@needs_cpp
def test_results_do_not_depend_on_the_thread_count():
    logits, labels = _focal_inputs(4, 2000, 20, torch.float32)
    boxes, scores, classes = random_candidates(4, 800, 6, seed=1, size=200.0, max_wh=60.0)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            loss = torch.ops.detlite.sigmoid_focal_loss(logits, labels, 0.25, 2.0, 0.0)
            grad = torch.ops.detlite.sigmoid_focal_loss_backward(
                torch.ones(4), logits, labels, 0.25, 2.0, 0.0
            )
            outputs.append(
                (loss, grad, *torch.ops.detlite.batched_nms(boxes, scores, classes, 0.5, 50))
            )
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*outputs, strict=True))


@needs_cpp
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_det", [1, 37, 1000])
def test_nms_equals_the_reference(seed, max_det):
    boxes, scores, classes = random_candidates(3, 600, 4, seed=seed, size=150.0, max_wh=70.0)
    if seed % 2:  # coarse scores: many ties, broken by index
        scores = (scores * 8).round() / 8
    if seed == 3:
        boxes, scores, classes = boxes.half(), scores.half(), classes.int()
    ours = torch.ops.detlite.batched_nms(boxes, scores, classes, 0.45, max_det)
    ref = nms.batched_nms_reference(boxes, scores, classes, 0.45, max_det)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


@needs_cpp
def test_nms_of_empty_inputs_and_bad_shapes():
    for batch, num, max_det in [(0, 5, 3), (2, 0, 3), (2, 5, 0)]:
        keep, count = torch.ops.detlite.batched_nms(
            torch.rand(batch, num, 4), torch.rand(batch, num),
            torch.zeros(batch, num, dtype=torch.long), 0.5, max_det,
        )  # fmt: skip
        assert keep.shape == (batch, max_det) and (keep == -1).all() and (count == 0).all()
    with pytest.raises(RuntimeError, match="boxes must be"):
        torch.ops.detlite.batched_nms(
            torch.rand(1, 5, 3), torch.rand(1, 5), torch.zeros(1, 5, dtype=torch.long), 0.5, 3
        )
