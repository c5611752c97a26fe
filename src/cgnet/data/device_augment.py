"""Training augmentation on a batch that is already on the device (`data.augment_on=device`).

The same recipe as `cgnet.data.transforms` (random scale + bottom/right pad + random crop with
cat_max_ratio redraws, horizontal flip, mmseg's photometric distortion), in torch, so DataLoader
workers only decode and the accelerator does the pixel work. Parameters are drawn on the CPU from one
`torch.Generator` (reproducible, independent of the device) and applied to the whole batch at once.

Like `RandomScaleCrop`, only the pixels that end up in the crop are interpolated, with cv2's
pixel-centre inverse map `src = (dst + offset + 0.5) / scale - 0.5` and replicated edges; the overhang
past the scaled image is filled (image `fill`, mask `ignore_index`). Since the map is axis-aligned,
the resampling is separable: rows, then columns, by indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from cgnet.data.labels import IGNORE_INDEX
from cgnet.data.transforms import MAX_CAT_TRIES, clip_floor, scale_choices

HSV_SHIFT = 12  # OpenCV's fixed-point precision for uint8 RGB -> HSV
# OpenCV's division tables for uint8 RGB -> HSV (hue range 180).
_SDIV = np.array([0] + [round((255 << HSV_SHIFT) / i) for i in range(1, 256)], dtype=np.int64)
_HDIV = np.array([0] + [round((180 << HSV_SHIFT) / (6 * i)) for i in range(1, 256)], dtype=np.int64)
# HSV -> RGB: which of (v, v(1-s), v(1-sf), v(1-s(1-f))) is b, g, r in each hue sector (OpenCV's).
_SECTORS = ((1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0))


class Window(NamedTuple):
    """Where each sample's crop comes from: what both warps (image and mask) need."""

    sizes: torch.Tensor  # int64 [B, 2]: the sample's own (H, W) inside the collated batch
    scales: torch.Tensor  # float64 [B]
    scaled: torch.Tensor  # int64 [B, 2]
    offsets: torch.Tensor  # int64 [B, 2]
    flips: torch.Tensor  # bool [B]
    # int64 [B, 2]: where each sample's image starts in the source (a worker's cut), or None
    origins: torch.Tensor | None = None


@dataclass
class AugmentParams:
    """What was drawn for each sample of a batch (kept on the CPU; tests compare them)."""

    scales: torch.Tensor  # float64 [B]
    scaled: torch.Tensor  # int64 [B, 2]: the scaled image's (H, W)
    offsets: torch.Tensor  # int64 [B, 2]: the crop's top-left (y, x) in the scaled image
    flips: torch.Tensor  # bool [B]
    luts: torch.Tensor | None = None  # uint8 [B, 3, 256]: brightness/contrast before HSV, hue, sat
    post_luts: torch.Tensor | None = None  # uint8 [B, 256]: contrast after HSV
    hsv: torch.Tensor | None = None  # bool [B]: whether the HSV steps run
    origins: torch.Tensor | None = None  # int64 [B, 2]: top-left of a worker's cut in the source


class DeviceAugment:
    """`build_train_transform`'s recipe on uint8 [B, 3, H, W] images and int64 [B, H, W] masks.

    `sizes` (int64 [B, 2]) gives each image's own (H, W) inside a batch padded to the largest, so the
    collate padding is never sampled. Output: uint8 [B, 3, crop_h, crop_w] (channels_last, like
    `collate`'s), int64 [B, crop_h, crop_w].
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        scale_step: float = 0.0,
        flip: bool = True,
        photometric: bool = False,
        cat_max_ratio: float = 1.0,
        fill: Sequence[float] | float = 0,
        ignore_index: int = IGNORE_INDEX,
        seed: int | None = None,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        if len(crop_size) != 2 or len(scale_range) != 2 or min(crop_size) <= 0:
            raise ValueError(f"crop_size=[H, W] > 0 and scale_range=[lo, hi], got {crop_size}")
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.choices = scale_choices(self.scale_range, float(scale_step))
        self.flip = flip
        self.photometric = photometric
        self.cat_max_ratio = float(cat_max_ratio)
        fills = fill if isinstance(fill, Sequence) else (fill,) * 3
        self.fill = torch.tensor([round(float(v)) for v in fills], dtype=torch.uint8)
        self.ignore_index = ignore_index
        self.brightness_delta = brightness_delta
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = hue_delta
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Start a new parameter stream (None: a fresh nondeterministic one)."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed) % 2**63)

    # --- drawing (CPU) ---------------------------------------------------------------------

    def _uniform(self, lo: float, hi: float, n: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def _coins(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) < 0.5

    def draw_scales(self, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale factors and the scaled (H, W), rounded as RandomScaleCrop rounds them."""
        n = len(sizes)
        if self.choices is not None:
            picks = torch.randint(len(self.choices), (n,), generator=self.generator)
            scales = torch.from_numpy(self.choices)[picks].to(torch.float64)
        else:
            scales = self._uniform(*self.scale_range, n)
        scaled = torch.floor(sizes.to(torch.float64) * scales[:, None] + 0.5).to(torch.int64)
        return scales, scaled.clamp(min=1)

    def draw_offsets(self, scaled: torch.Tensor) -> torch.Tensor:
        """Crop corners uniform in [0, max(scaled - crop, 0)] per axis (mmseg's RandomCrop)."""
        room = (scaled - torch.tensor(self.crop_size)).clamp(min=0) + 1
        u = torch.rand(scaled.shape, generator=self.generator, dtype=torch.float64)
        return torch.minimum(torch.floor(u * room).to(torch.int64), room - 1)

    def draw(self, mask: torch.Tensor, sizes: torch.Tensor) -> AugmentParams:
        """Every random choice for one batch; the mask is only read for cat_max_ratio redraws."""
        sizes = sizes.cpu().to(torch.int64)
        n = len(sizes)
        scales, scaled = self.draw_scales(sizes)
        offsets = self.draw_offsets(scaled)
        if self.cat_max_ratio < 1.0:
            offsets = self._cat_max_ratio(mask, sizes, scales, scaled, offsets)
        flips = self._coins(n) if self.flip else torch.zeros(n, dtype=torch.bool)
        params = AugmentParams(scales, scaled, offsets, flips)
        if self.photometric:
            self._draw_photometric(params, n)
        return params

    def _cat_max_ratio(
        self,
        mask: torch.Tensor,
        sizes: torch.Tensor,
        scales: torch.Tensor,
        scaled: torch.Tensor,
        offsets: torch.Tensor,
    ) -> torch.Tensor:
        """mmseg's rule: check up to 10 windows, redrawing after each failure (so after ten
        failures an unchecked eleventh draw is used), per sample; one device sync per try."""
        offsets = offsets.clone()
        pending = torch.arange(len(sizes))
        no_flip = torch.zeros(len(sizes), dtype=torch.bool)
        for _ in range(MAX_CAT_TRIES):
            if len(pending) == 0:
                break
            index = pending.to(mask.device)
            window = Window(
                sizes[pending], scales[pending], scaled[pending], offsets[pending], no_flip[pending]
            )
            crop = self.warp_mask(mask[index], window)
            ok = _class_share_ok(crop, self.ignore_index, self.cat_max_ratio).cpu()
            pending = pending[~ok]
            offsets[pending] = self.draw_offsets(scaled[pending])
        return offsets

    def _draw_photometric(self, params: AugmentParams, n: int) -> None:
        """PhotoMetricDistortion's draws per sample (same order and distributions), folded into
        per-sample lookup tables built with the same float32 arithmetic."""
        values = np.arange(256, dtype=np.float32)
        luts = np.repeat(values[None, None, :], 3, axis=1).repeat(n, axis=0)  # [n, 3, 256]
        post = np.repeat(values[None, :], n, axis=0)
        hsv = np.zeros(n, dtype=bool)
        g = self.generator
        for i in range(n):
            coin = lambda: bool(self._coins(1)[0])  # noqa: E731
            d = float(self.brightness_delta)
            brightness = float(self._uniform(-d, d, 1)[0]) if coin() else None
            contrast_first = coin()
            contrast = float(self._uniform(*self.contrast_range, 1)[0]) if coin() else None
            saturation = float(self._uniform(*self.saturation_range, 1)[0]) if coin() else None
            hue = (
                int(torch.randint(-self.hue_delta, self.hue_delta + 1, (1,), generator=g)[0])
                if coin()
                else None
            )
            lut = values
            if brightness is not None:
                lut = clip_floor(lut + brightness)
            if contrast is not None and contrast_first:
                lut = clip_floor(lut * contrast)
            luts[i, 0] = lut  # row 0: the RGB table applied before HSV
            if hue is not None:
                luts[i, 1, :180] = (values[:180] + hue) % 180
            if saturation is not None:
                luts[i, 2] = clip_floor(values * saturation)
            hsv[i] = saturation is not None or hue is not None
            if contrast is not None and not contrast_first:
                post[i] = clip_floor(values * contrast)
        params.luts = torch.from_numpy(luts.astype(np.uint8))
        params.post_luts = torch.from_numpy(post.astype(np.uint8))
        params.hsv = torch.from_numpy(hsv)

    # --- applying (on the batch's device) --------------------------------------------------

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one batch; `sizes` defaults to the full [H, W] for every sample."""
        if sizes is None:
            sizes = torch.tensor([tuple(image.shape[-2:])] * len(image), dtype=torch.int64)
        params = self.draw(mask, sizes)
        return self.apply(image, mask, sizes, params)

    def apply(
        self, image: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor, params: AugmentParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic part: warp to the crop, fill the overhang, flip, colour."""
        sizes = sizes.cpu().to(torch.int64)
        window = Window(
            sizes, params.scales, params.scaled, params.offsets, params.flips, params.origins
        )
        out_mask = self.warp_mask(mask, window)
        out_image = self.warp_image(image, window)
        if params.luts is not None:
            out_image = self.distort(out_image, params)
        return out_image, out_mask

    def _axes(self, window: Window) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per axis: the float64 source coordinate [B, n] (clamped: replicated edges) and whether
        each output position lies inside the scaled image [B, n]; flipped samples reverse x."""
        sizes, scales, scaled, offsets, flips, _ = window
        axes = []
        for axis, length in enumerate(self.crop_size):
            dst = torch.arange(length, dtype=torch.float64)[None, :]
            shift = (offsets[:, axis : axis + 1].to(torch.float64) + 0.5) / scales[:, None] - 0.5
            src = dst * (1 / scales[:, None]) + shift
            src = torch.minimum(src.clamp(min=0), (sizes[:, axis : axis + 1] - 1).to(src.dtype))
            inside = dst < (scaled[:, axis : axis + 1] - offsets[:, axis : axis + 1])
            if axis == 1:
                src = torch.where(flips[:, None], src.flip(1), src)
                inside = torch.where(flips[:, None], inside.flip(1), inside)
            axes.append((src, inside))
        return axes

    def source_bounds(self, window: Window) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, the first and the last source (row, col) the warps read: int64 [B, 2] each.

        Bilinear reads floor(src) and the next pixel, nearest floor(src + 0.5): both lie in
        [floor(min src), floor(max src) + 1], clipped to the image.
        """
        (ys, _), (xs, _) = self._axes(window)
        lo = torch.stack([ys.min(1).values, xs.min(1).values], 1).floor().to(torch.int64)
        hi = torch.stack([ys.max(1).values, xs.max(1).values], 1).floor().to(torch.int64) + 1
        return lo, torch.minimum(hi, window.sizes - 1)

    @staticmethod
    def _local(index: torch.Tensor, window: Window, axis: int) -> torch.Tensor:
        """Source indices [B, n] relative to each sample's cut (unchanged for whole images)."""
        if window.origins is None:
            return index
        return index - window.origins[:, axis : axis + 1].to(torch.int64)

    def warp_mask(self, mask: torch.Tensor, window: Window) -> torch.Tensor:
        """Nearest neighbour (cv2's rounding, floor(src + 0.5)): labels stay labels."""
        (ys, y_in), (xs, x_in) = self._axes(window)
        device = mask.device
        rows = self._local(torch.floor(ys + 0.5).to(torch.int64), window, 0).to(device)
        cols = self._local(torch.floor(xs + 0.5).to(torch.int64), window, 1).to(device)
        batch = torch.arange(len(mask), device=device)[:, None, None]
        out = mask[batch, rows[:, :, None], cols[:, None, :]]
        inside = (y_in[:, :, None] & x_in[:, None, :]).to(device)
        return out.masked_fill(~inside, self.ignore_index)

    def warp_image(self, image: torch.Tensor, window: Window) -> torch.Tensor:
        """Bilinear, separable (rows, then columns), rounded half up to uint8 like cv2."""
        (ys, y_in), (xs, x_in) = self._axes(window)
        sizes = window.sizes
        device = image.device
        hwc = image.permute(0, 2, 3, 1)  # [B, H, W, 3]: a free view of collate's channels_last
        batch = torch.arange(len(image), device=device)
        heights, widths = sizes[:, 0:1], sizes[:, 1:2]
        y0 = torch.floor(ys)
        x0 = torch.floor(xs)
        wy = (ys - y0).to(torch.float32).to(device)[:, :, None, None]
        wx = (xs - x0).to(torch.float32).to(device)[:, :, None]
        y0, x0 = y0.to(torch.int64), x0.to(torch.int64)
        y1, x1 = torch.minimum(y0 + 1, heights - 1), torch.minimum(x0 + 1, widths - 1)
        y0, y1 = (self._local(t, window, 0).to(device) for t in (y0, y1))
        x0, x1 = (self._local(t, window, 1).to(device) for t in (x0, x1))
        top = hwc[batch[:, None], y0].to(torch.float32)  # [B, ch, W, 3]
        bottom = hwc[batch[:, None], y1].to(torch.float32)
        rows = top + (bottom - top) * wy
        rowsel = torch.arange(self.crop_size[0], device=device)[None, :, None]
        left = rows[batch[:, None, None], rowsel, x0[:, None, :]]  # [B, ch, cw, 3]
        right = rows[batch[:, None, None], rowsel, x1[:, None, :]]
        out = left + (right - left) * wx[:, None, :, :]
        out = torch.floor(out + 0.5).clamp(0, 255).to(torch.uint8)
        inside = (y_in[:, :, None] & x_in[:, None, :]).to(device)[..., None]
        out = torch.where(inside, out, self.fill.to(device))
        return out.permute(0, 3, 1, 2)

    def distort(self, image: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """PhotoMetricDistortion's apply on a batch: tables, OpenCV's uint8 HSV, tables."""
        assert params.luts is not None and params.post_luts is not None and params.hsv is not None
        device = image.device
        luts = params.luts.to(device).to(torch.int64)
        hwc = image.permute(0, 2, 3, 1)
        out = _lookup(luts[:, 0], hwc)
        if bool(params.hsv.any()):
            hsv = _rgb_to_hsv(out)
            hue, saturation = _lookup(luts[:, 1], hsv[..., 0]), _lookup(luts[:, 2], hsv[..., 1])
            hsv = torch.stack([hue, saturation, hsv[..., 2]], dim=-1)
            converted = _hsv_to_rgb(hsv)
            out = torch.where(params.hsv.to(device)[:, None, None, None], converted, out)
        out = _lookup(params.post_luts.to(device).to(torch.int64), out)
        return out.to(torch.uint8).permute(0, 3, 1, 2)


# AugmentParams fields a worker hands over per sample (`collate` stacks them into [B, ...]).
_PARAM_FIELDS = ("scales", "scaled", "offsets", "flips", "origins", "luts", "post_luts", "hsv")


class WindowCut:
    """`augment_on=device`, worker side: draw one sample's augmentation and cut out the source pixels
    its crop reads, so a window (about the crop's size divided by the scale) crosses the worker queue
    and the host-to-device copy instead of the whole image (a 2048x1024 frame is 8.4 MB with its
    mask; a 680x680 crop's window at the recipe's scales about 2 MB on average).

    Called like an albumentations pipeline (``cut(image=..., mask=...)`` on HWC uint8 arrays); the
    sample gains an ``augment`` dict of tensors that :meth:`DeviceAugment.apply` (through
    :func:`params_from_batch`) finishes on the device. Draws use the wrapped DeviceAugment's
    generator, reseeded per DataLoader worker like the CPU path's pipeline.
    """

    def __init__(self, augment: DeviceAugment) -> None:
        self.augment = augment

    def reseed(self, seed: int | None) -> None:
        self.augment.reseed(seed)

    def __call__(self, *, image: np.ndarray, mask: np.ndarray) -> dict[str, object]:
        sizes = torch.tensor([mask.shape[:2]], dtype=torch.int64)
        params = self.augment.draw(torch.from_numpy(np.ascontiguousarray(mask))[None], sizes)
        window = Window(sizes, params.scales, params.scaled, params.offsets, params.flips)
        lo, hi = self.augment.source_bounds(window)
        (y0, x0), (y1, x1) = lo[0].tolist(), hi[0].tolist()
        params.origins = lo
        augment = {"sizes": sizes[0]}
        for name in _PARAM_FIELDS:
            value = getattr(params, name)
            if value is not None:
                augment[name] = value[0]
        return {
            "image": image[y0 : y1 + 1, x0 : x1 + 1],
            "mask": mask[y0 : y1 + 1, x0 : x1 + 1],
            "augment": augment,
        }


def params_from_batch(augment: dict[str, torch.Tensor]) -> tuple[torch.Tensor, AugmentParams]:
    """The full (H, W) of each sample and its drawn parameters, from a collated ``augment`` dict."""
    fields = {name: augment[name].cpu() for name in _PARAM_FIELDS if name in augment}
    return augment["sizes"].cpu(), AugmentParams(**fields)


def _class_share_ok(crop: torch.Tensor, ignore_index: int, ratio: float) -> torch.Tensor:
    """Per crop: more than one labelled class and none above `ratio` of the labelled pixels."""
    n = len(crop)
    flat = crop.reshape(n, -1).clamp(0, 255) + 256 * torch.arange(n, device=crop.device)[:, None]
    counts = torch.bincount(flat.reshape(-1), minlength=256 * n).reshape(n, 256)
    counts[:, ignore_index] = 0
    classes = (counts > 0).sum(1)
    total = counts.sum(1).clamp(min=1)
    return (classes > 1) & (counts.max(1).values.double() / total.double() < ratio)


def _lookup(luts: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-sample 256-entry table lookup: luts int64 [B, 256], values [B, ...] -> int64."""
    flat = values.reshape(len(values), -1).to(torch.int64)
    return luts.gather(1, flat).reshape(values.shape)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """OpenCV's uint8 RGB -> HSV (hue 0..179) in the same integer arithmetic: [..., 3] int64."""
    r, g, b = rgb.to(torch.int64).unbind(-1)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    sdiv, hdiv = torch.from_numpy(_SDIV).to(rgb.device), torch.from_numpy(_HDIV).to(rgb.device)
    half = 1 << (HSV_SHIFT - 1)
    s = torch.div(diff * sdiv[v] + half, 1 << HSV_SHIFT, rounding_mode="floor")
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = torch.div(h * hdiv[diff] + half, 1 << HSV_SHIFT, rounding_mode="floor")
    h = h + 180 * (h < 0)
    return torch.stack([h, s, v], dim=-1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV's uint8 HSV -> RGB: float32 sectors, truncated to uint8 as its vectorised path does
    (its scalar tail, the last few pixels of a row, rounds instead): [..., 3] int64."""
    h = hsv[..., 0].to(torch.float32) * _f32(6.0 / 180.0)
    s = hsv[..., 1].to(torch.float32) * _f32(1.0 / 255.0)
    v = hsv[..., 2].to(torch.float32) * _f32(1.0 / 255.0)
    sector = torch.floor(h)
    f = h - sector
    sector = sector.to(torch.int64) % 6
    tab = torch.stack([v, v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))], dim=-1)
    table = torch.tensor(_SECTORS, device=hsv.device)[sector]  # [..., 3]: b, g, r picks
    bgr = tab.gather(-1, table)
    rgb = bgr.flip(-1)
    return torch.floor(rgb * _f32(255.0)).clamp(0, 255).to(torch.int64)


def _f32(value: float) -> torch.Tensor:
    """A float32 scalar, so products round as OpenCV's float32 ones do."""
    return torch.tensor(value, dtype=torch.float32)
