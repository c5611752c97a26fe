"""Optuna sweeps that share one study in a database: two processes, one SQLite file, every trial kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgnet.optuna_storage import prepare_storage
from helpers import tiny_overrides

optuna = pytest.importorskip("optuna")
sqlalchemy_exc = pytest.importorskip("sqlalchemy.exc")


def test_a_sqlite_study_is_kept_and_joined(tmp_path: Path) -> None:
    """optuna<3's database storage opens (it cannot on SQLAlchemy 2) and a second opener joins."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    prepare_storage(storage)
    first = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first.optimize(lambda trial: 0.5, n_trials=1)
    second = optuna.create_study(
        study_name="s", storage=storage, direction="maximize", load_if_exists=True
    )
    assert [t.value for t in second.trials] == [0.5]


def test_prepare_storage_retries_races_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's table creation is retried; a wrong URL fails at once."""
    calls: list[str] = []

    class Racing:
        def __init__(self, url: str) -> None:
            calls.append(url)
            if len(calls) < 3:
                raise sqlalchemy_exc.OperationalError(
                    "CREATE TABLE studies", {}, Exception("table studies already exists")
                )
            self.engine = type("Engine", (), {"dispose": lambda self: None})()

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    prepare_storage("sqlite:///x.db", wait_s=0.0)
    assert len(calls) == 3

    def broken(url: str) -> None:
        calls.append(url)
        raise sqlalchemy_exc.OperationalError(
            "connect", {}, Exception("unable to open database file")
        )

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(sqlalchemy_exc.OperationalError, match="unable to open"):
        prepare_storage("sqlite:////nowhere/x.db", wait_s=0.0)
    assert len(calls) == 1


def optuna_sweep(storage: str, study: str, seed: int, root: Path, log_dir: Path) -> list[str]:
    """`depth_optuna` on the tiny CGNet: two trials over N in {1, 2} (M fixed at 2), one per batch."""
    tiny = [o for o in tiny_overrides(root, log_dir) if not o.startswith("model.N=")]
    return [
        "hparams_search=depth_optuna",
        f'hydra.sweeper.storage="{storage}"',  # quoted: the URL's query has a `=`
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.sampler.seed={seed}",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        *tiny,
        "model.N=choice(1,2)",
        "preview=false",
    ]


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    """Both sweeps start at once against one file: both finish, and the study holds all 4 trials."""
    storage = f"sqlite:///{tmp_path / 'study.db'}?timeout=60"
    root = tmp_path / "data" / "cityscapes"
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "WANDB_MODE": "disabled",
        "CGNET_CACHE_DIR": str(tmp_path / "cache"),
    }
    procs = []
    for seed, name in enumerate(("a", "b")):
        cwd = tmp_path / name
        cwd.mkdir()
        args = optuna_sweep(storage, "shared", seed, root, cwd / "logs")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cgnet.train", *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.value is not None and 0.0 <= t.value <= 1.0 for t in trials)
    assert {t.params["model.N"] for t in trials} <= {1, 2}
    assert study.best_value == max(t.value for t in trials)
