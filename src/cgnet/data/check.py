"""`python -m cgnet.data.check data=... data.root=...`: is this dataset tree usable for training?

Scans the chosen splits the way training reads them (pairing, decoding, sizes, id values), prints the
images per split, the class pixel histogram and every problem found, and exits with status 1 if there
was any problem, so it can gate a job script.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cgnet.cli import hydra_command
from cgnet.config import ConfigError, build_target, check_settings, check_target_node
from cgnet.data.datamodule import SegmentationDataModule
from cgnet.data.errors import DataError
from cgnet.data.labels import IGNORE_INDEX
from cgnet.data.stats import iter_stats


@dataclass
class SplitReport:
    name: str
    images: int = 0
    unlabelled: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    problems: list[str] = field(default_factory=list)


def scan(
    datamodule: SegmentationDataModule, splits: list[str], num_workers: int, console: Console
) -> tuple[list[SplitReport], list[str]]:
    """Reports per split, plus problems that stop the scan before any split (e.g. no root)."""
    try:
        if hasattr(datamodule, "generate"):
            datamodule.generate()  # synthetic data: make it first, like training would
        root = datamodule.resolve_root()
    except DataError as error:
        return [], [str(error)]
    if not root.is_dir():  # one message (with the expected layout), not one per split
        return [], datamodule.scan_split(root, splits[0] if splits else "train").problems
    reports = []
    for split in splits:
        report = SplitReport(split)
        found = datamodule.scan_split(root, split)
        report.problems.extend(found.problems)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{split}: checking", total=len(found.samples))
            for item in iter_stats(
                found.samples, datamodule.label_luts, check_images=True, num_workers=num_workers
            ):
                progress.advance(task)
                report.images += 1
                if item.problem is not None:
                    report.problems.append(item.problem)
                elif item.counts is None:
                    report.unlabelled += 1
                else:
                    report.counts += item.counts
        reports.append(report)
    return reports, []


def render(
    datamodule: SegmentationDataModule,
    reports: list[SplitReport],
    problems: list[str],
    console: Console,
    max_problems: int,
) -> None:
    info = datamodule.info
    if not reports:
        console.print(f"{info.name} at {_root_text(datamodule)}")
    splits = Table(title=f"{info.name} at {_root_text(datamodule)}")
    for column in ("split", "images", "without labels", "problems"):
        splits.add_column(column, justify="left" if column == "split" else "right")
    for r in reports:
        splits.add_row(r.name, str(r.images), str(r.unlabelled), str(len(r.problems)))
    if reports:
        console.print(splits)
    if any(r.images for r in reports):
        hist = Table(title="class pixel histogram (share of labelled pixels)")
        hist.add_column("trainId", justify="right")
        hist.add_column("class")
        for r in reports:
            hist.add_column(r.name, justify="right")
        rows = [(str(i), name, i) for i, name in enumerate(info.class_names)]
        rows.append((str(IGNORE_INDEX), "(ignored)", IGNORE_INDEX))
        for train_id, name, index in rows:
            cells = []
            for r in reports:
                labelled = max(int(r.counts[: info.num_classes].sum()), 1)
                pixels = int(r.counts[index])
                share = "" if index == IGNORE_INDEX else f" {100 * pixels / labelled:5.1f}%"
                cells.append(f"{pixels:,}{share}")
            hist.add_row(train_id, name, *cells)
        console.print(hist)
    every = problems + [p for r in reports for p in r.problems]
    if every:
        console.print(f"[bold red]{len(every)} problem(s):[/]")
        for problem in every[:max_problems]:
            console.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
        if len(every) > max_problems:
            console.print(f"  ... and {len(every) - max_problems} more")
    else:
        console.print("[bold green]no problems found[/]")


def _root_text(datamodule: SegmentationDataModule) -> str:
    try:
        return str(datamodule.resolve_root())
    except DataError:
        return "(no root)"


@dataclass(frozen=True, kw_only=True)
class CheckSettings:
    """conf/check.yaml's own keys."""

    splits: list[str]
    num_workers: int | None
    max_problems: int


def validate(cfg: DictConfig) -> None:
    check_settings(cfg, CheckSettings, groups=("data",))
    check_target_node(cfg.data, "data")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ConfigError(f"num_workers: expected >= 0 or null, got {cfg.num_workers}")


def run(cfg: DictConfig, console: Console | None = None) -> int:
    """The check as a function: returns the exit status (0 = clean, 1 = problems)."""
    console = console or Console()
    datamodule: SegmentationDataModule = build_target(cfg.data, "data")
    workers = datamodule.num_workers if cfg.get("num_workers") is None else int(cfg.num_workers)
    reports, problems = scan(datamodule, list(cfg.splits), workers, console)
    render(datamodule, reports, problems, console, int(cfg.get("max_problems", 200)))
    return 1 if problems or any(r.problems for r in reports) else 0


def check(cfg: DictConfig) -> None:
    """The command: exit status 0 when the tree is clean, 1 when it has problems."""
    sys.exit(run(cfg))


main = hydra_command("check", validate=validate)(check)


if __name__ == "__main__":
    from cgnet.data.check import main as _main

    _main()
