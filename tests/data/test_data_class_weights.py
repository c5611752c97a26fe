"""Class weights: the published list, w = 1/ln(1.10 + p) computed from the data, and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import cgnet.data.weights as weights_module
from cgnet.data import CamVidDataModule, CityscapesDataModule
from cgnet.data.labels import CITYSCAPES_PUBLISHED_WEIGHTS, cityscapes_label_lut
from cgnet.data.weights import weights_from_counts


def test_formula() -> None:
    counts = np.array([70, 20, 10, 0])
    expected = 1 / np.log(1.10 + np.array([0.7, 0.2, 0.1, 0.0]))
    assert np.allclose(weights_from_counts(counts), expected)
    assert weights_from_counts(counts)[3] == pytest.approx(1 / np.log(1.10))  # absent class


def test_none_and_published(cityscapes_tree: Path) -> None:
    assert (
        CityscapesDataModule(root=str(cityscapes_tree), class_weights="none").class_weight_tensor()
        is None
    )
    published = CityscapesDataModule(
        root=str(cityscapes_tree), class_weights="published"
    ).class_weight_tensor()
    assert published is not None and published.dtype == torch.float32 and published.shape == (19,)
    assert published[0].item() == pytest.approx(2.5959933) and published[
        18
    ].item() == pytest.approx(10.055647)
    assert torch.allclose(published, torch.tensor(CITYSCAPES_PUBLISHED_WEIGHTS))
    with pytest.raises(ValueError, match="no published class weights"):
        CamVidDataModule(root="x", class_weights="published").class_weight_tensor()


def test_computed_from_the_training_split_void_excluded(cityscapes_tree: Path) -> None:
    counts = np.zeros(256, np.int64)
    for label in (cityscapes_tree / "gtFine" / "train").rglob("*_gtFine_labelIds.png"):
        counts += np.bincount(
            cityscapes_label_lut()[cv2.imread(str(label), cv2.IMREAD_UNCHANGED)].ravel(),
            minlength=256,
        )
    frequency = counts[:19] / counts[:19].sum()  # 255 (void) left out
    expected = 1 / np.log(1.10 + frequency)
    weights = CityscapesDataModule(
        root=str(cityscapes_tree), class_weights="computed"
    ).class_weight_tensor()
    assert weights is not None and weights.shape == (19,)
    assert np.allclose(weights.numpy(), expected, rtol=1e-6)


def test_computed_once_then_read_from_the_cache(
    camvid_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CGNET_CACHE_DIR", str(tmp_path / "cache"))
    first = CamVidDataModule(root=str(camvid_tree), class_weights="computed")
    first.prepare_data()  # counts here, once, on rank 0
    files = list((tmp_path / "cache" / "class_weights").glob("camvid-*.json"))
    assert len(files) == 1
    cached = json.loads(files[0].read_text())
    assert cached["formula"].startswith("w = 1 / ln(1.10 + p)") and len(cached["weights"]) == 11

    def no_counting(*args: object, **kwargs: object) -> None:
        raise AssertionError("class frequencies were counted again")

    monkeypatch.setattr(weights_module, "iter_stats", no_counting)
    second = CamVidDataModule(root=str(camvid_tree), class_weights="computed").class_weight_tensor()
    assert second is not None and torch.allclose(
        second, torch.tensor(cached["weights"], dtype=torch.float32)
    )
    # another file list (here: train + val) is another cache entry
    with pytest.raises(AssertionError, match="counted again"):
        CamVidDataModule(
            root=str(camvid_tree), class_weights="computed", train_split="trainval"
        ).class_weight_tensor()
