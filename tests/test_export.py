"""Exported files run at any size and give PyTorch's logits (ONNX through onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from cgnet.config import ConfigError
from cgnet.export import (
    Normalize,
    check_export,
    default_output,
    deployable,
    example_input,
    export,
    export_onnx,
    export_torchscript,
    run_exported,
)
from cgnet.models import CGNet

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


@pytest.mark.parametrize("uint8", [False, True])
def test_onnx_runs_at_other_sizes_and_matches_pytorch(tmp_path: Path, uint8: bool) -> None:
    net = small_net()
    reference = Normalize(net, (72.39, 82.91, 73.16), (1.0, 1.0, 1.0)).eval() if uint8 else net
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
    with pytest.raises(ConfigError, match="not found"):
        export(compose_export(f"ckpt_path={tmp_path / 'missing.pth'}", "num_classes=3"))


def test_default_output_sits_next_to_the_checkpoint() -> None:
    assert default_output("/a/b/best.ckpt", "onnx") == Path("/a/b/best.onnx")
    assert default_output("w.pth", "torchscript") == Path("w.torchscript.pt")
