"""A checkpoint never runs code unless the user says so (``trust_checkpoint=true``).

A malicious file looks like ours or the authors' (``{"state_dict": ...}`` / ``{"model": ...}``) plus
one object whose unpickling touches a marker file. Every command that reads checkpoints is run on it
as a user would: it must exit with status 2, name the file and the opt-in, and the marker must never
appear. The reader itself is checked both ways (refused; with ``trust=True`` the marker appears, so
the test would notice code running), and every legitimate layout must load without the opt-in.
"""

from __future__ import annotations

import builtins
import json
import os
import pathlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cgnet.checkpoint import load_network, read_checkpoint
from cgnet.errors import CheckpointError, ConfigError
from cgnet.models import CGNet, export_weights, load_weights
from cgnet.train import run as run_train
from helpers import compose_config, run_cli, tiny_data_overrides, tiny_overrides

AUTHORS = "cgnet_official_camvid_m3n21.pth"


class Payload:
    """Unpickling this calls ``action(*args)``: what a hostile checkpoint would do."""

    def __init__(self, action: Callable[..., Any], *args: Any) -> None:
        self.action, self.args = action, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.action, self.args


PAYLOADS: dict[str, tuple[Callable[[Path], Payload], str]] = {
    # name: (payload touching the marker, a global the refusal must name)
    "path_touch": (lambda marker: Payload(pathlib.Path.touch, marker), "pathlib.Path"),
    "os_system": (lambda marker: Payload(os.system, f"touch '{marker}'"), "posix.system"),
    "exec": (lambda marker: Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "exec"),
}


def tiny_state() -> dict[str, torch.Tensor]:
    return CGNet(19, M=2, N=2).state_dict()


def write_malicious(
    path: Path, marker: Path, layout: str = "ours", payload: str = "path_touch"
) -> Path:
    """A checkpoint of the given layout, plus one object that runs code when unpickled."""
    state = tiny_state()
    if layout == "ours":
        blob: dict[str, Any] = {
            "state_dict": {f"net.{k}": v for k, v in state.items()},
            "hyper_parameters": {"num_classes": 19, "model": {"M": 2, "N": 2}},
        }
    else:  # the authors' {"epoch", "model"}
        blob = {"epoch": 340, "model": state}
    blob["extra"] = PAYLOADS[payload][0](marker)
    torch.save(blob, path)
    return path


def assert_refused(message: str, path: Path, opt_in: str = "trust_checkpoint=true") -> None:
    """Some line says: this file, its pickle would run code, and the opt-in that loads it."""
    lines = [line for line in message.splitlines() if str(path) in line]
    assert lines, message
    assert any("run code" in line and opt_in in line for line in lines), message


# --------------------------------------------------------------------------------------------------
# The reader.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["ours", "authors"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_reader_refuses_code_and_runs_it_only_when_trusted(
    layout: str, payload: str, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    bad = write_malicious(tmp_path / "bad.pth", marker, layout, payload)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(bad)
    message = str(err.value)
    assert "\n" not in message
    assert_refused(message, bad)
    assert PAYLOADS[payload][1] in message  # the global torch refused
    assert not marker.exists()

    read_checkpoint(bad, trust=True)
    assert marker.exists()  # the payload is real: the refusal above is what kept it from running


def test_load_network_and_load_weights_refuse_it(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    bad = write_malicious(tmp_path / "bad.ckpt", marker)
    with pytest.raises(CheckpointError) as err:
        load_network(bad, 19)
    assert_refused(str(err.value), bad)
    with pytest.raises(CheckpointError) as err:
        load_weights(CGNet(19, M=2, N=2), bad)
    assert_refused(str(err.value), bad)
    assert not marker.exists()
    assert load_network(bad, 19, trust=True).format == "lightning"
    assert marker.exists()


def test_the_opt_in_named_is_the_callers(tmp_path: Path) -> None:
    """Commands with plain arguments name their own switch."""
    bad = write_malicious(tmp_path / "bad.pth", tmp_path / "MARKER")
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        read_checkpoint(bad, opt_in="--trust-checkpoint")


def test_missing_truncated_and_foreign_files_are_checkpoint_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"model": tiny_state()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n" * 10)
    empty = tmp_path / "empty.pth"
    empty.touch()
    for path, expected in [
        (tmp_path / "missing.pth", "not found"),
        (truncated, "cannot read"),
        (text, "cannot read"),
        (empty, "cannot read"),
    ]:
        for read in (read_checkpoint, lambda p: load_network(p, 19)):
            with pytest.raises(CheckpointError) as err:
                read(path)
            message = str(err.value)
            assert "\n" not in message and str(path) in message and expected in message


def test_class_count_mismatch_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ours.ckpt"
    state = {f"net.{k}": v for k, v in tiny_state().items()}
    hparams = {"num_classes": 19, "model": {"M": 2, "N": 2}}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    with pytest.raises(ConfigError, match="trained for 19 classes but the data has 11"):
        load_network(path, 11)
    bare = tmp_path / "bare.pth"
    torch.save(tiny_state(), bare)
    with pytest.raises(ConfigError, match="bare weights"):
        load_network(bare)


# --------------------------------------------------------------------------------------------------
# Every legitimate layout loads without the opt-in.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Our own run: (data root, run folder holding checkpoints/best.ckpt and last.ckpt)."""
    base = tmp_path_factory.mktemp("trained")
    run_dir = base / "run"
    overrides = [*tiny_overrides(base / "cityscapes", base), "preview=false"]
    run_train(compose_config("train", overrides, run_dir))  # re-reads best.ckpt without trust
    return base / "cityscapes", run_dir


@pytest.mark.slow
@pytest.mark.parametrize("name", ["best.ckpt", "last.ckpt"])
def test_our_lightning_checkpoints_load_safely(trained: tuple[Path, Path], name: str) -> None:
    path = trained[1] / "checkpoints" / name
    blob = read_checkpoint(path)
    assert {"state_dict", "hyper_parameters", "optimizer_states", "callbacks", "loops"} <= set(blob)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []  # nothing allow-listed
    loaded = load_network(path, 19)
    assert loaded.format == "lightning" and loaded.net.num_classes == 19


def test_authors_checkpoint_loads_safely(reference_dir: Path) -> None:
    path = reference_dir / AUTHORS
    assert set(read_checkpoint(path)) == {"epoch", "model"}
    loaded = load_network(path, 11)
    assert loaded.format == "official" and loaded.net.num_classes == 11


def _optimizer_state(net: torch.nn.Module) -> dict[str, Any]:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net(torch.randn(1, 3, 32, 32)).mean().backward()
    optimizer.step()
    return optimizer.state_dict()


def _as_sssegmentation(mmseg_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sssegmentation's names: nn.Sequential indices in the stem and conv1x1, decoder.1 head."""
    out = {}
    for key, value in mmseg_state.items():
        key = key.replace("decode_head.conv_seg.", "decoder.1.")
        key = re.sub(r"^backbone\.", "backbone_net.", key)
        for name, index in (("conv", 0), ("bn", 1), ("activate", 2)):
            key = re.sub(rf"(stem\.\d|conv1x1)\.{name}\.", rf"\g<1>.{index}.", key)
        out[key] = value
    return out


def test_mmseg_checkpoint_with_meta_and_optimizer_loads_safely(tmp_path: Path) -> None:
    net = CGNet(19, M=2, N=2, head_bias=True)
    blob = export_weights(net, "mmseg")
    blob["meta"].update(  # what mmcv's runner writes, numpy values included
        mmseg_version="0.x",
        mmcv_version="1.x",
        config="model = dict(type='EncoderDecoder', backbone=dict(type='CGNet'))",
        env_info="sys.platform: linux",
        seed=0,
        exp_name="cgnet_512x1024_60k_cityscapes.py",
        epoch=1,
        iter=60000,
        time="Sun Nov  1 11:02:53 2020",
        CLASSES=("road", "sidewalk"),
        PALETTE=[[128, 64, 128], [244, 35, 232]],
        hook_msgs={"last_ckpt": "work_dirs/iter_60000.pth", "best_score": np.float64(0.68)},
        dataset_meta={"palette": np.array([[128, 64, 128]], dtype=np.uint8)},
    )
    blob["optimizer"] = _optimizer_state(CGNet(19, M=2, N=2, head_bias=True))
    path = tmp_path / "cgnet_mmseg.pth"
    torch.save(blob, path)
    loaded = load_network(path, 19, {"M": 2, "N": 2, "head_bias": True})
    assert loaded.format == "mmseg"
    assert read_checkpoint(path)["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.68)


def test_sssegmentation_checkpoint_with_optimizer_loads_safely(tmp_path: Path) -> None:
    net = CGNet(19, M=2, N=2, head_bias=True)
    blob = {
        "model": _as_sssegmentation(export_weights(net, "mmseg")["state_dict"]),
        "optimizer": _optimizer_state(CGNet(19, M=2, N=2, head_bias=True)),
        "cur_epoch": 340,
        "cur_iter": 63580,
        "grad_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 12},
    }
    path = tmp_path / "epoch_340.pth"
    torch.save(blob, path)
    loaded = load_network(path, 19, {"M": 2, "N": 2, "head_bias": True})
    assert loaded.format == "sssegmentation"


# --------------------------------------------------------------------------------------------------
# Every command, run as a user would.
# --------------------------------------------------------------------------------------------------


def assert_command_refuses(result: Any, bad: Path, marker: Path, opt_in: str) -> None:
    output = result.stdout + result.stderr
    assert not marker.exists(), "the checkpoint's code ran"
    assert result.returncode == 2, f"exit {result.returncode}\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert_refused(output, bad, opt_in)


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    # command id: (bad checkpoint, tmp folder) -> arguments
    "eval": lambda bad, tmp: [f"ckpt_path={bad}", *tiny_data_overrides(tmp / "data")],
    "predict": lambda bad, tmp: [f"ckpt_path={bad}", *tiny_data_overrides(tmp / "data")],
    "export": lambda bad, tmp: [f"ckpt_path={bad}", "num_classes=19", f"output={tmp / 'x.onnx'}"],
    "benchmark": lambda bad, tmp: [
        f"ckpt_path={bad}",
        "sizes=[[64,64]]",
        "repeats=1",
        "variants=[eager]",
        "train_throughput.enabled=false",
        "output=null",
    ],
    "train pretrained.path": lambda bad, tmp: [
        f"pretrained.path={bad}",
        *tiny_overrides(tmp / "data", tmp / "logs"),
    ],
    "train ckpt_path": lambda bad, tmp: [
        f"ckpt_path={bad}",
        *tiny_overrides(tmp / "data", tmp / "logs"),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_refuses_a_malicious_checkpoint(command: str, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    bad = write_malicious(tmp_path / "downloaded.ckpt", marker)
    module = f"cgnet.{command.split()[0]}"
    result = run_cli(module, COMMANDS[command](bad, tmp_path), cwd=tmp_path)
    assert_command_refuses(result, bad, marker, "trust_checkpoint=true")


@pytest.mark.slow
def test_command_with_trust_checkpoint_runs_it(tmp_path: Path) -> None:
    """The opt-in reaches the reader: the same file then loads (and its code runs)."""
    marker = tmp_path / "MARKER"
    bad = write_malicious(tmp_path / "downloaded.ckpt", marker)
    args = [f"ckpt_path={bad}", "num_classes=19", f"output={tmp_path / 'x.pt'}"]
    run_cli("cgnet.export", [*args, "format=torchscript", "trust_checkpoint=true"], cwd=tmp_path)
    assert marker.exists()


def _sweep_holding(bad: Path, sweep: Path) -> Path:
    """A multirun folder whose one job names ``bad`` as its checkpoint, with a data config this
    install cannot import, so the report reads the checkpoint for the class count."""
    job = sweep / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model.N=2\n")
    (job / ".hydra" / "config.yaml").write_text(
        "model:\n  M: 2\n  N: 2\ndata:\n  _target_: elsewhere.SomeDataModule\n"
    )
    summary = {"checkpoint": str(bad), "val/mIoU_best": 0.5, "metrics": {"val/mIoU": 0.5}}
    (job / "summary.json").write_text(json.dumps(summary))
    return sweep


@pytest.mark.slow
def test_report_refuses_a_malicious_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    bad = write_malicious(tmp_path / "downloaded.ckpt", marker)
    sweep = _sweep_holding(bad, tmp_path / "sweep")
    result = run_cli("cgnet.report", [str(sweep), "--size", "64", "64"], cwd=tmp_path)
    assert_command_refuses(result, bad, marker, "--trust-checkpoint")
