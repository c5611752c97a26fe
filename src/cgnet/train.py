"""`python -m cgnet.train`: compose the config, validate it, build data + module + Trainer, fit.

Checkpoints, logs and the preview picture land in Hydra's run directory (``hydra.run.dir=...`` moves it).
The steps read top to bottom; what each builds lives in :mod:`cgnet.training`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console

from cgnet.checkpoint import read_checkpoint
from cgnet.cli import hydra_command, log_to_file
from cgnet.config import build_target
from cgnet.training import (
    build_module,
    build_trainer,
    check_checkpoint_classes,
    load_pretrained,
    resolve_ckpt_path,
    save_preview,
    saved_path,
    validate,
)
from cgnet.wandb_logging import log_run_info

log = logging.getLogger("cgnet.train")


def run(cfg: DictConfig) -> dict[str, Any]:
    """One training job; returns its summary (written to summary.json in the run folder)."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    trust = bool(cfg.get("trust_checkpoint", False))
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    # read the files a run starts from before any data work: a corrupt or unsafe one fails at once
    resumed = read_checkpoint(ckpt_path, trust=trust) if ckpt_path else None
    if cfg.pretrained.path:
        read_checkpoint(Path(cfg.pretrained.path).expanduser(), trust=trust)
    trainer = build_trainer(cfg)  # cheap, and fails early on devices the machine lacks
    datamodule = build_target(cfg.data, "data")
    datamodule.prepare_data()  # before fit, so DDP ranks started later find the data ready
    datamodule.setup("fit")  # finds and checks the files now: bad data fails before any training
    datamodule.check_crop_fits()
    # Seed after data preparation: generating or caching data may draw random numbers, and a run
    # must not depend on whether its data already existed.
    pl.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg, datamodule)
    load_pretrained(cfg, module)
    check_checkpoint_classes(ckpt_path, resumed, module)
    log_run_info(trainer, cfg, module.net)  # W&B only: composed config, parameters, multiply-adds
    summary: dict[str, Any] = {"output_dir": str(output_dir)}
    if cfg.train:
        # Lightning reloads ckpt_path itself: weights only, unless the user trusts the file
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
    elif ckpt_path:  # train=false ckpt_path=X: score X on the val split with the configured devices
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
    summary["metrics"] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))
    }
    summary["steps"] = int(trainer.global_step)
    best_path = next((saved_path(cb) for cb in trainer.checkpoint_callbacks if cb.monitor), "")
    if cfg.train and best_path:
        summary["checkpoint"] = best_path
        state = read_checkpoint(best_path, trust=trust)
        module.load_state_dict(state["state_dict"])
    # checkpoints/last.ckpt is an unmonitored ModelCheckpoint: its "best" is the latest save.
    last_path = next((saved_path(cb) for cb in trainer.checkpoint_callbacks if not cb.monitor), "")
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


def report(summary: dict[str, Any]) -> None:
    """The lines a user looks for at the end of a run, on the console and in the run's log."""
    console = Console(soft_wrap=True)
    best = summary["val/mIoU_best"]
    if math.isnan(best):
        lines = [
            "[bold yellow]no validation ran[/]: it runs every trainer.check_val_every_n_epoch "
            "epochs (or trainer.val_check_interval); lower it or train longer to get a val mIoU "
            "and a best.ckpt"
        ]
    else:
        lines = [f"[bold green]final val mIoU (best): {best:.4f}[/]"]
    checkpoint = summary.get("checkpoint") or summary.get("last_checkpoint")
    lines.append(f"checkpoint: {checkpoint or '(none saved)'}")
    if summary.get("preview"):
        lines.append(
            f"prediction picture (image | ground truth | prediction): {summary['preview']}"
        )
    lines.append(f"run directory: {summary['output_dir']}")
    for line in lines:
        console.print(line, highlight=False)
    log_to_file(Console().render_str(line).plain for line in lines)


def train(cfg: DictConfig) -> float:
    """Train, report, and return the best val mIoU (what a sweeper optimises)."""
    summary = run(cfg)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        report(summary)
    return summary["val/mIoU_best"]


main = hydra_command("train", validate=validate)(train)


if __name__ == "__main__":
    # Run main from the importable module, not from __main__: launchers that pickle the task function
    # (hydra/launcher=slurm, submitit_local) can then refer to it by name.
    from cgnet.train import main as _main

    _main()
