"""W&B logging without an account: config keys, run names and groups, the callback, offline multiruns.

Offline runs are checked by reading the run's own transaction log (``run-<id>.wandb``: a LevelDB-style
record log of protobuf ``Record``s, the file ``wandb sync`` uploads), so the test sees exactly what
W&B would receive.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from cgnet.models import CGNet
from cgnet.train import build_trainer, validate
from cgnet.wandb_logging import (
    WandbValidationLogger,
    finish_wandb,
    wandb_group,
    wandb_loggers,
    wandb_name,
)
from helpers import compose_config, run_cli, tiny_overrides


@pytest.fixture
def wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Offline W&B with every wandb folder in tmp_path (nothing in $HOME, no network)."""
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_ARTIFACT_DIR": str(tmp_path / "wandb_artifacts"),
        "WANDB_SILENT": "true",
        "CGNET_CACHE_DIR": str(tmp_path / "cache"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    import wandb

    wandb.teardown()  # wandb reads the environment once per process: start from a clean slate
    yield env
    wandb.teardown()


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf Records of an offline run file (W&B's LevelDB-log framing, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            pending = b""
            yield record
        elif kind in (2, 3):  # FIRST, MIDDLE
            pending += chunk


def read_offline_run(run_file: Path) -> dict[str, Any]:
    """group, name, project, config, history keys and exit code of one offline run."""
    out: dict[str, Any] = {"config": {}, "history": set(), "exit_code": None}

    def merge(items: Any) -> None:
        for item in items:
            key = item.key or "/".join(item.nested_key)
            out["config"][key] = json.loads(item.value_json)

    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out |= {
                "group": record.run.run_group,
                "name": record.run.display_name,
                "project": record.run.project,
                "job_type": record.run.job_type,
                "tags": list(record.run.tags),
            }
            merge(record.run.config.update)
        elif kind == "config":
            merge(record.config.update)
        elif kind == "history":
            out["history"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


# ------------------------------------------------------------------------------------- config
def test_wandb_logger_takes_its_settings_from_config(tmp_path: Path, wandb_env: dict) -> None:
    overrides = [
        "logger=wandb",
        "logger.wandb.project=ablations",
        "logger.wandb.entity=my-team",
        "logger.wandb.group=depth",
        "logger.wandb.name=first",
        "tags=[paper,depth]",
        f"paths.log_dir={tmp_path}",
    ]
    cfg = compose_config("train", overrides, tmp_path / "run")
    validate(cfg)
    node = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    assert node["project"] == "ablations" and node["entity"] == "my-team"
    assert node["group"] == "depth" and node["name"] == "first"
    assert node["tags"] == ["paper", "depth"]
    assert node["mode"] is None  # WANDB_MODE decides
    assert "wandb_validation" in cfg.callbacks  # logger=wandb brings the panel callback along
    trainer = build_trainer(cfg)
    (logger,) = wandb_loggers(trainer)
    assert logger.save_dir == str(tmp_path / "run")


def test_logger_wandb_adds_its_callback_to_any_callbacks_choice(tmp_path: Path) -> None:
    cfg = compose_config("train", ["logger=wandb", "callbacks=none"], tmp_path / "run")
    assert list(cfg.callbacks) == ["wandb_validation"]
    cfg = compose_config("train", ["logger=csv"], tmp_path / "run")
    assert "wandb_validation" not in (cfg.callbacks or {})


def test_environment_supplies_project_and_entity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team-env")
    cfg = compose_config("train", ["logger=wandb"], tmp_path / "run")
    assert cfg.logger.wandb.project == "from-env" and cfg.logger.wandb.entity == "team-env"


def test_group_and_name_single_run_and_multirun(tmp_path: Path) -> None:
    cfg = compose_config("train", ["logger=wandb"], tmp_path / "2026-01-01_00-00-00_abcdef")
    assert wandb_group() is None
    assert wandb_name() == "2026-01-01_00-00-00_abcdef"

    cfg = compose_config("train", ["logger=wandb", "hparams_search=depth_ablation"], tmp_path)
    with read_write(cfg.hydra), open_dict(cfg.hydra):  # set_config made it read-only
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "multiruns" / "2026-01-01_00-00-00_sweep1")
        cfg.hydra.job.num = 3
        cfg.hydra.overrides.task = ["model.M=6", "model.N=9", "data.batch_size=4"]
    HydraConfig.instance().set_config(cfg)
    assert wandb_group() == "2026-01-01_00-00-00_sweep1"
    assert wandb_name() == "job3 model.M=6 model.N=9"
    assert cfg.logger.wandb.group == "2026-01-01_00-00-00_sweep1"


# ------------------------------------------------------------------------------------- callback
def test_callback_is_a_no_op_without_wandb(tmp_path: Path) -> None:
    cfg = compose_config("train", ["logger=csv", "callbacks=wandb"], tmp_path / "run")
    trainer = build_trainer(cfg)
    callback = next(c for c in trainer.callbacks if isinstance(c, WandbValidationLogger))
    batch = {"image": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "mask": torch.zeros(2, 8, 8)}
    callback.on_validation_batch_end(trainer, None, None, batch, 0)  # type: ignore[arg-type]
    callback.on_validation_end(trainer, None)  # type: ignore[arg-type]
    assert callback._images == []


def test_iou_table_has_every_class_and_none_for_unscored() -> None:
    metrics = {"val/iou/road": torch.tensor(0.5), "val/iou/sky": 0.25}
    table = WandbValidationLogger.iou_table_for(metrics, ["road", "sky", "car"])
    assert table.columns == ["class", "IoU"]
    assert table.data == [["road", 0.5], ["sky", 0.25], ["car", None]]


def test_finish_wandb_closes_the_run_and_marks_failures(tmp_path: Path, wandb_env: dict) -> None:
    import wandb

    finish_wandb()  # nothing open: nothing happens
    for error, code in ((None, 0), (RuntimeError("boom"), 1)):
        run = wandb.init(project="cgnet-test", dir=str(tmp_path), mode=None)
        assert run.settings.mode == "offline"  # WANDB_MODE honoured
        run_file = next(Path(run.dir).parent.glob("run-*.wandb"))
        try:
            if error is not None:
                raise error
        except RuntimeError:
            finish_wandb()
        else:
            finish_wandb()
        assert wandb.run is None
        wandb.teardown()  # stops wandb's service, which flushes the run file before we read it
        assert read_offline_run(run_file)["exit_code"] == code


# ------------------------------------------------------------------------------------- multirun
@pytest.mark.slow
def test_multirun_is_one_offline_run_per_job_grouped_by_sweep(
    tmp_path: Path, wandb_env: dict
) -> None:
    data_root = tmp_path / "data" / "cityscapes"
    args = [
        "-m",
        *tiny_overrides(data_root, tmp_path),
        "model.N=2,3",
        "preview=false",
        "logger=wandb",
        "tags=[smoke]",
    ]
    result = run_cli("cgnet.train", args, cwd=tmp_path, timeout=600, env=wandb_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    runs = []
    for job, n in (("0", 2), ("1", 3)):
        (run_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        run = read_offline_run(run_file)
        runs.append(run)
        assert run["group"] == sweep.name
        assert run["name"] == f"job{job}"
        assert run["project"] == "cgnet" and run["job_type"] == "train"
        assert run["tags"] == ["smoke"]
        assert run["exit_code"] == 0  # finished when its job ended
        config = run["config"]
        assert config["model"]["N"] == n
        assert config["data"]["crop_size"] == [64, 64]  # the whole composed config
        assert f"model.N={n}" in config["overrides"]
        assert config["complexity"]["params"] > 0 and config["complexity"]["size"] == [64, 64]
        for key in ("train/loss_step", "lr", "val/mIoU", "val/mIoU_best", "val/iou/road"):
            assert key in run["history"], key
        assert any(k.startswith("val/iou_table/") for k in run["history"])
        assert "val/predictions/all_masks" in run["history"]
    assert runs[0]["config"]["complexity"]["params"] < runs[1]["config"]["complexity"]["params"]


def test_online_without_an_account_is_one_clear_error(
    tmp_path: Path, wandb_env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cgnet.config import ConfigError
    from cgnet.wandb_logging import log_run_info

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = compose_config("train", ["logger=wandb", "callbacks=none"], tmp_path / "run")
    trainer = build_trainer(cfg)
    with pytest.raises(ConfigError, match=r"logger\.wandb: .*WANDB_MODE=offline"):
        log_run_info(trainer, cfg, CGNet(2, M=1, N=1), size=(8, 8))
