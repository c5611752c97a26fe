"""The training loss: class-weighted pixel cross-entropy that skips ``ignore_index``.

PyTorch's CUDA ``nll_loss2d`` forward accumulates the weighted sum with atomics, so under
``torch.use_deterministic_algorithms(True)`` (Lightning's ``trainer.deterministic=true``) it refuses
to run. :func:`deterministic_cross_entropy` computes the same weighted mean from ``log_softmax`` and
``gather`` (both deterministic on CUDA in that mode) and plain reductions; :class:`SegmentationLoss`
uses it exactly there and PyTorch's fused kernel everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationLoss", "deterministic_cross_entropy"]


def deterministic_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """``F.cross_entropy(logits, target, weight, ignore_index=...)`` (mean reduction) without atomics.

    ``logits`` [B, C, ...], ``target`` [B, ...] class indices. As PyTorch's, the weighted mean is
    ``sum_i w[t_i] * -log p_i[t_i] / sum_i w[t_i]`` over the pixels that are not ignored (NaN if none).
    """
    # half-precision logits are scored in float32, as autocast does for PyTorch's cross-entropy
    wide = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    log_p = F.log_softmax(wide, dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    picked = log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    pixel_weight = valid.to(log_p.dtype)
    if weight is not None:
        pixel_weight = pixel_weight * weight.to(log_p.dtype)[safe]
    return -(picked * pixel_weight).sum() / pixel_weight.sum()


class SegmentationLoss(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` (same buffers, so checkpoints keep ``criterion.weight``) that switches to
    :func:`deterministic_cross_entropy` on CUDA when deterministic algorithms are enabled."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.is_cuda and torch.are_deterministic_algorithms_enabled():
            return deterministic_cross_entropy(input, target, self.weight, self.ignore_index)
        return super().forward(input, target)
