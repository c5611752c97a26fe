"""`cgnet.eval` and `cgnet.predict` against cityscapesscripts' own evaluation, on generated trees."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from cgnet.config import ConfigError
from cgnet.data import generate_camvid
from cgnet.data.labels import CAMVID, CITYSCAPES, cityscapes_label_lut
from cgnet.eval import run as run_eval
from cgnet.predict import run as run_predict
from cgnet.train import run as run_train
from helpers import compose_config, run_cli, tiny_data_overrides, tiny_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A few steps of training on a generated Cityscapes tree: (data root, checkpoint)."""
    base = tmp_path_factory.mktemp("trained")
    root = base / "cityscapes"
    run_dir = base / "run"
    overrides = [*tiny_overrides(root, base), "trainer.max_epochs=2", "preview=false"]
    run_train(compose_config("train", overrides, run_dir))
    return root, run_dir / "checkpoints" / "last.ckpt"


def cityscapes_scripts_miou(predictions: Path, root: Path) -> dict:
    """mIoU of exported labelIds PNGs by cityscapesscripts' evalPixelLevelSemanticLabeling."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    if not hasattr(np, "in1d"):  # cityscapesscripts 2.3 calls np.in1d, gone in numpy 2.4
        np.in1d = np.isin  # type: ignore[attr-defined]
    ev.args.evalInstLevelScore = False
    ev.args.JSONOutput = False
    ev.args.quiet = True
    gt = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    preds = []
    for path in gt:
        sample_id = path.name.replace("_gtFine_labelIds.png", "")
        preds.append(str(predictions / f"{sample_id}_labelIds.png"))
    return ev.evaluateImgLists(preds, [str(p) for p in gt], ev.args)


def test_eval_equals_cityscapesscripts_on_exported_labelids(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    root, ckpt = trained
    common = [*tiny_data_overrides(root), f"ckpt_path={ckpt}", "split=val"]
    predict_cfg = compose_config(
        "predict",
        [*common, "formats=[labelids,color,overlay,trainids]", "submission=true"],
        tmp_path / "p",
    )
    summary = run_predict(predict_cfg)
    labelids = tmp_path / "p" / "predictions" / "labelids"
    assert summary["count"] == 4 and len(list(labelids.glob("*_labelIds.png"))) == 4
    for fmt in ("color", "overlay", "trainids"):
        assert len(list((tmp_path / "p" / "predictions" / fmt).glob("*.png"))) == 4
    with zipfile.ZipFile(summary["submission"]) as archive:
        assert sorted(archive.namelist()) == sorted(p.name for p in labelids.glob("*.png"))
    label = cv2.imread(str(next(labelids.glob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert label.shape == (64, 128)
    assert set(np.unique(label)) <= set(
        CITYSCAPES.train_id_to_label_id
    )  # labelIds of the 19 classes

    run_eval(compose_config("eval", common, tmp_path / "e"))
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert (tmp_path / "e" / "confusion_matrix.png").is_file()
    reference = cityscapes_scripts_miou(labelids, root)
    assert metrics["miou"] == pytest.approx(reference["averageScoreClasses"], abs=1e-6)
    assert metrics["miou_category"] == pytest.approx(reference["averageScoreCategories"], abs=1e-6)
    for name, value in metrics["iou_per_class"].items():
        theirs = reference["classScores"][name]
        if value is None:
            assert np.isnan(theirs), (
                name
            )  # absent from ground truth and prediction: out of the mean
        else:
            assert value == pytest.approx(theirs, abs=1e-6), name
    # the generated scenes hold about 10 of the 19 classes: the comparison covers absent classes
    lut = cityscapes_label_lut()
    present = set()
    for path in (root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"):
        present |= set(np.unique(lut[cv2.imread(str(path), cv2.IMREAD_UNCHANGED)]).tolist())
    assert len(present - {255}) < 19


def test_tta_and_sliding_window_run_and_stay_close(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    root, ckpt = trained
    base = [*tiny_data_overrides(root), f"ckpt_path={ckpt}"]
    plain = run_eval(compose_config("eval", base, tmp_path / "a"))
    tta = run_eval(
        compose_config(
            "eval",
            [*base, "tta.scales=[0.5,0.75,1.0,1.25,1.5,1.75]", "tta.flip=true"],
            tmp_path / "b",
        )
    )
    window = run_eval(
        compose_config("eval", [*base, "tta.window=[64,64]", "tta.stride=[32,32]"], tmp_path / "c")
    )
    for doc in (plain, tta, window):
        assert 0 <= doc["miou"] <= 1
    assert tta["settings"]["tta"]["flip"] is True


def test_predict_on_an_image_folder_never_overwrites_inputs(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    root, ckpt = trained
    images = root / "leftImg8bit" / "test"
    before = {p: p.read_bytes() for p in images.rglob("*.png")}
    out = tmp_path / "out"
    cfg = compose_config(
        "predict",
        [*tiny_data_overrides(root), f"ckpt_path={ckpt}", f"input={images}", f"output_dir={out}"],
        tmp_path / "p",
    )
    run_predict(cfg)
    colours = sorted((out / "color").glob("*_color.png"))
    assert len(colours) == len(before) and all("_leftImg8bit" not in p.name for p in colours)
    assert {p: p.read_bytes() for p in images.rglob("*.png")} == before


def image_folder(root: Path, folder: Path) -> Path:
    """Five test images, one of them smaller: batches of equal sizes break around it."""
    folder.mkdir()
    sources = sorted((root / "leftImg8bit" / "test").rglob("*.png"))
    for index in range(5):
        image = cv2.imread(str(sources[index % len(sources)]), cv2.IMREAD_COLOR)
        if index == 3:
            image = cv2.resize(image, (96, 48), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"frame{index}.png"), image)
    return folder


def test_predict_batches_and_workers_change_no_output(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    root, ckpt = trained
    images = image_folder(root, tmp_path / "images")
    outputs = {}
    for name, loader in (
        ("serial", ["batch_size=1", "workers=0"]),
        ("batched", ["batch_size=2", "workers=2"]),
    ):
        out = tmp_path / name
        overrides = [
            *tiny_data_overrides(root),
            f"ckpt_path={ckpt}",
            f"input={images}",
            f"output_dir={out}",
        ]
        cfg = compose_config(
            "predict",
            [*overrides, *loader, "formats=[trainids,color,overlay]", "submission=true"],
            tmp_path / f"p-{name}",
        )
        summary = run_predict(cfg)
        assert summary["count"] == 5
        with zipfile.ZipFile(summary["submission"]) as archive:
            assert archive.namelist() == [f"frame{i}_labelIds.png" for i in range(5)]  # input order
        outputs[name] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
    assert len(outputs["serial"]) == 5 * 4
    assert outputs["batched"] == outputs["serial"]
    small = cv2.imread(
        str(tmp_path / "batched" / "trainids" / "frame3_trainIds.png"), cv2.IMREAD_UNCHANGED
    )
    assert small.shape == (48, 96)


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_names_an_unreadable_input(
    trained: tuple[Path, Path], tmp_path: Path, workers: int
) -> None:
    root, ckpt = trained
    images = image_folder(root, tmp_path / "images")
    (images / "frame2.png").write_bytes(b"not a png")
    overrides = [
        *tiny_data_overrides(root),
        f"ckpt_path={ckpt}",
        f"input={images}",
        f"workers={workers}",
    ]
    with pytest.raises(ConfigError, match=r"^input: cannot read image .*frame2\.png \(unreadable"):
        run_predict(compose_config("predict", overrides, tmp_path / "p"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=0", "batch_size: expected null or an integer >= 1, got 0"),
        ("workers=-1", "workers: expected null or an integer >= 0, got -1"),
    ],
)
def test_predict_loader_settings_are_checked(tmp_path: Path, override: str, message: str) -> None:
    from cgnet.predict import validate

    cfg = compose_config("predict", ["ckpt_path=x.ckpt", override], tmp_path / "p")
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_eval_refuses_a_checkpoint_for_other_classes(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, ckpt = trained
    camvid = generate_camvid(tmp_path / "camvid", 2, 2, 2, image_size=(48, 64))
    overrides = ["data=camvid", f"data.root={camvid}", "data.num_workers=0", f"ckpt_path={ckpt}"]
    with pytest.raises(ConfigError, match="trained for 19 classes but the data has 11"):
        run_eval(compose_config("eval", overrides, tmp_path / "e"))


def test_released_camvid_weights_evaluate_end_to_end(reference_dir: Path, tmp_path: Path) -> None:
    camvid = generate_camvid(tmp_path / "camvid", 2, 2, 2, image_size=(96, 128))
    args = [
        "data=camvid",
        f"data.root={camvid}",
        "data.num_workers=0",
        "split=test",
        f"ckpt_path={reference_dir / 'cgnet_official_camvid_m3n21.pth'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run_cli("cgnet.eval", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded official weights" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["iou_per_class"]) == set(CAMVID.class_names)
    assert metrics["miou_category"] is None and 0 <= metrics["miou"] <= 1
