"""Test-only Lightning callbacks that simulate faults inside a real `python -m cgnet.train` process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process when training reaches ``step`` (no cleanup, like a pre-empted node),
    and record the step each fit starts from in ``record`` (a JSON list)."""

    def __init__(self, record: str, step: int | None = None) -> None:
        self.step, self.record = step, Path(record)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        starts = json.loads(self.record.read_text()) if self.record.exists() else []
        self.record.write_text(json.dumps([*starts, trainer.global_step]))

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self.step is not None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
