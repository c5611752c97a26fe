"""The bundled street scenes: deterministic, complete layouts, atomic one-time generation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import cgnet.data.synthetic as synthetic
from cgnet.data import (
    CamVidDataModule,
    CityscapesDataModule,
    DataError,
    SyntheticCamVidDataModule,
    SyntheticCityscapesDataModule,
    generate_camvid,
    generate_cityscapes,
)
from cgnet.data.labels import cityscapes_label_lut
from cgnet.data.scene import render_street_scene

SCENE_IDS = {0, 1, 7, 8, 11, 17, 20, 21, 23, 24, 26}
TINY = {"num_train": 3, "num_val": 2, "num_test": 1, "image_size": (32, 64)}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_scene_content() -> None:
    for seed in range(10):
        scene = render_street_scene(np.random.default_rng(seed), 48, 96)
        assert scene.image.shape == (48, 96, 3) and scene.image.dtype == np.uint8
        assert set(np.unique(scene.label_ids)) <= SCENE_IDS
        things = scene.instance_ids >= 1000
        assert np.array_equal(scene.instance_ids[things] // 1000, scene.label_ids[things])
        assert set(np.unique(scene.label_ids[things])) <= {24, 26}
        assert (scene.label_ids[0] == 0).all()  # an unlabeled border to exercise ignore
    with pytest.raises(ValueError, match="at least 16x16"):
        render_street_scene(np.random.default_rng(0), 8, 8)


def test_colour_alone_does_not_solve_it() -> None:
    """A per-colour lookup table fitted on some scenes labels far fewer than 60% of others' pixels."""
    lut = cityscapes_label_lut()

    def pixels(seeds: range) -> tuple[np.ndarray, np.ndarray]:
        scenes = [render_street_scene(np.random.default_rng(s), 64, 128) for s in seeds]
        colour = np.concatenate(
            [(s.image.reshape(-1, 3) // 16).astype(np.int64) @ [256, 16, 1] for s in scenes]
        )
        label = np.concatenate([lut[s.label_ids].ravel() for s in scenes])
        keep = label < 255
        return colour[keep], label[keep]

    colour, label = pixels(range(30))
    table = np.zeros((4096, 19), np.int64)
    np.add.at(table, (colour, label), 1)
    colour, label = pixels(range(100, 110))
    accuracy = (table.argmax(1)[colour] == label).mean()
    assert accuracy < 0.6


def test_deterministic(tmp_path: Path) -> None:
    a = generate_cityscapes(tmp_path / "a", **TINY, seed=3)
    b = generate_cityscapes(tmp_path / "b", **TINY, seed=3)
    c = generate_cityscapes(tmp_path / "c", **TINY, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_cityscapes_layout_files(tmp_path: Path) -> None:
    root = generate_cityscapes(tmp_path / "cs", **TINY)
    names = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    stem = "synthtown_000000_000000"
    assert f"leftImg8bit/train/synthtown/{stem}_leftImg8bit.png" in names
    for kind in ("labelIds", "color", "instanceIds"):
        assert f"gtFine/train/synthtown/{stem}_gtFine_{kind}.png" in names
    assert "leftImg8bit/train/synthville/synthville_000000_000001_leftImg8bit.png" in names
    assert "leftImg8bit/val/synthburg/synthburg_000000_000001_leftImg8bit.png" in names
    assert "leftImg8bit/test/synthdorf/synthdorf_000000_000000_leftImg8bit.png" in names


def test_camvid_layout_files(tmp_path: Path) -> None:
    root = generate_camvid(tmp_path / "cv", **TINY)
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        assert (
            len(list((root / split).glob("*.png")))
            == len(list((root / f"{split}annot").glob("*.png")))
            == count
        )


def test_generated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = generate_camvid(tmp_path / "cv", **TINY)

    def fail(*args: object) -> None:
        raise AssertionError("generated again")

    monkeypatch.setattr(synthetic, "scene_for", fail)
    assert generate_camvid(tmp_path / "cv", **TINY) == root


def test_interrupted_generation_leaves_nothing_that_looks_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = synthetic.scene_for, []

    def dies_on_the_fourth(*args: object) -> object:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "scene_for", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        generate_cityscapes(tmp_path / "cs", **TINY)
    assert list(tmp_path.iterdir()) == []  # neither the root nor the temp folder
    monkeypatch.setattr(synthetic, "scene_for", real)
    root = generate_cityscapes(tmp_path / "cs", **TINY)
    assert len(list(root.rglob("*_leftImg8bit.png"))) == 6


def test_refuses_foreign_or_different_data(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(DataError, match=r"exists but is not a complete synthetic dataset"):
        generate_cityscapes(tmp_path / "mine", **TINY)
    generate_cityscapes(tmp_path / "cs", **TINY)
    with pytest.raises(DataError, match=r"generated with other settings"):
        generate_cityscapes(tmp_path / "cs", **{**TINY, "num_train": 4})


def test_default_root_is_a_cache_folder_per_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CGNET_CACHE_DIR", str(tmp_path))
    a = SyntheticCityscapesDataModule(**TINY, seed=0).resolve_root()
    b = SyntheticCityscapesDataModule(**TINY, seed=1).resolve_root()
    c = SyntheticCamVidDataModule(**TINY, seed=0).resolve_root()
    assert a.parent == b.parent == c.parent == tmp_path
    assert a.name.startswith("synthetic-cityscapes-") and c.name.startswith("synthetic-camvid-")
    assert len({a, b, c}) == 3


def test_synthetic_modules_use_the_real_code_path(tmp_path: Path) -> None:
    dm = SyntheticCityscapesDataModule(
        root=str(tmp_path / "cs"), **TINY, batch_size=2, num_workers=0, crop_size=[32, 32]
    )
    assert isinstance(dm, CityscapesDataModule)
    assert type(dm).scan_split is CityscapesDataModule.scan_split
    assert type(dm).dataset is CityscapesDataModule.dataset
    dm.prepare_data()  # generates, then counts the class weights (computed by default)
    assert (tmp_path / "cs" / synthetic.MARKER).is_file()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= set(range(19)) | {255}  # trainIds, ignore 255

    camvid = SyntheticCamVidDataModule(
        root=str(tmp_path / "cv"), **TINY, num_workers=0, batch_size=2
    )
    assert isinstance(camvid, CamVidDataModule)
    camvid.setup("fit")  # without prepare_data: generates on first use (notebooks, scripts)
    assert len(camvid.dataset("train")) == 3


def test_coarse_labels_leave_boundaries_unlabeled_and_agree_inside() -> None:
    scene = render_street_scene(np.random.default_rng(5), 96, 192)
    coarse = synthetic.coarsen(scene.label_ids, margin=2)
    labelled = coarse != 0
    assert np.array_equal(coarse[labelled], scene.label_ids[labelled])  # never a wrong id
    assert 0.5 < labelled.mean() < (scene.label_ids != 0).mean()  # large areas kept, bands dropped
    edges = np.diff(scene.label_ids.astype(np.int16), axis=1) != 0  # pixels left of a boundary
    assert (coarse[:, :-1][edges] == 0).all() and (coarse[:, 1:][edges] == 0).all()


def test_train_extra_with_gt_coarse_trains_through_the_real_loader(tmp_path: Path) -> None:
    dm = SyntheticCityscapesDataModule(
        root=str(tmp_path / "cs"),
        **TINY,
        num_train_extra=2,
        train_split="train+train_extra",
        batch_size=5,
        num_workers=0,
        crop_size=[32, 32],
        class_weights="none",
    )
    dm.setup("fit")
    stem = "synthstadt_000000_000000"
    assert (
        tmp_path / "cs" / f"gtCoarse/train_extra/synthstadt/{stem}_gtCoarse_labelIds.png"
    ).is_file()
    assert not (tmp_path / "cs" / "gtFine" / "train_extra").exists()
    train = dm.dataset("train")
    assert len(train) == 3 + 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (5, 3, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= set(range(19)) | {255}


def test_train_extra_is_cityscapes_only_and_keeps_old_cache_names() -> None:
    with pytest.raises(ValueError, match="num_train_extra=2: only the Cityscapes layout"):
        synthetic.make_settings("camvid", 3, 2, 1, (32, 64), 0, num_train_extra=2)
    plain = synthetic.make_settings("cityscapes", 3, 2, 1, (32, 64), 0)
    assert "num_train_extra" not in plain.as_json()  # the make-train cache is not regenerated
    extra = synthetic.make_settings("cityscapes", 3, 2, 1, (32, 64), 0, num_train_extra=2)
    assert extra.digest() != plain.digest()
