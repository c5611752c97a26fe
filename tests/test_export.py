"""Exported files run at any size, give PyTorch's logits (ONNX through onnxruntime) and describe
themselves: a pipeline that follows only a file's metadata gets the model's predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from cgnet.config import ConfigError
from cgnet.deploy import (
    METADATA_FILE,
    check_export,
    deployable,
    example_input,
    export_onnx,
    export_torchscript,
    read_metadata,
    run_exported,
)
from cgnet.errors import CheckpointError
from cgnet.export import default_output, export, summary
from cgnet.models import CGNet
from cgnet.module import SegmentationModule
from cgnet.normalization import OFFICIAL_MEAN, OFFICIAL_STD, NormalizedNetwork

pytestmark = pytest.mark.usefixtures("one_torch_thread")


pytest.importorskip("onnxruntime")


def small_net() -> CGNet:
    """A small random net scaled for raw-RGB-sized inputs (about +-100), as trained weights are."""
    net = CGNet(5, M=2, N=3).eval()
    net.stem[0].conv.weight.data /= 50
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def compose_export(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="cgnet.conf", version_base="1.3"):
        return compose(config_name="export", overrides=list(overrides))


CLASS_NAMES = ["road", "car", "tree", "sky", "person"]
# not the official statistics, so a pipeline that ignores the metadata gets other logits
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)


@pytest.fixture(scope="module")
def project_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SegmentationModule]:
    """A checkpoint as training writes it (hyper-parameters with class names, settings, mean/std)
    and the module it holds, whose forward normalises uint8 RGB as in training."""
    torch.manual_seed(0)  # module scope: set up before the per-test seed
    module = SegmentationModule(
        5, class_names=CLASS_NAMES, model={"M": 2, "N": 3}, ignore_index=250, mean=MEAN, std=STD
    ).eval()
    for m in module.net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path, module


def export_project(ckpt: Path, output: Path, *overrides: str) -> dict:
    return export(
        compose_export(
            f"ckpt_path={ckpt}", f"output={output}", "check_sizes=[[96,128]]", *overrides
        )
    )


def user_pipeline(path: Path, image: np.ndarray) -> np.ndarray:
    """What a user writes with only onnxruntime, numpy and the file's own metadata."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    batch = image.transpose(2, 0, 1)[None]  # HWC uint8 RGB -> [1, 3, H, W]
    if meta["normalization_included"] != "true":
        mean = np.array(json.loads(meta["mean"]), dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.array(json.loads(meta["std"]), dtype=np.float32).reshape(1, 3, 1, 1)
        batch = (batch.astype(np.float32) - mean) / std
    logits = session.run(None, {session.get_inputs()[0].name: batch})[0]
    assert logits.shape[1] == int(meta["num_classes"])
    return logits.argmax(1)[0]


@pytest.mark.parametrize("include_normalization", [False, True])
def test_onnx_metadata_alone_reproduces_the_trained_model(
    project_ckpt: tuple[Path, SegmentationModule], tmp_path: Path, include_normalization: bool
) -> None:
    import onnx
    import onnxruntime as ort

    ckpt, module = project_ckpt
    output = tmp_path / "m.onnx"
    result = export_project(ckpt, output, f"include_normalization={include_normalization}")
    meta = result["metadata"]

    proto = onnx.load(str(output))
    assert {p.key: p.value for p in proto.metadata_props} == meta
    assert (
        ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
        == meta
    )
    assert json.loads(meta["class_names"]) == CLASS_NAMES
    assert (meta["num_classes"], meta["ignore_index"], meta["source"]) == ("5", "250", "best.ckpt")
    assert json.loads(meta["mean"]) == list(MEAN) and json.loads(meta["std"]) == list(STD)
    settings = json.loads(meta["model"])
    assert (settings["M"], settings["N"], settings["use_f_glo"]) == (2, 3, True)
    assert meta["producer"].startswith("cgnet ")
    assert meta["normalization_included"] == json.dumps(include_normalization)
    assert meta["input_format"].startswith("uint8 RGB" if include_normalization else "float32 RGB")
    assert "5 classes" in proto.doc_string

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(proto.graph.output[0]) == ["batch", "classes", "height", "width"]

    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = module(torch.from_numpy(image).permute(2, 0, 1)[None]).argmax(1)[0]
    assert np.array_equal(user_pipeline(output, image), expected.numpy())

    lines = summary(result)
    assert str(output) in lines[0] and "road, car, tree, sky, person" in lines[-1]
    assert any(meta["mean"] in line for line in lines)


def test_torchscript_carries_the_same_metadata(
    project_ckpt: tuple[Path, SegmentationModule], tmp_path: Path
) -> None:
    ckpt, _ = project_ckpt
    output = tmp_path / "m.torchscript.pt"
    result = export_project(ckpt, output, "format=torchscript", "include_normalization=true")
    extra = {METADATA_FILE: ""}
    torch.jit.load(str(output), _extra_files=extra)
    assert (
        json.loads(extra[METADATA_FILE])
        == result["metadata"]
        == read_metadata(output, "torchscript")
    )
    assert json.loads(result["metadata"]["class_names"]) == CLASS_NAMES


@pytest.mark.parametrize("uint8", [False, True])
def test_onnx_runs_at_other_sizes_and_matches_pytorch(tmp_path: Path, uint8: bool) -> None:
    net = small_net()
    reference = NormalizedNetwork(net, OFFICIAL_MEAN, OFFICIAL_STD).eval() if uint8 else net
    path = export_onnx(
        deployable(net, include_normalization=uint8), tmp_path / "m.onnx", uint8=uint8
    )
    # exported at 64x96 batch 1; run at batch 2 and two other sizes, one of them odd
    rows = check_export(path, "onnx", reference, [(48, 80), (37, 53)], uint8=uint8)
    for row in rows:
        assert row["max_abs_diff"] <= 1e-4
        assert row["argmax_agreement"] == 1.0
    out = run_exported(path, "onnx", example_input((37, 53), uint8=uint8, batch=3))
    assert out.shape == (3, 5, 37, 53)


def test_torchscript_runs_at_other_sizes(tmp_path: Path) -> None:
    net = small_net()
    path = export_torchscript(deployable(net), tmp_path / "m.pt")
    rows = check_export(path, "torchscript", net, [(40, 72), (33, 45)])
    assert all(row["max_abs_diff"] <= 1e-4 for row in rows)


def test_export_command_with_the_authors_weights(reference_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "camvid.onnx"
    cfg = compose_export(
        f"ckpt_path={reference_dir / 'cgnet_official_camvid_m3n21.pth'}",
        "num_classes=11",
        f"output={output}",
        "check_sizes=[[96,128],[101,157]]",
    )
    result = export(cfg)
    assert output.is_file() and result["num_classes"] == 11
    assert [row["size"] for row in result["check"]] == [[96, 128], [101, 157]]
    assert all(row["max_abs_diff"] <= 1e-4 for row in result["check"])
    # bare weights: generic class names, the settings the net was built with, no ignore index
    meta = read_metadata(output, "onnx")
    assert json.loads(meta["class_names"]) == [f"class_{k}" for k in range(11)]
    assert meta["source"] == "cgnet_official_camvid_m3n21.pth" and "ignore_index" not in meta
    assert (json.loads(meta["model"])["M"], json.loads(meta["model"])["N"]) == (3, 21)
    assert json.loads(meta["mean"]) == list(OFFICIAL_MEAN)
    # the authors' own logits (reference artefact) from the exported file
    cases = torch.load(reference_dir / "official_camvid_logits.pt")
    for case in cases.values():
        got = run_exported(output, "onnx", case["input"])
        assert (got - case["logits"]).abs().max() <= 1e-4


def test_export_command_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ckpt_path"):
        export(compose_export())
    with pytest.raises(ConfigError, match="format"):
        export(compose_export(f"ckpt_path={tmp_path / 'x.pth'}", "format=tflite"))
    with pytest.raises(CheckpointError, match="not found"):
        export(compose_export(f"ckpt_path={tmp_path / 'missing.pth'}", "num_classes=3"))


def test_default_output_sits_next_to_the_checkpoint() -> None:
    assert default_output("/a/b/best.ckpt", "onnx") == Path("/a/b/best.onnx")
    assert default_output("w.pth", "torchscript") == Path("w.torchscript.pt")
