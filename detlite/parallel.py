"""Data-parallel training on PyTorch's own engine: DistributedDataParallel around the
functional model.

DDP needs an `nn.Module` whose parameters receive the gradients. `DetectorModule` is the
thinnest one: it registers the run's flat tensors — the very objects in the parameter dict,
under their names with "." written as "/" — and its `forward` runs `steps.loss_with_targets`.
Checkpoints, the optimizer and the EMA keep using the flat dict; nothing about them changes.
DDP then all-reduces gradient buckets while backward still runs.

Settings, and why:
- `broadcast_buffers=False`: BatchNorm running statistics stay each rank's own; with
  `--dist.sync-bn` they are computed from the global batch and so agree anyway.
- `gradient_as_bucket_view=True`: gradients live in the communication buckets (no copy, less
  memory).
- `static_graph=True` (without accumulation): every step uses the same parameters in the same
  order, which lets the reducer skip rediscovering that each iteration. DDP's `no_sync()`,
  which accumulation needs, does not work with it.
- Each rank's loss is its share of the global loss (normalised by the global positive count),
  so the gradient of the global loss is the *sum* of the ranks' gradients; DDP averages, so
  backward runs on `loss * world_size` (`gradient_scale`).

A world of one uses no wrapper and no collective: the loss is called directly.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from .layers import Params
from .steps import Targets, TrainingLoss, compiled, loss_with_targets

LossNetwork = Callable[[Tensor, Targets, Tensor], tuple[Tensor, Tensor, Tensor]]


def module_name(name: str) -> str:
    """The name of a flat-dict entry inside `DetectorModule` (modules forbid ".")."""
    return name.replace(".", "/")


class DetectorModule(nn.Module):
    """The run's flat tensors as one module: trainable ones as parameters, the rest (BatchNorm
    statistics, frozen weights) as buffers — the same tensor objects as in `params`."""

    def __init__(self, params: Params, loss: TrainingLoss) -> None:
        super().__init__()
        self.flat = params
        self.loss = loss
        for name, tensor in params.items():
            if isinstance(tensor, nn.Parameter):
                self.register_parameter(module_name(name), tensor)
            else:
                self.register_buffer(module_name(name), tensor)

    def forward(self, images: Tensor, targets: Targets, positives_total: Tensor):
        cfg, options = self.loss.cfg, self.loss.options
        return loss_with_targets(self.flat, images, targets, positives_total, cfg, options)


def _ddp(
    module: DetectorModule, device: torch.device, accumulating: bool
) -> nn.parallel.DistributedDataParallel:
    kwargs = {
        "device_ids": [device.index] if device.type == "cuda" else None,
        "gradient_as_bucket_view": True,
        "static_graph": not accumulating,
    }
    # torch 2.14 renames broadcast_buffers; the old name still works (with a warning) there.
    accepted = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    renamed = "forward_sync_buffers" in accepted
    kwargs["forward_sync_buffers" if renamed else "broadcast_buffers"] = False
    # A parameter with a size-1 dimension (depthwise weights [C, 1, k, k]) may get a gradient
    # whose stride in that dimension differs from the bucket's; the layout is the same memory.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(module, **kwargs)


class LossOverRanks:
    """`net(images, targets, positives_total)`: the training loss of this rank's micro-batch,
    through DDP when the world has more than one process; `no_sync()` defers the gradient
    all-reduce (accumulation); backward must run on the loss times `gradient_scale`."""

    def __init__(
        self,
        loss: TrainingLoss,
        params: Params,
        world_size: int,
        device: torch.device,
        accum_steps: int = 1,
    ) -> None:
        self.gradient_scale = float(world_size)
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if world_size == 1:
            self._net: LossNetwork = lambda images, targets, total: loss.with_targets(
                params, images, targets, total
            )
            return
        self.ddp = _ddp(DetectorModule(params, loss), device, accumulating=accum_steps > 1)
        # Dynamo compiles the module inside DDP (split into graphs at the gradient buckets, so
        # that each bucket's all-reduce starts as soon as its backward graph has run) and runs
        # DDP's own bookkeeping around it eagerly, hence no fullgraph here; the single-process
        # path, the same module code, compiles with fullgraph.
        self._net = compiled(self.ddp, loss.options.compile, fullgraph=False)

    def __call__(self, images: Tensor, targets: Targets, positives_total: Tensor):
        return self._net(images, targets, positives_total)

    def no_sync(self) -> AbstractContextManager:
        return self.ddp.no_sync() if self.ddp is not None else nullcontext()
