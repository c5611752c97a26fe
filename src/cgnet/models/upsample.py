"""Bilinear upsampling of the logits that stays deterministic when trained on CUDA.

CUDA's ``upsample_bilinear2d`` backward accumulates with atomics, so under
``torch.use_deterministic_algorithms(True)`` (Lightning's ``trainer.deterministic=true``) it refuses
to run. Bilinear interpolation is separable and linear: ``out = R_h @ x @ R_w^T`` with two small
interpolation matrices, whose matrix products (forward and backward) are deterministic. The matrices
reproduce PyTorch's ``align_corners=False`` rule exactly, so both paths compute the same function.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["interpolation_matrix", "upsample_bilinear", "upsample_bilinear_by_matrices"]


@functools.lru_cache(maxsize=64)
def _matrix(size_in: int, size_out: int) -> torch.Tensor:
    """float64 [size_out, size_in] weights of PyTorch's bilinear rule with align_corners=False."""
    scale = size_in / size_out
    src = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = src - lo.double()
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    matrix.index_put_((rows, hi), frac, accumulate=True)
    return matrix


_DEVICE_MATRICES: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}


def interpolation_matrix(
    size_in: int, size_out: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The [size_out, size_in] interpolation matrix on ``device`` (cached: training reuses sizes)."""
    key = (size_in, size_out, device, dtype)
    if key not in _DEVICE_MATRICES:
        if len(_DEVICE_MATRICES) > 64:
            _DEVICE_MATRICES.clear()
        _DEVICE_MATRICES[key] = _matrix(size_in, size_out).to(device=device, dtype=dtype)
    return _DEVICE_MATRICES[key]


def upsample_bilinear_by_matrices(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear', align_corners=False)`` as two matrix products."""
    rows = interpolation_matrix(x.shape[-2], size[0], x.device, x.dtype)
    cols = interpolation_matrix(x.shape[-1], size[1], x.device, x.dtype)
    return torch.matmul(torch.matmul(rows, x), cols.t())


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``x`` [B, C, h, w] to ``size``: the matrix form only where it is needed
    (a CUDA backward in deterministic mode); PyTorch's kernel everywhere else (faster, exportable)."""
    if (
        x.is_cuda
        and x.requires_grad
        and torch.is_grad_enabled()
        and torch.are_deterministic_algorithms_enabled()
    ):
        return upsample_bilinear_by_matrices(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
