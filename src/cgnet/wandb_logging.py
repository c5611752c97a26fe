"""Weights & Biases for training runs: run names and groups, the run's config, panels, finishing.

What a W&B run of ``python -m cgnet.train logger=wandb`` shows, and where it comes from:

- the whole composed config, the Hydra overrides, parameters and multiply-adds: :func:`log_run_info`,
  called by ``cgnet.train.run`` once the Trainer exists;
- train/val curves: logged by :class:`cgnet.module.SegmentationModule` through the WandbLogger;
- a per-class IoU table (and bar chart) and a small panel of predictions as W&B segmentation masks
  after every validation: :class:`WandbValidationLogger`, a callback that does nothing unless a
  WandbLogger is attached, so it can stay in the default callbacks;
- checkpoints as artifacts: the logger's own ``log_model`` (``logger.wandb.log_model=true``).

Hydra runs every job of a multirun in the same process, and ``WandbLogger`` reuses whatever run is
still open, so :func:`finish_wandb` closes the run at the end of each job; the ``cgnet_wandb_group``
resolver groups a sweep's runs under the sweep folder's name.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from cgnet.config import ConfigError
from cgnet.models.summary import summarize

__all__ = [
    "WandbValidationLogger",
    "finish_wandb",
    "log_run_info",
    "wandb_group",
    "wandb_loggers",
    "wandb_name",
]


# ------------------------------------------------------------------------------ names and groups
def _hydra() -> DictConfig | None:
    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_multirun(hydra_cfg: DictConfig) -> bool:
    return hydra_cfg.mode == RunMode.MULTIRUN


def wandb_group() -> str | None:
    """The sweep folder's name in a multirun (so a sweep is one W&B group), None for a single run."""
    hydra_cfg = _hydra()
    if hydra_cfg is None or not _is_multirun(hydra_cfg):
        return None
    return Path(str(hydra_cfg.sweep.dir)).name


def wandb_name() -> str | None:
    """A run name that points back to its folder.

    Single run: the run folder's name. Multirun job: ``job<num>`` plus the values the sweeper chose
    for its declared parameters (``hparams_search=...``), e.g. ``job3 model.M=6 model.N=9``.
    """
    hydra_cfg = _hydra()
    if hydra_cfg is None:
        return None
    if not _is_multirun(hydra_cfg):
        return Path(str(hydra_cfg.runtime.output_dir)).name
    swept = set((hydra_cfg.sweeper.get("params") or {}).keys())
    chosen = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    return " ".join([f"job{hydra_cfg.job.num}", *chosen])


# ------------------------------------------------------------------------------ run lifecycle
def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    """The trainer's WandbLoggers (usually none or one)."""
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _live_run(logger: WandbLogger) -> Any | None:
    """The logger's wandb run on rank 0, or None where nothing would be recorded (disabled, rank > 0)."""
    if rank_zero_only.rank != 0:  # other ranks get a dummy experiment
        return None
    import wandb

    try:
        run = logger.experiment
    except wandb.errors.UsageError as err:  # online without an account: say what to do instead
        raise ConfigError(
            f"logger.wandb: {err} Or log locally with WANDB_MODE=offline and upload later with "
            "`wandb sync` (docs/experiments.md); WANDB_MODE=disabled turns W&B off."
        ) from None
    return None if getattr(run, "disabled", False) else run  # WANDB_MODE=disabled: a NoopRun


def log_run_info(
    trainer: pl.Trainer, cfg: DictConfig, net: torch.nn.Module, size: Sequence[int] | None = None
) -> None:
    """Record the composed config, the Hydra overrides and the network's size in each W&B run.

    Parameters and multiply-adds are counted at ``size`` (default: the data's crop size) so runs of
    a sweep can be compared on the dashboard's scatter plots. Does nothing without a WandbLogger.
    """
    if not trainer.is_global_zero:
        return
    runs = [run for logger in wandb_loggers(trainer) if (run := _live_run(logger)) is not None]
    if not runs:  # no WandbLogger, or WANDB_MODE=disabled
        return
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    hydra_cfg = _hydra()
    if hydra_cfg is not None:
        config["overrides"] = list(hydra_cfg.overrides.task)
        config["output_dir"] = str(hydra_cfg.runtime.output_dir)
    if size is None:
        size = tuple(cfg.data.get("crop_size") or (1024, 2048))
    cost = summarize(net, size)
    config["complexity"] = {
        "params": cost.total_params,
        "macs": cost.total_macs,
        "gmacs": round(cost.total_macs / 1e9, 4),
        "size": [int(v) for v in size],
    }
    for run in runs:
        run.config.update(config, allow_val_change=True)
        run.summary["model/params"] = cost.total_params
        run.summary["model/GMACs"] = cost.total_macs / 1e9


def finish_wandb() -> None:
    """Finish the open W&B run, if any; call it in a ``finally`` at the end of every job.

    An exception on its way out marks the run failed (exit code 1, or SystemExit's code).
    """
    wandb = sys.modules.get("wandb")  # never import wandb just to find that nothing is open
    if wandb is None or wandb.run is None:
        return
    error = sys.exc_info()[1]
    if error is None:
        code = 0
    elif isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
    else:
        code = 1
    wandb.finish(exit_code=code)


# ------------------------------------------------------------------------------ validation panels
def _shrink(array: np.ndarray, scale: float, interpolation: int = cv2.INTER_NEAREST) -> np.ndarray:
    """Downscale by ``scale`` (<= 1); label maps keep nearest-neighbour so no new ids appear."""
    if scale >= 1.0:
        return array
    h, w = array.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=interpolation)


class WandbValidationLogger(pl.Callback):
    """After each validation: a per-class IoU table + bar chart and a panel of predictions in W&B.

    The panel shows the first ``num_images`` validation images (the same ones every time, so they
    can be compared across epochs) with ground truth and prediction as W&B segmentation masks
    carrying the class names; images are shrunk to ``max_side`` pixels on their longer side.
    Without a WandbLogger (or with WANDB_MODE=disabled) every hook returns at once.

    Args:
        num_images: validation images in the panel (0 turns the panel off).
        max_side: longer side of the logged pictures, in pixels.
        iou_table: log the per-class IoU table and bar chart.
    """

    def __init__(self, num_images: int = 4, max_side: int = 512, iou_table: bool = True) -> None:
        super().__init__()
        if num_images < 0 or max_side < 1:
            raise ValueError(
                f"num_images must be >= 0 and max_side >= 1, got {num_images}, {max_side}"
            )
        self.num_images = num_images
        self.max_side = max_side
        self.iou_table = iou_table
        self._images: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []
        self._ids: list[str] = []

    def _active(self, trainer: pl.Trainer) -> bool:
        return (
            bool(wandb_loggers(trainer)) and trainer.is_global_zero and not trainer.sanity_checking
        )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._images, self._masks, self._ids = [], [], []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if len(self._images) >= self.num_images or not self._active(trainer):
            return
        take = self.num_images - len(self._images)
        images, masks = batch["image"][:take], batch["mask"][:take]
        ids = list(batch.get("id") or [])[:take]
        self._images += list(images.detach().cpu())
        self._masks += list(masks.detach().cpu())
        self._ids += [str(i) for i in ids] + [""] * (len(images) - len(ids))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        runs = [run for lg in wandb_loggers(trainer) if (run := _live_run(lg)) is not None]
        if not runs:
            return
        import wandb  # a WandbLogger exists, so wandb is installed

        names = list(getattr(pl_module, "class_names", []))
        payload: dict[str, Any] = {}
        if self.iou_table and names:
            table = self.iou_table_for(trainer.callback_metrics, names)
            payload["val/iou_table"] = table
            payload["val/iou_bar"] = wandb.plot.bar(
                table, "class", "IoU", title="val IoU per class"
            )
        if self._images:
            payload["val/predictions"] = self.prediction_panel(pl_module, names)
        if payload:
            payload["trainer/global_step"] = trainer.global_step
            for run in runs:
                run.log(payload)
        self._images, self._masks, self._ids = [], [], []

    @staticmethod
    def iou_table_for(metrics: Mapping[str, Any], class_names: Sequence[str]) -> Any:
        """wandb.Table(class, IoU) from the logged ``val/iou/<class>``; None for unscored classes."""
        import wandb

        rows = []
        for name in class_names:
            value = metrics.get(f"val/iou/{name}")
            value = float(value) if value is not None else math.nan
            rows.append([name, value if math.isfinite(value) else None])
        return wandb.Table(columns=["class", "IoU"], data=rows)

    @torch.no_grad()
    def prediction_panel(
        self, pl_module: pl.LightningModule, class_names: Sequence[str]
    ) -> list[Any]:
        """wandb.Images of the kept validation images with ground-truth and prediction masks."""
        import wandb

        was_training = pl_module.training
        pl_module.eval()
        labels = {i: name for i, name in enumerate(class_names)}
        labels[int(pl_module.hparams.get("ignore_index", 255))] = "ignore"
        pictures = []
        for image, mask, sample_id in zip(self._images, self._masks, self._ids, strict=True):
            logits = pl_module(image.unsqueeze(0).to(pl_module.device))
            pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
            rgb = image.permute(1, 2, 0).numpy().astype(np.uint8)
            scale = min(1.0, self.max_side / max(rgb.shape[:2]))
            rgb = _shrink(rgb, scale, cv2.INTER_AREA)
            masks = {
                "ground_truth": {
                    "mask_data": _shrink(mask.numpy().astype(np.uint8), scale),
                    "class_labels": labels,
                },
                "prediction": {
                    "mask_data": _shrink(pred, scale),
                    "class_labels": labels,
                },
            }
            pictures.append(wandb.Image(rgb, masks=masks, caption=sample_id or None))
        pl_module.train(was_training)
        return pictures
