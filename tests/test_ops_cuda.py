"""The CUDA kernels of the detlite ops against their CPU (reference) kernels.

Every test here needs a CUDA device and skips without one. `test_cuda_kernels_are_loaded` fails
when a GPU is present but the compiled library is not (the other tests would then only exercise
the reference kernels on the GPU). The build itself is checked without a GPU in
test_ops_build.py.
"""

from __future__ import annotations

import pytest
import torch
from nms_inputs import random_candidates

from detlite import ops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FOCAL = torch.ops.detlite.sigmoid_focal_loss.default
FOCAL_BACKWARD = torch.ops.detlite.sigmoid_focal_loss_backward.default
NMS = torch.ops.detlite.batched_nms.default


def _focal_inputs(batch, anchors, classes, *, seed=0, dtype=torch.float32, labels_dtype=torch.long):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, anchors, classes, generator=g) * 4).to(dtype)
    labels = torch.randint(-2, classes, (batch, anchors), generator=g).to(labels_dtype)
    return logits, labels


def _focal_both(logits, labels, alpha=0.25, gamma=1.5, smoothing=0.0):
    """(loss, grad) on the CPU and on the GPU for a weighted sum of the per-image losses."""
    results = []
    weights = torch.linspace(0.5, 2.0, logits.shape[0])
    for device in ("cpu", "cuda"):
        x = logits.to(device).requires_grad_()
        loss = ops.sigmoid_focal_loss(x, labels.to(device), alpha, gamma, smoothing)
        (loss * weights.to(device, loss.dtype)).sum().backward()
        results.append((loss.detach().cpu(), x.grad.cpu()))
    return results


def test_cuda_kernels_are_loaded():
    assert ops.cuda_kernels_loaded(), ops.status()


def test_opcheck_cuda():
    logits, labels = _focal_inputs(2, 30, 5)
    logits, labels = logits.cuda().requires_grad_(), labels.cuda()
    torch.library.opcheck(FOCAL, (logits, labels, 0.25, 1.5, 0.1))
    grad = torch.rand(2, device="cuda")
    torch.library.opcheck(FOCAL_BACKWARD, (grad, logits.detach(), labels, 0.25, 1.5, 0.1))
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(2, 200, 4, generator=g) * 100
    boxes[..., 2:] += boxes[..., :2]
    scores = torch.rand(2, 200, generator=g)
    classes = torch.randint(0, 4, (2, 200), generator=g)
    torch.library.opcheck(NMS, (boxes.cuda(), scores.cuda(), classes.cuda(), 0.5, 50))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("labels_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("shape", [(3, 1000, 90), (2, 49104 // 16, 90), (1, 7, 1), (4, 33, 13)])
def test_focal_loss_matches_cpu(shape, labels_dtype, smoothing):
    logits, labels = _focal_inputs(*shape, seed=sum(shape), labels_dtype=labels_dtype)
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = _focal_both(logits, labels, smoothing=smoothing)
    assert gpu_loss.dtype == torch.float32 and gpu_grad.dtype == torch.float32
    # Same formulas; the GPU's libm, fused multiply-adds and summation order differ by ulps.
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=2e-5, atol=1e-4)
    torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-4, atol=1e-6)


def test_focal_loss_float64_matches_cpu_closely():
    logits, labels = _focal_inputs(2, 500, 20, dtype=torch.float64)
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = _focal_both(logits, labels, 0.3, 2.0, 0.05)
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_focal_loss_half_logits(dtype):
    logits, labels = _focal_inputs(3, 2000, 90, seed=3, dtype=dtype)
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = _focal_both(logits, labels)
    assert gpu_loss.dtype == torch.float32 and gpu_grad.dtype == dtype
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=2e-5, atol=1e-3)
    # Gradients are rounded to the logits' dtype on both sides: allow one unit of it.
    torch.testing.assert_close(gpu_grad.float(), cpu_grad.float(), rtol=1e-2, atol=1e-5)


def test_focal_loss_edge_cases():
    logits, labels = _focal_inputs(4, 300, 10, seed=4)
    labels[0] = -1  # no positives
    labels[1] = -2  # all ignored
    labels[2, :150] = -2
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = _focal_both(logits, labels)
    assert gpu_loss[1] == 0 and (gpu_grad[1] == 0).all()
    assert (gpu_grad[2, :150] == 0).all()
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=2e-5, atol=1e-4)
    torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-4, atol=1e-6)
    for shape in [(0, 5, 3), (2, 0, 3), (2, 5, 0)]:
        x = torch.randn(shape, device="cuda", requires_grad=True)
        loss = ops.sigmoid_focal_loss(x, torch.full(shape[:2], -1, device="cuda"))
        assert loss.shape == (shape[0],) and (loss == 0).all()
        loss.sum().backward()


def test_focal_loss_deterministic_and_non_contiguous():
    logits, labels = _focal_inputs(2, 4000, 90, seed=5)
    x = logits.cuda()
    first = ops.sigmoid_focal_loss(x, labels.cuda())
    for _ in range(3):
        assert torch.equal(ops.sigmoid_focal_loss(x, labels.cuda()), first)
    # A transposed view goes through .contiguous() in the wrapper and in the kernel's checks.
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    assert torch.equal(FOCAL(strided, labels.cuda(), 0.25, 1.5, 0.0), first)


def test_focal_loss_compiled_on_cuda():
    logits, labels = _focal_inputs(2, 500, 9, seed=6)
    x = logits.cuda().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, y: ops.sigmoid_focal_loss(x, y).sum(), fullgraph=True, backend="inductor"
    )
    out = compiled(x, labels.cuda())
    out.backward()
    y = logits.cuda().requires_grad_()
    ref = ops.sigmoid_focal_loss(y, labels.cuda()).sum()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, y.grad)


def _nms_inputs(batch, num, classes, *, seed=0, size=512.0, max_wh=200.0):
    return random_candidates(batch, num, classes, seed=seed, size=size, max_wh=max_wh)


def _nms_both(boxes, scores, classes, iou, max_det):
    cpu = ops.batched_nms(boxes, scores, classes, iou, max_det)
    gpu = ops.batched_nms(boxes.cuda(), scores.cuda(), classes.cuda(), iou, max_det)
    assert gpu[0].is_cuda and gpu[0].shape == (boxes.shape[0], max_det)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    return cpu


@pytest.mark.parametrize("num", [1, 63, 64, 65, 1000, 5000])
@pytest.mark.parametrize("iou", [0.3, 0.5])
def test_nms_matches_cpu(num, iou):
    boxes, scores, classes = _nms_inputs(4, num, 90, seed=num)
    _nms_both(boxes, scores, classes, iou, 100)
    _nms_both(boxes, scores, torch.zeros_like(classes), iou, 100)  # one class: long chains


def test_nms_edge_cases():
    boxes, scores, classes = _nms_inputs(3, 300, 3, seed=7)
    # K smaller than max_det.
    keep, _ = _nms_both(boxes[:, :20], scores[:, :20], classes[:, :20], 0.5, 100)
    assert (keep[:, 20:] == -1).all()
    # Identical boxes, identical scores (ties by lower index), mixed classes.
    same = torch.tensor([5.0, 5.0, 25.0, 30.0]).expand(3, 300, 4).contiguous()
    _nms_both(same, torch.full((3, 300), 0.5), classes, 0.5, 100)
    # Quantised scores: many ties among overlapping boxes.
    _nms_both(boxes, (scores * 4).round() / 4, classes, 0.5, 100)
    # Half / double inputs, int32 classes, max_det 0, empty batch and candidates.
    _nms_both(boxes.half(), scores.half(), classes.int(), 0.5, 100)
    _nms_both(boxes.double(), scores.double(), classes, 0.5, 1000)
    _nms_both(boxes, scores, classes, 0.5, 0)
    _nms_both(boxes[:0], scores[:0], classes[:0], 0.5, 10)
    _nms_both(boxes[:, :0], scores[:, :0], classes[:, :0], 0.5, 10)


def test_nms_compiled_on_cuda():
    boxes, scores, classes = _nms_inputs(2, 3000, 90, seed=8)
    boxes, scores, classes = boxes.cuda(), scores.cuda(), classes.cuda()
    eager = ops.batched_nms(boxes, scores, classes, 0.5, 100)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda b, s, c: ops.batched_nms(b + 0.0, s, c, 0.5, 100), fullgraph=True
    )
    result = compiled(boxes, scores, classes)
    assert torch.equal(result[0], eager[0]) and torch.equal(result[1], eager[1])
