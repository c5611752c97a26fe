"""`python -m cgnet.eval ckpt_path=CKPT data=cityscapes split=val`: mIoU as the benchmark computes it.

Writes metrics.json (miou, iou_per_class, pixel_accuracy, miou_category, settings) and
confusion_matrix.png into the run directory and prints a per-class table.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.progress import track
from rich.table import Table

from cgnet.checkpoint import load_network
from cgnet.config import ConfigError, check_arguments, check_target_node, plain
from cgnet.metrics import SegmentationConfusionMatrix, SegmentationScores, scores_from_confmat
from cgnet.models import CGNet
from cgnet.predictor import TTA, Predictor, pick_device

console = Console(soft_wrap=True)


def build_data(cfg: DictConfig) -> Any:
    """The configured DataModule, reading ``cfg.split`` through its whole-image validation loader."""
    check_target_node(cfg.data, "data")
    check_arguments(plain(cfg.model), CGNet, "model", skip=("num_classes",))
    with open_dict(cfg.data):
        cfg.data.val_split = cfg.split
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("validate")
    return datamodule


def build_predictor(cfg: DictConfig, datamodule: Any) -> Predictor:
    """Network from any checkpoint format, on the chosen device, with the chosen TTA."""
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path: required (a checkpoint of this project or the authors' weights)"
        )
    try:
        loaded = load_network(cfg.ckpt_path, datamodule.num_classes, plain(cfg.model))
        tta = TTA.from_config(plain(cfg.tta))
        device = pick_device(cfg.device)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    console.print(f"loaded {loaded.format} weights from {loaded.source}")
    return Predictor(
        loaded, mean=datamodule.mean, std=datamodule.std, device=device, tta=tta, fast=cfg.fast
    )


def evaluate(predictor: Predictor, datamodule: Any) -> tuple[torch.Tensor, int]:
    """Accumulate the split's confusion matrix; returns it and the number of images."""
    confmat = SegmentationConfusionMatrix(datamodule.num_classes, datamodule.ignore_index)
    confmat = confmat.to(predictor.device)
    count = 0
    loader = datamodule.val_dataloader()
    for batch in track(loader, description="evaluating", console=console, transient=True):
        pred = predictor(batch["image"])
        confmat.update(pred, batch["mask"].to(predictor.device))
        count += len(pred)
    return confmat.compute().cpu(), count


def as_json_number(value: float) -> float | None:
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


def print_table(scores: SegmentationScores, class_names: list[str]) -> None:
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
    console.print(table)


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


def run(cfg: DictConfig) -> dict[str, Any]:
    datamodule = build_data(cfg)
    predictor = build_predictor(cfg, datamodule)
    confmat, count = evaluate(predictor, datamodule)
    scores = scores_from_confmat(confmat, datamodule.info.class_to_category)
    class_names = list(datamodule.class_names)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    settings = {
        "ckpt_path": str(cfg.ckpt_path),
        "data": OmegaConf.select(cfg, "data._target_"),
        "root": str(getattr(datamodule, "root", OmegaConf.select(cfg, "data.root"))),
        "split": cfg.split,
        "images": count,
        "tta": plain(cfg.tta),
        "fast": bool(cfg.fast),
        "device": str(predictor.device),
    }
    doc = metrics_dict(scores, class_names, settings)
    (output_dir / "metrics.json").write_text(json.dumps(doc, indent=2))
    torch.save(confmat, output_dir / "confusion_matrix.pt")
    if cfg.save_confusion_matrix:
        save_confusion_matrix(confmat, class_names, output_dir / "confusion_matrix.png")
    print_table(scores, class_names)
    console.print(f"metrics: {output_dir / 'metrics.json'}")
    return doc


@hydra.main(version_base="1.3", config_path="pkg://cgnet.conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    torch.set_flush_denormal(True)  # before the CPU thread pool starts; see cgnet.train
    try:
        return run(cfg)["miou"]
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {err}")
        sys.exit(2)


if __name__ == "__main__":
    main()
