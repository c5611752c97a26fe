"""`python -m cgnet.eval ckpt_path=CKPT data=cityscapes split=val`: mIoU as the benchmark computes it.

Writes metrics.json (miou, iou_per_class, pixel_accuracy, miou_category, settings), confusion_matrix.pt
and confusion_matrix.png into the run directory and prints a per-class table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import track

from cgnet.cli import hydra_command
from cgnet.config import plain
from cgnet.inference.loading import (
    TestTimeSettings,
    build_predictor,
    check_test_time,
    load_checkpoint_and_data,
)
from cgnet.inference.predictor import Predictor
from cgnet.metrics import SegmentationConfusionMatrix, scores_from_confmat
from cgnet.scores import metrics_dict, save_confusion_matrix, scores_table

console = Console(soft_wrap=True)


@dataclass(kw_only=True)
class EvalSettings(TestTimeSettings):
    """conf/eval.yaml's own keys."""

    save_confusion_matrix: bool


def validate(cfg: DictConfig) -> None:
    check_test_time(cfg, EvalSettings)


def confusion_matrix(predictor: Predictor, datamodule: Any) -> tuple[torch.Tensor, int]:
    """The split's confusion matrix and its number of images."""
    confmat = SegmentationConfusionMatrix(datamodule.num_classes, datamodule.ignore_index)
    confmat = confmat.to(predictor.device)
    count = 0
    loader = datamodule.val_dataloader()
    for batch in track(loader, description="evaluating", console=console, transient=True):
        pred = predictor(batch["image"])
        confmat.update(pred, batch["mask"].to(predictor.device))
        count += len(pred)
    return confmat.compute().cpu(), count


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score a checkpoint on a split; returns the metrics.json document."""
    loaded, datamodule = load_checkpoint_and_data(cfg)
    predictor = build_predictor(cfg, loaded, datamodule)
    console.print(f"loaded {loaded.format} weights from {loaded.source}")
    confmat, count = confusion_matrix(predictor, datamodule)
    scores = scores_from_confmat(confmat, datamodule.info.class_to_category)
    class_names = list(datamodule.class_names)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    settings = {
        "ckpt_path": str(cfg.ckpt_path),
        "data": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
        "root": str(getattr(datamodule, "root", None)),
        "split": cfg.split,
        "images": count,
        "tta": plain(cfg.tta),
        "fast": bool(cfg.fast),
        "precision": str(cfg.get("precision", "fp32")),
        "device": str(predictor.device),
    }
    doc = metrics_dict(scores, class_names, settings)
    (output_dir / "metrics.json").write_text(json.dumps(doc, indent=2))
    torch.save(confmat, output_dir / "confusion_matrix.pt")
    if cfg.save_confusion_matrix:
        save_confusion_matrix(confmat, class_names, output_dir / "confusion_matrix.png")
    console.print(scores_table(scores, class_names))
    console.print(f"metrics: {output_dir / 'metrics.json'}")
    return doc


main = hydra_command("eval", validate=validate)(run)


if __name__ == "__main__":
    from cgnet.eval import main as _main

    _main()
