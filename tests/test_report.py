"""`python -m cgnet.report`: rows, swept overrides, costs, latency and the files, on real sweep folders."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cgnet.errors import CheckpointError
from cgnet.models import CGNet
from cgnet.models.summary import summarize
from cgnet.report import build_report, main, split_overrides
from helpers import compose_config, read_summary, run_cli, tiny_overrides


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def fake_job(sweep: Path, num: int, overrides: list[str], summary: dict | None) -> Path:
    """A job folder as Hydra + cgnet.train leave it (.hydra/config.yaml, overrides.yaml, summary.json)."""
    job = sweep / str(num)
    cfg = compose_config("train", overrides, job)
    (job / ".hydra").mkdir(parents=True)
    cfg_no_hydra = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(cfg_no_hydra, job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    return job


def test_report_rows_costs_and_files(tmp_path: Path) -> None:
    sweep = tmp_path / "2026-01-01_00-00-00_abcdef"
    common = ["data.batch_size=4", "trainer.max_epochs=1"]
    fake_job(
        sweep,
        0,
        [*common, "model.M=2", "model.N=3"],
        {"val/mIoU_best": 0.40, "metrics": {"val/mIoU": 0.35}},
    )
    job1 = fake_job(sweep, 1, [*common, "model.M=2", "model.N=6"], {"val/mIoU_best": 0.50})
    fake_job(sweep, 2, [*common, "model.M=3", "model.N=6"], None)  # failed: no summary.json
    bench = {"inference": [{"variant": "fast", "size": [128, 256], "latency_ms": {"median": 12.5}}]}
    (job1 / "benchmark.json").write_text(json.dumps(bench))

    results, files = build_report(sweep, size=(128, 256))

    assert [r.job for r in results] == ["0", "1", "2"]
    rows = read_csv(files["csv"])
    assert [row["overrides"] for row in rows] == [
        "model.M=2 model.N=3",
        "model.M=2 model.N=6",
        "model.M=3 model.N=6",
    ]
    assert [row["model.N"] for row in rows] == ["3", "6", "6"]
    expected = summarize(CGNet(19, M=2, N=6), (128, 256))
    assert int(rows[1]["params"]) == expected.total_params
    assert int(rows[1]["macs"]) == expected.total_macs
    assert int(rows[0]["params"]) < int(rows[1]["params"]) < int(rows[2]["params"])
    assert float(rows[0]["val_miou_best"]) == pytest.approx(0.40)
    assert float(rows[0]["val_miou_last"]) == pytest.approx(0.35)
    assert rows[1]["latency_ms"] == "12.500" and rows[1]["latency_source"] == "recorded"
    assert rows[2]["val_miou_best"] == "" and "failed" in rows[2]["status"]

    page = files["md"].read_text()
    assert "| **1** | **`model.M=2` `model.N=6`**" in page  # the best job in bold
    assert "`data.batch_size=4`" in page and "multiply-adds counted at 128x256" in page
    assert "![best val mIoU" in page and files["png"].read_bytes()[:4] == b"\x89PNG"


class CodeInPickle:
    """Stands for whatever a checkpoint's pickle would have to import and build to be read."""


def test_classes_from_the_checkpoint_only_when_its_pickle_is_safe_or_trusted(
    tmp_path: Path,
) -> None:
    """A DataModule this install lacks: the class count comes from the checkpoint, which is read
    without running its pickle's code unless --trust-checkpoint says so."""
    sweep = tmp_path / "sweep"
    for num, extra in ((0, None), (1, CodeInPickle())):
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        config = {"data": {"_target_": "nowhere.DataModule"}, "model": {"M": 2, "N": 3}}
        OmegaConf.save(OmegaConf.create(config), job / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create([f"seed={num}"]), job / ".hydra" / "overrides.yaml")
        checkpoint = job / "best.ckpt"
        torch.save({"hyper_parameters": {"num_classes": 11}, "extra": extra}, checkpoint)
        summary = {"val/mIoU_best": 0.1 * (num + 1), "checkpoint": str(checkpoint)}
        (job / "summary.json").write_text(json.dumps(summary))
    expected = summarize(CGNet(11, M=2, N=3), (64, 128)).total_params

    with pytest.raises(CheckpointError, match=r"best\.ckpt.*--trust-checkpoint"):
        build_report(sweep, size=(64, 128))

    safe, code = build_report(sweep, size=(64, 128), trust_checkpoint=True)[0]
    assert safe.status == "ok" and safe.params == expected
    assert code.status == "ok" and code.params == expected


def test_split_overrides_finds_what_varies() -> None:
    from cgnet.report import JobResult

    jobs = [
        JobResult("0", Path("0"), ["a=1", "model.N=3", "seed=0"]),
        JobResult("1", Path("1"), ["a=1", "model.N=6", "seed=0"]),
        JobResult("2", Path("2"), ["a=1", "model.N=6", "seed=1", "+extra=x"]),
    ]
    swept, common = split_overrides(jobs)
    assert swept == ["model.N", "seed", "+extra"]
    assert common == ["a=1"]


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """main(argv) in this process: exit status 2 and exactly one line on stderr, returned."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_refuses_a_folder_without_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_error_line(capsys, [str(tmp_path)])
    assert f"sweep_dir: {tmp_path} holds no job folders" in line
    line = one_error_line(capsys, [str(tmp_path / "missing")])
    assert f"sweep_dir: no such folder: {tmp_path / 'missing'}" in line and "multiruns" in line


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--size", "0", "64"], "--size: expected two positive integers"),
        (["--repeats", "0"], "--repeats: expected a positive integer"),
        (["--latency", "--device", "tpu"], "--device=tpu: expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_cli_names_the_bad_argument(
    args: list[str], names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "0" / ".hydra").mkdir(parents=True)  # a sweep as far as the folder check goes
    assert names in one_error_line(capsys, [str(tmp_path), *args])


def test_cli_on_a_folder_that_is_not_a_sweep_exits_2_with_one_line(tmp_path: Path) -> None:
    """As a user runs it: a run's parent folder holding files and folders but no job is named."""
    folder = tmp_path / "logs" / "train"
    (folder / "runs").mkdir(parents=True)
    (folder / "notes.txt").write_text("not a job\n")
    result = run_cli("cgnet.report", [str(folder)], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("config error: sweep_dir: ") and str(folder) in lines[0]
    assert "is it a multirun folder?" in lines[0]
    assert not (folder / "report.md").exists()


@pytest.mark.slow
def test_report_on_a_real_two_job_multirun(tmp_path: Path) -> None:
    data_root = tmp_path / "data" / "cityscapes"
    args = ["-m", *tiny_overrides(data_root, tmp_path), "model.N=2,3", "preview=false"]
    result = run_cli("cgnet.train", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()

    out = tmp_path / "report"
    args = [str(sweep), "--size", "64", "128", "--out", str(out), "--latency", "--repeats", "2"]
    result = run_cli("cgnet.report", args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep report" in result.stdout and "model.N=2" in result.stdout

    rows = read_csv(out / "report.csv")
    assert [row["model.N"] for row in rows] == ["2", "3"]
    for row, job in zip(rows, ("0", "1"), strict=True):
        summary = read_summary(sweep / job)
        assert float(row["val_miou_best"]) == pytest.approx(summary["val/mIoU_best"], abs=1e-6)
        assert Path(row["checkpoint"]) == sweep / job / "checkpoints" / "best.ckpt"
        assert math.isfinite(float(row["latency_ms"])) and row["latency_source"].startswith(
            "measured"
        )
        net = CGNet(19, M=2, N=int(row["model.N"]))
        assert int(row["macs"]) == summarize(net, (64, 128)).total_macs
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "model.N" in (out / "report.md").read_text()


@pytest.mark.parametrize("name", ["depth_ablation", "switch_ablation", "depth_optuna"])
def test_hparams_search_configs_compose_and_validate(name: str, tmp_path: Path) -> None:
    from cgnet.train import validate

    cfg = compose_config("train", [f"hparams_search={name}"], tmp_path / "run")
    validate(cfg)
    assert cfg.hydra.mode.name == "MULTIRUN" and name in cfg.tags
    params = cfg.hydra.sweeper.params
    assert params, "a sweep without parameters"
    if name == "depth_optuna":
        assert cfg.hydra.runtime.choices["hydra/sweeper"] == "optuna"
        assert cfg.hydra.sweeper.direction == "maximize"
        assert set(params) == {"model.M", "model.N"}


@pytest.mark.slow
def test_optuna_sweeper_runs_two_trials_and_maximises_val_miou(tmp_path: Path) -> None:
    """The published plugin with our pins: two real trials, the best one is the highest val mIoU."""
    data_root = tmp_path / "data" / "cityscapes"
    tiny = [o for o in tiny_overrides(data_root, tmp_path) if not o.startswith("model.N=")]
    args = [
        "hparams_search=depth_optuna",
        "hydra.sweeper.n_trials=2",
        *tiny,
        "model.N=choice(2,3)",
        "preview=false",
    ]
    result = run_cli("cgnet.train", args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    scores = {}
    for job in ("0", "1"):
        n = OmegaConf.load(sweep / job / ".hydra" / "config.yaml").model.N
        assert n in (2, 3)
        scores[job] = read_summary(sweep / job)["val/mIoU_best"]
    found = OmegaConf.load(sweep / "optimization_results.yaml")
    assert found.best_value == pytest.approx(max(scores.values()))
    assert main([str(sweep), "--size", "64", "128"]) == 0
    assert "Optuna's best" in (sweep / "report.md").read_text()
