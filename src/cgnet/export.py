"""`python -m cgnet.export ckpt_path=CKPT format=onnx|torchscript`: a deployable CGNet file.

The exported network is the BatchNorm-folded one (:func:`cgnet.inference.fold_network`: same logits,
fewer ops) with dynamic batch, height and width, so one file serves every image size. With
``include_normalization=true`` it takes raw uint8 RGB and subtracts the training mean itself. After
writing, the file is run (onnxruntime / ``torch.jit.load``) at two sizes, one of them odd, and compared
with PyTorch; a mismatch above the tolerance is an error, not a warning.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import hydra
import torch
from omegaconf import DictConfig
from rich.console import Console
from torch import Tensor, nn

from cgnet.checkpoint import load_network
from cgnet.config import ConfigError, check_arguments, plain
from cgnet.inference import fold_network
from cgnet.models import CGNet

ExportFormat = Literal["onnx", "torchscript"]
OFFICIAL_MEAN = (72.39, 82.91, 73.16)
OFFICIAL_STD = (1.0, 1.0, 1.0)
INPUT_NAME, OUTPUT_NAME = "image", "logits"
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}

console = Console(soft_wrap=True)


class Normalize(nn.Module):
    """Takes uint8 RGB ``[B, 3, H, W]`` and feeds ``(x - mean) / std`` to the network, so a deployed
    file needs no preprocessing code beyond decoding the image."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net((images.float() - self.mean) * self.inv_std)


def deployable(
    model: CGNet,
    *,
    include_normalization: bool = False,
    mean: Sequence[float] = OFFICIAL_MEAN,
    std: Sequence[float] = OFFICIAL_STD,
) -> nn.Module:
    """The BN-folded network in eval mode on the CPU, optionally behind :class:`Normalize`."""
    net: nn.Module = fold_network(model.cpu().eval())
    if include_normalization:
        net = Normalize(net, mean, std)
    return net.eval()


def example_input(
    size: Sequence[int], *, uint8: bool, batch: int = 1, seed: int = 0, scale: float = 50.0
) -> Tensor:
    """A reproducible input: raw 0..255 RGB for a normalising file, else ``scale`` times a standard
    normal (50 is about the spread of RGB minus the mean, what the official weights see)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 3, int(size[0]), int(size[1]))
    if uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return torch.randn(shape, generator=gen) * scale


def export_onnx(net: nn.Module, path: str | Path, *, opset: int = 17, uint8: bool = False) -> Path:
    """Write ``net`` as ONNX with dynamic batch, height and width.

    Uses the TorchScript-based exporter: the torch.export-based one needs onnxscript, which is not a
    dependency, and this network has no control flow that would need it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            net,
            (example_input((64, 96), uint8=uint8),),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
            opset_version=opset,
            do_constant_folding=True,
        )
    return path


def export_torchscript(net: nn.Module, path: str | Path, *, uint8: bool = False) -> Path:
    """Write ``net`` traced to TorchScript; shapes are traced as ops, so any size runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(net, (example_input((64, 96), uint8=uint8),), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def run_exported(path: str | Path, format: ExportFormat, images: Tensor) -> Tensor:
    """Logits from an exported file, for checks and for users without this package's model code."""
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {INPUT_NAME: images.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return module(images)


def check_export(
    path: str | Path,
    format: ExportFormat,
    reference: nn.Module,
    sizes: Sequence[Sequence[int]],
    *,
    uint8: bool = False,
    batch: int = 2,
    scale: float = 50.0,
) -> list[dict[str, Any]]:
    """Max logit difference and argmax agreement of the file against ``reference`` per size."""
    rows = []
    for k, size in enumerate(sizes):
        images = example_input(size, uint8=uint8, batch=batch, seed=k + 1, scale=scale)
        with torch.no_grad():
            expected = reference(images)
        got = run_exported(path, format, images)
        if got.shape != expected.shape:
            raise RuntimeError(f"{path}: output {tuple(got.shape)} != {tuple(expected.shape)}")
        rows.append(
            {
                "size": [int(v) for v in size],
                "max_abs_diff": float((got - expected).abs().max()),
                "argmax_agreement": float((got.argmax(1) == expected.argmax(1)).float().mean()),
            }
        )
    return rows


def default_output(ckpt_path: str | Path, format: ExportFormat) -> Path:
    """Next to the checkpoint, same stem, the format's suffix."""
    ckpt = Path(ckpt_path)
    return ckpt.with_name(ckpt.stem + SUFFIX[format])


def export(cfg: DictConfig) -> dict[str, Any]:
    """Load, export, check; returns what was written and the check's figures."""
    if not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path: required (a checkpoint of this project or foreign weights)")
    if cfg.format not in SUFFIX:
        raise ConfigError(f"format: expected one of {sorted(SUFFIX)}, got {cfg.format!r}")
    check_arguments(plain(cfg.model), CGNet, "model", skip=("num_classes",))
    try:
        loaded = load_network(cfg.ckpt_path, cfg.get("num_classes"), plain(cfg.model))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    mean = tuple(cfg.mean) if cfg.get("mean") else loaded.mean or OFFICIAL_MEAN
    std = tuple(cfg.std) if cfg.get("std") else loaded.std or OFFICIAL_STD
    uint8 = bool(cfg.include_normalization)
    net = deployable(loaded.net, include_normalization=uint8, mean=mean, std=std)
    output = Path(cfg.output) if cfg.get("output") else default_output(cfg.ckpt_path, cfg.format)
    if cfg.format == "onnx":
        export_onnx(net, output, opset=int(cfg.opset), uint8=uint8)
    else:
        export_torchscript(net, output, uint8=uint8)
    result: dict[str, Any] = {
        "output": str(output),
        "format": cfg.format,
        "num_classes": loaded.net.num_classes,
        "input": "uint8 RGB 0..255" if uint8 else "float32 (RGB - mean) / std",
        "mean": list(mean),
        "std": list(std),
    }
    if cfg.check:
        reference = loaded.net if not uint8 else Normalize(loaded.net, mean, std).eval()
        rows = check_export(output, cfg.format, reference, cfg.check_sizes, uint8=uint8)
        result["check"] = rows
        worst = max(r["max_abs_diff"] for r in rows)
        if worst > float(cfg.tolerance):
            raise RuntimeError(
                f"{output}: exported logits differ from PyTorch by {worst:.3g} "
                f"(> tolerance {cfg.tolerance})"
            )
    return result


@hydra.main(version_base="1.3", config_path="pkg://cgnet.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: export, check, print one line per check size."""
    torch.set_flush_denormal(True)  # the authors' weights hold subnormal floats
    try:
        result = export(cfg)
    except ConfigError as err:
        console.print(f"[red]config error:[/red] {err}")
        sys.exit(2)
    console.print(
        f"wrote {result['output']} ({result['format']}, {result['num_classes']} classes, "
        f"input {result['input']}, dynamic batch/height/width)"
    )
    for row in result.get("check", []):
        console.print(
            f"  check {row['size'][0]}x{row['size'][1]}: max |diff| {row['max_abs_diff']:.2e}, "
            f"argmax agreement {row['argmax_agreement']:.4%}"
        )


if __name__ == "__main__":
    main()
