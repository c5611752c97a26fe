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
from pytorch_lightning.utilities import rank_zero_info

from cgnet.errors import ConfigError
from cgnet.losses import SegmentationLoss
from cgnet.metrics import SegmentationConfusionMatrix, scores_from_confmat
from cgnet.models import CGNet, use_cpu_prelu, use_fused_context, use_space_to_batch
from cgnet.nonfinite import NonFiniteWatch
from cgnet.normalization import OFFICIAL_MEAN, OFFICIAL_STD, Normalize

# How often a GPU run reads its device-side non-finite flags (each read is one host sync).
GPU_NONFINITE_CHECK_EVERY = 50

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

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
        cpu_prelu: train the PReLUs on the CPU with a one-pass C++ backward
            (:mod:`cgnet.models.cpu_prelu`): the same input gradients, 10-24x faster than torch's;
            torch's runs if the kernels cannot be built (said once).
        fused_context: on GPUs, run each CG block's f_loc + f_sur (forward and backward) as one
            fused Triton op (:mod:`cgnet.models.context_kernels`); the same results to float
            rounding, and deterministic. Off by default until measured on GPUs (docs/benchmarks.md).
            Before the first step the op is checked against eager on the run's GPU, in float32 and
            the run's half precision; a disagreement is one config error.
        compile: wrap the network's forward in ``torch.compile``.
        compile_mode: ``torch.compile``'s mode: None (default), ``reduce-overhead`` (CUDA graphs of the
            forward and backward: a fixed crop and batch make training's shapes static, and the step is
            launch-bound on large GPUs), ``max-autotune-no-cudagraphs`` or ``max-autotune``.
        on_nonfinite: what a NaN/inf loss does: ``raise`` stops training, ``skip`` drops the batch.
        nonfinite_check_every: read the device-side NaN/inf flags every N steps (one host sync
            each); None: every step on the CPU, every 50 on GPUs, so a GPU step never waits.
            With N > 1, ``raise`` stops at the next read, naming the first bad step and its batch.
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
        cpu_prelu: bool = True,
        fused_context: bool = False,
        compile: bool = False,
        compile_mode: CompileMode | None = None,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        nonfinite_check_every: int | None = None,
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
        self.criterion = SegmentationLoss(weight=weight, ignore_index=ignore_index)
        self.input_norm = Normalize(mean, std)  # non-persistent: checkpoints hold hparams only
        self.register_buffer("best_miou", torch.tensor(float("nan")))
        self.val_confmat = SegmentationConfusionMatrix(num_classes, ignore_index)
        self.test_confmat = SegmentationConfusionMatrix(num_classes, ignore_index)
        self._compiled: Any = None
        self.nonfinite = NonFiniteWatch(nonfinite_check_every or 1)

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
        return self._run_device().type == "cuda" if configured is None else bool(configured)

    def _run_device(self) -> torch.device:
        """Where the module runs: the trainer's device once attached (set before the weights move)."""
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else self.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, H, W] for a uint8 (or already float) RGB batch."""
        x = self.normalize(images)
        if self.hparams.compile and self._compiled is None:
            self._compiled = torch.compile(self.net, mode=self.hparams.get("compile_mode"))
        # `is None`, not `or`: a compiled module refuses truth tests (it has no len())
        net = self.net if self._compiled is None else self._compiled
        return net(x)

    def setup(self, stage: str) -> None:
        """Pick the memory format, the non-finite read interval and the fused ops (the CPU's PReLU
        backward, the GPU's f_loc + f_sur) for the device the run uses: a CPU machine never imports
        triton for a fused_context checkpoint, nor does a GPU run build the C++ kernels.

        This runs before the strategy moves and wraps the module: DDP's gradient buckets must see
        the parameters in their final layout, or every step warns about (and copies) mismatched
        gradient strides.
        """
        if stage == "fit":
            on_gpu = self._run_device().type == "cuda"
            every = self.hparams.get("nonfinite_check_every")
            self.nonfinite = NonFiniteWatch(every or (GPU_NONFINITE_CHECK_EVERY if on_gpu else 1))
            if self.channels_last:
                self.net.to(memory_format=torch.channels_last)
            if not on_gpu and self.hparams.get("cpu_prelu", True):
                use_cpu_prelu(self.net)
            if self.hparams.get("fused_context"):
                if on_gpu:
                    try:
                        use_fused_context(self.net)
                    except ImportError as error:
                        raise ConfigError(f"module.fused_context=true: {error}") from None
                    self._check_fused_context()
                else:
                    rank_zero_info(
                        "module.fused_context: the fused f_loc + f_sur op runs on CUDA only; this "
                        "run trains with the two plain convolutions"
                    )

    def _check_fused_context(self) -> None:
        """Refuse to train with the fused op when it disagrees with eager on this GPU, in float32
        and in the half precision the run trains in (before the first step, not after a diverging
        loss)."""
        from cgnet.models import context_kernels

        trainer = self._trainer  # None outside a Trainer (the property would raise)
        precision = str(trainer.precision) if trainer is not None else "32-true"
        dtypes = [torch.float32]
        if precision.startswith("bf16"):
            dtypes.append(torch.bfloat16)
        elif precision.startswith("16"):
            dtypes.append(torch.float16)
        for dtype in dtypes:
            problem = context_kernels.self_check(self._run_device(), dtype)
            if problem is not None:
                raise ConfigError(
                    f"module.fused_context=true: {problem}; train with module.fused_context=false"
                )

    # ----------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        ids = list(batch.get("id", []))
        self._batch_ids = ids
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        bad = ~torch.isfinite(loss.detach())
        if self.nonfinite.every == 1:
            # read at once (a host sync): the batch can still be dropped before backward
            if bad.item():
                self._nonfinite(f"training loss {loss.item()}")
                return None
        else:
            # no host sync: recorded now, read every N steps (on_train_batch_end); a skipped
            # batch's gradients are zeroed in on_before_optimizer_step
            self.nonfinite.record(bad, self.global_step, "loss", ids)
            if self.hparams.on_nonfinite == "skip":
                loss = torch.where(bad, torch.zeros_like(loss), loss)
        self.log(
            "train/loss_epoch",
            loss,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=len(logits),
        )
        if self._logging_step():
            # host values, once per logged step: a device value shown in the progress bar would
            # be copied to the host (a sync) after every batch
            self.log("train/loss_step", loss.detach().cpu(), on_step=True, prog_bar=True)
            self.log("lr", torch.tensor(self.optimizers().param_groups[0]["lr"]), on_step=True)
        return loss

    def _logging_step(self) -> bool:
        """Whether the trainer writes this step's logs (every ``trainer.log_every_n_steps``): the
        logger connector's own test, so the values logged here are the ones it writes."""
        return bool(self.trainer._logger_connector.should_update_logs)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A finite loss can still give inf/NaN gradients (fp16 overflow, a bad batch): never step on them."""
        if self.trainer.precision == "16-mixed":
            return  # fp16's GradScaler expects overflows and skips those steps itself
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if not grads:
            return
        bad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
        if self.nonfinite.every == 1:
            if bad.item():
                self._nonfinite("gradients")
                optimizer.zero_grad(set_to_none=False)  # skip: a zero update (Adam's moments decay)
            return
        self.nonfinite.record(bad, self.global_step, "gradients", self._batch_ids)
        if self.hparams.on_nonfinite == "skip":
            for grad in grads:  # zero on the device, without asking the host whether to
                grad.masked_fill_(bad, 0.0)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.nonfinite.every > 1 and self.nonfinite.due(self.global_step - 1):
            self._read_nonfinite()

    def on_train_epoch_end(self) -> None:
        if self.nonfinite.every > 1:
            self._read_nonfinite()

    def _read_nonfinite(self) -> None:
        found = self.nonfinite.read()
        if found is not None:
            what = f"training {found.what}" if found.what == "loss" else found.what
            more = f"; {found.count} such steps since the last check" if found.count > 1 else ""
            self._nonfinite(what, found.step, found.ids, more)

    def _nonfinite(
        self,
        what: str,
        step: int | None = None,
        batch_ids: Sequence[str] | None = None,
        more: str = "",
    ) -> None:
        ids = batch_ids if batch_ids is not None else getattr(self, "_batch_ids", [])
        names = ", ".join(map(str, list(ids)[:8])) or "unknown"
        step = self.global_step if step is None else step
        message = f"non-finite {what} at step {step} (batch: {names}){more}"
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
        # the same value on every rank: sync_dist averages identical numbers, and keeps DDP quiet
        self.log("val/mIoU_best", self.best_miou.item(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_confmat)

    def _log_scores(self, stage: str, confmat: SegmentationConfusionMatrix) -> float:
        scores = scores_from_confmat(confmat.compute(), self.hparams.class_to_category)
        confmat.reset()
        # Values are already reduced over ranks by torchmetrics, so every rank logs the same numbers;
        # sync_dist=True (a mean of equal values, once per epoch) is what DDP's logging expects.
        self.log(f"{stage}/mIoU", scores.miou, prog_bar=True, sync_dist=True)
        values = {f"{stage}/pixel_accuracy": scores.pixel_accuracy}
        if scores.miou_category is not None:
            values[f"{stage}/mIoU_category"] = scores.miou_category
        for name, value in zip(self.class_names, scores.iou.tolist(), strict=True):
            if math.isfinite(value):
                values[f"{stage}/iou/{name}"] = value
        self.log_dict(values, sync_dist=True)
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
