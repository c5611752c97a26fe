"""Lightning callbacks that speak CGNet: a progress bar that means what it says, the network's summary.

(W&B's panels and run lifecycle are in :mod:`cgnet.wandb_logging`; RNG states in :mod:`cgnet.rng`.)
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichModelSummary, RichProgressBar
from rich.console import Console

from cgnet.models.summary import summarize


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, labelled by what bounds the run: ``Epoch 3/5`` for an epoch budget,
    ``Epoch 3 · step 120/300`` for a step budget, never ``Epoch 0/-2`` for an unbounded one."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        text = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            text += f"/{trainer.max_epochs - 1}"
        if trainer.max_steps is not None and trainer.max_steps > 0:
            text += f" · step {trainer.global_step}/{trainer.max_steps}"
        width = len(self.validation_description)
        return f"{text:{width}}" if width > len(text) else text


class ModelSummary(RichModelSummary):
    """CGNet's parameters and multiply-adds per stage, for one image at the training crop.

    Lightning's own table counts FLOPs only when the module carries an example input and printed a
    total of 0; this one uses :func:`cgnet.models.summary.summarize` (shapes only, on the meta device,
    so it costs nothing) and counts as the paper does.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._max_depth or not trainer.is_global_zero:
            return
        net: Any = getattr(pl_module, "net", pl_module)
        size = tuple(getattr(trainer.datamodule, "crop_size", None) or (1024, 2048))
        Console(soft_wrap=True).print(summarize(net, size=size).to_rich_table())
