"""detlite's SyncBatchNorm function, checked in one process against PyTorch's BatchNorm and by
gradcheck (its reductions over ranks are tested by tests/test_distributed.py)."""

import pytest
import torch
import torch.nn.functional as F

from detlite.batchnorm import sync_batch_norm


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 5, 6, generator=g, dtype=dtype) * 2 + 7).requires_grad_()
    w = torch.randn(4, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(4, generator=g, dtype=dtype).requires_grad_()
    return x, w, b


def test_gradcheck():
    x, w, b = _inputs()
    stats = (torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda x, w, b: sync_batch_norm(x, *stats, w, b, 0.1, 1e-3, sync=False), (x, w, b)
    )


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_equals_torch_batch_norm(dtype, tol):
    x, w, b = _inputs(dtype)
    ours_stats = [torch.zeros(4, dtype=dtype), torch.ones(4, dtype=dtype)]
    theirs_stats = [s.clone() for s in ours_stats]
    ours = sync_batch_norm(x, *ours_stats, w, b, 0.1, 1e-3, sync=False)
    theirs = F.batch_norm(x, *theirs_stats, w, b, True, 0.1, 1e-3)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    for a, c in zip(ours_stats, theirs_stats, strict=True):  # running statistics, unbiased
        torch.testing.assert_close(a, c, rtol=tol, atol=tol)
    grads = [torch.autograd.grad((y**3).sum(), (x, w, b)) for y in (ours, theirs)]
    for a, c in zip(*grads, strict=True):
        torch.testing.assert_close(a, c, rtol=tol * 10, atol=tol * 10)
