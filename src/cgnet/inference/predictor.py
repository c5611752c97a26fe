"""uint8 RGB batches -> logits or trainId maps, shared by `cgnet.eval`, `cgnet.predict` and notebooks.

One place decides how a network is run at test time: the fast inference path, the normalisation the
weights were trained with, and test-time augmentation (multi-scale + flip, sliding window).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cgnet.checkpoint import LoadedNetwork
from cgnet.errors import ConfigError
from cgnet.inference import cpu_kernels
from cgnet.inference.autotune import Precision, tuned
from cgnet.inference.tta import predict_logits
from cgnet.normalization import OFFICIAL_MEAN, OFFICIAL_STD, Normalize


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation. mmseg's ms+flip protocol: scales 0.5..1.75 step 0.25, flip on.

    Args:
        scales: image scales whose class probabilities are averaged (1.0 alone: single scale).
        flip: also average the horizontally flipped image.
        window: [H, W] of sliding-window inference for images larger than memory allows.
        stride: [H, W] between windows (default: 2/3 of the window).
    """

    scales: Sequence[float] = (1.0,)
    flip: bool = False
    window: Sequence[int] | None = None
    stride: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"tta.scales: expected positive scales, got {list(self.scales)}")
        for key in ("window", "stride"):
            value = getattr(self, key)
            if value is not None and (len(value) != 2 or any(int(v) < 1 for v in value)):
                raise ConfigError(f"tta.{key}: expected [H, W] of positive sizes, got {value}")
        if self.stride is not None and self.window is None:
            raise ConfigError("tta.stride: needs tta.window=[H, W] (the sliding window)")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        for key in ("window", "stride"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, (int(value[0]), int(value[1])))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> TTA:
        return cls(**dict(cfg or {}))


class Predictor:
    """Runs a loaded network on uint8 RGB batches [B, 3, H, W] with the chosen TTA.

    The normalisation is the one the checkpoint was trained with when it records it (project
    checkpoints do), else ``mean``/``std`` (the data config's, by default the authors').
    """

    def __init__(
        self,
        loaded: LoadedNetwork,
        *,
        device: torch.device,
        mean: Sequence[float] = OFFICIAL_MEAN,
        std: Sequence[float] = OFFICIAL_STD,
        tta: TTA = TTA(),
        fast: bool = True,
        precision: Precision = "fp32",
    ) -> None:
        self.num_classes = loaded.net.num_classes
        self.device = device
        self.tta = tta
        net = loaded.net.to(device).eval()
        self.net = tuned(net, device, precision) if fast else net
        self.normalize = Normalize(loaded.mean or mean, loaded.std or std).to(device)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, H, W] at the images' own size."""
        x = self.normalize(images.to(self.device, non_blocking=True))
        return predict_logits(
            self.net,
            x,
            scales=self.tta.scales,
            flip=self.tta.flip,
            window=self.tta.window,
            stride=self.tta.stride,
            num_classes=self.num_classes,
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """trainId maps [B, H, W] (uint8)."""
        return class_map(self.logits(images))


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(1)`` as uint8 [B, H, W]. float32 CPU logits go through the fused argmax kernel
    when it is built here: torch's argmax over the class dimension took 42 ms (channels-last) to
    178 ms (NCHW) for 11 classes at 1024x2048 on 2 threads, the kernel 4 ms (docs/benchmarks.md)."""
    if (
        logits.device.type == "cpu"
        and logits.dtype == torch.float32
        and logits.dim() == 4
        and 1 <= logits.shape[1] <= 256
        and cpu_kernels.available_or_warn()
    ):
        return cpu_kernels.class_argmax(logits)
    return logits.argmax(1).to(torch.uint8)
