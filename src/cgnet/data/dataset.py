"""The torch Dataset shared by every DataModule: decode, check, map ids, augment, hand over uint8."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from cgnet.data.device_augment import WindowCut
from cgnet.data.io import check_same_size, empty_label, read_image, read_label
from cgnet.data.layout import Sample
from cgnet.data.transforms import augment_sample, reseed


class SegmentationDataset(Dataset[dict[str, Any]]):
    """Samples as dicts: `image` uint8 [3, H, W] RGB, `mask` uint8 [H, W] trainIds, `id`.

    `luts` maps each Sample.label_format to its 256-entry id -> trainId table. Without a transform the
    image comes at full resolution (validation and test are whole-image). `image` is a CHW view of the
    decoded HWC array (no copy; `collate` stacks the HWC arrays) and masks stay uint8 until collation.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        luts: Mapping[str, np.ndarray],
        transform: A.Compose | WindowCut | None = None,
    ) -> None:
        self.samples = list(samples)
        self.luts = dict(luts)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked image [H, W, 3] RGB and its trainId mask [H, W], before augmentation."""
        sample = self.samples[index]
        image = read_image(sample.image)
        if sample.label is None:
            return image, empty_label(image)
        mask = read_label(sample.label, self.luts[sample.label_format])
        check_same_size(image, mask, sample.image, sample.label)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load(index)
        extra: dict[str, Any] = {}
        if self.transform is not None:
            image, mask, extra = augment_sample(self.transform, image, mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "id": self.samples[index].id,
            **extra,
        }

    def reseed(self, seed: int) -> None:
        """Start a new augmentation stream (called once per DataLoader worker)."""
        if self.transform is not None:
            reseed(self.transform, seed)
