"""Class weights for the cross-entropy: none, the published Cityscapes list, or computed and cached.

Computed weights follow the official code: w = 1 / ln(1.10 + p), p = each class's share of the
labelled (non-void) pixels of the training split. Counting all of Cityscapes' train labels takes a
while, so the result is cached as JSON in the cache folder, keyed by the split's file list.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cgnet.cache import cache_dir, write_json_atomic
from cgnet.data.labels import DatasetInfo
from cgnet.data.layout import Sample
from cgnet.data.stats import iter_stats, sum_counts

WEIGHT_OFFSET = 1.10


def weights_from_counts(counts: np.ndarray) -> np.ndarray:
    """w = 1 / ln(1.10 + p) over per-class pixel counts (void already excluded)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    freq = counts / total if total > 0 else np.zeros_like(counts)
    return 1.0 / np.log(WEIGHT_OFFSET + freq)


def cache_key(info: DatasetInfo, samples: Sequence[Sample]) -> str:
    """A hash of the dataset and the split's label files (paths and sizes)."""
    digest = hashlib.sha256(f"{info.name}:{info.num_classes}".encode())
    for sample in samples:
        label = sample.label
        size = label.stat().st_size if label is not None and label.exists() else -1
        digest.update(
            f"\n{sample.image.resolve()}|{label.resolve() if label else ''}|{size}".encode()
        )
    return digest.hexdigest()[:20]


def cache_path(info: DatasetInfo, samples: Sequence[Sample], directory: Path | None = None) -> Path:
    return (
        directory or cache_dir() / "class_weights"
    ) / f"{info.name}-{cache_key(info, samples)}.json"


def computed_class_weights(
    info: DatasetInfo,
    samples: Sequence[Sample],
    luts: Mapping[str, np.ndarray],
    *,
    num_workers: int = 0,
    directory: Path | None = None,
) -> np.ndarray:
    """The weights of `samples` (a training split), read from the cache or counted once and cached."""
    path = cache_path(info, samples, directory)
    if path.is_file():
        try:
            weights = json.loads(path.read_text())["weights"]
            if len(weights) == info.num_classes:
                return np.asarray(weights, dtype=np.float64)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is recomputed and overwritten
    counts = sum_counts(iter_stats(samples, luts, check_images=False, num_workers=num_workers))
    class_counts = counts[: info.num_classes]
    weights = weights_from_counts(class_counts)
    write_json_atomic(
        path,
        {
            "dataset": info.name,
            "num_images": len(samples),
            "formula": "w = 1 / ln(1.10 + p), p = class pixel frequency, void excluded",
            "class_names": list(info.class_names),
            "pixel_counts": class_counts.tolist(),
            "ignored_pixels": int(counts.sum() - class_counts.sum()),
            "weights": weights.tolist(),
        },
    )
    return weights
