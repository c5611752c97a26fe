"""Datasets for CGNet: Cityscapes, CamVid and generated street scenes in their exact layouts.

Every batch carries uint8 RGB images and int64 trainId masks (255 = ignore) for both datasets; the
LightningModule normalises on the device with the DataModule's `mean` and `std`.
"""

from cgnet.data.datamodule import CamVidDataModule, CityscapesDataModule, SegmentationDataModule
from cgnet.data.errors import DataError
from cgnet.data.labels import (
    CAMVID,
    CITYSCAPES,
    IGNORE_INDEX,
    DatasetInfo,
    camvid_label_lut,
    cityscapes_label_lut,
)
from cgnet.data.synthetic import generate_camvid, generate_cityscapes
from cgnet.data.synthetic_datamodule import SyntheticCamVidDataModule, SyntheticCityscapesDataModule

__all__ = [
    "CAMVID",
    "CITYSCAPES",
    "IGNORE_INDEX",
    "CamVidDataModule",
    "CityscapesDataModule",
    "DataError",
    "DatasetInfo",
    "SegmentationDataModule",
    "SyntheticCamVidDataModule",
    "SyntheticCityscapesDataModule",
    "camvid_label_lut",
    "cityscapes_label_lut",
    "generate_camvid",
    "generate_cityscapes",
]
