"""SyncBatchNorm for the functional model: training-mode BatchNorm with the batch statistics of
every rank of the default process group (`--dist.sync-bn`).

PyTorch's `nn.SyncBatchNorm` is a module and runs on CUDA only, so this is detlite's own, as an
autograd function whose all-reduces are functional collectives (it compiles, and it runs on the
CPU under gloo). Statistics and the reductions of the backward pass are accumulated in float64.
A single process (and any BatchNorm without `sync`) uses PyTorch's `F.batch_norm`.

    mean, var    = Σx / n,  Σ(x − mean)² / n            over N, H, W and every rank
    x̂            = (x − mean) / sqrt(var + eps)
    y            = x̂ · weight + bias
    ∂L/∂weight   = Σ ∂L/∂y · x̂           ∂L/∂bias = Σ ∂L/∂y          (this rank's share)
    ∂L/∂x        = weight / sqrt(var + eps) · (∂L/∂y − Σ∂L/∂y / n − x̂ · Σ(∂L/∂y · x̂) / n)
                                                                       (sums over all ranks)

The weight and bias gradients are each rank's share, which DDP then sums; the input gradient
needs the global sums, all-reduced in the backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import distributed

_DIMS = (0, 2, 3)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for float32 and half inputs (half statistics would lose too much), float64
    for float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _total(values: Tensor, sync: bool) -> Tensor:
    return distributed.sum_over_ranks(values) if sync else values


class _BatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, sync: bool):
        xf = x.to(_compute_dtype(x))
        count = xf.numel() // xf.shape[1] * (distributed.world_size() if sync else 1)
        mean = _total(xf.sum(_DIMS, dtype=torch.float64), sync) / count
        centred = xf - mean.to(xf.dtype).view(1, -1, 1, 1)
        var = _total((centred * centred).sum(_DIMS, dtype=torch.float64), sync) / count
        invstd = torch.rsqrt(var + eps).to(xf.dtype)
        xhat = centred * invstd.view(1, -1, 1, 1)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.count, ctx.sync = count, sync
        ctx.mark_non_differentiable(mean, var)
        y = xhat * weight.to(xf.dtype).view(1, -1, 1, 1) + bias.to(xf.dtype).view(1, -1, 1, 1)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, grad_y: Tensor, _grad_mean, _grad_var):
        xhat, invstd, weight = ctx.saved_tensors
        dy = grad_y.to(xhat.dtype)
        sum_dy = dy.sum(_DIMS, dtype=torch.float64)
        sum_dy_xhat = (dy * xhat).sum(_DIMS, dtype=torch.float64)
        grad_weight = sum_dy_xhat.to(weight.dtype)
        grad_bias = sum_dy.to(weight.dtype)
        mean_dy = (_total(sum_dy, ctx.sync) / ctx.count).to(dy.dtype).view(1, -1, 1, 1)
        mean_dy_xhat = (_total(sum_dy_xhat, ctx.sync) / ctx.count).to(dy.dtype).view(1, -1, 1, 1)
        scale = (weight.to(dy.dtype) * invstd).view(1, -1, 1, 1)
        grad_x = scale * (dy - mean_dy - xhat * mean_dy_xhat)
        return grad_x.to(grad_y.dtype), grad_weight, grad_bias, None, None


def sync_batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    momentum: float,
    eps: float,
    sync: bool = True,
) -> Tensor:
    """BatchNorm of `[B, C, H, W]` with the batch statistics of every rank (of this process
    alone with `sync=False`, which tests use as the reference), updating the running statistics
    in place as `torch.nn.BatchNorm2d` does (unbiased variance)."""
    y, mean, var = _BatchNormTrain.apply(x, weight, bias, eps, sync)
    count = x.numel() // x.shape[1] * (distributed.world_size() if sync else 1)
    with torch.no_grad():
        running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        unbiased = var * (count / max(count - 1, 1))
        running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    return y
