"""The shared entry layer as a user meets it: clean output, a complete run log, steps that mean steps,
eval on the data a checkpoint was trained on, help that lists only a command's own groups."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cgnet.callbacks import ProgressBar
from cgnet.errors import ConfigError
from cgnet.overrides import check_overrides
from cgnet.train import run
from helpers import compose_config, read_summary, run_cli, tiny_overrides


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("CGNET_CACHE_DIR", str(tmp_path / "cache"))


def test_max_steps_trains_exactly_that_many_steps_whatever_the_epochs(tmp_path: Path) -> None:
    # 8 images in batches of 4: 2 steps an epoch, so the default epoch budget (6) would stop at 12
    overrides = [o for o in tiny_overrides(tmp_path / "data", tmp_path) if "max_epochs" not in o]
    cfg = compose_config(
        "train", [*overrides, "trainer.max_steps=15", "preview=false"], tmp_path / "r"
    )
    assert cfg.trainer.max_epochs == -1
    assert run(cfg)["steps"] == 15
    # an explicit epoch budget still bounds the run, and without max_steps epochs do
    both = compose_config("train", ["trainer.max_steps=15", "trainer.max_epochs=3"], tmp_path / "b")
    assert both.trainer.max_epochs == 3
    assert compose_config("train", [], tmp_path / "d").trainer.max_epochs == 6


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "expected"),
    [(6, -1, "Epoch 2/5"), (-1, 300, "Epoch 2 · step 40/300"), (-1, -1, "Epoch 2")],
)
def test_progress_bar_says_what_bounds_the_run(
    max_epochs: int, max_steps: int, expected: str
) -> None:
    bar = ProgressBar()
    trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, global_step=40)
    bar._trainer = trainer  # type: ignore[assignment]
    assert bar._get_train_description(2).strip() == expected


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """A tiny training run through the real command, with its summary and progress callbacks on:
    (working dir, run dir, stdout, stderr)."""
    cwd = tmp_path_factory.mktemp("cli")
    overrides = [
        o
        for o in tiny_overrides(cwd / "data", cwd / "logs")
        if not o.startswith(("callbacks.", "trainer.enable_progress_bar"))
    ]
    done = run_cli("cgnet.train", overrides, cwd=cwd, env={"CGNET_CACHE_DIR": str(cwd / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((cwd / "logs" / "train" / "runs").iterdir())
    return cwd, run_dir, done.stdout, done.stderr


def test_a_run_prints_what_matters_and_no_library_noise(
    cli_run: tuple[Path, Path, str, str],
) -> None:
    _, _, stdout, stderr = cli_run
    output = stdout + stderr
    assert "GMACs" in output  # CGNet's own summary: multiply-adds per stage at the training crop
    assert "Total FLOPs" not in output and "FLOPs" not in output
    assert "Trainer already configured" not in output
    assert "site-packages" not in output  # no library warning naming a file inside the venv
    assert "final val mIoU (best):" in stdout


def test_the_run_log_holds_what_the_console_showed(cli_run: tuple[Path, Path, str, str]) -> None:
    _, run_dir, _, _ = cli_run
    log = (run_dir / "train.log").read_text()
    assert "final val mIoU (best):" in log
    assert "checkpoint:" in log and "best.ckpt" in log
    assert "Seed set to 0" in log  # Lightning's own lines reach the file too


def test_eval_scores_the_data_the_checkpoint_was_trained_on(
    cli_run: tuple[Path, Path, str, str],
) -> None:
    cwd, run_dir, _, _ = cli_run
    trained = read_summary(run_dir)
    done = run_cli("cgnet.eval", [f"ckpt_path={trained['checkpoint']}"], cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(next((cwd / "logs" / "eval" / "runs").glob("*/metrics.json")).read_text())
    assert metrics["settings"]["root"] == str(cwd / "data")  # not freshly generated default scenes
    assert metrics["settings"]["images"] == 4
    assert metrics["miou"] == pytest.approx(trained["val/mIoU_best"], abs=1e-4)


@pytest.mark.parametrize(
    ("command", "shown", "hidden"),
    [
        ("cgnet.eval", ["data: camvid, cityscapes", "model: cgnet"], ["optimizer:", "trainer:"]),
        ("cgnet.export", ["model: cgnet"], ["data:", "optimizer:"]),
        ("cgnet.predict", ["data: camvid, cityscapes", "model: cgnet"], ["optimizer:", "logger:"]),
        ("cgnet.benchmark", ["model: cgnet"], ["data:", "trainer:"]),
        ("cgnet.train", ["optimizer: adam, adamw, sgd", "trainer:"], []),
    ],
)
def test_help_lists_only_the_groups_a_command_takes(
    command: str, shown: list[str], hidden: list[str], tmp_path: Path
) -> None:
    done = run_cli(command, ["--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for text in shown:
        assert text in done.stdout
    for text in hidden:
        assert text not in done.stdout.split("== Config ==")[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.MM=3"], r"model\.MM: no such key; did you mean model\.M\? .*\+model\.MM=3"),
        (["data=citiscapes"], r"data=citiscapes: .*did you mean data=cityscapes\?"),
        (["+model.M=3"], r"\+model\.M: model\.M already exists"),
        (["model.N=9,15", "model.NN=2"], r"model\.NN: .*did you mean model\.N\?"),
    ],
)
def test_overrides_are_checked_before_hydra_composes(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_overrides("train", overrides)


def test_valid_sweeps_and_flags_pass_the_check() -> None:
    check_overrides("train", ["-m", "model.M=3,6", "model.N=9,15,21"])
    check_overrides("train", ["hparams_search=depth_optuna", "model.N=interval(1,3)"])
    check_overrides("eval", ["--help"])
