"""Per-file label statistics, computed in DataLoader workers: class weights and the data check."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from torch.utils.data import DataLoader, Dataset

from cgnet.data.errors import DataError
from cgnet.data.io import check_same_size, read_image, read_label
from cgnet.data.layout import Sample

MIN_FILES_PER_WORKER = 16


@dataclass(frozen=True)
class FileStats:
    """One sample's trainId pixel counts (index 255 = ignore), or the problem that stopped it."""

    sample: Sample
    counts: np.ndarray | None
    problem: str | None


class LabelStatsDataset(Dataset[FileStats]):
    """Counts trainIds in each label; with check_images also decodes the image and compares sizes."""

    def __init__(
        self, samples: Sequence[Sample], luts: Mapping[str, np.ndarray], check_images: bool
    ) -> None:
        self.samples = list(samples)
        self.luts = dict(luts)
        self.check_images = check_images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> FileStats:
        sample = self.samples[index]
        try:
            image = read_image(sample.image) if self.check_images else None
            if sample.label is None:
                return FileStats(sample, None, None)
            mask = read_label(sample.label, self.luts[sample.label_format])
            if image is not None:
                check_same_size(image, mask, sample.image, sample.label)
        except DataError as error:
            return FileStats(sample, None, str(error))
        hist = cv2.calcHist([mask], [0], None, [256], [0, 256]).reshape(-1)
        return FileStats(sample, hist.astype(np.int64), None)


def iter_stats(
    samples: Sequence[Sample],
    luts: Mapping[str, np.ndarray],
    *,
    check_images: bool,
    num_workers: int,
) -> Iterator[FileStats]:
    """FileStats for every sample, in order, decoded by up to num_workers processes.

    Never more processes than cores, and none for a handful of files (starting them costs more).
    """
    workers = min(num_workers, os.cpu_count() or 1) if len(samples) >= MIN_FILES_PER_WORKER else 0
    loader = DataLoader(
        LabelStatsDataset(samples, luts, check_images),
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
    )
    yield from loader


def _identity(item: FileStats) -> FileStats:
    return item


def sum_counts(
    stats: Iterator[FileStats], on_item: Callable[[FileStats], None] | None = None
) -> np.ndarray:
    """Total pixel counts over all samples (256 entries); problems raise DataError."""
    total = np.zeros(256, dtype=np.int64)
    for item in stats:
        if on_item is not None:
            on_item(item)
        if item.problem is not None:
            raise DataError(item.problem)
        if item.counts is not None:
            total += item.counts
    return total
