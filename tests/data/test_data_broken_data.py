"""Broken trees fail with a DataError naming the path and what was expected; nothing is skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cgnet.data import CamVidDataModule, CityscapesDataModule, DataError


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


def _load_all(dm: CityscapesDataModule | CamVidDataModule, stage: str = "train") -> None:
    dataset = dm.dataset(stage)
    for index in range(len(dataset)):
        dataset[index]


def test_missing_root_names_the_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"{missing} does not exist.*leftImg8bit/train/CITY"):
        CityscapesDataModule(root=str(missing)).dataset("train")
    with pytest.raises(DataError, match=r"trainannot"):
        CamVidDataModule(root=str(missing)).dataset("train")
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    with pytest.raises(DataError, match=r"data\.root=PATH or the CITYSCAPES_DATASET"):
        CityscapesDataModule(root=None).dataset("train")


def test_missing_split(cityscapes_copy: Path, camvid_copy: Path) -> None:
    shutil.rmtree(cityscapes_copy / "leftImg8bit" / "val")
    with pytest.raises(
        DataError, match=rf"missing split directory {cityscapes_copy / 'leftImg8bit' / 'val'}"
    ):
        CityscapesDataModule(root=str(cityscapes_copy)).dataset("val")
    shutil.rmtree(camvid_copy / "valannot")
    with pytest.raises(DataError, match=rf"missing split directory {camvid_copy / 'valannot'}"):
        CamVidDataModule(root=str(camvid_copy)).dataset("val")


def test_image_without_label(cityscapes_copy: Path, camvid_copy: Path) -> None:
    label = _first(cityscapes_copy / "gtFine" / "train", "*_labelIds.png")
    label.unlink()
    image = next(
        (cityscapes_copy / "leftImg8bit").rglob(
            label.name.replace("_gtFine_labelIds", "_leftImg8bit")
        )
    )
    with pytest.raises(DataError, match=rf"image {image} has no label: expected {label}"):
        CityscapesDataModule(root=str(cityscapes_copy)).dataset("train")
    label = _first(camvid_copy / "trainannot", "*.png")
    label.unlink()
    with pytest.raises(
        DataError, match=rf"image {camvid_copy / 'train' / label.name} has no label"
    ):
        CamVidDataModule(root=str(camvid_copy)).dataset("train")


def test_label_without_image(cityscapes_copy: Path, camvid_copy: Path) -> None:
    image = _first(cityscapes_copy / "leftImg8bit" / "train", "*.png")
    image.unlink()
    with pytest.raises(
        DataError, match=r"label .*_gtFine_labelIds\.png has no image: expected " + str(image)
    ):
        CityscapesDataModule(root=str(cityscapes_copy)).dataset("train")
    image = _first(camvid_copy / "train", "*.png")
    image.unlink()
    with pytest.raises(
        DataError, match=rf"label {camvid_copy / 'trainannot' / image.name} has no image"
    ):
        CamVidDataModule(root=str(camvid_copy)).dataset("train")


@pytest.mark.parametrize("what", ["image", "label"])
def test_truncated_png(cityscapes_copy: Path, what: str) -> None:
    pattern = "*_leftImg8bit.png" if what == "image" else "*_labelIds.png"
    path = _first(
        cityscapes_copy / ("leftImg8bit" if what == "image" else "gtFine") / "train", pattern
    )
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{what} {path} could not be decoded \(truncated"):
        _load_all(CityscapesDataModule(root=str(cityscapes_copy)))


def test_unreadable_files(camvid_copy: Path) -> None:
    image = _first(camvid_copy / "train", "*.png")
    image.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=rf"image {image} could not be decoded"):
        _load_all(CamVidDataModule(root=str(camvid_copy)))
    image.write_bytes(b"")
    with pytest.raises(DataError, match=rf"image {image} is empty"):
        _load_all(CamVidDataModule(root=str(camvid_copy)))


def test_size_mismatch(camvid_copy: Path) -> None:
    label = _first(camvid_copy / "trainannot", "*.png")
    cv2.imwrite(str(label), cv2.imread(str(label), cv2.IMREAD_UNCHANGED)[:, :100])
    with pytest.raises(
        DataError, match=rf"label {label} is 100x64 \(WxH\) but its image .* is 128x64"
    ):
        _load_all(CamVidDataModule(root=str(camvid_copy)))


def test_values_outside_the_dataset_ids(cityscapes_copy: Path, camvid_copy: Path) -> None:
    label = _first(camvid_copy / "trainannot", "*.png")
    raw = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    raw[0, :3] = (12, 40, 255)
    cv2.imwrite(str(label), raw)
    with pytest.raises(
        DataError, match=rf"label {label} holds values \[12, 40, 255\] .* expected only 0\.\.11"
    ):
        _load_all(CamVidDataModule(root=str(camvid_copy)))
    label = _first(cityscapes_copy / "gtFine" / "train", "*_labelIds.png")
    raw = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    raw[5, 5] = 34
    cv2.imwrite(str(label), raw)
    with pytest.raises(
        DataError, match=rf"label {label} holds values \[34\] .* expected only 0\.\.33"
    ):
        _load_all(CityscapesDataModule(root=str(cityscapes_copy)))


def test_colour_label_where_ids_are_expected(camvid_copy: Path) -> None:
    label = _first(camvid_copy / "trainannot", "*.png")
    raw = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(label), np.dstack([raw, raw, raw]) * 20)
    with pytest.raises(DataError, match=rf"label {label} has 3 channels \(a colour image\?\)"):
        _load_all(CamVidDataModule(root=str(camvid_copy)))


def test_sixteen_bit_label(cityscapes_copy: Path, tmp_path: Path) -> None:
    label = _first(cityscapes_copy / "gtFine" / "train", "*_labelIds.png")
    instance = label.with_name(label.name.replace("_labelIds", "_instanceIds"))
    shutil.copy(instance, label)  # someone saved instanceIds under the labelIds name
    with pytest.raises(DataError, match=rf"label {label} is uint16"):
        _load_all(CityscapesDataModule(root=str(cityscapes_copy)))


def test_error_crosses_dataloader_workers(camvid_copy: Path) -> None:
    """Raised in a worker process, still a DataError naming the file in the main process."""
    image = _first(camvid_copy / "train", "*.png")
    image.write_bytes(b"garbage")
    dm = CamVidDataModule(root=str(camvid_copy), num_workers=1, batch_size=2, crop_size=[32, 32])
    with pytest.raises(DataError, match=str(image)):
        for _ in dm.train_dataloader():
            pass
