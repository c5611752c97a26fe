"""`python -m cgnet.data.check`: counts, histogram, every problem, exit status; writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from rich.console import Console

from cgnet.data.check import run


def _check(cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cgnet.data.check", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "CGNET_CACHE_DIR": str(cwd.parent / "cache")},
    )


def test_clean_tree_exits_zero(cityscapes_tree: Path, tmp_path: Path) -> None:
    result = _check(tmp_path, "data=cityscapes", f"data.root={cityscapes_tree}", "num_workers=0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems found" in result.stdout
    assert "road" in result.stdout and "(ignored)" in result.stdout  # the class histogram
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log file


def test_broken_tree_exits_nonzero_and_lists_every_problem(
    camvid_copy: Path, tmp_path: Path
) -> None:
    broken = sorted((camvid_copy / "trainannot").glob("*.png"))
    broken[0].write_bytes(broken[0].read_bytes()[:100])
    broken[1].unlink()
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = _check(workdir, "data=camvid", f"data.root={camvid_copy}", "splits=[train,val,test]")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 problem(s)" in result.stdout
    assert f"label {broken[0]} could not be decoded" in result.stdout
    assert f"image {camvid_copy / 'train' / broken[1].name} has no label" in result.stdout


def test_missing_root_is_one_problem(tmp_path: Path) -> None:
    with initialize_config_module(config_module="cgnet.conf", version_base="1.3"):
        cfg = compose("check", overrides=["data=cityscapes", f"data.root={tmp_path / 'none'}"])
    console = Console(record=True, width=300)
    assert run(cfg, console) == 1
    text = console.export_text()
    assert "1 problem(s)" in text and "leftImg8bit/train/CITY" in text


def test_synthetic_default_is_generated_then_checked(tmp_path: Path) -> None:
    overrides = [
        f"data.root={tmp_path / 'syn'}",
        "data.num_train=2",
        "data.num_val=1",
        "data.image_size=[32,64]",
    ]
    with initialize_config_module(config_module="cgnet.conf", version_base="1.3"):
        cfg = compose("check", overrides=overrides)
    console = Console(record=True, width=300)
    assert run(cfg, console) == 0
    assert "no problems found" in console.export_text()
