"""uint8 RGB batches -> logits or trainId maps, shared by `cgnet.eval` and `cgnet.predict`.

One place decides how a network is run at test time: the fast inference path, the normalisation the
weights were trained with, and test-time augmentation (multi-scale + flip, sliding window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from cgnet.checkpoint import LoadedNetwork
from cgnet.inference import optimize, predict_logits


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation. mmseg's ms+flip protocol: scales 0.5..1.75 step 0.25, flip on."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig | dict[str, Any] | None) -> TTA:
        cfg = dict(cfg or {})
        window, stride = cfg.get("window"), cfg.get("stride")
        scales = tuple(float(s) for s in cfg.get("scales") or (1.0,))
        if any(s <= 0 for s in scales):
            raise ValueError(f"tta.scales must be positive, got {list(scales)}")
        return cls(
            scales=scales,
            flip=bool(cfg.get("flip", False)),
            window=tuple(int(v) for v in window) if window else None,  # type: ignore[arg-type]
            stride=tuple(int(v) for v in stride) if stride else None,  # type: ignore[arg-type]
        )


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one; an explicit `cuda` without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available (use device=cpu or auto)")
    return device


class Predictor:
    """Runs a loaded network on uint8 RGB batches [B, 3, H, W] with the chosen TTA."""

    def __init__(
        self,
        loaded: LoadedNetwork,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        tta: TTA = TTA(),
        fast: bool = True,
    ) -> None:
        self.num_classes = loaded.net.num_classes
        self.device = device
        self.tta = tta
        net = loaded.net.to(device).eval()
        self.net = optimize(net, device=device.type) if fast else net
        self.mean = torch.tensor(loaded.mean or mean, dtype=torch.float32, device=device).view(
            1, 3, 1, 1
        )
        self.std = torch.tensor(loaded.std or std, dtype=torch.float32, device=device).view(
            1, 3, 1, 1
        )

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, H, W] at the images' own size."""
        x = (images.to(self.device, non_blocking=True).float() - self.mean) / self.std
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
        return self.logits(images).argmax(1).to(torch.uint8)
