"""Pictures of predictions: palette colouring and image | ground truth | prediction panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

IGNORE_COLOUR = (0, 0, 0)


def colorize(
    mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> np.ndarray:
    """trainId map [H, W] -> RGB uint8 [H, W, 3]; ignored or unknown ids are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[ignore_index] = IGNORE_COLOUR
    return lut[np.asarray(mask, dtype=np.uint8)]


def panel(
    image: np.ndarray,
    target: np.ndarray | None,
    pred: np.ndarray,
    palette: Sequence[Sequence[int]],
    ignore_index: int = 255,
) -> np.ndarray:
    """One row: RGB image | coloured ground truth (if any) | coloured prediction."""
    parts = [np.asarray(image, dtype=np.uint8)]
    if target is not None:
        parts.append(colorize(target, palette, ignore_index))
    parts.append(colorize(pred, palette, ignore_index))
    return np.concatenate(parts, axis=1)


def save_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB array as PNG (cv2 wants BGR), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write picture {path}")
    return path
