"""Optimizer, learning-rate schedule and EMA over the flat parameter dict.

The schedule is a pure function of the step (no scheduler object to save), and the EMA is a
`torch._foreach_lerp_` over every tensor of the dict (BatchNorm statistics included, as the
reference recipe does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum, as the NVIDIA / paper recipe."""

    lr: float = 0.08
    """Learning rate for a global batch of `lr_reference_batch` images (linear scaling rule)."""
    lr_reference_batch: int = 64
    """The global batch --optim.lr is meant for; the LR used is lr × global batch / this."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 4e-5
    """L2 weight decay, not applied to 1-D tensors (biases, BN affine, BiFPN edge weights)."""
    clip_grad_norm: float = 10.0
    """Global L2 norm of the (unscaled) gradients; 0 disables clipping."""
    ema_decay: float = 0.9998
    """EMA of all weights and BN statistics, used for evaluation; 0 disables the EMA."""
    ema_warmup: bool = True
    """Warm the EMA up: decay min(ema_decay, (1 + step) / (10 + step)), as TF's EfficientDet
    does, so that the average soon forgets the initial weights instead of carrying them."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Cosine decay with linear warm-up, evaluated per step."""

    warmup_steps: int = 500
    """Steps of linear warm-up from warmup_start_factor × peak LR to the peak LR."""
    warmup_start_factor: float = 0.1
    """LR at step 0 as a fraction of the peak LR."""
    min_lr_factor: float = 0.01
    """LR at the end of the cosine as a fraction of the peak LR."""
    cooldown_steps: int = 0
    """Steps at the minimum LR after the cosine."""


def peak_lr(cfg: OptimConfig, global_batch: int) -> float:
    return cfg.lr * global_batch / cfg.lr_reference_batch


def lr_at(step: int, total_steps: int, peak: float, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    warmup = min(cfg.warmup_steps, max(total_steps - cfg.cooldown_steps - 1, 0))
    min_lr = peak * cfg.min_lr_factor
    if step < warmup:
        start = peak * cfg.warmup_start_factor
        return start + (peak - start) * step / warmup
    cosine_steps = max(total_steps - cfg.cooldown_steps - warmup, 1)
    progress = min((step - warmup) / cosine_steps, 1.0)
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))


def trainable_names(params: dict[str, Tensor], freeze_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Learnable tensors (not BN running statistics), minus frozen prefixes, in a stable order."""
    return [
        k
        for k in params
        if not k.endswith(("running_mean", "running_var")) and not k.startswith(freeze_prefixes)
    ]


def make_sgd(
    params: dict[str, Tensor], names: list[str], cfg: OptimConfig, lr: float
) -> torch.optim.SGD:
    """SGD over `names`, with weight decay only on tensors of 2+ dims."""
    decay = [params[k] for k in names if params[k].dim() > 1]
    no_decay = [params[k] for k in names if params[k].dim() <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = all(p.is_cuda for p in decay + no_decay)
    return torch.optim.SGD(
        groups, lr=lr, momentum=cfg.momentum, foreach=not fused, fused=fused or None
    )


def scaled_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer step through the loss scaler; False when the scaler skipped it (fp16
    gradients with inf/NaN: it lowers its scale instead, and `update` shows that)."""
    scale = scaler.get_scale()  # 1.0 when disabled; when enabled `step` syncs anyway
    scaler.step(optimizer)
    scaler.update()
    return not scaler.get_scale() < scale


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def ema_decay_at(step: int, cfg: OptimConfig) -> float:
    """The EMA decay of the update after `step` optimizer steps (0 for the first update)."""
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


@torch.no_grad()
def ema_update(ema: dict[str, Tensor], params: dict[str, Tensor], decay: float) -> None:
    """ema ← decay·ema + (1−decay)·params, over every tensor, in one foreach call."""
    keys = list(ema)
    torch._foreach_lerp_([ema[k] for k in keys], [params[k].detach() for k in keys], 1.0 - decay)
