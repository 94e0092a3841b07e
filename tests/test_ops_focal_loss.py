"""detlite::sigmoid_focal_loss on the CPU: operator checks, equality with torchvision's
sigmoid_focal_loss and with the plain PyTorch loss (tests/oracles.py), gradients, and compiled
graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from kernel_choice import cpu_kernels  # noqa: F401  (the fixture)
from oracles import plain_focal_loss

from detlite import ops
from detlite.config import LossConfig
from detlite.loss import focal_loss

# Every test here runs on the C++ CPU kernels and on the reference kernels.
pytestmark = pytest.mark.usefixtures("cpu_kernels")

OP = torch.ops.detlite.sigmoid_focal_loss.default
BACKWARD_OP = torch.ops.detlite.sigmoid_focal_loss_backward.default


def _inputs(batch=3, anchors=40, classes=7, *, seed=0, dtype=torch.float32, scale=3.0):
    """Logits spread widely enough to reach saturated sigmoids; every kind of label present."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, anchors, classes, generator=g, dtype=torch.float64) * scale).to(
        dtype
    )
    labels = torch.randint(-2, classes, (batch, anchors), generator=g)
    return logits, labels


def _torchvision_per_image(logits, labels, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss over one-hot targets, ignored anchors masked, summed per
    image."""
    num_classes = logits.shape[-1]
    target = F.one_hot(labels.clamp(min=0), num_classes).to(logits.dtype)
    target = target * (labels >= 0).unsqueeze(-1)
    loss = torchvision.ops.sigmoid_focal_loss(logits, target, alpha, gamma, reduction="none")
    return (loss * (labels != -2).unsqueeze(-1)).sum(dim=(1, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("labels_dtype", [torch.int64, torch.int32])
def test_opcheck(dtype, labels_dtype):
    logits, labels = _inputs(2, 30, 5, dtype=dtype)
    labels = labels.to(labels_dtype)
    for smoothing in (0.0, 0.1):
        args = (logits.requires_grad_(), labels, 0.25, 1.5, smoothing)
        torch.library.opcheck(OP, args)
        grad = torch.rand(2, dtype=ops.focal_loss.result_dtype(dtype))
        torch.library.opcheck(BACKWARD_OP, (grad, logits.detach(), labels, 0.25, 1.5, smoothing))


@pytest.mark.parametrize("alpha, gamma", [(0.25, 1.5), (0.25, 2.0), (0.4, 0.0), (0.75, 1.0)])
def test_equals_torchvision_per_image(alpha, gamma):
    logits, labels = _inputs(4, 300, 9)
    ours = ops.sigmoid_focal_loss(logits, labels, alpha, gamma, 0.0)
    assert ours.shape == (4,) and ours.dtype == torch.float32
    reference = _torchvision_per_image(logits.double(), labels, alpha, gamma)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-6, atol=1e-5)
    # float64 logits: float64 result, equal to torchvision to rounding.
    ours64 = ops.sigmoid_focal_loss(logits.double(), labels, alpha, gamma, 0.0)
    assert ours64.dtype == torch.float64
    torch.testing.assert_close(ours64, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_equals_plain_loss_and_its_gradient(label_smoothing):
    cfg = LossConfig(label_smoothing=label_smoothing)
    logits, labels = _inputs(3, 500, 11, seed=1)
    fused_in = logits.clone().requires_grad_()
    plain_in = logits.clone().requires_grad_()
    fused = focal_loss(fused_in, labels, cfg)
    plain = plain_focal_loss(plain_in, labels, cfg)
    assert fused.dtype == plain.dtype == torch.float32 and fused.ndim == 0
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=0)
    (fused * 0.7).backward()
    (plain * 0.7).backward()
    torch.testing.assert_close(fused_in.grad, plain_in.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "alpha, gamma, smoothing",
    [(0.25, 1.5, 0.0), (0.25, 1.5, 0.1), (0.3, 0.0, 0.0), (0.6, 2.0, 0.2)],
)
def test_gradcheck_float64(alpha, gamma, smoothing):
    logits, labels = _inputs(2, 6, 4, seed=2, dtype=torch.float64, scale=2.0)
    logits.requires_grad_()
    torch.autograd.gradcheck(
        lambda x: ops.sigmoid_focal_loss(x, labels, alpha, gamma, smoothing), (logits,)
    )
    # Weighted per-image gradients reach the right images.
    weights = torch.tensor([0.3, -2.0], dtype=torch.float64)
    torch.autograd.gradcheck(
        lambda x: ops.sigmoid_focal_loss(x, labels, alpha, gamma, smoothing) * weights, (logits,)
    )


def test_ignored_and_background_anchors():
    logits, labels = _inputs(2, 20, 4, seed=3)
    labels[0] = -2  # image 0 entirely ignored
    labels[1] = -1  # image 1 has no positives
    x = logits.clone().requires_grad_()
    loss = ops.sigmoid_focal_loss(x, labels, 0.25, 1.5, 0.0)
    assert loss[0] == 0 and loss[1] > 0
    loss.sum().backward()
    assert (x.grad[0] == 0).all() and (x.grad[1] != 0).all()
    # Labels outside [0, C) other than -2 are background, as in the plain loss.
    odd = labels.clone()
    odd[1, :5] = 4
    odd[1, 5:10] = -7
    torch.testing.assert_close(ops.sigmoid_focal_loss(logits, odd, 0.25, 1.5, 0.0), loss.detach())
    # Ignored anchors' logits do not matter at all.
    labels[1, ::3] = -2
    wild = torch.where((labels == -2).unsqueeze(-1), logits * 1000, logits)
    torch.testing.assert_close(
        ops.sigmoid_focal_loss(wild, labels, 0.25, 1.5, 0.0),
        ops.sigmoid_focal_loss(logits, labels, 0.25, 1.5, 0.0),
    )


def test_empty_shapes():
    for shape in [(0, 5, 3), (2, 0, 3), (2, 5, 0)]:
        logits = torch.randn(shape, requires_grad=True)
        labels = torch.full(shape[:2], -1, dtype=torch.long)
        loss = ops.sigmoid_focal_loss(logits, labels)
        assert loss.shape == (shape[0],) and (loss == 0).all()
        loss.sum().backward()
        assert logits.grad.shape == shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_compute_in_float32(dtype):
    logits, labels = _inputs(2, 64, 6, seed=4, dtype=dtype)
    loss = ops.sigmoid_focal_loss(logits, labels, 0.25, 1.5, 0.1)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, ops.sigmoid_focal_loss(logits.float(), labels, 0.25, 1.5, 0.1))
    x = logits.clone().requires_grad_()
    ops.sigmoid_focal_loss(x, labels, 0.25, 1.5, 0.1).sum().backward()
    assert x.grad.dtype == dtype
    x32 = logits.float().requires_grad_()
    ops.sigmoid_focal_loss(x32, labels, 0.25, 1.5, 0.1).sum().backward()
    assert torch.equal(x.grad, x32.grad.to(dtype))


def test_input_checks():
    logits, labels = _inputs(2, 10, 3)
    with pytest.raises(RuntimeError, match=r"labels must be \[B, A\]"):
        ops.sigmoid_focal_loss(logits, labels[:, :5])
    with pytest.raises(RuntimeError, match="logits must be"):
        ops.sigmoid_focal_loss(logits[0], labels[0])
    with pytest.raises(RuntimeError, match="labels must be int64 or int32"):
        ops.sigmoid_focal_loss(logits, labels.float())


def test_chunked_reference_matches_single_pass(monkeypatch):
    """The reference kernel's chunking over anchors does not change the result."""
    logits, labels = _inputs(2, 333, 7, seed=5)
    whole = ops.sigmoid_focal_loss(logits, labels)
    x = logits.clone().requires_grad_()
    ops.sigmoid_focal_loss(x, labels).sum().backward()
    monkeypatch.setattr(ops.focal_loss, "_CHUNK_ELEMENTS", 50)
    chunked = ops.sigmoid_focal_loss(logits, labels)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0)
    y = logits.clone().requires_grad_()
    ops.sigmoid_focal_loss(y, labels).sum().backward()
    # Vectorised and scalar (tail) code paths may differ in the last bit.
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-7)


def test_compiled_fullgraph_forward_and_backward():
    logits, labels = _inputs(2, 50, 5, seed=6)
    num_positives = (labels >= 0).sum()

    def step(x, labels):
        return ops.sigmoid_focal_loss(x, labels, 0.25, 1.5, 0.05).sum() / (num_positives + 1)

    x_eager = logits.clone().requires_grad_()
    eager = step(x_eager, labels)
    eager.backward()
    torch._dynamo.reset()
    # fullgraph=True raises on any graph break; aot_eager traces forward and backward through
    # the fake kernels exactly as inductor would, without a C++ compile.
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x_compiled = logits.clone().requires_grad_()
    result = compiled(x_compiled, labels)
    result.backward()
    torch.testing.assert_close(result, eager)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad)


@pytest.mark.slow
def test_compiled_inductor():
    logits, labels = _inputs(2, 50, 5, seed=7)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, y: ops.sigmoid_focal_loss(x * 2.0, y).sum(), fullgraph=True, backend="inductor"
    )
    x = logits.clone().requires_grad_()
    out = compiled(x, labels)
    out.backward()
    y = logits.clone().requires_grad_()
    ref = ops.sigmoid_focal_loss(y * 2.0, labels).sum()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, y.grad)
