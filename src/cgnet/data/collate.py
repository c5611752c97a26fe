"""Batching: uint8 images as a free channels-last view, uint8 masks, whole images padded.

Two costs dominate a naive collate at 512x1024 (measured, one core, batch 8): stacking CHW-permuted
images is a strided copy (~95 ms per batch); stacking the decoded HWC arrays and permuting the result
is a plain copy (~3 ms) and yields a [B, 3, H, W] tensor in channels_last memory format. Like
torch's default_collate, tensors built in a DataLoader worker are allocated in shared memory, so
handing them to the main process does not copy them again.

Masks travel as uint8 (trainIds and the 255 ignore value fit) and become int64 only on the device
(:meth:`cgnet.data.SegmentationDataModule.on_after_batch_transfer`): an int64 mask is 8 bytes per
pixel, more than the RGB image itself, and every byte crosses the worker queue and the host-to-device
copy (a full-size 2048x1024 sample: 8.4 MB with uint8 masks, 23 MB with int64 ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

from cgnet.data.labels import IGNORE_INDEX


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for n in shape:
        numel *= n
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch dict: `image` uint8 [B, 3, H, W], `mask` uint8 [B, H, W], `id` list[str], `size`.

    `image` is channels_last in memory (a permuted view of [B, H, W, 3]); call .contiguous() if a
    consumer needs NCHW strides. `size` int64 [B, 2] is each image's own (H, W). Training crops all
    have one size; whole images of different sizes are padded at the bottom/right to the largest
    (image 0, mask ignore), so the loss and the metrics never count the padding.
    """
    images = [s["image"].permute(1, 2, 0) for s in samples]  # back to the decoded HWC layout
    masks = [s["mask"] for s in samples]
    sizes = torch.tensor([tuple(m.shape) for m in masks], dtype=torch.int64)
    height, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    batch = len(samples)
    image = _empty((batch, height, width, 3), images[0].dtype)
    mask = _empty((batch, height, width), torch.uint8)
    if any(tuple(m.shape) != (height, width) for m in masks):
        image.zero_()
        mask.fill_(IGNORE_INDEX)
    for i, (im, m) in enumerate(zip(images, masks, strict=True)):
        image[i, : im.shape[0], : im.shape[1]] = im
        mask[i, : m.shape[0], : m.shape[1]] = m
    out = {
        "image": image.permute(0, 3, 1, 2),
        "mask": mask,
        "id": [s["id"] for s in samples],
        "size": sizes,
    }
    if "augment" in samples[0]:  # augment_on=device: what each worker drew, finished on the device
        out["augment"] = {
            k: torch.stack([s["augment"][k] for s in samples]) for k in samples[0]["augment"]
        }
    return out
