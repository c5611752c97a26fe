"""`python -m cgnet.export ckpt_path=CKPT format=onnx|torchscript`: a deployable, self-describing file.

The exported network is the BatchNorm-folded one (:func:`cgnet.inference.fold_network`: same logits,
fewer ops) with dynamic batch, height and width, so one file serves every image size. With
``include_normalization=true`` it takes raw uint8 RGB and normalises itself. The file says how to use
it (:mod:`cgnet.deploy`). After writing, the file is run (onnxruntime / ``torch.jit.load``) at two
sizes, one of them odd, and compared with PyTorch; a mismatch above the tolerance is an error, not a
warning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from cgnet.checkpoint import load_network
from cgnet.cli import hydra_command
from cgnet.config import ConfigError, check_arguments, check_settings, plain
from cgnet.deploy import (
    METADATA_FILE,
    SUFFIX,
    ExportFormat,
    check_export,
    deployable,
    export_onnx,
    export_torchscript,
    file_metadata,
)
from cgnet.models import CGNet
from cgnet.normalization import OFFICIAL_MEAN, OFFICIAL_STD, NormalizedNetwork

console = Console(soft_wrap=True)


@dataclass(frozen=True, kw_only=True)
class ExportSettings:
    """conf/export.yaml's own keys."""

    ckpt_path: str | None
    num_classes: int | None
    format: ExportFormat
    output: str | None
    opset: int
    include_normalization: bool
    mean: list[float] | None
    std: list[float] | None
    check: bool
    check_sizes: list[list[int]]
    tolerance: float
    trust_checkpoint: bool


def validate(cfg: DictConfig) -> None:
    if not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path: required (a checkpoint of this project or foreign weights)")
    if cfg.get("format") not in SUFFIX:
        raise ConfigError(f"format: expected one of {sorted(SUFFIX)}, got {cfg.get('format')!r}")
    check_settings(cfg, ExportSettings, groups=("model",))
    check_arguments(plain(cfg.model), CGNet, "model", skip=("num_classes",))
    for key in ("mean", "std"):
        values = cfg.get(key)
        if values is not None and len(values) != 3:
            raise ConfigError(f"{key}: expected 3 values (RGB), got {list(values)}")
    if any(len(s) != 2 or min(s) < 1 for s in cfg.check_sizes):
        raise ConfigError(
            f"check_sizes: expected [[H, W], ...] of positive sizes, got {cfg.check_sizes}"
        )


def default_output(ckpt_path: str | Path, format: ExportFormat) -> Path:
    """Next to the checkpoint, same stem, the format's suffix."""
    ckpt = Path(ckpt_path)
    return ckpt.with_name(ckpt.stem + SUFFIX[format])


def export(cfg: DictConfig) -> dict[str, Any]:
    """Load, export with metadata, check; returns what was written, its metadata and the check's
    figures."""
    validate(cfg)
    loaded = load_network(
        cfg.ckpt_path,
        cfg.get("num_classes"),
        plain(cfg.model),
        trust=bool(cfg.get("trust_checkpoint", False)),
    )
    mean = tuple(cfg.mean) if cfg.get("mean") else loaded.mean or OFFICIAL_MEAN
    std = tuple(cfg.std) if cfg.get("std") else loaded.std or OFFICIAL_STD
    uint8 = bool(cfg.include_normalization)
    hparams = loaded.hparams
    metadata = file_metadata(
        num_classes=loaded.net.num_classes,
        mean=mean,
        std=std,
        include_normalization=uint8,
        class_names=hparams.get("class_names"),
        ignore_index=hparams.get("ignore_index"),
        # a project checkpoint built its net from its own settings; foreign weights from cfg.model
        model=hparams.get("model") if "num_classes" in hparams else plain(cfg.model),
        source=cfg.ckpt_path,
    )
    net = deployable(loaded.net, include_normalization=uint8, mean=mean, std=std)
    output = Path(cfg.output) if cfg.get("output") else default_output(cfg.ckpt_path, cfg.format)
    if cfg.format == "onnx":
        export_onnx(net, output, opset=int(cfg.opset), uint8=uint8, metadata=metadata)
    else:
        export_torchscript(net, output, uint8=uint8, metadata=metadata)
    result: dict[str, Any] = {
        "output": str(output),
        "format": cfg.format,
        "num_classes": loaded.net.num_classes,
        "input": "uint8 RGB 0..255" if uint8 else "float32 (RGB - mean) / std",
        "mean": list(mean),
        "std": list(std),
        "metadata": metadata,
    }
    if cfg.check:
        reference = NormalizedNetwork(loaded.net, mean, std).eval() if uint8 else loaded.net
        # float inputs as spread as normalised RGB is: about 50 / std (50 with the official std 1)
        scale = 50.0 * len(std) / sum(std)
        rows = check_export(
            output, cfg.format, reference, cfg.check_sizes, uint8=uint8, scale=scale
        )
        result["check"] = rows
        worst = max(r["max_abs_diff"] for r in rows)
        if worst > float(cfg.tolerance):
            raise RuntimeError(
                f"{output}: exported logits differ from PyTorch by {worst:.3g} "
                f"(> tolerance {cfg.tolerance})"
            )
    return result


def summary(result: Mapping[str, Any]) -> list[str]:
    """A few lines on what the written file expects and returns, and how to read its metadata."""
    meta = result["metadata"]
    names = json.loads(meta["class_names"])
    reader = (
        "onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map"
        if result["format"] == "onnx"
        else f'torch.jit.load(path, _extra_files={{"{METADATA_FILE}": ""}})'
    )
    return [
        f"{result['output']} describes itself (read with {reader}):",
        f"  input   {meta['input_format']}",
        f"  mean    {meta['mean']}, std {meta['std']}",
        f"  classes {len(names)}: {', '.join(names)}",
    ]


def report(result: Mapping[str, Any]) -> None:
    """One line per check size and what the file says about itself."""
    console.print(
        f"wrote {result['output']} ({result['format']}, {result['num_classes']} classes, "
        f"input {result['input']}, dynamic batch/height/width)"
    )
    for row in result.get("check", []):
        console.print(
            f"  check {row['size'][0]}x{row['size'][1]}: max |diff| {row['max_abs_diff']:.2e}, "
            f"argmax agreement {row['argmax_agreement']:.4%}"
        )
    for line in summary(result):
        console.print(line, markup=False, highlight=False)


def run(cfg: DictConfig) -> dict[str, Any]:
    result = export(cfg)
    report(result)
    return result


main = hydra_command("export", validate=validate)(run)


if __name__ == "__main__":
    from cgnet.export import main as _main

    _main()
