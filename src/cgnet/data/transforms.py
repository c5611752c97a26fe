"""Training augmentation (albumentations 2.0.8, Compose strict): scale, pad, crop, flip, photometric.

Random scale + pad + crop is one transform, `RandomScaleCrop`, that warps only the pixels that end up
in the crop: a single cv2.warpAffine from the full-size image straight to the crop window instead of
resizing the whole image (up to 4x its pixels at scale 2.0) and then throwing most of it away. The
result is what mmseg's Resize(ratio_range) -> RandomCrop(cat_max_ratio) -> Pad(ignore) computes.

Normalisation is not done here: images stay uint8 and the LightningModule normalises on the device.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

from cgnet.data.labels import IGNORE_INDEX

MAX_CAT_TRIES = 10  # mmseg's RandomCrop retries this many times to satisfy cat_max_ratio


def scale_choices(scale_range: Sequence[float], scale_step: float) -> np.ndarray | None:
    """The discrete scales of the official recipe (lo, lo+step, ..., hi), or None for continuous."""
    if scale_step <= 0:
        return None
    lo, hi = scale_range
    count = int(np.floor((hi - lo) / scale_step + 1e-6)) + 1
    return np.round(lo + scale_step * np.arange(count), 6)


class RandomScaleCrop(A.DualTransform):
    """Scale by a random factor, then take a random crop_size window, padding where it overhangs.

    Padding goes to the bottom and right (as mmseg and the official code pad), with `fill` for the
    image and `fill_mask` (the ignore index) for the mask. With cat_max_ratio < 1 the window is
    redrawn up to 10 times until no single class covers more than that share of its labelled pixels.
    """

    class InitSchema(BaseTransformInitSchema):
        crop_size: tuple[int, int]
        scale_range: tuple[float, float]
        scale_step: float = Field(ge=0)
        cat_max_ratio: float = Field(gt=0, le=1)
        fill: tuple[float, ...] | float
        fill_mask: int = Field(ge=0, le=255)

    def __init__(
        self,
        crop_size: tuple[int, int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        scale_step: float = 0.0,
        cat_max_ratio: float = 1.0,
        fill: tuple[float, ...] | float = 0,
        fill_mask: int = IGNORE_INDEX,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        if min(crop_size) <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.scale_step = scale_step
        self.cat_max_ratio = cat_max_ratio
        self.fill = fill
        self.fill_mask = fill_mask
        self._choices = scale_choices(scale_range, scale_step)

    @property
    def targets_as_params(self) -> list[str]:
        return ["mask"] if self.cat_max_ratio < 1.0 else []

    def _draw_scale(self) -> float:
        if self._choices is not None:
            return float(self._choices[self.py_random.randrange(len(self._choices))])
        return self.py_random.uniform(*self.scale_range)

    def _draw_offset(self, scaled: tuple[int, int]) -> tuple[int, int]:
        (sh, sw), (ch, cw) = scaled, self.crop_size
        return self.py_random.randint(0, max(sh - ch, 0)), self.py_random.randint(
            0, max(sw - cw, 0)
        )

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        scale = self._draw_scale()
        scaled = (max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1))
        offset = self._draw_offset(scaled)
        if self.cat_max_ratio < 1.0 and data.get("mask") is not None:
            for _ in range(MAX_CAT_TRIES):
                crop = self._warp(
                    data["mask"], scale, scaled, offset, cv2.INTER_NEAREST, self.fill_mask
                )
                counts = np.bincount(crop.ravel(), minlength=256)[:IGNORE_INDEX]
                counts = counts[counts > 0]
                if counts.size > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                offset = self._draw_offset(scaled)
        return {"scale": scale, "scaled": scaled, "offset": offset}

    def _warp(
        self,
        array: np.ndarray,
        scale: float,
        scaled: tuple[int, int],
        offset: tuple[int, int],
        interpolation: int,
        fill: tuple[float, ...] | float,
    ) -> np.ndarray:
        (ch, cw), (y0, x0) = self.crop_size, offset
        # Inverse map, output pixel -> source pixel, with cv2.resize's pixel-centre convention.
        inverse = np.array(
            [[1 / scale, 0, (x0 + 0.5) / scale - 0.5], [0, 1 / scale, (y0 + 0.5) / scale - 0.5]]
        )
        out = cv2.warpAffine(
            array,
            inverse,
            (cw, ch),
            flags=interpolation | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,  # the true edge pixels; the overhang is filled below
        )
        valid_h, valid_w = min(ch, scaled[0] - y0), min(cw, scaled[1] - x0)
        if valid_h < ch:
            out[valid_h:] = fill
        if valid_w < cw:
            out[:, valid_w:] = fill
        return out

    def apply(
        self,
        img: np.ndarray,
        scale: float,
        scaled: tuple[int, int],
        offset: tuple[int, int],
        **params: Any,
    ) -> np.ndarray:
        return self._warp(img, scale, scaled, offset, cv2.INTER_LINEAR, self.fill)

    def apply_to_mask(
        self,
        mask: np.ndarray,
        scale: float,
        scaled: tuple[int, int],
        offset: tuple[int, int],
        **params: Any,
    ) -> np.ndarray:
        return self._warp(mask, scale, scaled, offset, cv2.INTER_NEAREST, self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("crop_size", "scale_range", "scale_step", "cat_max_ratio", "fill", "fill_mask")


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmseg's PhotoMetricDistortion on uint8 RGB, via lookup tables (each step p=0.5).

    Brightness delta, then contrast (before or after the HSV steps, at random), saturation scale and
    hue shift; every step rounds down and clips to uint8 like mmseg's. Brightness and contrast are
    per-value maps, so they fold into cv2.LUT calls instead of float image arithmetic.
    """

    class InitSchema(BaseTransformInitSchema):
        brightness_delta: int = Field(ge=0, le=255)
        contrast_range: tuple[float, float]
        saturation_range: tuple[float, float]
        hue_delta: int = Field(ge=0, le=180)

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def get_params(self) -> dict[str, Any]:
        rng: random.Random = self.py_random
        coin = lambda: rng.random() < 0.5  # noqa: E731
        return {
            "brightness": rng.uniform(-self.brightness_delta, self.brightness_delta)
            if coin()
            else None,
            "contrast_first": coin(),
            "contrast": rng.uniform(*self.contrast_range) if coin() else None,
            "saturation": rng.uniform(*self.saturation_range) if coin() else None,
            "hue": rng.randint(-self.hue_delta, self.hue_delta) if coin() else None,
        }

    def apply(
        self,
        img: np.ndarray,
        brightness: float | None,
        contrast_first: bool,
        contrast: float | None,
        saturation: float | None,
        hue: int | None,
        **params: Any,
    ) -> np.ndarray:
        values = np.arange(256, dtype=np.float32)
        lut = values
        if brightness is not None:
            lut = clip_floor(lut + brightness)
        if contrast is not None and contrast_first:
            lut = clip_floor(lut * contrast)
        if lut is not values:
            img = cv2.LUT(img, lut.astype(np.uint8))
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            per_channel = np.repeat(values[:, None], 3, axis=1)
            if hue is not None:
                per_channel[:180, 0] = (values[:180] + hue) % 180
            if saturation is not None:
                per_channel[:, 1] = clip_floor(values * saturation)
            hsv = cv2.LUT(hsv, per_channel.astype(np.uint8).reshape(256, 1, 3))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if contrast is not None and not contrast_first:
            img = cv2.LUT(img, clip_floor(values * contrast).astype(np.uint8))
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


def clip_floor(values: np.ndarray) -> np.ndarray:
    """Float lookup-table values as the photometric steps round them: clipped to 0..255, floored."""
    return np.floor(np.clip(values, 0, 255))


def build_train_transform(
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    scale_step: float = 0.0,
    flip: bool = True,
    photometric: bool = False,
    cat_max_ratio: float = 1.0,
    fill: Sequence[float] | float = 0,
    ignore_index: int = IGNORE_INDEX,
    seed: int | None = None,
) -> A.Compose:
    """The training pipeline; strict, so a mistyped argument fails instead of warning."""
    if len(crop_size) != 2 or len(scale_range) != 2:
        raise ValueError(
            f"crop_size=[H, W] and scale_range=[lo, hi], got {crop_size}, {scale_range}"
        )
    image_fill = tuple(float(round(v)) for v in fill) if isinstance(fill, Sequence) else float(fill)
    steps: list[A.BasicTransform] = [
        RandomScaleCrop(
            crop_size=(int(crop_size[0]), int(crop_size[1])),
            scale_range=(float(scale_range[0]), float(scale_range[1])),
            scale_step=float(scale_step),
            cat_max_ratio=float(cat_max_ratio),
            fill=image_fill,
            fill_mask=ignore_index,
        )
    ]
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    if photometric:
        steps.append(PhotoMetricDistortion())
    compose = A.Compose(steps, strict=True)
    reseed(compose, seed)
    return compose


def reseed(compose: Any, seed: int | None) -> None:
    """Give the whole pipeline one fresh random stream.

    Compose.set_random_seed(seed) would hand every transform its own generator seeded with the same
    value, so e.g. the flip coin and the scale draw would be the same number; sharing one generator
    (as Compose.set_random_state does) keeps them independent. Other pipelines (augment_on=device's
    worker half) reseed themselves.
    """
    if isinstance(compose, A.Compose):
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
    else:
        compose.reseed(seed)


def augment_sample(
    pipeline: Any, image: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run a training pipeline on one HWC image and its mask: the new pair, plus the ``augment``
    parameters a device-side pipeline left for the accelerator (empty for albumentations')."""
    out = pipeline(image=image, mask=mask)
    extra = {"augment": out["augment"]} if "augment" in out else {}
    return out["image"], out["mask"], extra
