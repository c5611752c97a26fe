"""What a training job builds from its config: the LightningModule, the Trainer, resumes and previews.

Kept apart from the entry point (:mod:`cgnet.train`) so that notebooks and tests can build the same
objects from a composed config without running a command.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from cgnet.checkpoint import hyper_parameters
from cgnet.cli import is_multirun
from cgnet.config import ConfigError, build_target, check_arguments, check_target_node, plain
from cgnet.models import CGNet, WeightsMismatchError, load_weights
from cgnet.module import OPTIMIZERS, SchedulerConfig, SegmentationModule
from cgnet.visualize import panel, save_rgb

log = logging.getLogger("cgnet.train")


def validate(cfg: DictConfig) -> None:
    """Every group checked against what it builds; raises ConfigError with the offending key."""
    check_arguments(plain(cfg.model), CGNet, "model", skip=("num_classes",))
    optimizer = dict(plain(cfg.optimizer))
    name = optimizer.pop("name", None)
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    check_arguments(optimizer, OPTIMIZERS[name], "optimizer", skip=("params",))
    check_arguments(plain(cfg.scheduler), SchedulerConfig, "scheduler")
    check_arguments(plain(cfg.module), SegmentationModule, "module")
    check_target_node(cfg.data, "data")
    check_target_node(cfg.trainer, "trainer")
    for group in ("callbacks", "logger"):
        for key, node in (cfg.get(group) or {}).items():
            if node is not None:  # `callbacks.rich_progress_bar=null` switches one off
                check_target_node(node, f"{group}.{key}")
    try:
        CGNet(2, **plain(cfg.model))  # cheap: catches M=0, odd widths, bad switch values
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    path = (cfg.get("pretrained") or {}).get("path")
    if path and cfg.get("ckpt_path"):
        raise ConfigError(
            "pretrained.path and ckpt_path are both set: a resume restores the weights from "
            "ckpt_path anyway; keep one"
        )
    if path and not Path(path).expanduser().is_file():
        raise ConfigError(f"pretrained.path: no file at {path}")


def build_module(cfg: DictConfig, datamodule: Any) -> SegmentationModule:
    """The LightningModule from primitives: model/optimizer/scheduler groups + what the data says."""
    weights = datamodule.class_weight_tensor()
    info = datamodule.info
    return SegmentationModule(
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        model=plain(cfg.model),
        class_weights=None if weights is None else [float(w) for w in weights],
        ignore_index=datamodule.ignore_index,
        mean=list(datamodule.mean),
        std=list(datamodule.std),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.scheduler),
        class_to_category=None if info.class_to_category is None else list(info.class_to_category),
        data=plain(cfg.data),
        **plain(cfg.module),
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """Trainer with the configured callbacks and loggers (SyncBN only where it can run)."""
    callbacks = [
        build_target(node, f"callbacks.{key}")
        for key, node in (cfg.get("callbacks") or {}).items()
        if node
    ]
    loggers = [
        build_target(node, f"logger.{key}")
        for key, node in (cfg.get("logger") or {}).items()
        if node
    ]
    trainer_cfg = plain(cfg.trainer)
    if trainer_cfg.get("sync_batchnorm") and not torch.cuda.is_available():
        trainer_cfg["sync_batchnorm"] = False  # SyncBatchNorm needs GPUs; CPU DDP keeps local BN
    check_devices(trainer_cfg)
    spawn_ddp_in_local_multirun(trainer_cfg)
    try:
        return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    except Exception as err:  # Lightning's MisconfigurationException, wrapped by Hydra
        cause = err.__cause__ or err
        raise ConfigError(f"trainer: {str(cause).splitlines()[0]}") from None


def spawn_ddp_in_local_multirun(trainer_cfg: dict[str, Any]) -> None:
    """Multi-process jobs of a local Hydra multirun start their ranks with ddp_spawn.

    Lightning's default DDP launcher starts the other ranks by re-running this command line, which in a
    multirun (`-m`) re-runs the whole sweep in every rank: each rank writes its own sweep folder and
    a sweeper that draws its values (Optuna) hands the ranks different jobs. Spawned ranks run inside
    the job instead. A cluster that starts the ranks itself (SLURM, torchrun) needs neither.
    """
    devices = trainer_cfg.get("devices")
    processes = len(devices) if isinstance(devices, list) else devices
    many = (isinstance(processes, int) and processes > 1) or (trainer_cfg.get("num_nodes") or 1) > 1
    if not many or trainer_cfg.get("strategy") not in ("auto", "ddp", None):
        return
    if not is_multirun():
        return
    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return
    log.info(
        "multirun: trainer.strategy=%s -> ddp_spawn (re-launched ranks would re-run the whole sweep)",
        trainer_cfg.get("strategy"),
    )
    trainer_cfg["strategy"] = "ddp_spawn"


def check_devices(trainer_cfg: dict[str, Any]) -> None:
    """`trainer.devices` beyond what this machine has: say so before anything heavy starts."""
    devices, accelerator = trainer_cfg.get("devices"), trainer_cfg.get("accelerator")
    if not isinstance(devices, int) or devices < 1:
        return
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") and devices > gpus:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {gpus} GPU(s): "
            f"use trainer.devices={max(gpus, 1)}{'' if gpus else ' trainer.accelerator=cpu'}"
        )
    cpus = os.cpu_count() or 1
    if (accelerator == "cpu" or (accelerator == "auto" and not gpus)) and devices > cpus:
        raise ConfigError(
            f"trainer.devices={devices} CPU processes but this machine has {cpus} cores: "
            f"use trainer.devices<={cpus}"
        )


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` means this run dir's checkpoints/last.ckpt; a given path must exist."""
    if ckpt_path in (None, ""):
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = (
            " (resume a run with hydra.run.dir=<its run dir> ckpt_path=last)"
            if ckpt_path == "last"
            else ""
        )
        raise ConfigError(f"ckpt_path: no checkpoint at {path}{hint}")
    return str(path)


def load_pretrained(cfg: DictConfig, module: SegmentationModule) -> None:
    """Start from `pretrained.path`'s network weights: a new run, unlike a `ckpt_path` resume."""
    pretrained = cfg.get("pretrained") or {}
    path = pretrained.get("path")
    if not path:
        return
    skip = ("classifier.",) if pretrained.get("skip_classifier") else ()
    try:
        loaded = load_weights(
            module.net,
            Path(path).expanduser(),
            skip=skip,
            trust=bool(cfg.get("trust_checkpoint", False)),
        )
    except WeightsMismatchError as err:
        hint = (
            "; set pretrained.skip_classifier=true to start the classifier fresh"
            if "classes, model has" in str(err)
            else ""
        )
        raise ConfigError(f"pretrained.path: {err}{hint}") from None
    eps = next(m.eps for m in module.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    if not math.isclose(eps, cfg.model.bn_eps):
        raise ConfigError(
            f"pretrained.path: {path} was trained with BatchNorm eps {eps:g} ({loaded.format} "
            f"format) but model.bn_eps={cfg.model.bn_eps:g}; set model.bn_eps={eps:g}"
        )
    log.info("%s", loaded)


def check_checkpoint_classes(ckpt_path: str | None, blob: Any, module: SegmentationModule) -> None:
    """Resuming a checkpoint trained for other classes than the data has would fail deep in Lightning."""
    if ckpt_path is None:
        return
    saved = hyper_parameters(blob).get("num_classes")
    if saved is not None and saved != module.net.num_classes:
        raise ConfigError(
            f"ckpt_path: {ckpt_path} was trained for {saved} classes but data has "
            f"{module.net.num_classes}: choose the matching data config"
        )


def save_preview(
    module: SegmentationModule, datamodule: Any, path: Path, count: int = 4
) -> Path | None:
    """image | ground truth | prediction rows for the first validation images."""
    rows: list[np.ndarray] = []
    module.eval()
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            pred = module(batch["image"].to(module.device)).argmax(1).cpu().numpy()
            for i in range(len(pred)):
                image = batch["image"][i].permute(1, 2, 0).numpy()
                rows.append(
                    panel(image, batch["mask"][i].numpy(), pred[i], datamodule.info.palette)
                )
                if len(rows) == count:
                    break
            if len(rows) == count:
                break
    return save_rgb(path, np.concatenate(rows, axis=0)) if rows else None


def saved_path(callback: ModelCheckpoint) -> str:
    """Where a checkpoint callback saved. Spawned DDP ranks hand only the first callback's path back
    to the main process, so for the others the fixed file name is looked up on disk."""
    if callback.best_model_path:
        return callback.best_model_path
    if callback.dirpath and callback.filename:
        path = Path(callback.dirpath) / f"{callback.filename}{callback.FILE_EXTENSION}"
        if path.is_file():
            return str(path)
    return ""
