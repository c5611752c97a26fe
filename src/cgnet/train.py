"""`python -m cgnet.train`: compose the config, validate it, build data + module + Trainer, fit.

Checkpoints, logs and the preview picture land in Hydra's run directory (``hydra.run.dir=...`` moves it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from rich.console import Console

from cgnet.callbacks import finish_wandb, log_run_info  # also registers the W&B name resolvers
from cgnet.config import ConfigError, check_arguments, check_target_node, plain
from cgnet.data.errors import DataError
from cgnet.inference import reuse_cpu_memory
from cgnet.models import CGNet, WeightsMismatchError, load_weights
from cgnet.module import OPTIMIZERS, SchedulerConfig, SegmentationModule
from cgnet.visualize import panel, save_rgb

log = logging.getLogger("cgnet.train")


class _NoLightningTips(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing ..." product notes from every run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


for _name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoLightningTips())

console = Console(soft_wrap=True)

# A short random id per process, so run folders of jobs started in the same second never collide.
# Lightning's DDP launcher passes the resolved run dir to the other ranks, so they share rank 0's.
OmegaConf.register_new_resolver(
    "cgnet_uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True
)


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
        **plain(cfg.module),
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """Trainer with the configured callbacks and loggers (SyncBN only where it can run)."""
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node]
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node]
    trainer_cfg = plain(cfg.trainer)
    if trainer_cfg.get("sync_batchnorm") and not torch.cuda.is_available():
        trainer_cfg["sync_batchnorm"] = False  # SyncBatchNorm needs GPUs; CPU DDP keeps local BN
    check_devices(trainer_cfg)
    spawn_ddp_in_local_multirun(trainer_cfg)
    try:
        return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    except Exception as err:  # Lightning's MisconfigurationException, wrapped by Hydra
        cause = err.__cause__ or err
        raise ConfigError(f"trainer: {cause}") from None


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
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
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
        loaded = load_weights(module.net, Path(path).expanduser(), skip=skip)
    except WeightsMismatchError as err:
        hint = (
            "\n  set pretrained.skip_classifier=true to start the classifier fresh"
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


def check_checkpoint_classes(ckpt_path: str | None, module: SegmentationModule) -> None:
    """Resuming a checkpoint trained for other classes than the data has would fail deep in Lightning."""
    if ckpt_path is None:
        return
    hparams = torch.load(ckpt_path, map_location="cpu", weights_only=False).get(
        "hyper_parameters", {}
    )
    saved = hparams.get("num_classes")
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """One training job; returns its summary (also what a sweeper optimises: val/mIoU_best)."""
    validate(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    trainer = build_trainer(cfg)  # cheap, and fails early on devices the machine lacks
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # before fit, so DDP ranks started later find the data ready
    datamodule.setup("fit")  # finds and checks the files now: bad data fails before any training
    datamodule.check_crop_fits()
    # Seed after data preparation: generating or caching data may draw random numbers, and a run
    # must not depend on whether its data already existed.
    pl.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg, datamodule)
    load_pretrained(cfg, module)
    check_checkpoint_classes(ckpt_path, module)
    log_run_info(trainer, cfg, module.net)  # W&B only: composed config, parameters, multiply-adds
    summary: dict[str, Any] = {"output_dir": str(output_dir)}
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    elif ckpt_path:  # train=false ckpt_path=X: score X on the val split with the configured devices
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path)
    summary["metrics"] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))
    }
    best_path = next((_saved_path(cb) for cb in trainer.checkpoint_callbacks if cb.monitor), "")
    if cfg.train and best_path:
        summary["checkpoint"] = best_path
        state = torch.load(best_path, map_location=module.device, weights_only=False)
        module.load_state_dict(state["state_dict"])
    # checkpoints/last.ckpt is an unmonitored ModelCheckpoint: its "best" is the latest save.
    last_path = next((_saved_path(cb) for cb in trainer.checkpoint_callbacks if not cb.monitor), "")
    if cfg.train and last_path:
        summary["last_checkpoint"] = last_path
    summary["val/mIoU_best"] = float(module.best_miou)
    if cfg.test:
        trainer.test(module, datamodule=datamodule)
        summary["metrics"].update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        )
    if trainer.is_global_zero:
        if cfg.preview and not trainer.fast_dev_run:
            datamodule.setup("validate")
            picture = save_preview(module, datamodule, output_dir / "preview.png")
            summary["preview"] = str(picture) if picture else None
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _saved_path(callback: ModelCheckpoint) -> str:
    """Where a checkpoint callback saved. Spawned DDP ranks hand only the first callback's path back
    to the main process, so for the others the fixed file name is looked up on disk."""
    if callback.best_model_path:
        return callback.best_model_path
    if callback.dirpath and callback.filename:
        path = Path(callback.dirpath) / f"{callback.filename}{callback.FILE_EXTENSION}"
        if path.is_file():
            return str(path)
    return ""


def report(summary: dict[str, Any]) -> None:
    """The lines a user looks for at the end of a run."""
    best = summary["val/mIoU_best"]
    if math.isnan(best):
        console.print(
            "[bold yellow]no validation ran[/]: it runs every trainer.check_val_every_n_epoch "
            "epochs (or trainer.val_check_interval); lower it or train longer to get a val mIoU "
            "and a best.ckpt"
        )
    else:
        console.print(f"[bold green]final val mIoU (best): {best:.4f}[/]")
    checkpoint = summary.get("checkpoint") or summary.get("last_checkpoint")
    console.print(f"checkpoint: {checkpoint or '(none saved)'}")
    if summary.get("preview"):
        console.print(
            f"prediction picture (image | ground truth | prediction): {summary['preview']}"
        )
    console.print(f"run directory: {summary['output_dir']}")


def exit_config_error(err: Exception) -> None:
    """One red line and exit status 2. Module-level on purpose: submitit pickles `main` by value, and
    the rich Console it would otherwise reference holds a lock."""
    kind = "data error" if isinstance(err, DataError) else "config error"
    console.print(f"[bold red]{kind}:[/] {err}", highlight=False)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path="pkg://cgnet.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the best val mIoU so sweepers can optimise it."""
    # Flush subnormal floats before torch starts its CPU thread pool (threads inherit the flag): trained
    # CGNet weights and Adam moments hold many, and they slow CPU kernels down 10-40x.
    torch.set_flush_denormal(True)
    # Keep freed activation buffers in the heap: otherwise every CPU step faults its ~1 GB of
    # activations in page by page again, which made steps 4-20x slower here (cgnet.inference).
    reuse_cpu_memory()
    try:
        summary = run(cfg)
    except (ConfigError, DataError) as err:
        exit_config_error(err)
    finally:
        finish_wandb()  # a multirun's jobs share this process: each job's W&B run ends with it
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        report(summary)
    return summary["val/mIoU_best"]


if __name__ == "__main__":
    # Run main from the importable module, not from __main__: launchers that pickle the task function
    # (hydra/launcher=slurm, submitit_local) can then refer to it by name.
    from cgnet.train import main as _main

    _main()
