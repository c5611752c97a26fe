"""The LightningModule: CGNet + weighted cross-entropy + the paper's optimiser and poly schedule.

It takes only primitive arguments and builds the network itself (as torchgeo's tasks do), so
``SegmentationModule.load_from_checkpoint(path)`` works in any script or notebook without Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from cgnet.metrics import SegmentationConfusionMatrix, scores_from_confmat
from cgnet.models import CGNet, use_space_to_batch
from cgnet.normalization import OFFICIAL_MEAN, OFFICIAL_STD, Normalize

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


@dataclass(frozen=True)
class SchedulerConfig:
    """The lr schedule: ``poly`` (per iteration, the paper's) or ``none`` (constant lr)."""

    name: Literal["poly", "none"] = "poly"
    power: float = 0.9
    min_lr: float = 0.0


def poly_factor(step: int, total: int, power: float, base_lr: float, min_lr: float) -> float:
    """Multiplier of the base lr after ``step`` of ``total`` iterations: (1 - t/T)^power down to min_lr."""
    progress = min(step, total) / max(total, 1)
    return ((base_lr - min_lr) * (1.0 - progress) ** power + min_lr) / base_lr


class SegmentationModule(pl.LightningModule):
    """Trains and evaluates CGNet on dense labels (trainIds, ``ignore_index`` skipped).

    Args:
        num_classes: classes of the dataset (the classifier's outputs).
        class_names: names for logged per-class IoU (``val/iou/<name>``).
        model: keyword arguments of :class:`cgnet.models.CGNet` (M, N and the ablation switches).
        class_weights: cross-entropy weights per class, or None for unweighted.
        ignore_index: label value that is neither trained on nor scored.
        mean, std: per-channel normalisation of the raw 0..255 RGB batches, applied on the device.
        optimizer: ``name`` (adam | adamw | sgd) plus that torch optimiser's keyword arguments.
        scheduler: ``name`` (poly | none) plus ``power`` and ``min_lr``; poly steps every iteration.
        class_to_category: category index per class, to log Cityscapes' category mIoU.
        channels_last: run the network in channels-last memory format; None (the default) does
            so on GPUs only: CPU training steps are faster in NCHW (docs/benchmarks.md).
        space_to_batch: train f_sur's dilated convolutions on the CPU in their space-to-batch
            form (:mod:`cgnet.models.space_to_batch`): exact, and 1.2x faster per step there.
        compile: wrap the network's forward in ``torch.compile``.
        on_nonfinite: what a NaN/inf loss does: ``raise`` stops training, ``skip`` drops the batch.
        data: the data config the module was trained on (``_target_`` and its arguments), kept in
            checkpoints so eval and predict score a checkpoint on the data it was validated on.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        model: Mapping[str, Any] | None = None,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = OFFICIAL_MEAN,
        std: Sequence[float] = OFFICIAL_STD,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        class_to_category: Sequence[int] | None = None,
        channels_last: bool | None = None,
        space_to_batch: bool = True,
        compile: bool = False,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = CGNet(num_classes, **dict(model or {}))
        use_space_to_batch(self.net, space_to_batch)
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for {num_classes} classes"
            )
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(
                f"class_weights has {len(class_weights)} values for {num_classes} classes"
            )
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.input_norm = Normalize(mean, std)  # non-persistent: checkpoints hold hparams only
        self.register_buffer("best_miou", torch.tensor(float("nan")))
        self.val_confmat = SegmentationConfusionMatrix(num_classes, ignore_index)
        self.test_confmat = SegmentationConfusionMatrix(num_classes, ignore_index)
        self._compiled: Any = None

    # ----------------------------------------------------------------------------------- forward
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB [B, 3, H, W] -> the float input the authors' weights expect."""
        x = self.input_norm(images)
        # batches arrive channels-last from collate: pick the network's format explicitly
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    @property
    def channels_last(self) -> bool:
        """Whether the network runs channels-last: as configured, or on GPUs only when unset."""
        configured = self.hparams.get("channels_last")
        return self.device.type == "cuda" if configured is None else bool(configured)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, H, W] for a uint8 (or already float) RGB batch."""
        x = self.normalize(images)
        if self.hparams.compile and self._compiled is None:
            self._compiled = torch.compile(self.net)
        return (self._compiled or self.net)(x)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    # ----------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self._batch_ids = list(batch.get("id", []))
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        if not torch.isfinite(loss):
            self._nonfinite(f"training loss {loss.item()}")
            return None
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits)
        )
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, prog_bar=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A finite loss can still give inf/NaN gradients (fp16 overflow, a bad batch): never step on them."""
        if self.trainer.precision == "16-mixed":
            return  # fp16's GradScaler expects overflows and skips those steps itself
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            self._nonfinite("gradients")
            optimizer.zero_grad(
                set_to_none=False
            )  # skip: a zero update (Adam's moments still decay)

    def _nonfinite(self, what: str) -> None:
        ids = ", ".join(map(str, getattr(self, "_batch_ids", [])[:8])) or "unknown"
        message = f"non-finite {what} at step {self.global_step} (batch: {ids})"
        if self.hparams.on_nonfinite == "raise":
            raise FloatingPointError(
                f"{message}; set module.on_nonfinite=skip to drop such batches"
            )
        self.print(f"skipping: {message}")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"])
        self.val_confmat.update(logits, batch["mask"])
        loss = self.criterion(logits, batch["mask"])
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(logits))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_confmat.update(self(batch["image"]), batch["mask"])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"id": batch.get("id"), "pred": self(batch["image"]).argmax(1).to(torch.uint8)}

    def on_validation_epoch_end(self) -> None:
        miou = self._log_scores("val", self.val_confmat)
        if math.isfinite(miou) and not (self.best_miou >= miou):
            self.best_miou.fill_(miou)
        self.log("val/mIoU_best", self.best_miou.item(), sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_confmat)

    def _log_scores(self, stage: str, confmat: SegmentationConfusionMatrix) -> float:
        scores = scores_from_confmat(confmat.compute(), self.hparams.class_to_category)
        confmat.reset()
        # Values are already reduced over ranks by torchmetrics; log them as plain floats.
        self.log(f"{stage}/mIoU", scores.miou, prog_bar=True)
        self.log(f"{stage}/pixel_accuracy", scores.pixel_accuracy)
        if scores.miou_category is not None:
            self.log(f"{stage}/mIoU_category", scores.miou_category)
        for name, value in zip(self.class_names, scores.iou.tolist(), strict=True):
            if math.isfinite(value):
                self.log(f"{stage}/iou/{name}", value)
        return scores.miou

    # ----------------------------------------------------------------------------------- optim
    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg = dict(self.hparams.optimizer or {"name": "adam", "lr": 1e-3, "weight_decay": 5e-4})
        name = opt_cfg.pop("name", "adam")
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
        optimizer = OPTIMIZERS[name](self.net.parameters(), **opt_cfg)
        sched = SchedulerConfig(**dict(self.hparams.scheduler or {}))
        if sched.name == "none":
            return {"optimizer": optimizer}
        total = int(self.trainer.estimated_stepping_batches)
        base_lr, power, min_lr = float(opt_cfg["lr"]), float(sched.power), float(sched.min_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: poly_factor(step, total, power, base_lr, min_lr)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
