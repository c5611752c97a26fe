"""A CSV logger whose curves survive a resume into the same run folder.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so `hydra.run.dir=<run dir>
ckpt_path=last` (the way to continue a killed run in place) would keep the weights and lose every curve
logged before the kill. This writer keeps the old rows instead, dropping only those at or past the first
step the resumed run logs: they were written after the checkpoint, and the resumed run writes them anew.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _ResumingExperimentWriter(ExperimentWriter):
    """Reads an existing metrics.csv on start and merges it in on the first save."""

    def _check_log_dir_exists(self) -> None:
        self._previous: list[dict[str, Any]] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self._previous = list(csv.DictReader(file))

    def save(self) -> None:
        if self._previous is not None and self.metrics:
            first_new_step = min(int(row["step"]) for row in self.metrics)
            kept = [row for row in self._previous if _step(row) < first_new_step]
            keys = set(self.metrics_keys).union(*(row.keys() for row in kept))
            keys.update(*(row.keys() for row in self.metrics))
            self.metrics_keys = sorted(keys)
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._previous = None
        super().save()


def _step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step") or "inf")
    except ValueError:  # a hand-edited or foreign file: keep nothing we cannot place
        return float("inf")


class ResumableCSVLogger(CSVLogger):
    """`pytorch_lightning.loggers.CSVLogger` that appends to a resumed run's metrics.csv."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
