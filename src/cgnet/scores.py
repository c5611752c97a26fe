"""How scores are shown and stored: the per-class table, metrics.json, the confusion-matrix picture."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from cgnet.metrics import SegmentationScores


def as_json_number(value: float) -> float | None:
    """NaN (a class absent from ground truth and prediction) becomes JSON null."""
    return None if math.isnan(value) else round(float(value), 6)


def metrics_dict(
    scores: SegmentationScores, class_names: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """The metrics.json document (NaN classes, absent from ground truth and prediction, are null)."""
    return {
        "miou": as_json_number(scores.miou),
        "iou_per_class": {
            name: as_json_number(v)
            for name, v in zip(class_names, scores.iou.tolist(), strict=True)
        },
        "pixel_accuracy": as_json_number(scores.pixel_accuracy),
        "miou_category": None
        if scores.miou_category is None
        else as_json_number(scores.miou_category),
        "settings": settings,
    }


def scores_table(scores: SegmentationScores, class_names: list[str]) -> Table:
    """Per-class IoU, then mIoU, category mIoU and pixel accuracy, in percent."""
    table = Table(title="per-class IoU")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, value in zip(class_names, scores.iou.tolist(), strict=True):
        table.add_row(name, "—" if math.isnan(value) else f"{100 * value:.2f}")
    table.add_section()
    table.add_row("[bold]mIoU", f"[bold]{100 * scores.miou:.2f}")
    if scores.miou_category is not None:
        table.add_row("category mIoU", f"{100 * scores.miou_category:.2f}")
    table.add_row("pixel accuracy", f"{100 * scores.pixel_accuracy:.2f}")
    return table


def save_confusion_matrix(confmat: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (recall per ground-truth class) as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = confmat.double()
    rows = cm.sum(1, keepdim=True).clamp_min(1)
    norm = (cm / rows).numpy()
    size = max(4.0, 0.45 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(np.arange(len(class_names)), class_names, rotation=90)
    ax.set_yticks(np.arange(len(class_names)), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
