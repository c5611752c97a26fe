"""data.augment_on=device: the torch augmentation against the albumentations one it replaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cgnet.config import ConfigError
from cgnet.data import CityscapesDataModule
from cgnet.data.collate import collate
from cgnet.data.device_augment import AugmentParams, DeviceAugment, WindowCut, params_from_batch
from cgnet.data.transforms import PhotoMetricDistortion, RandomScaleCrop, build_train_transform
from cgnet.module import SegmentationModule
from cgnet.train import run, validate
from helpers import compose_config, tiny_overrides


def _scene(h: int = 48, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (np.arange(w)[None, :] * 19 // w).repeat(h, 0).astype(np.uint8)  # 19 vertical stripes
    mask[:3] = 255
    return image, mask


def _batch(image: np.ndarray, mask: np.ndarray, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(image).permute(2, 0, 1)[None].repeat(n, 1, 1, 1)
    masks = torch.from_numpy(mask).to(torch.int64)[None].repeat(n, 1, 1)
    return images, masks


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def test_identity_recipe_is_bit_exact_with_the_cpu_path() -> None:
    image, mask = _scene()
    kwargs: dict[str, Any] = {"scale_range": (1, 1), "flip": False, "cat_max_ratio": 1.0}
    cpu = build_train_transform((48, 80), photometric=False, seed=0, **kwargs)(
        image=image, mask=mask
    )
    out_image, out_mask = DeviceAugment((48, 80), seed=0, **kwargs)(*_batch(image, mask))
    assert out_image.dtype == torch.uint8 and out_image.shape == (1, 3, 48, 80)
    assert out_mask.dtype == torch.int64 and out_mask.shape == (1, 48, 80)
    assert np.array_equal(_hwc(out_image[0]), cpu["image"])
    assert np.array_equal(out_mask[0].numpy(), cpu["mask"])


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("offset", [(0, 0), (5, 17), (16, 40)])
def test_a_smaller_crop_at_a_fixed_offset_is_bit_exact(offset: tuple[int, int], flip: bool) -> None:
    """Both paths' deterministic parts, given the same drawn parameters, at scale 1."""
    image, mask = _scene()
    crop, scaled = (32, 40), (48, 80)
    op = RandomScaleCrop(crop_size=crop)
    params = AugmentParams(
        torch.tensor([1.0], dtype=torch.float64),
        torch.tensor([scaled]),
        torch.tensor([offset]),
        torch.tensor([flip]),
    )
    out_image, out_mask = DeviceAugment(crop).apply(
        *_batch(image, mask), torch.tensor([scaled]), params
    )
    cpu_image = op.apply(image, scale=1.0, scaled=scaled, offset=offset)
    cpu_mask = op.apply_to_mask(mask, scale=1.0, scaled=scaled, offset=offset)
    if flip:  # what albumentations' HorizontalFlip does after the crop
        cpu_image, cpu_mask = cpu_image[:, ::-1], cpu_mask[:, ::-1]
    assert np.array_equal(_hwc(out_image[0]), cpu_image)
    assert np.array_equal(out_mask[0].numpy(), cpu_mask)


@pytest.mark.parametrize("scale", [0.5, 0.73, 1.3, 2.0])
def test_other_scales_interpolate_like_cv2(scale: float) -> None:
    """Bilinear within one grey level of cv2's fixed-point warp (exact at 0.5 and 2)."""
    image, mask = _scene()
    crop = (32, 40)
    scaled = (int(48 * scale + 0.5), int(80 * scale + 0.5))
    offset = (max(scaled[0] - crop[0], 0) // 2, max(scaled[1] - crop[1], 0) // 3)
    params = AugmentParams(
        torch.tensor([scale], dtype=torch.float64),
        torch.tensor([scaled]),
        torch.tensor([offset]),
        torch.tensor([False]),
    )
    out_image, _ = DeviceAugment(crop).apply(*_batch(image, mask), torch.tensor([[48, 80]]), params)
    cpu = RandomScaleCrop(crop_size=crop).apply(image, scale=scale, scaled=scaled, offset=offset)
    difference = np.abs(_hwc(out_image[0]).astype(int) - cpu)
    assert difference.max() <= (0 if scale in (0.5, 2.0) else 1)


def test_padding_is_ignore_in_the_mask_and_fill_in_the_image() -> None:
    image, mask = _scene(40, 60)
    mask[:] = 0  # road everywhere: padding must not look like it
    out_image, out_mask = DeviceAugment((64, 96), scale_range=(1, 1), flip=False, seed=0)(
        *_batch(image, mask)
    )
    assert (out_mask[0, 40:] == 255).all() and (out_mask[0, :, 60:] == 255).all()
    assert (out_mask[0, :40, :60] == 0).all()
    assert (out_image[0, :, 40:] == 0).all() and (out_image[0, :, :, 60:] == 0).all()
    assert np.array_equal(_hwc(out_image[0])[:40, :60], image)
    filled, _ = DeviceAugment((64, 96), scale_range=(1, 1), flip=False, fill=(72.39, 82.91, 73.16))(
        *_batch(image, mask)
    )
    assert (filled[0, :, 40:].permute(1, 2, 0) == torch.tensor([72, 83, 73])).all()  # the mean


def test_batch_padding_from_collate_is_never_sampled() -> None:
    """A smaller image padded into a larger batch is scaled from its own size only."""
    image, mask = _scene(40, 60)
    images, masks = _batch(image, mask)
    padded_image = torch.full((1, 3, 48, 80), 7, dtype=torch.uint8)
    padded_mask = torch.full((1, 48, 80), 3, dtype=torch.int64)
    padded_image[:, :, :40, :60], padded_mask[:, :40, :60] = images, masks
    aug = DeviceAugment((64, 96), scale_range=(1.5, 1.5), flip=False, seed=0)
    alone = DeviceAugment((64, 96), scale_range=(1.5, 1.5), flip=False, seed=0)(images, masks)
    inside = aug(padded_image, padded_mask, torch.tensor([[40, 60]]))
    assert torch.equal(alone[0], inside[0]) and torch.equal(alone[1], inside[1])


def test_random_scales_keep_labels_labels() -> None:
    image, mask = _scene()
    aug = DeviceAugment(
        (40, 56), scale_range=(0.5, 2.0), photometric=True, cat_max_ratio=0.75, seed=3
    )
    allowed = set(np.unique(mask).tolist()) | {255}
    for _ in range(20):
        out_image, out_mask = aug(*_batch(image, mask, 8))
        assert out_image.shape == (8, 3, 40, 56) and out_mask.shape == (8, 40, 56)
        assert set(out_mask.unique().tolist()) <= allowed


def _content_and_flip(mask: np.ndarray) -> tuple[int, bool]:
    """Rows of the scaled image inside an oversized crop, and whether padding moved to the left."""
    labelled = mask != 255
    return int(labelled.any(1).sum()), bool(not labelled[:, 0].any())


@pytest.mark.parametrize("scale_step", [0.0, 0.25])
def test_scale_and_flip_statistics_match_the_cpu_path(scale_step: float) -> None:
    """Crop larger than any scaled image: the labelled rows measure the scale, the side of the
    padding the flip. Same distributions: means within 3 standard errors, the same step values."""
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), dtype=np.uint8)
    crop, draws = (48, 64), 400
    recipe: dict[str, Any] = {"scale_range": (0.75, 2.0), "scale_step": scale_step, "flip": True}
    cpu_transform = build_train_transform(crop, seed=1, **recipe)
    cpu = [_content_and_flip(cpu_transform(image=image, mask=mask)["mask"]) for _ in range(draws)]
    _, device_masks = DeviceAugment(crop, seed=1, **recipe)(*_batch(image, mask, draws))
    device = [_content_and_flip(m) for m in device_masks.numpy()]
    for index in (0, 1):
        a = np.array([c[index] for c in cpu], dtype=float)
        b = np.array([d[index] for d in device], dtype=float)
        standard_error = np.sqrt(a.var() / draws + b.var() / draws)
        assert abs(a.mean() - b.mean()) < 3 * standard_error + 1e-9, (index, a.mean(), b.mean())
    if scale_step:
        assert {c[0] for c in cpu} == {d[0] for d in device} == {15, 20, 25, 30, 35, 40}


def _largest_share(mask: np.ndarray) -> float:
    counts = np.bincount(mask.ravel(), minlength=256)[:255]
    return float(counts.max() / max(counts.sum(), 1))


def test_cat_max_ratio_reduces_the_largest_class_like_the_cpu_path() -> None:
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[:, 72:] = 1  # a quarter of the image is class 1
    crop, draws = (32, 32), 300
    shares = {}
    for ratio in (1.0, 0.75):
        recipe: dict[str, Any] = {"scale_range": (1, 1), "flip": False, "cat_max_ratio": ratio}
        cpu_transform = build_train_transform(crop, seed=2, **recipe)
        cpu = [_largest_share(cpu_transform(image=image, mask=mask)["mask"]) for _ in range(draws)]
        _, out = DeviceAugment(crop, seed=2, **recipe)(*_batch(image, mask, draws))
        shares[ratio] = (np.array(cpu), np.array([_largest_share(m) for m in out.numpy()]))
    for a, b in shares.values():
        standard_error = np.sqrt(a.var() / draws + b.var() / draws)
        assert abs(a.mean() - b.mean()) < 3 * standard_error + 1e-9
    off_cpu, off_device = shares[1.0]
    on_cpu, on_device = shares[0.75]
    assert on_cpu.mean() < off_cpu.mean() - 0.1 and on_device.mean() < off_device.mean() - 0.1
    assert (on_device < 0.75).mean() > 0.9  # nearly every accepted window has a mixed window


def test_photometric_matches_opencv_given_the_same_parameters() -> None:
    """Tables with the same float32 arithmetic and OpenCV's integer RGB -> HSV: the same pixels, but
    for one level here and there (OpenCV's float HSV -> RGB rounds its last pixels of a row)."""
    image, _ = _scene()
    values: dict[str, Any] = {
        "brightness": -20.3,
        "contrast_first": True,
        "contrast": 1.3,
        "saturation": 0.7,
        "hue": -9,
    }
    cpu = PhotoMetricDistortion().apply(image, **values)
    v = np.arange(256, dtype=np.float32)
    clip = lambda x: np.floor(np.clip(x, 0, 255))  # noqa: E731
    luts = np.repeat(v[None, None], 3, 1)  # the layout DeviceAugment draws: RGB, hue, saturation
    luts[0, 0] = clip(clip(v + values["brightness"]) * values["contrast"])
    luts[0, 1, :180] = (v[:180] + values["hue"]) % 180
    luts[0, 2] = clip(v * values["saturation"])
    params = AugmentParams(
        torch.ones(1, dtype=torch.float64),
        torch.tensor([[48, 80]]),
        torch.zeros(1, 2, dtype=torch.int64),
        torch.tensor([False]),
        luts=torch.from_numpy(luts.astype(np.uint8)),
        post_luts=torch.from_numpy(v.astype(np.uint8)[None]),
        hsv=torch.tensor([True]),
    )
    out = DeviceAugment((48, 80)).distort(torch.from_numpy(image).permute(2, 0, 1)[None], params)
    difference = np.abs(_hwc(out[0]).astype(int) - cpu)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.9


def test_photometric_draws_change_colours_not_labels() -> None:
    image, mask = _scene()
    plain = DeviceAugment((48, 80), scale_range=(1, 1), flip=False, seed=0)
    coloured = DeviceAugment((48, 80), scale_range=(1, 1), flip=False, photometric=True, seed=0)
    base_image, base_mask = plain(*_batch(image, mask, 16))
    out_image, out_mask = coloured(*_batch(image, mask, 16))
    assert torch.equal(base_mask, out_mask)
    changed = [not torch.equal(a, b) for a, b in zip(base_image, out_image, strict=True)]
    assert 8 <= sum(changed) < 16  # each of the five steps is a coin: some samples keep colours


def test_the_same_seed_draws_the_same_batch() -> None:
    image, mask = _scene()
    first = DeviceAugment((32, 32), photometric=True, cat_max_ratio=0.75, seed=4)(
        *_batch(image, mask, 4)
    )
    again = DeviceAugment((32, 32), photometric=True, cat_max_ratio=0.75, seed=4)(
        *_batch(image, mask, 4)
    )
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_with_augment_on_device_workers_draw_and_cut_windows(cityscapes_tree: Path) -> None:
    dm = CityscapesDataModule(
        root=str(cityscapes_tree),
        batch_size=2,
        num_workers=0,
        crop_size=(32, 48),
        scale_range=(1.0, 2.0),  # windows of 16..32 x 24..48 source pixels out of 64x128
        augment_on="device",
    )
    dm.setup("fit")
    assert isinstance(dm.dataset("train").transform, WindowCut)
    batch = next(iter(dm.train_dataloader()))
    height, width = batch["image"].shape[-2:]
    assert height <= 33 and width <= 49 and batch["mask"].shape == (2, height, width)
    assert batch["mask"].dtype == torch.uint8  # masks travel as uint8
    assert set(batch["augment"]) >= {"sizes", "scales", "offsets", "flips", "origins"}
    assert batch["augment"]["sizes"].tolist() == [[64, 128]] * 2
    assert dm.device_augment is not None and dm.device_augment.crop_size == (32, 48)
    sent = dm.on_before_batch_transfer(batch, 0)  # the parameters stay on the host
    assert "augment" not in sent
    moved = dm.on_after_batch_transfer(sent, 0)
    assert moved["image"].shape == (2, 3, 32, 48) and moved["mask"].shape == (2, 32, 48)
    assert moved["mask"].dtype == torch.int64 and moved["size"].tolist() == [[32, 48]] * 2


def test_validation_batches_are_whole_images_with_int64_masks_on_the_device(
    cityscapes_tree: Path,
) -> None:
    dm = CityscapesDataModule(root=str(cityscapes_tree), num_workers=0, augment_on="device")
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert "augment" not in batch and batch["mask"].dtype == torch.uint8
    moved = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
    assert moved["image"] is batch["image"] and moved["mask"].dtype == torch.int64
    assert torch.equal(moved["mask"], batch["mask"].long())


def test_training_with_augment_on_device_sees_crops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    original = SegmentationModule.training_step

    def recording(self: SegmentationModule, batch: dict[str, Any], batch_idx: int) -> Any:
        seen.append((tuple(batch["image"].shape), tuple(batch["mask"].shape)))
        assert batch["mask"].dtype == torch.int64  # widened after the transfer
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", recording)
    overrides = [
        *tiny_overrides(tmp_path / "synthetic", tmp_path),
        "data.crop_size=[48,56]",
        "data.photometric=true",
        "data.cat_max_ratio=0.75",
        "data.augment_on=device",
        "preview=false",
    ]
    summary = run(compose_config("train", overrides, tmp_path / "run"))
    assert summary["steps"] == 2
    assert seen == [((4, 3, 48, 56), (4, 48, 56))] * 2


def test_a_typo_in_augment_on_is_one_config_error(tmp_path: Path) -> None:
    cfg = compose_config("train", ["data.augment_on=gpu"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.augment_on") as error:
        validate(cfg)
    assert "\n" not in str(error.value).strip()


@pytest.mark.parametrize(
    ("photometric", "cat_max_ratio", "scale_range"),
    [(False, 1.0, (0.5, 2.0)), (True, 0.75, (0.5, 2.0)), (False, 1.0, (0.25, 0.5))],
)
def test_a_workers_window_cut_warps_exactly_like_the_whole_image(
    photometric: bool, cat_max_ratio: float, scale_range: tuple[float, float]
) -> None:
    """Workers send only the pixels each crop reads (collated at different sizes); the device's warp
    of those windows equals its warp of the whole images, pixel for pixel and label for label."""
    crop, kwargs = (32, 48), {"photometric": photometric, "cat_max_ratio": cat_max_ratio}
    cut = WindowCut(DeviceAugment(crop, scale_range, seed=3, **kwargs))
    device = DeviceAugment(crop, scale_range, **kwargs)
    scenes = [_scene(61, 97, seed=i) for i in range(6)]
    samples = []
    for i, (image, mask) in enumerate(scenes):
        out = cut(image=image, mask=mask)
        assert out["image"].shape[:2] == out["mask"].shape
        samples.append(
            {
                "image": torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1),
                "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])),
                "id": str(i),
                "augment": out["augment"],
            }
        )
    batch = collate(samples)
    sizes, params = params_from_batch(batch["augment"])
    got_image, got_mask = device.apply(batch["image"], batch["mask"].long(), sizes, params)
    whole = [_batch(image, mask) for image, mask in scenes]
    expected_image, expected_mask = device.apply(
        torch.cat([w[0] for w in whole]),
        torch.cat([w[1] for w in whole]),
        sizes,
        AugmentParams(**{**params.__dict__, "origins": None}),
    )
    assert got_image.shape == (6, 3, *crop) and torch.equal(got_image, expected_image)
    assert torch.equal(got_mask, expected_mask)
    cut_pixels = sum(s["mask"].numel() for s in samples)
    if scale_range[0] >= 0.5:  # windows of a 32x48 crop at scales >= 0.5: far from 61x97 each
        assert cut_pixels < 6 * 61 * 97 * 0.8
