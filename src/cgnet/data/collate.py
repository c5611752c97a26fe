"""Batching: stack uint8 images, widen masks to int64, pad whole images of unequal size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cgnet.data.labels import IGNORE_INDEX


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch dict: `image` uint8 [B, 3, H, W], `mask` int64 [B, H, W], `id` list[str], `size`.

    `size` int64 [B, 2] is each image's own (H, W). Training crops are all the same size; whole
    validation images of different sizes are padded at the bottom/right to the largest (image 0,
    mask ignore), so the loss and the metrics never count the padding.
    """
    images = [s["image"] for s in samples]
    masks = [s["mask"] for s in samples]
    sizes = torch.tensor([tuple(m.shape) for m in masks], dtype=torch.int64)
    height, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    if all(tuple(m.shape) == (height, width) for m in masks):
        image = torch.stack(images)
        mask = torch.stack(masks).long()
    else:
        image = torch.zeros((len(samples), 3, height, width), dtype=images[0].dtype)
        mask = torch.full((len(samples), height, width), IGNORE_INDEX, dtype=torch.int64)
        for i, (im, m) in enumerate(zip(images, masks, strict=True)):
            image[i, :, : im.shape[1], : im.shape[2]] = im
            mask[i, : m.shape[0], : m.shape[1]] = m
    return {"image": image, "mask": mask, "id": [s["id"] for s in samples], "size": sizes}
