"""Training augmentation: shapes, dtypes, ignore padding, scales, cat_max_ratio, photometric."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest

from cgnet.data.transforms import (
    PhotoMetricDistortion,
    RandomScaleCrop,
    build_train_transform,
    scale_choices,
)


def _scene(h: int = 96, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (np.arange(w)[None, :] * 19 // w).repeat(h, 0).astype(np.uint8)  # 19 vertical stripes
    mask[:5] = 255
    return image, mask


def test_output_shapes_dtypes_and_ignore_padding() -> None:
    image, mask = _scene(40, 60)
    transform = build_train_transform(
        (64, 96), scale_range=(1.0, 1.0), flip=False, fill=(72.39, 82.91, 73.16), seed=0
    )
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (64, 96, 3) and out["image"].dtype == np.uint8
    assert out["mask"].shape == (64, 96) and out["mask"].dtype == np.uint8
    assert np.array_equal(out["mask"][:40, :60], mask) and np.array_equal(
        out["image"][:40, :60], image
    )
    assert (out["mask"][40:] == 255).all() and (
        out["mask"][:, 60:] == 255
    ).all()  # never 0 (= road)
    assert (out["image"][40:] == (72, 83, 73)).all()  # the mean: 0 after normalisation


def test_every_draw_has_the_crop_size() -> None:
    image, mask = _scene()
    transform = build_train_transform(
        (64, 64), scale_range=(0.5, 2.0), photometric=True, cat_max_ratio=0.75, seed=1
    )
    for _ in range(30):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
        assert set(np.unique(out["mask"])) <= set(range(19)) | {255}


def test_fused_scale_crop_matches_resize_then_crop() -> None:
    """Cropping before warping gives what resizing the whole image and then cropping gives."""
    image, mask = _scene(120, 200)
    image = cv2.GaussianBlur(image, (0, 0), 3)  # smooth, so interpolation rounding stays small
    op = RandomScaleCrop(crop_size=(64, 64), scale_range=(1.5, 1.5))
    scale, scaled, offset = 1.5, (180, 300), (50, 70)
    fused_image = op.apply(image, scale=scale, scaled=scaled, offset=offset)
    fused_mask = op.apply_to_mask(mask, scale=scale, scaled=scaled, offset=offset)
    big_image = cv2.resize(image, (300, 180), interpolation=cv2.INTER_LINEAR)
    big_mask = cv2.resize(mask, (300, 180), interpolation=cv2.INTER_NEAREST)
    ref_image, ref_mask = big_image[50:114, 70:134], big_mask[50:114, 70:134]
    assert np.abs(fused_image.astype(int) - ref_image).max() <= 2
    assert (fused_mask == ref_mask).mean() > 0.97  # nearest-neighbour ties at stripe borders


def test_official_scale_steps() -> None:
    assert scale_choices((0.5, 2.0), 0.1).tolist() == [round(0.5 + 0.1 * i, 6) for i in range(16)]
    assert scale_choices((0.5, 2.0), 0.0) is None
    op = RandomScaleCrop(crop_size=(8, 8), scale_range=(0.5, 2.0), scale_step=0.1)
    A.Compose([op], strict=True, seed=0)
    drawn = {op._draw_scale() for _ in range(400)}
    assert drawn == set(scale_choices((0.5, 2.0), 0.1).tolist())


def test_cat_max_ratio_avoids_single_class_crops() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    mask = np.zeros((200, 200), np.uint8)
    mask[:, 140:] = 1  # a 64x64 window is mostly one class, unless it straddles x = 140
    plain = build_train_transform((64, 64), scale_range=(1.0, 1.0), flip=False, seed=0)
    capped = build_train_transform(
        (64, 64), scale_range=(1.0, 1.0), flip=False, cat_max_ratio=0.75, seed=0
    )

    def balanced(transform: A.Compose) -> float:
        """How often no class covers 75% of the crop."""
        outs = [transform(image=image, mask=mask)["mask"] for _ in range(200)]
        return float(np.mean([np.bincount(m.ravel()).max() / m.size < 0.75 for m in outs]))

    assert balanced(plain) < 0.35 and balanced(capped) > 0.8


def test_flip_moves_image_and_mask_together() -> None:
    image, mask = _scene(64, 64)
    image[..., 0] = mask  # the mask written into the red channel
    transform = build_train_transform((64, 64), scale_range=(1.0, 1.0), flip=True, seed=3)
    flipped = 0
    for _ in range(20):
        out = transform(image=image, mask=mask)
        assert np.array_equal(out["image"][..., 0], out["mask"])
        flipped += not np.array_equal(out["mask"], mask)
    assert 0 < flipped < 20


def test_photometric_changes_colours_only() -> None:
    image, mask = _scene(32, 32)
    op = PhotoMetricDistortion()
    out = op.apply(image, brightness=20.0, contrast_first=True, contrast=1.2, saturation=0.8, hue=5)
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    same = op.apply(
        image, brightness=None, contrast_first=False, contrast=None, saturation=None, hue=None
    )
    assert np.array_equal(same, image)
    brighter = op.apply(
        image, brightness=10.0, contrast_first=True, contrast=None, saturation=None, hue=None
    )
    assert np.array_equal(brighter, np.clip(image.astype(float) + 10, 0, 255).astype(np.uint8))
    transform = build_train_transform(
        (32, 32), scale_range=(1.0, 1.0), flip=False, photometric=True, seed=0
    )
    assert np.array_equal(transform(image=image, mask=mask)["mask"], mask)


def test_strict_compose_refuses_the_old_mask_value_keyword() -> None:
    """albumentations 2.x ignores unknown keyword arguments such as mask_value= unless strict."""
    with (
        pytest.warns(UserWarning, match="mask_value"),
        pytest.raises(ValueError, match="mask_value"),
    ):
        A.Compose([A.PadIfNeeded(64, 64, mask_value=255)], strict=True)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        build_train_transform((64,), scale_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="scale_range"):
        RandomScaleCrop(crop_size=(8, 8), scale_range=(2.0, 0.5))
