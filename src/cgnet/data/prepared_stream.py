"""The litdata StreamingDataset that yields cgnet samples (imported only when prepared data is read)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import albumentations as A
from litdata import StreamingDataset

from cgnet.data.device_augment import WindowCut
from cgnet.data.prepared import to_sample
from cgnet.data.transforms import reseed


class PreparedStreamingDataset(StreamingDataset):
    """A StreamingDataset yielding cgnet samples, augmented by the same albumentations pipeline as the
    PNG path (``augment``: litdata's own ``transform`` attribute has other semantics)."""

    augment: A.Compose | WindowCut | None = None

    def get_raw(self, index: Any) -> Mapping[str, Any]:
        """The stored item: `image`, `mask`, `id`, `height`, `width`."""
        return super().__getitem__(index)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        return to_sample(self.get_raw(index), self.augment)

    def reseed(self, seed: int) -> None:
        if self.augment is not None:
            reseed(self.augment, seed)
