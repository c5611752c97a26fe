"""The report's outputs from the rows of a sweep: report.csv, report.md, report.png and the console
table; each marks the best job (highest best val mIoU) so it stands out wherever one looks.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from cgnet.report.jobs import JobResult
from cgnet.report.overrides import label, swept_values

# Piped output would get rich's 80-column default and squashed columns; give the table room.
console = Console(width=None if sys.stdout.isatty() else 160)


def _fmt(value: float | int | None, spec: str) -> str:
    """An empty cell for an unknown value, so a missing number never reads as zero."""
    return "" if value is None else format(value, spec)


# The figures of a job and how each is written: exact in the CSV, readable in tables.
CSV_FIGURES = {
    "params": "d",
    "macs": "d",
    "gmacs": ".4f",
    "miou_best": ".6f",
    "miou_last": ".6f",
    "latency_ms": ".3f",
}
TABLE_FIGURES = {
    "params": ",",
    "gmacs": ".3f",
    "miou_best": ".4f",
    "miou_last": ".4f",
    "latency_ms": ".1f",
}


def figures(result: JobResult, formats: dict[str, str]) -> list[str]:
    """The job's figures as text, in the order and format of ``formats``."""
    return [_fmt(getattr(result, key), spec) for key, spec in formats.items()]


def best_job(results: Sequence[JobResult]) -> JobResult | None:
    """The job every output highlights: the highest best val mIoU (None before any job finished)."""
    scored = [r for r in results if r.miou_best is not None]
    return max(scored, key=lambda r: r.miou_best or 0.0) if scored else None


def write_csv(results: Sequence[JobResult], swept: Sequence[str], path: Path) -> Path:
    """One row per job; empty cells where a value is unknown."""
    columns = [
        "job",
        "status",
        "overrides",
        *swept,
        "params",
        "macs",
        "gmacs",
        "val_miou_best",
        "val_miou_last",
        "latency_ms",
        "latency_source",
        "checkpoint",
        "run_dir",
        "all_overrides",
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in results:
            values = swept_values(r, swept)
            writer.writerow(
                [
                    r.job,
                    r.status,
                    " ".join(f"{k}={v}" for k, v in values.items()),
                    *values.values(),
                    *figures(r, CSV_FIGURES),
                    r.latency_source,
                    r.checkpoint or "",
                    str(r.run_dir),
                    " ".join(r.overrides),
                ]
            )
    return path


def plot(
    results: Sequence[JobResult], swept: Sequence[str], size: Sequence[int], path: Path
) -> Path:
    """Best val mIoU against parameters (left) and multiply-adds (right), one labelled point per job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in results if r.miou_best is not None and r.params is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    best = best_job(points)
    for ax, attr, xlabel in (
        (axes[0], "params", "parameters (thousands)"),
        (axes[1], "gmacs", f"multiply-adds at {size[0]}x{size[1]} (G)"),
    ):
        xs = [getattr(r, attr) / (1e3 if attr == "params" else 1.0) for r in points]
        ys = [100.0 * (r.miou_best or 0.0) for r in points]
        colours = ["tab:red" if r is best else "tab:blue" for r in points]
        ax.scatter(xs, ys, c=colours, zorder=3)
        for x, y, r in zip(xs, ys, points, strict=True):
            ax.annotate(
                label(r, swept), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("best val mIoU (%)")
        ax.grid(alpha=0.3)
        if not points:
            ax.text(0.5, 0.5, "no finished job", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("best val mIoU against model cost (red: best job)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(
    results: Sequence[JobResult],
    swept: Sequence[str],
    common: Sequence[str],
    size: Sequence[int],
    sweep_dir: Path,
    plot_name: str,
) -> str:
    """The report page: context lines, the table (best job in bold), the plot."""
    best = best_job(results)
    finished = sum(r.miou_best is not None for r in results)
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"- folder: `{sweep_dir}`",
        f"- jobs: {len(results)} ({finished} with a best val mIoU)",
        f"- swept: {', '.join(f'`{k}`' for k in swept) or '(nothing differs between jobs)'}",
        f"- common overrides: {' '.join(f'`{o}`' for o in common) or '(none)'}",
        f"- multiply-adds counted at {size[0]}x{size[1]} (batch 1, conv and linear layers)",
    ]
    if best is not None:
        lines.append(
            f"- best: job {best.job} ({label(best, swept)}), val mIoU {best.miou_best:.4f}"
        )
    optuna = sweep_dir / "optimization_results.yaml"
    if optuna.is_file():
        found = OmegaConf.load(optuna)
        lines.append(
            f"- Optuna's best: {dict(found.get('best_params') or {})} -> {found.get('best_value')}"
        )
    header = [
        "job",
        "overrides",
        "params",
        "GMACs",
        "best val mIoU",
        "last val mIoU",
        "latency (ms)",
        "status",
    ]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [
            r.job,
            " ".join(f"`{k}={v}`" for k, v in swept_values(r, swept).items()) or "-",
            *figures(r, TABLE_FIGURES),
            r.status,
        ]
        if r is best:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    latency_sources = sorted({r.latency_source for r in results if r.latency_source})
    if latency_sources:
        lines += ["", f"Latency: {', '.join(latency_sources)}, batch 1 at {size[0]}x{size[1]}."]
    lines += ["", f"![best val mIoU against parameters and multiply-adds]({plot_name})", ""]
    return "\n".join(lines)


def rich_table(results: Sequence[JobResult], swept: Sequence[str], size: Sequence[int]) -> Table:
    """The table printed at the end of the command (best job in bold green), to read without files."""
    best = best_job(results)
    table = Table(
        title=f"sweep report (multiply-adds at {size[0]}x{size[1]})", title_justify="left"
    )
    for name, justify in (
        ("job", "right"),
        ("overrides", "left"),
        ("params", "right"),
        ("GMACs", "right"),
        ("best mIoU", "right"),
        ("last mIoU", "right"),
        ("latency ms", "right"),
        ("status", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        table.add_row(
            r.job,
            " ".join(f"{k}={v}" for k, v in swept_values(r, swept).items()),
            *figures(r, TABLE_FIGURES),
            r.status,
            style="bold green" if r is best else None,
        )
    return table
