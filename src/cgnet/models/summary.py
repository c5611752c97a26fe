"""Parameters and multiply-adds of CGNet, per stage, counted the way the paper counts them.

Only convolutions and linear layers count (a conv costs output elements x in_channels/groups x kh x kw
multiply-adds; bias, BatchNorm, PReLU, pooling and the final bilinear resize are free), which is how
the 27.05 G at 1024x2048 of the official M=3, N=21 network is measured. The forward pass runs on a
copy of the model on PyTorch's ``meta`` device: only shapes are propagated, so even 1024x2048 costs
no compute and no memory, and the caller's model is untouched.

Command line (a Hydra app; ``model.*`` are the CGNet constructor arguments of conf/model/cgnet.yaml)::

    python -m cgnet.models.summary model.M=3 model.N=21 size=[1024,2048] num_classes=19
"""

from __future__ import annotations

import copy
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn

from cgnet.models.cgnet import CGNet
from cgnet.models.parts import SUMMARY_ROWS

_OUTPUT_ROW = "output (bilinear resize)"


@dataclass(frozen=True)
class StageSummary:
    """One row: a stage's parameters, multiply-adds and output shape (without the batch)."""

    name: str
    params: int
    macs: int
    output_shape: tuple[int, ...] | None


@dataclass(frozen=True)
class ModelSummary:
    """Per-stage costs of one forward pass at ``size`` with ``batch`` images."""

    stages: tuple[StageSummary, ...]
    size: tuple[int, int]
    batch: int
    title: str

    @property
    def total_params(self) -> int:
        return sum(s.params for s in self.stages)

    @property
    def total_macs(self) -> int:
        return sum(s.macs for s in self.stages)

    def stage(self, name: str) -> StageSummary:
        """A row by name (a row of ``parts.SUMMARY_ROWS``, 'output (bilinear resize)' or a child's)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def to_rich_table(self) -> Table:
        """The summary as a rich Table: one row per stage, the total in the footer."""
        h, w = self.size
        table = Table(
            title=f"{self.title} at {self.batch}x3x{h}x{w}",
            show_footer=True,
            title_justify="left",
        )
        total_macs = self.total_macs
        table.add_column("stage", footer="total")
        table.add_column("output (C x H x W)", justify="right")
        table.add_column("params", justify="right", footer=f"{self.total_params:,}")
        table.add_column("GMACs", justify="right", footer=f"{total_macs / 1e9:.2f}")
        table.add_column("share", justify="right", footer="100.0%")
        for s in self.stages:
            shape = "x".join(str(d) for d in s.output_shape) if s.output_shape else "-"
            share = 100.0 * s.macs / total_macs if total_macs else 0.0
            table.add_row(s.name, shape, f"{s.params:,}", f"{s.macs / 1e9:.2f}", f"{share:.1f}%")
        return table

    def format_table(self, width: int = 100) -> str:
        """The rich table as plain text, for logs and reports."""
        console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
        console.print(self.to_rich_table())
        return console.file.getvalue()  # type: ignore[attr-defined]


def _conv_linear_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def summarize(model: nn.Module, size: Sequence[int] = (1024, 2048), batch: int = 1) -> ModelSummary:
    """Count parameters and conv/linear multiply-adds per stage for a ``batch x 3 x H x W`` input.

    Children of the model outside CGNet's known stages get a row of their own, so the total always
    covers the whole model.
    """
    if len(size) != 2 or any(int(v) < 1 for v in size) or int(batch) < 1:
        raise ValueError(
            f"size must be two positive integers and batch >= 1, got {size!r}, {batch!r}"
        )
    height, width = (int(v) for v in size)
    group_of = {child: stage for stage, children in SUMMARY_ROWS.items() for child in children}
    names = [n for n, _ in model.named_children()]
    rows = [s for s in SUMMARY_ROWS if any(c in names for c in SUMMARY_ROWS[s])]
    rows += [n for n in names if n not in group_of]
    params = dict.fromkeys(rows, 0)
    for name, p in model.named_parameters():
        params[group_of.get(name.split(".")[0], name.split(".")[0])] += p.numel()

    shadow = copy.deepcopy(model).to("meta").eval()
    macs = dict.fromkeys(rows, 0)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in shadow.named_modules():
        if not name:
            continue
        row = group_of.get(name.split(".")[0], name.split(".")[0])

        def hook(mod: nn.Module, _: object, out: object, row: str = row) -> None:
            if isinstance(out, torch.Tensor):
                macs[row] += _conv_linear_macs(mod, out)
                shapes[row] = tuple(out.shape[1:])  # the stage's last call is its output

        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        output = shadow(torch.empty(int(batch), 3, height, width, device="meta"))
    for handle in handles:
        handle.remove()

    stages = [StageSummary(r, params[r], macs[r], shapes.get(r)) for r in rows]
    if isinstance(output, torch.Tensor):
        stages.append(StageSummary(_OUTPUT_ROW, 0, 0, tuple(output.shape[1:])))
    if isinstance(model, CGNet):
        title = f"CGNet(num_classes={model.num_classes}, M={model.M}, N={model.N})"
    else:
        title = type(model).__name__
    return ModelSummary(tuple(stages), (height, width), int(batch), title)


@dataclass(frozen=True, kw_only=True)
class SummarySettings:
    """conf/summary.yaml's own keys."""

    size: tuple[int, int]
    num_classes: int
    batch: int


def validate(cfg: DictConfig) -> None:
    from cgnet.config import ConfigError, check_arguments, check_settings, plain

    check_settings(cfg, SummarySettings, groups=("model",))
    check_arguments(plain(cfg.model), CGNet, "model", skip=("num_classes",))
    if min(cfg.size) < 1 or cfg.batch < 1 or cfg.num_classes < 1:
        raise ConfigError(
            f"size, batch, num_classes: expected positive values, got size={list(cfg.size)} "
            f"batch={cfg.batch} num_classes={cfg.num_classes}"
        )
    try:
        CGNet(int(cfg.num_classes), **plain(cfg.model))
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def run(cfg: DictConfig) -> ModelSummary:
    """Print the per-stage table for the configured model and input size."""
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(kwargs, dict)
    model = CGNet(int(cfg.num_classes), **{str(k): v for k, v in kwargs.items()})
    summary = summarize(model, size=tuple(cfg.size), batch=int(cfg.batch))
    # Piped output would get rich's 80-column default and wrapped rows; give it room instead.
    Console(width=None if sys.stdout.isatty() else 120).print(summary.to_rich_table())
    return summary


def main() -> None:
    """`python -m cgnet.models.summary`, through the shared entry layer (imported late: the layer
    sits above the network package)."""
    from cgnet.cli import hydra_command

    hydra_command("summary", validate=validate)(run)()


if __name__ == "__main__":
    from cgnet.models.summary import main as _main

    _main()
