"""Class tables of the two datasets and the id lookup tables that turn their label files into trainIds.

Every mask that leaves the data package holds trainIds 0..C-1 and 255 for "ignore", for both
datasets, so the model, the loss and the metrics need a single ignore index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cityscapesscripts.helpers.labels import labels as _cs_labels

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the project needs to know about a dataset's classes."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    categories: tuple[str, ...] | None = None
    class_to_category: tuple[int, ...] | None = None
    train_id_to_label_id: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.palette) != len(self.class_names):
            raise ValueError(
                f"{self.name}: {len(self.palette)} colours for {self.num_classes} classes"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _cityscapes_info() -> DatasetInfo:
    train_labels = sorted(
        (lb for lb in _cs_labels if 0 <= lb.trainId < IGNORE_INDEX), key=lambda lb: lb.trainId
    )
    assert [lb.trainId for lb in train_labels] == list(range(19))
    categories: list[str] = []
    for lb in train_labels:
        if lb.category not in categories:
            categories.append(lb.category)
    return DatasetInfo(
        name="cityscapes",
        class_names=tuple(lb.name for lb in train_labels),
        palette=tuple(tuple(lb.color) for lb in train_labels),
        categories=tuple(categories),
        class_to_category=tuple(categories.index(lb.category) for lb in train_labels),
        train_id_to_label_id=tuple(lb.id for lb in train_labels),
    )


CITYSCAPES = _cityscapes_info()

# SegNet tutorial's 11 CamVid classes (those the authors' CamVid model predicts) and its colours;
# label 11 is void.
CAMVID = DatasetInfo(
    name="camvid",
    class_names=(
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    ),
    palette=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
)
CAMVID_VOID = 11

# Published Cityscapes class weights (mmseg's copy of the official list), by trainId.
CITYSCAPES_PUBLISHED_WEIGHTS: tuple[float, ...] = (
    2.5959933,
    6.7415504,
    3.5354059,
    9.8663225,
    9.690899,
    9.369352,
    10.289121,
    9.953208,
    4.3097677,
    9.490387,
    7.674431,
    9.396905,
    10.347791,
    6.3927646,
    10.226669,
    10.241062,
    10.280587,
    10.396974,
    10.055647,
)

# A label LUT maps every possible uint8 value of a label file to a trainId, or to INVALID when that
# value is not an id of the dataset; INVALID never survives loading (it raises DataError).
INVALID = 254


def cityscapes_label_lut() -> np.ndarray:
    """labelId -> trainId for Cityscapes *_gtFine_labelIds.png (256 entries, 255 for void ids).

    Values that are not Cityscapes labelIds (above 33) map to 255 here; `cityscapes_label_lut_strict`
    marks them INVALID instead so a loader can reject them.
    """
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lb in _cs_labels:
        if lb.id >= 0:
            lut[lb.id] = lb.trainId if 0 <= lb.trainId < IGNORE_INDEX else IGNORE_INDEX
    return lut


def cityscapes_label_lut_strict() -> np.ndarray:
    """As `cityscapes_label_lut`, with every value that is not a labelId (34..255) marked INVALID."""
    lut = cityscapes_label_lut()
    valid = {lb.id for lb in _cs_labels if lb.id >= 0}
    for value in range(256):
        if value not in valid:
            lut[value] = INVALID
    return lut


def cityscapes_train_id_lut() -> np.ndarray:
    """Identity on trainIds 0..18 and 255 for precomputed *_gtFine_labelTrainIds.png; rest INVALID."""
    lut = np.full(256, INVALID, dtype=np.uint8)
    lut[: CITYSCAPES.num_classes] = np.arange(CITYSCAPES.num_classes, dtype=np.uint8)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def camvid_label_lut() -> np.ndarray:
    """CamVid ids: 0..10 kept, 11 (void) -> 255, anything else INVALID."""
    lut = np.full(256, INVALID, dtype=np.uint8)
    lut[: CAMVID.num_classes] = np.arange(CAMVID.num_classes, dtype=np.uint8)
    lut[CAMVID_VOID] = IGNORE_INDEX
    return lut


def train_id_to_label_id_lut(info: DatasetInfo, void_id: int | None = None) -> np.ndarray:
    """trainId -> the dataset's own ids, ignore (and anything unknown) -> void_id.

    For exporting predictions as label files: Cityscapes' benchmark takes labelIds (void 0,
    "unlabeled"); CamVid's ids are its trainIds with void 11. void_id defaults to the dataset's.
    """
    if void_id is None:
        void_id = CAMVID_VOID if info.name == CAMVID.name else 0
    lut = np.full(256, void_id, dtype=np.uint8)
    ids = info.train_id_to_label_id or tuple(range(info.num_classes))
    lut[: len(ids)] = np.asarray(ids, dtype=np.uint8)
    return lut
