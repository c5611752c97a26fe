"""Whole-image, sliding-window and multi-scale + flip prediction (mmseg's test-time protocols).

Each takes a network called like CGNet (normalised float NCHW in, logits at input size out), so the
eager model, the fast path and an exported file's wrapper all predict the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_softmax", "default_stride", "predict_logits", "sliding_window_logits"]


# --------------------------------------------------------------------------------------------------
# Whole-image, sliding-window and multi-scale + flip prediction
# --------------------------------------------------------------------------------------------------

Merge = Literal["softmax", "logits"]


def class_softmax(scores: Tensor) -> Tensor:
    """Softmax over the class dimension, over a contiguous last dim when the scores are
    channels-last (as the fast path returns them): 3x faster than ``softmax(1)`` there."""
    if scores.dim() == 4 and scores.is_contiguous(memory_format=torch.channels_last):
        return scores.permute(0, 2, 3, 1).softmax(-1).permute(0, 3, 1, 2)
    return scores.softmax(1)


def _scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """mmcv's rescale rounding: int(side * scale + 0.5), at least one pixel."""
    return tuple(max(1, int(side * scale + 0.5)) for side in size)  # type: ignore[return-value]


def _windows(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's slide_inference grid along one axis; the last window is shifted back inside the image."""
    crop = min(window, size)
    count = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, size)
        spans.append((end - crop, end))
    return spans


def default_stride(window: tuple[int, int]) -> tuple[int, int]:
    """Two thirds of the window (mmseg's Cityscapes configs: 512x1024 windows, 341x682 stride)."""
    return (max(1, 2 * window[0] // 3), max(1, 2 * window[1] // 3))


def sliding_window_logits(
    net: Callable[[Tensor], Tensor],
    images: Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    *,
    num_classes: int | None = None,
    window_batch: int = 4,
) -> Tensor:
    """Logits from overlapping windows, averaged where they overlap (mmseg's slide mode).

    Every window has the same size (min(window, image)), so windows run ``window_batch`` at a time.
    """
    if min(*window, *stride) < 1:
        raise ValueError(f"window {window} and stride {stride} must be positive")
    batch, _, height, width = images.shape
    boxes = [
        (y0, y1, x0, x1)
        for y0, y1 in _windows(height, window[0], stride[0])
        for x0, x1 in _windows(width, window[1], stride[1])
    ]
    logits: Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=images.device, dtype=images.dtype)
    for start in range(0, len(boxes), max(1, window_batch)):
        chunk = boxes[start : start + max(1, window_batch)]
        crops = torch.cat([images[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in chunk], 0)
        out = net(crops).float()
        if logits is None:
            classes = num_classes or out.shape[1]
            logits = images.new_zeros(batch, classes, height, width, dtype=torch.float32)
        for k, (y0, y1, x0, x1) in enumerate(chunk):
            logits[:, :, y0:y1, x0:x1] += out[k * batch : (k + 1) * batch]
            count[:, :, y0:y1, x0:x1] += 1
    assert logits is not None
    return logits / count


def predict_logits(
    net: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    num_classes: int | None = None,
    merge: Merge = "softmax",
    window_batch: int = 4,
) -> Tensor:
    """Class scores ``[B, C, H, W]`` for normalised float images, whole-image or sliding-window, at
    one or several scales, optionally with horizontal flips (mmseg's test-time augmentation).

    Each view resizes the image (bilinear, align_corners=False), predicts, and resizes the logits back
    to the input size. A single view returns the network's logits unchanged. Several views are merged
    the way mmseg does: the mean of their softmax probabilities (``merge="softmax"``), or the mean of
    their logits (``merge="logits"``). Either way the argmax over classes is the prediction.
    """
    if not scales:
        raise ValueError("predict_logits needs at least one scale")
    if stride is not None and window is None:
        raise ValueError("stride given without window")
    if merge not in ("softmax", "logits"):
        raise ValueError(f"merge must be 'softmax' or 'logits', got {merge!r}")
    size = tuple(images.shape[-2:])
    views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]

    def run(x: Tensor) -> Tensor:
        if window is None:
            return net(x).float()
        return sliding_window_logits(
            net,
            x,
            window,
            stride or default_stride(window),
            num_classes=num_classes,
            window_batch=window_batch,
        )

    total: Tensor | None = None
    for scale, flipped in views:
        x = images
        if scale != 1.0:
            x = F.interpolate(
                x, size=_scaled_size(size, scale), mode="bilinear", align_corners=False
            )
        if flipped:
            x = x.flip(-1)
        out = run(x)
        if flipped:
            out = out.flip(-1)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if len(views) == 1:
            return out
        out = class_softmax(out) if merge == "softmax" else out
        total = out if total is None else total + out
    assert total is not None
    return total / len(views)
