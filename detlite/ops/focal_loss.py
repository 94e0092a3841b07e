"""`detlite::sigmoid_focal_loss`: focal loss over sigmoid logits, summed per image, fused backward.

For logit x and hard target t (1 for the anchor's class, else 0), with p = sigmoid(x):

    p_t     = p if t else 1 - p          q = 1 - p_t
    alpha_t = alpha if t else 1 - alpha
    s       = t * (1 - ls) + ls / 2      (label-smoothed target of the cross-entropy only)
    ce      = max(x, 0) - x * s + log1p(exp(-|x|))          (BCE with logits against s)
    loss    = alpha_t * q**gamma * ce

summed over the classes of every anchor whose label is not -2 (ignored), per image. Labels are the
class index for positives, -1 (or any value outside [0, C) other than -2) for background.

The gradient needs no [B, A, C] state from the forward pass: with sign = -1 if t else +1,

    d loss / dx = alpha_t * q**gamma * (sign * gamma * p_t * ce + p - s)

(d q**gamma / dx = gamma * q**(gamma-1) * sign * p * (1 - p), and p * (1 - p) = q * p_t). The
backward is therefore its own operator, `detlite::sigmoid_focal_loss_backward`, which recomputes
everything from the logits and labels.

The kernels registered here are the reference: vectorised torch over chunks of anchors (so
temporaries stay small), treating every element as a negative in a few passes (sigmoid,
softplus, pow) and then overwriting the few positives with the t = 1 formula. They serve CPU
tensors, and CUDA tensors when the CUDA library is not loaded. The CUDA library registers
single-pass kernels for the CUDA dispatch key, which evaluate the formulas above element by
element (via exp(-|x|) and log1p, as `_element_terms` does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detlite.labels import IGNORE
from detlite.ops.library import define

NAME = "detlite::sigmoid_focal_loss"
BACKWARD_NAME = "detlite::sigmoid_focal_loss_backward"

SCHEMA = "(Tensor logits, Tensor labels, float alpha, float gamma, float label_smoothing) -> Tensor"
BACKWARD_SCHEMA = (
    "(Tensor grad, Tensor logits, Tensor labels, float alpha, float gamma, float label_smoothing)"
    " -> Tensor"
)
define(NAME, SCHEMA)
define(BACKWARD_NAME, BACKWARD_SCHEMA)

# Elements of [anchors, classes] processed per step by the reference kernels.
_CHUNK_ELEMENTS = 1 << 20


def _on_reference_call(*tensors: Tensor) -> None:
    """Replaced by the package loader: warns once when CUDA tensors reach the reference kernels."""


def result_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """Dtype of the per-image loss: float64 for float64 logits, float32 for every other float."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


def _check(logits: Tensor, labels: Tensor) -> None:
    torch._check(
        logits.dim() == 3,
        lambda: f"sigmoid_focal_loss: logits must be [B, A, C], got shape {tuple(logits.shape)}",
    )
    torch._check(
        logits.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64),
        lambda: (
            f"sigmoid_focal_loss: logits must be float32/float16/bfloat16/float64, "
            f"got {logits.dtype}"
        ),
    )
    torch._check(
        labels.dim() == 2 and labels.shape == logits.shape[:2],
        lambda: (
            f"sigmoid_focal_loss: labels must be [B, A] = {tuple(logits.shape[:2])}, "
            f"got {tuple(labels.shape)}"
        ),
    )
    torch._check(
        labels.dtype in (torch.int64, torch.int32),
        lambda: f"sigmoid_focal_loss: labels must be int64 or int32, got {labels.dtype}",
    )
    torch._check(
        labels.device == logits.device,
        lambda: f"sigmoid_focal_loss: logits on {logits.device} but labels on {labels.device}",
    )


def _pick(cond: Tensor, if_true: float, if_false: float, like: Tensor) -> Tensor:
    """torch.where of two constants in `like`'s dtype (two Python floats would give float32)."""
    return torch.where(cond, like.new_full((), if_true), like.new_full((), if_false))


def _element_terms(
    x: Tensor, t: Tensor, alpha: float, gamma: float, label_smoothing: float, grad: bool
) -> Tensor:
    """Loss (or d loss / dx) of single elements with explicit targets t (bool), the formulas of
    the module docstring term by term. Used for the few positive elements."""
    e = torch.exp(-x.abs())
    log1p_e = torch.log1p(e)
    softplus_x = x.clamp(min=0) + log1p_e  # -log(1 - p)
    softplus_neg_x = (-x).clamp(min=0) + log1p_e  # -log(p)
    modulating = torch.exp(gamma * -torch.where(t, softplus_x, softplus_neg_x))  # q ** gamma
    s = _pick(t, 1.0 - 0.5 * label_smoothing, 0.5 * label_smoothing, x)
    ce = (x.clamp(min=0) - x * s) + log1p_e
    alpha_t = _pick(t, alpha, 1.0 - alpha, x)
    if not grad:
        return alpha_t * modulating * ce
    p = torch.sigmoid(x)
    p_t = torch.where(t, p, torch.sigmoid(-x))
    signed_gamma = _pick(t, -gamma, gamma, x)
    return alpha_t * modulating * (signed_gamma * p_t * ce + (p - s))


def _positives(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(rows, classes) of the positive elements of a chunk: one per anchor labelled 0..C-1."""
    rows = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    return rows, labels[rows]


def _negative_ce(x: Tensor, smoothing: float) -> Tensor:
    """BCE with logits against the negatives' target ls / 2: softplus(x) - x * ls / 2.

    (torch's softplus returns x itself above x = 20, where log1p(exp(-x)) < 3e-9 is below
    float32 resolution of x.)
    """
    ce = torch.nn.functional.softplus(x)
    return ce.sub_(x, alpha=0.5 * smoothing) if smoothing else ce


def _chunk_loss(x: Tensor, labels: Tensor, alpha: float, gamma: float, smoothing: float) -> Tensor:
    """Summed loss of one chunk, x [n, C] (float32/64), labels [n].

    Every element is first treated as a negative (t = 0: q = p, alpha_t = 1 - alpha, BCE target
    ls / 2) with a few vectorised passes; the positives (at most one per anchor) are then
    overwritten with the t = 1 formula; ignored anchors are dropped per anchor.
    """
    loss = _negative_ce(x, smoothing)
    loss.mul_(torch.sigmoid(x).pow_(gamma)).mul_(1.0 - alpha)
    rows, cols = _positives(labels, x.shape[1])
    positive = torch.ones_like(rows, dtype=torch.bool)
    loss[rows, cols] = _element_terms(x[rows, cols], positive, alpha, gamma, smoothing, False)
    per_anchor = loss.sum(dim=1)
    return torch.where(labels != IGNORE, per_anchor, 0.0).sum()


def _chunk_grad(
    x: Tensor,
    labels: Tensor,
    alpha: float,
    gamma: float,
    smoothing: float,
    scale: Tensor,
    out: Tensor | None,
) -> Tensor:
    """d loss / dx * scale of one chunk, x [n, C] (float32/64): negatives in bulk, then the
    positives overwritten, then ignored anchors zeroed. Written into `out` when given."""
    p = torch.sigmoid(x)
    # (1 - alpha) * p**gamma * (gamma * (1 - p) * ce + (p - s)) for t = 0.
    p_minus_s = p.sub(0.5 * smoothing) if smoothing else p.clone()
    grad = torch.addcmul(p_minus_s, torch.sub(1.0, p), _negative_ce(x, smoothing), value=gamma)
    grad.mul_(p.pow_(gamma))
    grad = torch.mul(grad, scale * (1.0 - alpha), out=out)
    rows, cols = _positives(labels, x.shape[1])
    positive = torch.ones_like(rows, dtype=torch.bool)
    values = _element_terms(x[rows, cols], positive, alpha, gamma, smoothing, True)
    grad[rows, cols] = values * scale
    return grad.masked_fill_((labels == IGNORE).unsqueeze(1), 0.0)


def _chunks(num_anchors: int, num_classes: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(num_classes, 1))
    return [(a, min(a + step, num_anchors)) for a in range(0, num_anchors, step)]


def forward_reference(
    logits: Tensor, labels: Tensor, alpha: float, gamma: float, label_smoothing: float
) -> Tensor:
    """Reference forward (any device): per-image loss [B], float32 (float64 for float64 logits)."""
    _check(logits, labels)
    _on_reference_call(logits)
    batch, num_anchors, num_classes = logits.shape
    dtype = result_dtype(logits.dtype)
    sums = []
    for b in range(batch):
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for start, stop in _chunks(num_anchors, num_classes):
            x = logits[b, start:stop].to(dtype)
            total = total + _chunk_loss(x, labels[b, start:stop], alpha, gamma, label_smoothing)
        sums.append(total)
    if not sums:
        return logits.new_zeros((0,), dtype=dtype)
    return torch.stack(sums).to(dtype)


def backward_reference(
    grad: Tensor,
    logits: Tensor,
    labels: Tensor,
    alpha: float,
    gamma: float,
    label_smoothing: float,
) -> Tensor:
    """Reference backward (any device): d(sum_b grad[b] * loss[b]) / d logits, in logits' dtype."""
    _check(logits, labels)
    torch._check(
        grad.dim() == 1 and grad.shape[0] == logits.shape[0],
        lambda: (
            f"sigmoid_focal_loss_backward: grad must be [B] = [{logits.shape[0]}], "
            f"got {tuple(grad.shape)}"
        ),
    )
    batch, num_anchors, num_classes = logits.shape
    dtype = result_dtype(logits.dtype)
    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    for b in range(batch):
        scale = grad[b].to(dtype)
        for start, stop in _chunks(num_anchors, num_classes):
            x = logits[b, start:stop].to(dtype)
            target = out[b, start:stop]
            direct = target if target.dtype == dtype else None  # else convert on the copy
            part = _chunk_grad(
                x, labels[b, start:stop], alpha, gamma, label_smoothing, scale, direct
            )
            if direct is None:
                target.copy_(part)
    return out


# The reference kernels serve every device ("default" = CompositeExplicitAutograd); the CUDA
# library, when loaded, registers its own kernels for the CUDA key, which take precedence.
torch.library.impl(NAME, "default", forward_reference)
torch.library.impl(BACKWARD_NAME, "default", backward_reference)


@torch.library.register_fake(NAME)
def _forward_fake(logits, labels, alpha, gamma, label_smoothing):
    _check(logits, labels)
    return logits.new_empty((logits.shape[0],), dtype=result_dtype(logits.dtype))


@torch.library.register_fake(BACKWARD_NAME)
def _backward_fake(grad, logits, labels, alpha, gamma, label_smoothing):
    _check(logits, labels)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    logits, labels, alpha, gamma, label_smoothing = inputs
    ctx.save_for_backward(logits, labels)
    ctx.params = (alpha, gamma, label_smoothing)


def _backward(ctx, grad):
    logits, labels = ctx.saved_tensors
    grad_logits = torch.ops.detlite.sigmoid_focal_loss_backward(
        grad.contiguous(), logits, labels, *ctx.params
    )
    return grad_logits, None, None, None, None


torch.library.register_autograd(NAME, _backward, setup_context=_setup_context)


def sigmoid_focal_loss(
    logits: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 1.5,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Focal loss per image, [B] float32 (float64 for float64 logits); differentiable in logits.

    logits [B, A, C] (float32, float16, bfloat16 or float64; computed in float32 or better);
    labels [B, A] int64/int32: class index of positives, -1 background, -2 ignored (neither loss
    nor gradient). Normalisation (e.g. by the number of positives) is left to the caller.
    """
    return torch.ops.detlite.sigmoid_focal_loss(
        logits.contiguous(), labels.contiguous(), float(alpha), float(gamma), float(label_smoothing)
    )
