"""The prepared-data format: one litdata folder per split plus a manifest naming what it holds.

A prepared folder holds, for each configured split, a litdata "optimized" folder (index.json +
chunk files) of samples exactly as the PNG path hands them to augmentation: decoded uint8 RGB
[H, W, 3], uint8 trainIds [H, W] (the dataset's label lookup tables already applied, 255 ignore),
the sample id and the original (H, W). ``manifest.json`` is written last, so a folder without it
was never finished and is refused by the readers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cgnet.data.errors import DataError
from cgnet.data.io import check_same_size, empty_label, read_image, read_label

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "prepare.json"  # written first, removed last: an unfinished preparation's identity
INDEX = "index.json"
PARTIAL_SUFFIX = ".partial"
STAGES = ("train", "val", "test")


def luts_hash(luts: Mapping[str, np.ndarray]) -> str:
    """A short hash of the label lookup tables: prepared masks are only valid for the same mapping."""
    digest = hashlib.sha256()
    for name in sorted(luts):
        digest.update(name.encode() + b"\0" + np.ascontiguousarray(luts[name], np.uint8).tobytes())
    return digest.hexdigest()[:16]


def folder_name(split: str, list_file: str | None) -> str:
    """A split's folder: its name, plus the list file's stem when the split comes from a list."""
    name = split if list_file is None else f"{split}@{Path(list_file).stem}"
    return re.sub(r"[^A-Za-z0-9_.+@-]", "_", name)


@dataclass(frozen=True)
class SplitEntry:
    """One prepared split: which split (and list file) it holds, where, and how many samples."""

    split: str
    list_file: str | None
    folder: str
    count: int
    pixel_counts: list[int]

    def matches(self, split: str, list_file: str | None) -> bool:
        """The same split read the same way (list files are compared by name: paths differ between
        the machine that prepared the data and the one that trains)."""
        if split != self.split:
            return False
        if list_file is None or self.list_file is None:
            return list_file is None and self.list_file is None
        return Path(list_file).name == Path(self.list_file).name


def split_entries(manifest: Mapping[str, Any]) -> list[SplitEntry]:
    return [SplitEntry(**entry) for entry in manifest.get("splits", [])]


def check_manifest(manifest: Mapping[str, Any], where: str, dataset: str, label_hash: str) -> None:
    """A manifest of another format, dataset or label mapping is one DataError naming the file."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{where} has format version {version}; this cgnet reads version {FORMAT_VERSION}: "
            "prepare the data again with python -m cgnet.data.prepare"
        )
    if manifest.get("dataset") != dataset:
        raise DataError(
            f"{where} holds prepared {manifest.get('dataset')!r} data, not {dataset!r}: point "
            "data.prepared at a folder prepared with this data config"
        )
    if manifest.get("label_luts_sha256") != label_hash:
        raise DataError(
            f"{where} was prepared with another label mapping (LUT hash "
            f"{manifest.get('label_luts_sha256')}, expected {label_hash}): prepare the data again"
        )


def find_entry(
    manifest: Mapping[str, Any], where: str, split: str, list_file: str | None
) -> SplitEntry:
    for entry in split_entries(manifest):
        if entry.matches(split, list_file):
            return entry
    held = ", ".join(
        e.split + (f" (list {Path(e.list_file).name})" if e.list_file else "")
        for e in split_entries(manifest)
    )
    wanted = split + (f" (list {Path(list_file).name})" if list_file else "")
    raise DataError(
        f"{where} has no prepared split {wanted}; it holds: {held or 'nothing'}. Prepare it with "
        "the same data.*_split / data.*_list settings"
    )


def encode_sample(item: tuple[str, str, str | None, np.ndarray | None]) -> dict[str, Any]:
    """litdata.optimize's fn: decode one image/label pair exactly as SegmentationDataset.load does.

    ``item`` is (id, image path, label path or None, the label format's lookup table or None).
    """
    sample_id, image_path, label_path, lut = item
    image = read_image(Path(image_path))
    if label_path is None or lut is None:
        mask = empty_label(image)
    else:
        mask = read_label(Path(label_path), lut)
        check_same_size(image, mask, Path(image_path), Path(label_path))
    return {
        "id": sample_id,
        "image": np.ascontiguousarray(image),
        "mask": np.ascontiguousarray(mask),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
    }
