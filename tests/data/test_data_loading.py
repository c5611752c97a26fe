"""Decoding and id mapping: every mask that leaves the package holds trainIds and 255."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cgnet.data import CamVidDataModule, CityscapesDataModule
from cgnet.data.labels import cityscapes_label_lut


def _raw(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_cityscapes_label_ids_become_train_ids(cityscapes_tree: Path) -> None:
    dataset = CityscapesDataModule(root=str(cityscapes_tree), num_workers=0).dataset("val")
    for index, sample in enumerate(dataset.samples):
        item = dataset[index]
        raw = _raw(sample.label)
        assert item["mask"].dtype == torch.uint8
        assert np.array_equal(item["mask"].numpy(), cityscapes_label_lut()[raw])
        # void ids (0 unlabeled, 1 ego vehicle) come out as 255, never as a class
        assert (item["mask"].numpy()[raw <= 6] == 255).all()
        rgb = cv2.cvtColor(cv2.imread(str(sample.image)), cv2.COLOR_BGR2RGB)
        assert item["image"].shape == (3, *rgb.shape[:2]) and item["image"].dtype == torch.uint8
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), rgb)  # RGB, full resolution
        assert item["id"] == sample.id


def test_precomputed_train_ids_give_the_same_masks(cityscapes_copy: Path) -> None:
    before = CityscapesDataModule(root=str(cityscapes_copy), num_workers=0).dataset("val")
    masks = [before[i]["mask"] for i in range(len(before))]
    for label in (cityscapes_copy / "gtFine" / "val").rglob("*_gtFine_labelIds.png"):
        train_ids = cityscapes_label_lut()[_raw(label)]
        cv2.imwrite(str(label).replace("_labelIds", "_labelTrainIds"), train_ids)
        cv2.imwrite(str(label), np.full_like(train_ids, 7))  # would read as all road if used
    after = CityscapesDataModule(root=str(cityscapes_copy), num_workers=0).dataset("val")
    assert all(torch.equal(after[i]["mask"], masks[i]) for i in range(len(after)))


def test_camvid_void_becomes_ignore(camvid_tree: Path) -> None:
    dataset = CamVidDataModule(root=str(camvid_tree), num_workers=0).dataset("val")
    seen_void = False
    for index, sample in enumerate(dataset.samples):
        raw = _raw(sample.label)
        mask = dataset[index]["mask"].numpy()
        assert np.array_equal(mask[raw < 11], raw[raw < 11])
        assert (mask[raw == 11] == 255).all()
        seen_void |= bool((raw == 11).any())
    assert seen_void


def test_test_split_without_labels_is_all_ignore(cityscapes_copy: Path) -> None:
    shutil.rmtree(cityscapes_copy / "gtFine" / "test")
    dataset = CityscapesDataModule(root=str(cityscapes_copy), num_workers=0).dataset("test")
    assert (dataset[0]["mask"] == 255).all()


def test_root_falls_back_to_cityscapes_dataset_env(
    cityscapes_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYSCAPES_DATASET", str(cityscapes_tree))
    assert CityscapesDataModule(root=None).resolve_root() == cityscapes_tree
