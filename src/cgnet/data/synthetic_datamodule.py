"""DataModules over the bundled synthetic scenes: the real Cityscapes/CamVid modules plus generation.

They subclass the real modules and only add where the files come from (generated once into a cache
folder in prepare_data); finding, decoding, augmenting and batching is the real datasets' code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cgnet.data.datamodule import CamVidDataModule, CityscapesDataModule, ClassWeights
from cgnet.data.labels import OFFICIAL_MEAN, OFFICIAL_STD
from cgnet.data.layout import Sample
from cgnet.data.synthetic import Layout, SyntheticSettings, default_root, generate, make_settings


class _Synthetic:
    """Mixin: root = data.root or the cache folder named after the generator settings."""

    layout: Layout
    root: str | None
    settings: SyntheticSettings

    def _init_synthetic(
        self, num_train: int, num_val: int, num_test: int, image_size: Sequence[int], seed: int
    ) -> None:
        self.settings = make_settings(self.layout, num_train, num_val, num_test, image_size, seed)

    def resolve_root(self) -> Path:
        if self.root is not None:
            return Path(self.root).expanduser()
        return default_root(self.settings)

    def generate(self) -> Path:
        """Write the dataset unless a complete copy with these settings is already there."""
        return generate(self.settings, self.resolve_root())

    def samples(self, stage: str) -> list[Sample]:
        # Generation is idempotent and cheap once done, so setup() outside a Trainer (a notebook,
        # a script) works without calling prepare_data() first.
        self.generate()
        return super().samples(stage)  # type: ignore[misc]


class SyntheticCityscapesDataModule(_Synthetic, CityscapesDataModule):
    """Generated street scenes in the Cityscapes layout, loaded by CityscapesDataModule's code."""

    layout: Layout = "cityscapes"

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 10,
        num_workers: int = 2,
        crop_size: Sequence[int] = (256, 256),
        scale_range: Sequence[float] = (0.75, 1.5),
        scale_step: float = 0.0,
        flip: bool = True,
        photometric: bool = False,
        cat_max_ratio: float = 1.0,
        class_weights: ClassWeights = "computed",
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
        num_train: int = 300,
        num_val: int = 50,
        num_test: int = 10,
        image_size: Sequence[int] = (256, 512),
        seed: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            crop_size=crop_size,
            scale_range=scale_range,
            scale_step=scale_step,
            flip=flip,
            photometric=photometric,
            cat_max_ratio=cat_max_ratio,
            class_weights=class_weights,
            mean=mean,
            std=std,
            train_split=train_split,
            val_split=val_split,
            test_split=test_split,
            train_list=train_list,
            val_list=val_list,
            test_list=test_list,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        self._init_synthetic(num_train, num_val, num_test, image_size, seed)

    def prepare_data(self) -> None:
        self.generate()
        super().prepare_data()


class SyntheticCamVidDataModule(_Synthetic, CamVidDataModule):
    """Generated street scenes in the CamVid SegNet layout, loaded by CamVidDataModule's code."""

    layout: Layout = "camvid"

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 10,
        num_workers: int = 2,
        crop_size: Sequence[int] = (256, 256),
        scale_range: Sequence[float] = (0.75, 1.5),
        scale_step: float = 0.0,
        flip: bool = True,
        photometric: bool = False,
        cat_max_ratio: float = 1.0,
        class_weights: ClassWeights = "computed",
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
        num_train: int = 300,
        num_val: int = 50,
        num_test: int = 10,
        image_size: Sequence[int] = (256, 512),
        seed: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            crop_size=crop_size,
            scale_range=scale_range,
            scale_step=scale_step,
            flip=flip,
            photometric=photometric,
            cat_max_ratio=cat_max_ratio,
            class_weights=class_weights,
            mean=mean,
            std=std,
            train_split=train_split,
            val_split=val_split,
            test_split=test_split,
            train_list=train_list,
            val_list=val_list,
            test_list=test_list,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        self._init_synthetic(num_train, num_val, num_test, image_size, seed)

    def prepare_data(self) -> None:
        self.generate()
        super().prepare_data()
