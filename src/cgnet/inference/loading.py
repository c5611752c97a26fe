"""What `cgnet.eval` and `cgnet.predict` build from their config: the data and the predictor.

A checkpoint of this project records the data config it was trained on; unless the command line
picks another dataset (``data=...``), that record is the data scored, with any ``data.*`` override on
top, so eval's mIoU on a checkpoint is the one its training run reported, not that of freshly
generated scenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cgnet.checkpoint import LoadedNetwork, hyper_parameters, load_network, read_checkpoint
from cgnet.config import (
    ConfigError,
    build_target,
    check_arguments,
    check_settings,
    check_target_node,
    plain,
)
from cgnet.inference.autotune import DTYPES
from cgnet.inference.predictor import TTA, Predictor
from cgnet.models import CGNet
from cgnet.runtime import pick_device


@dataclass(kw_only=True)
class TestTimeSettings:
    """Top-level keys shared by eval and predict (conf/eval.yaml, conf/predict.yaml)."""

    task_name: str
    ckpt_path: str | None
    split: str
    device: str
    fast: bool
    precision: str = "fp32"  # checked against DTYPES below (a Literal alias would not resolve in
    # the modules that subclass this schema)
    tta: dict[str, Any]
    trust_checkpoint: bool


def check_test_time(cfg: DictConfig, schema: type[TestTimeSettings]) -> None:
    """Keys and types of an eval/predict config, before any file is read."""
    check_settings(cfg, schema, groups=("model", "data", "paths"))
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path: required (a checkpoint of this project or the authors' weights)"
        )
    check_arguments(plain(cfg.tta) or {}, TTA, "tta")
    TTA.from_config(plain(cfg.tta))
    check_arguments(plain(cfg.model), CGNet, "model", skip=("num_classes",))
    check_target_node(cfg.data, "data")
    device = pick_device(cfg.device)
    precision = cfg.get("precision", "fp32")
    if precision not in DTYPES:
        raise ConfigError(f"precision: expected one of {' | '.join(DTYPES)}, got {precision!r}")
    if precision != "fp32" and (device.type != "cuda" or not cfg.fast):
        raise ConfigError(
            f"precision={precision}: half precision runs on CUDA through the fast path "
            f"(device={device.type}, fast={cfg.fast}); use precision=fp32"
        )


def command_line_overrides() -> list[str]:
    """The overrides the running command was given (none outside a Hydra command)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def data_config(
    cfg: DictConfig, hparams: dict[str, Any], overrides: list[str] | None = None
) -> DictConfig:
    """The checkpoint's recorded data config (plus ``data.*`` overrides) unless ``data=`` was given.

    ``overrides`` defaults to the running command's own.
    """
    overrides = command_line_overrides() if overrides is None else overrides
    recorded = hparams.get("data")
    chose_data = any(o.lstrip("+~").split("=", 1)[0] == "data" for o in overrides)
    if not isinstance(recorded, dict) or "_target_" not in recorded or chose_data:
        return cfg.data
    own = [
        o.lstrip("+").removeprefix("data.") for o in overrides if o.lstrip("+").startswith("data.")
    ]
    node = OmegaConf.merge(OmegaConf.create(recorded), OmegaConf.from_dotlist(own))
    assert isinstance(node, DictConfig)
    return node


def build_data(
    cfg: DictConfig,
    hparams: dict[str, Any] | None = None,
    *,
    read_split: bool = True,
    overrides: list[str] | None = None,
) -> Any:
    """The DataModule, reading ``cfg.split`` through its whole-image validation loader
    (``read_split=False``: only its classes, palette and normalisation, for image files)."""
    node = data_config(cfg, hparams or {}, overrides)
    with open_dict(node):
        node.val_split = cfg.split
    check_target_node(node, "data")
    datamodule = build_target(node, "data")
    if read_split:
        datamodule.prepare_data()
        datamodule.setup("validate")
    return datamodule


def load_checkpoint_and_data(
    cfg: DictConfig, *, read_split: bool = True, overrides: list[str] | None = None
) -> tuple[LoadedNetwork, Any]:
    """The network from any checkpoint format and the data to run it on (``overrides``: those the
    config was composed with, when not run as a command, e.g. from a notebook)."""
    trust = bool(cfg.trust_checkpoint)
    checkpoint = read_checkpoint(cfg.ckpt_path, trust=trust)  # read once: data config, then weights
    datamodule = build_data(
        cfg, hyper_parameters(checkpoint), read_split=read_split, overrides=overrides
    )
    loaded = load_network(
        cfg.ckpt_path, datamodule.num_classes, plain(cfg.model), checkpoint=checkpoint
    )
    return loaded, datamodule


def build_predictor(cfg: DictConfig, loaded: LoadedNetwork, datamodule: Any) -> Predictor:
    """Network on the chosen device with the chosen TTA, normalised as it was trained."""
    return Predictor(
        loaded,
        mean=datamodule.mean,
        std=datamodule.std,
        device=pick_device(cfg.device),
        tta=TTA.from_config(plain(cfg.tta)),
        fast=cfg.fast,
        precision=cfg.get("precision", "fp32"),
    )


__all__ = [
    "TestTimeSettings",
    "build_data",
    "build_predictor",
    "check_test_time",
    "data_config",
    "load_checkpoint_and_data",
]
