"""Parameter and multiply-add counts against the official network's (496,306; 27.05 G at 1024x2048),
and the summary command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cgnet.models import CGNet, expected_num_parameters
from cgnet.models.summary import ModelSummary, summarize

STAGES = [
    "stem",
    "injection 1 + join 1",
    "stage 2 (CG-Down + blocks)",
    "injection 2 + join 2",
    "stage 3 (CG-Down + blocks)",
    "join 3",
    "classifier",
    "output (bilinear resize)",
]


@pytest.mark.parametrize(
    ("size", "gmacs"), [((1024, 2048), 27.05), ((512, 1024), 6.76), ((360, 480), 2.23)]
)
def test_official_macs(size: tuple[int, int], gmacs: float) -> None:
    summary = summarize(CGNet(19), size=size)
    assert round(summary.total_macs / 1e9, 2) == gmacs
    assert summary.total_params == expected_num_parameters(19) == 496_306


def test_stages_add_up_and_shapes_follow_the_layout() -> None:
    summary = summarize(CGNet(19), size=(1024, 2048))
    assert [s.name for s in summary.stages] == STAGES
    assert sum(s.macs for s in summary.stages) == summary.total_macs
    # Joins and the resize hold no conv/linear; the head is one 1x1 conv on the 1/8 map.
    for name in ("injection 1 + join 1", "injection 2 + join 2", "join 3", STAGES[-1]):
        assert summary.stage(name).macs == 0
    assert summary.stage("classifier").macs == 19 * 256 * 128 * 256
    assert summary.stage("classifier").params == 19 * 256
    assert summary.stage("stem").macs == 9 * (3 * 32 + 2 * 32 * 32) * 512 * 1024
    assert summary.stage("join 3").params == 3 * 256
    assert summary.stage("injection 2 + join 2").output_shape == (131, 256, 512)
    assert summary.stage("stage 3 (CG-Down + blocks)").output_shape == (128, 128, 256)
    assert summary.stage(STAGES[-1]).output_shape == (19, 1024, 2048)


def test_batch_scales_macs_not_params() -> None:
    one, four = (summarize(CGNet(19), size=(64, 96), batch=b) for b in (1, 4))
    assert four.total_macs == 4 * one.total_macs and four.total_params == one.total_params


def test_caller_model_is_untouched() -> None:
    model = CGNet(19)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model, size=(64, 64))
    after = model.state_dict()
    assert all(v.device.type == "cpu" and torch.equal(before[k], v) for k, v in after.items())
    assert not model._forward_hooks and not model.stem[0].conv._forward_hooks


@pytest.mark.parametrize(
    "kwargs", [{"M": 1, "N": 1}, {"use_f_glo": False}, {"input_injection": False}, {"dropout": 0.1}]
)
def test_variants(kwargs: dict[str, object]) -> None:
    model = CGNet(11, **kwargs)  # type: ignore[arg-type]
    summary = summarize(model, size=(96, 128))
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.stage(STAGES[-1]).output_shape == (11, 96, 128)


def test_other_models_get_a_row_per_child() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 2, 1))
    summary = summarize(model, size=(10, 10))
    assert [s.name for s in summary.stages][:2] == ["0", "1"]
    assert summary.total_macs == 100 * (8 * 3 * 9 + 2 * 8)


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="size"):
        summarize(CGNet(19), size=(0, 10))


def test_table_rendering() -> None:
    summary = summarize(CGNet(19), size=(512, 1024))
    assert isinstance(summary, ModelSummary)
    text = summary.format_table()
    assert "CGNet(num_classes=19, M=3, N=21) at 1x3x512x1024" in text
    total = next(line for line in text.splitlines() if "total" in line)
    assert "496,306" in total and "6.76" in total


def run_cli(cwd: Path, *overrides: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cgnet.models.summary", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "model.M=3", "model.N=21", "size=[1024,2048]", "num_classes=19")
    total = next(line for line in out.splitlines() if "total" in line)
    assert "27.05" in total and "496,306" in total
    assert "stage 3" in out
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log file


def test_cli_overrides(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "model.M=1", "model.N=1", "size=[360,480]", "num_classes=11")
    total = next(line for line in out.splitlines() if "total" in line)
    assert f"{expected_num_parameters(11, 1, 1):,}" in total
    assert "CGNet(num_classes=11, M=1, N=1) at 1x3x360x480" in out
