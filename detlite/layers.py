"""Layer functions over the flat parameter dict, and their initialisers.

Each layer is `f(params, prefix, x, ...) -> y`: it reads `params[prefix + ".weight"]` and friends.
Initialisers `init_*(params, prefix, ..., gen)` add the same names to a dict being built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed
from .batchnorm import sync_batch_norm

Params = dict[str, Tensor]
BatchStats = Literal["local", "sync", "frozen"]

BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) along one axis: the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_for(x: Tensor, kernel: int, stride: int, tf_padding: bool) -> tuple[Tensor, int]:
    """Pad `x` as the conv or pool needs; returns the input and the symmetric padding left to apply.

    Stride-1 odd kernels pad symmetrically either way; only strided TF-'same' ops pad unevenly,
    and the amount depends on the (static) input size, so it is computed here per call.
    """
    if tf_padding and stride > 1:
        top, bottom = same_padding(x.shape[-2], kernel, stride)
        left, right = same_padding(x.shape[-1], kernel, stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return x, 0
    return x, ((stride - 1) + (kernel - 1)) // 2


def conv2d(
    params: Params,
    prefix: str,
    x: Tensor,
    *,
    stride: int = 1,
    groups: int = 1,
    tf_padding: bool = False,
) -> Tensor:
    weight = params[prefix + ".weight"]
    bias = params.get(prefix + ".bias")
    x, padding = _pad_for(x, weight.shape[-1], stride, tf_padding)
    return F.conv2d(x, weight, bias, stride, padding, 1, groups)


@dataclass(frozen=True)
class Mode:
    """How a forward pass runs."""

    training: bool = False
    """Training: BatchNorm uses batch statistics (and updates the running ones), drop path on."""
    batch_stats: BatchStats = "local"
    """Where training-mode BatchNorm takes its statistics from: this process's batch ("local");
    the batch of every rank of the default process group ("sync", SyncBatchNorm); or nowhere,
    using the running statistics and leaving them unchanged ("frozen")."""


INFERENCE = Mode()
TRAINING = Mode(training=True)


def batch_norm(
    params: Params, prefix: str, x: Tensor, *, mode: Mode, momentum: float, eps: float
) -> Tensor:
    """BatchNorm over `[B, C, H, W]`, with batch statistics in training (see `Mode`)."""
    running_mean = params[prefix + ".running_mean"]
    running_var = params[prefix + ".running_var"]
    weight, bias = params[prefix + ".weight"], params[prefix + ".bias"]
    if mode.training and mode.batch_stats == "sync" and distributed.world_size() > 1:
        return sync_batch_norm(x, running_mean, running_var, weight, bias, momentum, eps)
    training = mode.training and mode.batch_stats != "frozen"
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


class _ReLU6InPlace(torch.autograd.Function):
    """ReLU6 that overwrites its input and keeps only its output for the backward pass.

    PyTorch's in-place `relu6_` (`hardtanh_`) differentiates through its input, so autograd
    first copies that input and keeps the copy: in place it saves nothing. From the output the
    same gradient follows exactly: y <= 0 iff x <= 0, y >= 6 iff x >= 6, and y is NaN where x is,
    so PyTorch's own backward kernel, given y in place of x, gives the same gradient bit for bit."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        F.relu6(x, inplace=True)  # no copy: autograd is off inside forward
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


def activation(x: Tensor, name: str, *, fresh: bool = False) -> Tensor:
    """`name` applied to `x`. `fresh=True` says nothing else reads `x` (a BatchNorm output or a
    BiFPN fusion): ReLU6 and ReLU then overwrite it and keep only their output for the backward
    pass, which the next convolution keeps anyway, so a layer saves one activation fewer.
    SiLU's backward needs its input, so it never does. Compiled graphs take the plain ops:
    Inductor plans their memory itself."""
    in_place = fresh and not torch.compiler.is_compiling()
    if name == "swish":
        return F.silu(x)
    if name == "relu6":
        if in_place and torch.is_grad_enabled():  # without autograd, relu6_ copies nothing
            return _ReLU6InPlace.apply(x)
        return F.relu6(x, inplace=in_place)
    if name == "relu":
        return F.relu(x, inplace=in_place)
    raise ValueError(f"unknown activation {name!r}")


def max_pool(x: Tensor, kernel: int, stride: int, tf_padding: bool) -> Tensor:
    if tf_padding:
        top, bottom = same_padding(x.shape[-2], kernel, stride)
        left, right = same_padding(x.shape[-1], kernel, stride)
        # -inf so that padding never wins the max, as TF's 'same' pooling behaves.
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, kernel, stride)
    return F.max_pool2d(x, kernel, stride, ((stride - 1) + (kernel - 1)) // 2)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    return x * mask.bernoulli_(keep) / keep


# ----------------------------------------------------------------------------- initialisers


def init_batch_norm(params: Params, prefix: str, channels: int) -> None:
    params[prefix + ".weight"] = torch.ones(channels)
    params[prefix + ".bias"] = torch.zeros(channels)
    params[prefix + ".running_mean"] = torch.zeros(channels)
    params[prefix + ".running_var"] = torch.ones(channels)


def fans(shape: tuple[int, ...], groups: int = 1) -> tuple[int, int]:
    """(fan_in, fan_out) of a conv weight, fan_out per group as the TF initialisers count it."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive // groups


def normal_fan_out(shape: tuple[int, ...], gen: torch.Generator, groups: int = 1) -> Tensor:
    """He-normal over fan-out: EfficientNet's (TF 'goog') conv initialisation."""
    _, fan_out = fans(shape, groups)
    return torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_out)


def glorot_uniform(shape: tuple[int, ...], gen: torch.Generator, groups: int = 1) -> Tensor:
    """Glorot uniform over the average fan, as the TF EfficientDet BiFPN is initialised."""
    fan_in, fan_out = fans(shape, groups)
    limit = math.sqrt(3.0 / max(1.0, (fan_in + fan_out) / 2.0))
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * limit


def variance_scaling(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Normal with variance 1 / fan_in, as the TF EfficientDet heads are initialised."""
    fan_in, _ = fans(shape)
    return torch.randn(shape, generator=gen) * math.sqrt(1.0 / max(1.0, fan_in))
