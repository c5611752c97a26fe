"""Finding image/label pairs: both layouts, list files, labelTrainIds preference."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cgnet.data.errors import DataError
from cgnet.data.labels import cityscapes_label_lut
from cgnet.data.layout import (
    CAMVID_IDS,
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_TRAIN_IDS,
    cityscapes_label_format,
    cityscapes_sample_id,
    read_list_file,
    scan_camvid,
    scan_cityscapes,
)


def test_cityscapes_pairs_and_ids(cityscapes_tree: Path, counts: dict[str, int]) -> None:
    scan = scan_cityscapes(cityscapes_tree, "train")
    assert not scan.problems
    assert len(scan.samples) == counts["num_train"]
    for s in scan.samples:
        assert re.fullmatch(r"synth(town|ville)_000000_\d{6}", s.id)
        assert s.image.name == f"{s.id}_leftImg8bit.png"
        assert s.label is not None and s.label.name == f"{s.id}_gtFine_labelIds.png"
        assert s.label_format == CITYSCAPES_LABEL_IDS
        assert s.image.parent.name == s.label.parent.name == s.id.split("_")[0]
    # _color and _instanceIds files are there, and never used as labels
    assert list((cityscapes_tree / "gtFine" / "train").rglob("*_gtFine_color.png"))
    assert list((cityscapes_tree / "gtFine" / "train").rglob("*_gtFine_instanceIds.png"))


def test_cityscapes_trainval_is_train_plus_val(
    cityscapes_tree: Path, counts: dict[str, int]
) -> None:
    ids = {s.id for s in scan_cityscapes(cityscapes_tree, "trainval").samples}
    train = {s.id for s in scan_cityscapes(cityscapes_tree, "train").samples}
    val = {s.id for s in scan_cityscapes(cityscapes_tree, "val").samples}
    assert ids == train | val and len(ids) == counts["num_train"] + counts["num_val"]


def test_train_extra_is_read_from_gt_coarse_and_joins_with_plus(
    cityscapes_tree: Path, counts: dict[str, int]
) -> None:
    extra = scan_cityscapes(cityscapes_tree, "train_extra")
    assert not extra.problems and len(extra.samples) == counts["num_train_extra"]
    for s in extra.samples:
        assert s.label is not None and s.label.name == f"{s.id}_gtCoarse_labelIds.png"
        assert s.label.parts[-4:-2] == ("gtCoarse", "train_extra")
        assert s.label_format == CITYSCAPES_LABEL_IDS
    joined = scan_cityscapes(cityscapes_tree, "train+train_extra")
    train = scan_cityscapes(cityscapes_tree, "train")
    assert joined.samples == train.samples + extra.samples
    # a coarse labelTrainIds file is preferred over its labelIds file, as for gtFine
    assert cityscapes_label_format(Path("a_gtCoarse_labelTrainIds.png")) == CITYSCAPES_TRAIN_IDS


def test_missing_coarse_labels_name_the_gt_coarse_folder(cityscapes_copy: Path) -> None:
    shutil.rmtree(cityscapes_copy / "gtCoarse")
    (problem,) = scan_cityscapes(cityscapes_copy, "train+train_extra").problems
    assert f"missing label directory {cityscapes_copy / 'gtCoarse' / 'train_extra'}" in problem
    assert "_gtCoarse_labelIds.png" in problem and "package gtCoarse.zip" in problem


def test_a_split_joined_with_an_empty_name_is_refused(cityscapes_tree: Path) -> None:
    with pytest.raises(DataError, match=r"split 'train\+': expected names joined by '\+'"):
        scan_cityscapes(cityscapes_tree, "train+")


def test_label_train_ids_preferred_when_present(cityscapes_copy: Path) -> None:
    label = next((cityscapes_copy / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    train_ids = label.with_name(label.name.replace("_labelIds", "_labelTrainIds"))
    cv2.imwrite(
        str(train_ids), cityscapes_label_lut()[cv2.imread(str(label), cv2.IMREAD_UNCHANGED)]
    )
    samples = {s.label: s for s in scan_cityscapes(cityscapes_copy, "val").samples}
    assert train_ids in samples and label not in samples
    assert samples[train_ids].label_format == CITYSCAPES_TRAIN_IDS


def test_cityscapes_test_split_without_ground_truth(
    cityscapes_copy: Path, counts: dict[str, int]
) -> None:
    shutil.rmtree(cityscapes_copy / "gtFine" / "test")
    scan = scan_cityscapes(cityscapes_copy, "test")
    assert not scan.problems
    assert len(scan.samples) == counts["num_test"]
    assert all(s.label is None for s in scan.samples)


def test_camvid_pairs(camvid_tree: Path, counts: dict[str, int]) -> None:
    scan = scan_camvid(camvid_tree, "val")
    assert not scan.problems and len(scan.samples) == counts["num_val"]
    for s in scan.samples:
        assert s.image == camvid_tree / "val" / f"{s.id}.png"
        assert s.label == camvid_tree / "valannot" / f"{s.id}.png"
        assert s.label_format == CAMVID_IDS
    assert (
        len(scan_camvid(camvid_tree, "trainval").samples) == counts["num_train"] + counts["num_val"]
    )


def test_official_list_files(cityscapes_tree: Path, camvid_tree: Path, tmp_path: Path) -> None:
    pairs = scan_cityscapes(cityscapes_tree, "val").samples
    listing = tmp_path / "cityscapes_val_list.txt"
    lines = [
        f"{s.image.relative_to(cityscapes_tree)} {s.label.relative_to(cityscapes_tree)}"
        for s in pairs
        if s.label
    ]
    listing.write_text("\n".join(lines) + "\n\n")
    scan = read_list_file(
        cityscapes_tree,
        listing,
        "val",
        sample_id=cityscapes_sample_id,
        label_format=cityscapes_label_format,
    )
    assert not scan.problems
    assert [s.id for s in scan.samples] == [s.id for s in pairs]

    camvid = scan_camvid(camvid_tree, "test").samples
    listing = tmp_path / "camvid_test_list.txt"
    listing.write_text(
        "\n".join(f"test/{s.image.name} testannot/{s.label.name}" for s in camvid if s.label)
    )
    scan = read_list_file(
        camvid_tree, listing, "test", sample_id=lambda p: p.stem, label_format=lambda p: CAMVID_IDS
    )
    assert [s.id for s in scan.samples] == [s.id for s in camvid]


def test_list_file_problems_name_the_line(camvid_tree: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("test/missing.png testannot/missing.png\na b c\n")
    scan = read_list_file(
        camvid_tree, listing, "test", sample_id=lambda p: p.stem, label_format=lambda p: CAMVID_IDS
    )
    assert len(scan.problems) == 2
    assert (
        f"{listing}:1: image {camvid_tree / 'test/missing.png'} does not exist" in scan.problems[0]
    )
    assert f"{listing}:2" in scan.problems[1]


def test_generated_ids_cover_the_scene_classes(cityscapes_tree: Path, camvid_tree: Path) -> None:
    cs = np.zeros(256, bool)
    for label in (cityscapes_tree / "gtFine").rglob("*_gtFine_labelIds.png"):
        cs[np.unique(cv2.imread(str(label), cv2.IMREAD_UNCHANGED))] = True
    assert set(np.flatnonzero(cs)) >= {0, 7, 8, 11, 17, 21, 23, 24, 26}
    cv = np.zeros(256, bool)
    for label in camvid_tree.glob("*annot/*.png"):
        cv[np.unique(cv2.imread(str(label), cv2.IMREAD_UNCHANGED))] = True
    assert set(np.flatnonzero(cv)) >= {0, 1, 2, 3, 4, 5, 8, 9, 11}
    assert set(np.flatnonzero(cv)) <= set(range(12))
