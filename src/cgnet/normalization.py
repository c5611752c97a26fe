"""How raw RGB becomes the network's input: the one place that knows CGNet's normalisation.

The authors computed their mean in BGR order and subtracted it from RGB images with std 1; released
weights (theirs, mmseg's) expect exactly that, so it is the default everywhere: training, evaluation,
export and benchmarks all normalise through :class:`Normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

OFFICIAL_MEAN: tuple[float, float, float] = (72.39, 82.91, 73.16)
OFFICIAL_STD: tuple[float, float, float] = (1.0, 1.0, 1.0)


class Normalize(nn.Module):
    """uint8 (or float) RGB ``[B, 3, H, W]`` in 0..255 -> ``(x - mean) / std`` in float32.

    The statistics are non-persistent buffers: they follow ``.to(device)`` but stay out of state
    dicts, so adding normalisation to a module never changes its checkpoint keys.
    """

    def __init__(
        self, mean: Sequence[float] = OFFICIAL_MEAN, std: Sequence[float] = OFFICIAL_STD
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False
        )
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False
        )

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) as plain tuples, for metadata and logs."""
        mean = tuple(float(v) for v in self.mean.flatten())
        std = tuple(float(1.0 / v) for v in self.inv_std.flatten())
        return mean, std

    def forward(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) * self.inv_std


class NormalizedNetwork(nn.Module):
    """A network behind :class:`Normalize`: takes raw RGB, so a deployed file needs no preprocessing."""

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float] = OFFICIAL_MEAN,
        std: Sequence[float] = OFFICIAL_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.normalize(images))
