"""Decoding and checking one image or label file: cv2 (fastest PNG decoder here), clear errors.

Files are read as bytes and decoded with cv2.imdecode, so a missing file, an unreadable one and a
truncated one each get their own message (cv2.imread returns None for all three).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cgnet.data.errors import DataError
from cgnet.data.labels import IGNORE_INDEX, INVALID


def _read_bytes(path: Path, what: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise DataError(f"{what} {path} cannot be read: {error}") from None
    if not data:
        raise DataError(f"{what} {path} is empty (0 bytes); expected a PNG/JPEG file")
    return np.frombuffer(data, dtype=np.uint8)


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 image [H, W, 3]."""
    image = cv2.imdecode(_read_bytes(path, "image"), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"image {path} could not be decoded (truncated or not an image file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label_raw(path: Path) -> np.ndarray:
    """A label file's ids as stored: uint8 [H, W]; colour or 16-bit files are refused."""
    label = cv2.imdecode(_read_bytes(path, "label"), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DataError(f"label {path} could not be decoded (truncated or not an image file)")
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[:, :, 0]
    if label.ndim != 2:
        raise DataError(
            f"label {path} has {label.shape[2]} channels (a colour image?); expected a "
            "single-channel id map such as *_gtFine_labelIds.png or a CamVid *annot/ PNG, "
            "not a *_color.png picture"
        )
    if label.dtype != np.uint8:
        raise DataError(
            f"label {path} is {label.dtype} (e.g. *_instanceIds.png); expected 8-bit class ids"
        )
    return label


def map_label(raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    """Raw ids -> trainIds (255 ignore) with a 256-entry LUT; values the LUT marks INVALID raise."""
    mapped = cv2.LUT(raw, lut)
    if cv2.countNonZero(cv2.compare(mapped, INVALID, cv2.CMP_EQ)):
        bad = np.unique(raw[mapped == INVALID])
        valid = np.flatnonzero(lut != INVALID)
        raise DataError(
            f"label {path} holds values {bad[:10].tolist()} that are not ids of this dataset; "
            f"expected only {_ranges(valid)}"
        )
    return mapped


def read_label(path: Path, lut: np.ndarray) -> np.ndarray:
    """trainIds uint8 [H, W] (255 ignore) from a label file, checked against the dataset's ids."""
    return map_label(read_label_raw(path), lut, path)


def check_same_size(
    image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path
) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise DataError(
            f"label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image "
            f"{image_path} is {image.shape[1]}x{image.shape[0]}; expected the same size"
        )


def empty_label(image: np.ndarray) -> np.ndarray:
    """The mask of an image without ground truth: all ignore."""
    return np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)


def _ranges(values: np.ndarray) -> str:
    """[0, 1, 2, 3, 255] -> '0..3, 255'."""
    items, parts, i = values.tolist(), [], 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}..{items[j]}")
        i = j + 1
    return ", ".join(parts)
