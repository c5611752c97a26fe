"""The DataModule contract the rest of the project relies on: batches, loaders, signatures."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import cgnet
from cgnet.config import signature_parameters
from cgnet.data import (
    CAMVID,
    CITYSCAPES,
    CamVidDataModule,
    CityscapesDataModule,
    SegmentationDataModule,
    SyntheticCamVidDataModule,
    SyntheticCityscapesDataModule,
)

CONF = Path(cgnet.__file__).resolve().parents[2] / "conf" / "data"
SHARED_KEYS = [
    "root", "batch_size", "val_batch_size", "num_workers", "crop_size", "scale_range", "scale_step",
    "flip", "photometric", "cat_max_ratio", "class_weights", "mean", "std", "train_split",
    "val_split", "test_split", "pin_memory", "persistent_workers", "augment_on",
]  # fmt: skip
SYNTHETIC_KEYS = ["num_train", "num_val", "num_test", "image_size", "seed"]


def _check_batch(
    batch: dict, size: tuple[int, int], count: int, id_pattern: str, whole: bool = True
) -> None:
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (count, 3, *size)
    assert batch["mask"].dtype == torch.uint8 and batch["mask"].shape == (count, *size)
    assert isinstance(batch["id"], list) and len(batch["id"]) == count
    assert all(re.fullmatch(id_pattern, i) for i in batch["id"])
    assert batch["size"].tolist() == [list(size)] * count
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(19)) | {255}
    if whole:  # every generated scene has unlabeled border or ego-vehicle pixels; a crop may not
        assert 255 in values


@pytest.mark.parametrize("module", [CityscapesDataModule, CamVidDataModule])
def test_batches(
    module: type[SegmentationDataModule], cityscapes_tree: Path, camvid_tree: Path
) -> None:
    root, pattern = (
        (cityscapes_tree, r"synth\w+_000000_\d{6}")
        if module is CityscapesDataModule
        else (camvid_tree, r"synth\d_\d{6}")
    )
    dm = module(root=str(root), batch_size=4, val_batch_size=2, num_workers=0, crop_size=[48, 40])
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    batches = list(train)
    assert len(batches) == 1  # 6 images, batch 4, drop_last
    _check_batch(batches[0], (48, 40), 4, pattern, whole=False)
    val = list(dm.val_dataloader())
    assert [len(b["id"]) for b in val] == [2, 1]
    _check_batch(val[0], (64, 128), 2, pattern)  # whole images at full resolution
    dm.setup("test")
    _check_batch(next(iter(dm.test_dataloader())), (64, 128), 2, pattern)
    _check_batch(next(iter(dm.predict_dataloader())), (64, 128), 2, pattern)
    assert [s.id for s in dm.predict_dataloader().dataset.samples] == [
        s.id for s in dm.dataset("test").samples
    ]


def test_loader_settings(camvid_tree: Path) -> None:
    dm = CamVidDataModule(root=str(camvid_tree), batch_size=2, num_workers=0, crop_size=[48, 48])
    loader = dm.train_dataloader()
    assert (
        loader.drop_last and not loader.persistent_workers and not loader.pin_memory
    )  # no CUDA here
    assert loader.worker_init_fn is not None
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)
    val = dm.val_dataloader()
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler) and not val.drop_last
    dm = CamVidDataModule(root=str(camvid_tree), batch_size=2, num_workers=1, pin_memory=True)
    assert dm.train_dataloader().persistent_workers and dm.train_dataloader().pin_memory


def test_properties() -> None:
    cs, cv = (
        CityscapesDataModule(root="x"),
        CamVidDataModule(root="x", mean=[1, 2, 3], std=[4, 5, 6]),
    )
    assert (
        cs.info is CITYSCAPES and cs.num_classes == 19 and cs.class_names == CITYSCAPES.class_names
    )
    assert cv.info is CAMVID and cv.num_classes == 11 and cv.ignore_index == cs.ignore_index == 255
    assert cs.mean == (72.39, 82.91, 73.16) and cs.std == (1.0, 1.0, 1.0)
    assert cv.mean == (1.0, 2.0, 3.0) and cv.std == (4.0, 5.0, 6.0)


def test_too_few_training_images_for_a_batch(camvid_tree: Path) -> None:
    with pytest.raises(cgnet.data.DataError, match=r"fewer than data\.batch_size=64"):
        CamVidDataModule(
            root=str(camvid_tree), batch_size=64, num_workers=0, crop_size=[48, 48]
        ).train_dataloader()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        CamVidDataModule(root="x", crop_size=[0, 10])
    with pytest.raises(ValueError, match="scale_range"):
        CamVidDataModule(root="x", scale_range=[2.0, 0.5])
    with pytest.raises(ValueError, match="class_weights"):
        CamVidDataModule(root="x", class_weights="inverse")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "module",
    [
        CityscapesDataModule,
        CamVidDataModule,
        SyntheticCityscapesDataModule,
        SyntheticCamVidDataModule,
    ],
)
def test_every_keyword_has_a_precise_type_hint(module: type) -> None:
    """The project validates Hydra data configs against these signatures (the synthetic modules'
    **kwargs are followed to the real modules they extend)."""
    params, hints, open_kwargs = signature_parameters(module)
    expected = SHARED_KEYS + (SYNTHETIC_KEYS if module.__name__.startswith("Synthetic") else [])
    assert set(expected) <= set(params) and not open_kwargs
    for name in params:
        assert name in hints and hints[name] is not typing.Any, name


@pytest.mark.parametrize("name", ["synthetic", "synthetic_camvid", "cityscapes", "camvid"])
def test_configs_carry_the_shared_keys_and_build(name: str, tmp_path: Path) -> None:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    keys = [k for k in cfg if k != "_target_"]
    assert set(SHARED_KEYS) <= set(keys)
    target = cfg._target_.rsplit(".", 1)[1]
    module = getattr(cgnet.data, target)
    params = set(signature_parameters(module)[0])
    assert set(keys) == params, set(keys) ^ params
    values = OmegaConf.to_container(cfg, resolve=False)
    values.pop("_target_")
    values["root"] = str(tmp_path)
    dm = module(**values)
    assert dm.crop_size == tuple(cfg.crop_size)


def test_cityscapes_config_defaults_follow_the_official_recipe() -> None:
    cfg = OmegaConf.load(CONF / "cityscapes.yaml")
    assert list(cfg.crop_size) == [680, 680] and cfg.batch_size == 8
    assert list(cfg.scale_range) == [0.5, 2.0] and cfg.flip and cfg.class_weights == "published"
    camvid = OmegaConf.load(CONF / "camvid.yaml")
    assert list(camvid.crop_size) == [360, 360] and camvid.class_weights == "computed"


def test_list_files_replace_the_folder_scan(camvid_copy: Path) -> None:
    chosen = sorted((camvid_copy / "val").glob("*.png"))[:2]
    (camvid_copy / "camvid_val_list.txt").write_text(
        "".join(f"val/{p.name} valannot/{p.name}\n" for p in chosen)
    )
    dm = CamVidDataModule(root=str(camvid_copy), val_list="camvid_val_list.txt", num_workers=0)
    assert [s.id for s in dm.dataset("val").samples] == [p.stem for p in chosen]
    dm = CamVidDataModule(root=str(camvid_copy), val_list="missing.txt", num_workers=0)
    with pytest.raises(cgnet.data.DataError, match=r"list file .*missing\.txt does not exist"):
        dm.dataset("val")
