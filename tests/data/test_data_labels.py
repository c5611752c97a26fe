"""Class tables and id lookup tables."""

from __future__ import annotations

import numpy as np

from cgnet.data import (
    CAMVID,
    CITYSCAPES,
    camvid_label_lut,
    cityscapes_label_lut,
)
from cgnet.data.labels import (
    CITYSCAPES_PUBLISHED_WEIGHTS,
    INVALID,
    cityscapes_label_lut_strict,
    cityscapes_train_id_lut,
    train_id_to_label_id_lut,
)
from cgnet.normalization import OFFICIAL_MEAN, OFFICIAL_STD


def test_cityscapes_classes_follow_cityscapesscripts() -> None:
    assert CITYSCAPES.num_classes == 19
    assert CITYSCAPES.class_names[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES.class_names[-1] == "bicycle"
    assert CITYSCAPES.palette[0] == (128, 64, 128)
    assert CITYSCAPES.ignore_index == 255
    assert CITYSCAPES.categories == (
        "flat",
        "construction",
        "object",
        "nature",
        "sky",
        "human",
        "vehicle",
    )
    assert CITYSCAPES.class_to_category is not None
    assert [CITYSCAPES.categories[c] for c in CITYSCAPES.class_to_category[:3]] == [
        "flat",
        "flat",
        "construction",
    ]
    assert CITYSCAPES.train_id_to_label_id == (
        7,
        8,
        11,
        12,
        13,
        17,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        31,
        32,
        33,
    )
    assert len(CITYSCAPES_PUBLISHED_WEIGHTS) == 19


def test_camvid_classes() -> None:
    assert CAMVID.num_classes == 11
    assert CAMVID.class_names[0] == "Sky" and CAMVID.class_names[-1] == "Bicyclist"
    assert len(CAMVID.palette) == 11
    assert CAMVID.categories is None


def test_official_normalisation() -> None:
    assert OFFICIAL_MEAN == (72.39, 82.91, 73.16)
    assert OFFICIAL_STD == (1.0, 1.0, 1.0)


def test_cityscapes_lut_maps_label_ids_to_train_ids() -> None:
    lut = cityscapes_label_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    for train_id, label_id in enumerate(CITYSCAPES.train_id_to_label_id or ()):
        assert lut[label_id] == train_id
    assert lut[0] == lut[1] == lut[6] == lut[9] == lut[34] == lut[255] == 255
    strict = cityscapes_label_lut_strict()
    assert strict[33] == 18 and strict[0] == 255 and strict[34] == INVALID


def test_train_id_lut_and_camvid_lut() -> None:
    train = cityscapes_train_id_lut()
    assert train[18] == 18 and train[255] == 255 and train[19] == INVALID
    camvid = camvid_label_lut()
    assert camvid[:11].tolist() == list(range(11))
    assert camvid[11] == 255 and camvid[12] == INVALID and camvid[255] == INVALID


def test_export_luts_go_back_to_dataset_ids() -> None:
    to_label = train_id_to_label_id_lut(CITYSCAPES)
    assert to_label[0] == 7 and to_label[18] == 33 and to_label[255] == 0
    assert train_id_to_label_id_lut(CAMVID)[255] == 11
    ids = np.arange(19, dtype=np.uint8)
    assert np.array_equal(cityscapes_label_lut()[to_label[ids]], ids)
