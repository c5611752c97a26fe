"""DataModules over the bundled synthetic scenes: the real Cityscapes/CamVid modules plus generation.

They subclass the real modules and only add where the files come from (generated once into a cache
folder in prepare_data); finding, decoding, augmenting and batching is the real datasets' code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cgnet.data.datamodule import CamVidDataModule, CityscapesDataModule
from cgnet.data.layout import Sample
from cgnet.data.synthetic import Layout, SyntheticSettings, default_root, generate, make_settings

# Where the synthetic modules differ from the real datasets' defaults: sized to train in minutes on a CPU.
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "val_batch_size": 10,
    "num_workers": 2,
    "crop_size": (256, 256),
    "scale_range": (0.75, 1.5),
    "class_weights": "computed",
}


class _Synthetic:
    """Mixin: the generator settings, root = data.root or the cache folder named after them.

    Every other keyword is the real DataModule's (config validation follows ``**kwargs`` to it).
    """

    layout: Layout
    root: str | None
    prepared: str | None
    settings: SyntheticSettings

    def __init__(
        self,
        *,
        num_train: int = 300,
        num_val: int = 50,
        num_test: int = 10,
        image_size: Sequence[int] = (256, 512),
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**{**SYNTHETIC_DEFAULTS, **kwargs})  # type: ignore[call-arg]
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

    def prepare_data(self) -> None:
        if not self.prepared:  # prepared data was generated (and decoded) when it was prepared
            self.generate()
        super().prepare_data()  # type: ignore[misc]


class SyntheticCityscapesDataModule(_Synthetic, CityscapesDataModule):
    """Generated street scenes in the Cityscapes layout, loaded by CityscapesDataModule's code.

    ``num_train_extra`` > 0 adds a train_extra split with gtCoarse labels, as the real dataset has.
    """

    layout: Layout = "cityscapes"

    def __init__(self, *, num_train_extra: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = replace(self.settings, num_train_extra=int(num_train_extra))


class SyntheticCamVidDataModule(_Synthetic, CamVidDataModule):
    """Generated street scenes in the CamVid SegNet layout, loaded by CamVidDataModule's code."""

    layout: Layout = "camvid"
