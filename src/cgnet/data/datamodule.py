"""LightningDataModules: one shared base, Cityscapes and CamVid on top of it.

Every keyword has a precise type hint: the project checks Hydra data configs against these signatures,
and every data config carries the same keys so commands stay the same across datasets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import albumentations as A
import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cgnet.data.collate import collate
from cgnet.data.dataset import SegmentationDataset
from cgnet.data.device_augment import DeviceAugment, WindowCut, params_from_batch
from cgnet.data.errors import DataError
from cgnet.data.labels import (
    CAMVID,
    CITYSCAPES,
    CITYSCAPES_PUBLISHED_WEIGHTS,
    IGNORE_INDEX,
    DatasetInfo,
    camvid_label_lut,
    cityscapes_label_lut_strict,
    cityscapes_train_id_lut,
)
from cgnet.data.layout import (
    CAMVID_IDS,
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_TRAIN_IDS,
    Sample,
    SplitScan,
    cityscapes_label_format,
    cityscapes_sample_id,
    read_list_file,
    scan_camvid,
    scan_cityscapes,
)
from cgnet.data.prepared import PreparedData, PreparedSplit
from cgnet.data.prepared_format import SplitEntry
from cgnet.data.transforms import build_train_transform
from cgnet.data.weights import computed_class_weights, weights_from_counts
from cgnet.data.workers import process_rank, seed_worker
from cgnet.normalization import OFFICIAL_MEAN, OFFICIAL_STD

ClassWeights = Literal["none", "published", "computed"]
AugmentOn = Literal["cpu", "device"]


class SegmentationDataModule(pl.LightningDataModule):
    """Shared loading, augmentation, batching and class weights; subclasses only find the files.

    Batches are dicts: `image` uint8 [B, 3, H, W] RGB (normalise on the device with `mean`/`std`),
    `mask` uint8 [B, H, W] trainIds with 255 ignore (int64 after the transfer to the device),
    `id` list[str], `size` int64 [B, 2]. Training
    batches are random crops; validation, test and predict batches are whole images.
    """

    info: ClassVar[DatasetInfo]
    label_luts: ClassVar[dict[str, np.ndarray]]

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 4,
        crop_size: Sequence[int] = (512, 1024),
        scale_range: Sequence[float] = (0.5, 2.0),
        scale_step: float = 0.0,
        flip: bool = True,
        photometric: bool = False,
        cat_max_ratio: float = 1.0,
        class_weights: ClassWeights = "none",
        mean: Sequence[float] = OFFICIAL_MEAN,
        std: Sequence[float] = OFFICIAL_STD,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        augment_on: AugmentOn = "cpu",
        prepared: str | None = None,
    ) -> None:
        super().__init__()
        _check_pair("crop_size", crop_size, positive=True)
        _check_pair("scale_range", scale_range, positive=True)
        if scale_range[0] > scale_range[1]:
            raise ValueError(f"data.scale_range=[lo, hi] needs lo <= hi, got {list(scale_range)}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"data.cat_max_ratio must be in (0, 1] (1 = off), got {cat_max_ratio}")
        if class_weights not in ("none", "published", "computed"):
            raise ValueError(
                f"data.class_weights must be none|published|computed, got {class_weights!r}"
            )
        if augment_on not in ("cpu", "device"):
            raise ValueError(f"data.augment_on must be cpu|device, got {augment_on!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"data.mean and data.std need 3 values (RGB), got {mean}, {std}")
        for key, value, least in (
            ("batch_size", batch_size, 1),
            ("val_batch_size", val_batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < least:
                raise ValueError(f"data.{key}={value}: expected an integer >= {least}")
        self.root = root
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.scale_step = float(scale_step)
        self.flip = flip
        self.photometric = photometric
        self.cat_max_ratio = float(cat_max_ratio)
        self.class_weights = class_weights
        self._mean = tuple(float(v) for v in mean)
        self._std = tuple(float(v) for v in std)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.list_files = {"train": train_list, "val": val_list, "test": test_list}
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.augment_on = augment_on
        self.device_augment: DeviceAugment | None = None
        self._augment_params: dict[str, torch.Tensor] | None = None
        self.prepared = prepared
        self._prepared: PreparedData | None = None
        self._stream: Any = None  # the training StreamingDataLoader (prepared data)
        self._stream_state: dict[str, Any] | None = None  # its state from a checkpoint
        self.datasets: dict[str, Dataset[dict[str, Any]]] = {}
        self._weights: torch.Tensor | None = None

    # --- what the model needs to know ------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    # --- finding files (subclasses) -------------------------------------------------------

    def resolve_root(self) -> Path:
        """The dataset folder; subclasses add fallbacks (an environment variable, a cache)."""
        if self.root is None:
            raise DataError(f"no dataset root given for {self.info.name}: set data.root=PATH")
        return Path(self.root).expanduser()

    def scan_split(self, root: Path, split: str) -> SplitScan:
        """Find the image/label pairs of a split in the dataset's folder layout."""
        raise NotImplementedError

    def scan_list(self, root: Path, list_file: Path, split: str) -> SplitScan:
        """Pairs from an official list file ("image label" per line, relative to root)."""
        raise NotImplementedError

    def samples(self, stage: str) -> list[Sample]:
        """The checked file pairs for stage 'train', 'val' or 'test' (DataError on any problem)."""
        root = self.resolve_root()
        split, list_file = self.splits[stage], self.list_files[stage]
        if list_file:
            scan = self.scan_list(root, _list_path(root, list_file), split)
        else:
            scan = self.scan_split(root, split)
        return scan.require()

    # --- Lightning hooks --------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Count class frequencies once (rank 0) when computed weights are asked for."""
        if self.class_weights == "computed":
            self.class_weight_tensor()

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            None: ("train", "val", "test"),
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
        }.get(stage, ("train", "val", "test"))
        for name in wanted:
            if name not in self.datasets:
                self.datasets[name] = self._dataset(name)

    def augmentation(self) -> dict[str, Any]:
        """The training augmentation's settings, the same for the CPU and the device path."""
        return {
            "crop_size": self.crop_size,
            "scale_range": self.scale_range,
            "scale_step": self.scale_step,
            "flip": self.flip,
            "photometric": self.photometric,
            "cat_max_ratio": self.cat_max_ratio,
            "fill": self._mean,  # padding = the mean, i.e. 0 after normalisation (as mmseg pads)
            "ignore_index": IGNORE_INDEX,
        }

    def _dataset(self, stage: str) -> Dataset[dict[str, Any]]:
        transform: A.Compose | WindowCut | None = None
        if stage == "train" and self.augment_on == "cpu":
            transform = build_train_transform(**self.augmentation())
        elif stage == "train":  # device: workers draw and cut each crop's window, the device warps
            # it with the same object's apply (workers draw from their reseeded copies)
            self.device_augment = DeviceAugment(**self.augmentation())
            transform = WindowCut(self.device_augment)
        if self.prepared:
            return PreparedSplit(self.prepared_data(), self.prepared_entry(stage), transform)
        return SegmentationDataset(self.samples(stage), self.label_luts, transform)

    # --- prepared data (data.prepared=DIR_OR_URL) -------------------------------------------

    def prepared_data(self) -> PreparedData:
        """The prepared location, its manifest checked against this dataset and label mapping."""
        if self.prepared is None:
            raise DataError("data.prepared is not set")
        if self._prepared is None:
            self._prepared = PreparedData(self.prepared, self.info.name, self.label_luts)
        return self._prepared

    def prepared_entry(self, stage: str) -> SplitEntry:
        """The prepared split that stage 'train', 'val' or 'test' reads (its files checked)."""
        return self.prepared_data().split(self.splits[stage], self.list_files[stage])

    def check_crop_fits(self) -> None:
        """A crop larger than the largest scaled image is mostly ignore-padding in every sample: almost
        no pixel would be trained on. Checked on the first training image (the training entry point
        calls this before any heavy work)."""
        dataset = self.dataset("train")
        if isinstance(dataset, PreparedSplit):
            if not len(dataset):
                return
            shape, example = dataset.first_size, f"{self.prepared} ({dataset.entry.split})"
        else:
            assert isinstance(dataset, SegmentationDataset)
            if not dataset.samples:
                return
            image_path = dataset.samples[0].image
            image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
            if image is None:
                return  # the dataset's own checks name unreadable files
            shape, example = image.shape[:2], str(image_path)
        largest = [round(n * self.scale_range[1]) for n in shape]
        if any(c > n for c, n in zip(self.crop_size, largest, strict=True)):
            raise DataError(
                f"data.crop_size={list(self.crop_size)} is larger than the training images scaled by "
                f"the largest data.scale_range factor ({shape[0]}x{shape[1]} x "
                f"{self.scale_range[1]} = {largest[0]}x{largest[1]}, e.g. {example}): every crop "
                "would be mostly padding; lower data.crop_size or raise data.scale_range"
            )

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        dataset = self.dataset("train")
        assert isinstance(dataset, SegmentationDataset | PreparedSplit)
        # The main-process stream (num_workers=0) follows the run's seed too. It reads the seed rather
        # than drawing from the global RNG, so building a loader never shifts the stream that picks
        # shuffle orders and worker seeds (a resumed run rebuilds its loaders at another moment).
        dataset.reseed(torch.initial_seed() + process_rank())
        if len(dataset) < self.batch_size:
            raise DataError(
                f"the training split has {len(dataset)} image(s), fewer than data.batch_size="
                f"{self.batch_size}; with drop_last no batch would be left"
            )
        if isinstance(dataset, PreparedSplit):
            return self._streaming_loader(dataset)
        return self._loader(dataset, self.batch_size, shuffle=True, drop_last=True)

    def _streaming_loader(self, split: PreparedSplit) -> DataLoader[dict[str, Any]]:
        """Training on prepared data: litdata shards the split over the DDP ranks (created here, after
        the processes joined) and its loader's state_dict lets a checkpoint resume mid-epoch."""
        from litdata import StreamingDataLoader

        # Shuffled from the run's seed: a resumed run rebuilds the same epoch orders.
        dataset = split.streaming(shuffle=True, drop_last=True, seed=torch.initial_seed() % 2**31)
        dataset.reseed(torch.initial_seed() + process_rank())
        loader = StreamingDataLoader(dataset, batch_size=self.batch_size, **self._loader_options())
        if self._stream_state is not None:
            loader.load_state_dict(self._stream_state)
            self._stream_state = None
        self._stream = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """With prepared data, where the training stream stands, saved in every checkpoint.

        Lightning saves a stateful loader's state itself, but restores it only into a loader built
        after the checkpoint was read; the scheduler's step count builds it earlier. The DataModule's
        state is read first, so the loader starts where the checkpoint left the epoch.
        """
        if self._stream is None:
            return {}
        return {"prepared_train_stream": self._stream.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stream_state = state_dict.get("prepared_train_stream")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """augment_on=device: the parameters the workers drew stay on the host (the warps index
        with them there), so the transfer moves pixels only and reading them costs no sync."""
        if isinstance(batch, dict) and "augment" in batch:
            batch = dict(batch)
            self._augment_params = batch.pop("augment")
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Masks become int64 (the loss's index type) once on the device: they travel as uint8.
        With augment_on=device, also warp (scale, crop, flip) and colour each training window where
        it now lives (the accelerator), as the workers drew it."""
        if isinstance(batch, dict) and isinstance(batch.get("mask"), torch.Tensor):
            batch = {**batch, "mask": batch["mask"].long()}
        params = batch.pop("augment", None) if isinstance(batch, dict) else None
        params, self._augment_params = params or self._augment_params, None
        if self.device_augment is None or params is None:
            return batch
        sizes, drawn = params_from_batch(params)
        image, mask = self.device_augment.apply(batch["image"], batch["mask"], sizes, drawn)
        crops = torch.tensor([self.crop_size] * len(image), dtype=torch.int64, device=image.device)
        return {**batch, "image": image, "mask": mask, "size": crops}

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.dataset("val"), self.val_batch_size)

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.dataset("test"), self.val_batch_size)

    def predict_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.dataset("test"), self.val_batch_size)

    def dataset(self, stage: str) -> Dataset[dict[str, Any]]:
        """The dataset of stage 'train', 'val' or 'test', built (and its files checked) on first use."""
        if stage not in self.datasets:
            self.datasets[stage] = self._dataset(stage)
        return self.datasets[stage]

    def _loader(
        self,
        dataset: Dataset[dict[str, Any]],
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> DataLoader[dict[str, Any]]:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            **self._loader_options(),
        )

    def _loader_options(self) -> dict[str, Any]:
        """What every loader shares: workers seeded per rank, collate, pinned memory on CUDA."""
        workers = self.num_workers
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return {
            "num_workers": workers,
            "collate_fn": collate,
            "pin_memory": pin,
            "persistent_workers": self.persistent_workers and workers > 0,
            "worker_init_fn": seed_worker,
            "prefetch_factor": 2 if workers > 0 else None,
        }

    # --- loss weights ---------------------------------------------------------------------

    def class_weight_tensor(self) -> torch.Tensor | None:
        """Cross-entropy class weights (float32 [C]), or None for data.class_weights=none."""
        if self.class_weights == "none":
            return None
        if self._weights is None:
            if self.class_weights == "published":
                self._weights = torch.tensor(self.published_weights(), dtype=torch.float32)
            elif self.prepared:  # counted when the data was prepared: no PNG tree needed
                counts = np.asarray(self.prepared_entry("train").pixel_counts, dtype=np.float64)
                self._weights = torch.from_numpy(weights_from_counts(counts)).float()
            else:
                samples = self.samples("train")
                weights = computed_class_weights(
                    self.info, samples, self.label_luts, num_workers=self.num_workers
                )
                self._weights = torch.from_numpy(weights).float()
        return self._weights.clone()

    def published_weights(self) -> Sequence[float]:
        raise ValueError(
            f"{self.info.name} has no published class weights; use data.class_weights=computed"
        )


def _list_path(root: Path, list_file: str) -> Path:
    """A list file: absolute, or relative to the dataset root (where official ones live) or the cwd."""
    path = Path(list_file).expanduser()
    if path.is_absolute():
        return path
    for candidate in (root / path, Path.cwd() / path):
        if candidate.is_file():
            return candidate
    return root / path


def _check_pair(name: str, values: Sequence[float], positive: bool) -> None:
    if len(values) != 2 or (positive and min(values) <= 0):
        raise ValueError(f"data.{name} must be two positive numbers, got {list(values)}")


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes (fine): leftImg8bit + gtFine, or the official list files; 19 classes.

    The root falls back to the CITYSCAPES_DATASET environment variable (cityscapesscripts' own).
    labelIds are mapped to trainIds on the fly; *_gtFine_labelTrainIds.png are used when present.
    """

    info = CITYSCAPES
    label_luts: ClassVar[dict[str, np.ndarray]] = {
        CITYSCAPES_LABEL_IDS: cityscapes_label_lut_strict(),
        CITYSCAPES_TRAIN_IDS: cityscapes_train_id_lut(),
    }

    def resolve_root(self) -> Path:
        root = self.root or os.environ.get("CITYSCAPES_DATASET")
        if not root:
            raise DataError(
                "no Cityscapes root: set data.root=PATH or the CITYSCAPES_DATASET environment "
                "variable to the folder holding leftImg8bit/ and gtFine/"
            )
        return Path(root).expanduser()

    def scan_split(self, root: Path, split: str) -> SplitScan:
        return scan_cityscapes(root, split)

    def scan_list(self, root: Path, list_file: Path, split: str) -> SplitScan:
        return read_list_file(
            root,
            list_file,
            split,
            sample_id=cityscapes_sample_id,
            label_format=cityscapes_label_format,
        )

    def published_weights(self) -> Sequence[float]:
        return CITYSCAPES_PUBLISHED_WEIGHTS


class CamVidDataModule(SegmentationDataModule):
    """CamVid in the SegNet tutorial layout (train/, trainannot/, ...) or list files; 11 classes."""

    info = CAMVID
    label_luts: ClassVar[dict[str, np.ndarray]] = {CAMVID_IDS: camvid_label_lut()}

    def scan_split(self, root: Path, split: str) -> SplitScan:
        return scan_camvid(root, split)

    def scan_list(self, root: Path, list_file: Path, split: str) -> SplitScan:
        return read_list_file(
            root,
            list_file,
            split,
            sample_id=lambda p: p.stem,
            label_format=lambda p: CAMVID_IDS,
        )
