"""`python -m cgnet.report MULTIRUN_DIR`: one table and one plot comparing the jobs of a sweep.

Reads each job folder of a Hydra multirun (``<job>/summary.json``, ``<job>/.hydra/overrides.yaml`` and
``config.yaml``) and writes, next to them (or into ``--out``):

- ``report.csv``: one row per job: the swept overrides (one column per swept key too), parameters,
  multiply-adds at ``--size`` (default 1024x2048, the paper's figure), best and last val mIoU, latency
  when measured, checkpoint and run folder;
- ``report.md``: the same as a markdown table, the overrides common to every job, the plot;
- ``report.png``: best val mIoU against parameters and against multiply-adds;

and prints the table. Parameters and multiply-adds are counted from each job's model config (on the
meta device, so any size is free), not from its training crop, so every job is compared at one size.

Latency is read from what a job recorded (``summary.json``'s ``latency_ms``, or a
``benchmark.json`` written by ``python -m cgnet.benchmark ... output=<job>/benchmark.json``), or
measured here with ``--latency`` (median of a few forward passes of the BN-folded network).

Examples::

    python -m cgnet.report logs/train/multiruns/2026-01-01_12-00-00_ab12cd
    python -m cgnet.report SWEEP --size 512 1024 --latency --device cuda
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from cgnet.models import CGNet
from cgnet.models.summary import summarize

# Piped output would get rich's 80-column default and squashed columns; give the table room.
console = Console(width=None if sys.stdout.isatty() else 160)

DEFAULT_SIZE = (1024, 2048)


@dataclass
class JobResult:
    """What one job of the sweep produced (``status`` is ``ok`` or why it is missing)."""

    job: str
    run_dir: Path
    overrides: list[str]
    status: str = "ok"
    params: int | None = None
    macs: int | None = None
    miou_best: float | None = None
    miou_last: float | None = None
    latency_ms: float | None = None
    latency_source: str = ""
    checkpoint: str | None = None
    config: DictConfig | None = field(default=None, repr=False)

    @property
    def gmacs(self) -> float | None:
        return None if self.macs is None else self.macs / 1e9


# ------------------------------------------------------------------------------------- reading
def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders of a multirun (those with a ``.hydra`` folder), in job-number order.

    A single run's folder is accepted too (it is its own only job).
    """
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    if not jobs and (sweep_dir / ".hydra").is_dir():
        return [sweep_dir]
    return sorted(
        jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def num_classes_of(config: DictConfig, summary: dict[str, Any]) -> int:
    """Classes of the job's dataset: its DataModule's class list, else its checkpoint's."""
    target = OmegaConf.select(config, "data._target_")
    if target:
        try:
            from hydra.utils import get_class

            return int(get_class(target).info.num_classes)
        except Exception:  # a DataModule this install lacks: fall back on the checkpoint
            pass
    checkpoint = summary.get("checkpoint")
    if checkpoint and Path(checkpoint).is_file():
        blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
        return int(blob["hyper_parameters"]["num_classes"])
    raise ValueError("cannot tell the number of classes (no data._target_, no checkpoint)")


_COST_CACHE: dict[str, tuple[int, int]] = {}


def model_cost(
    model_kwargs: dict[str, Any], num_classes: int, size: Sequence[int]
) -> tuple[int, int]:
    """(parameters, multiply-adds) of CGNet(num_classes, **model_kwargs) at ``size``; cached."""
    key = json.dumps([model_kwargs, num_classes, list(size)], sort_keys=True, default=str)
    if key not in _COST_CACHE:
        net = CGNet(num_classes, **model_kwargs)
        cost = summarize(net, size)
        _COST_CACHE[key] = (cost.total_params, cost.total_macs)
    return _COST_CACHE[key]


def recorded_latency(run_dir: Path, summary: dict[str, Any], size: Sequence[int]) -> float | None:
    """A latency the job recorded: summary.json's ``latency_ms``, else benchmark.json at ``size``."""
    value = summary.get("latency_ms")
    if isinstance(value, dict):
        value = value.get("median")
    if _finite(value) is not None:
        return _finite(value)
    bench = run_dir / "benchmark.json"
    if not bench.is_file():
        return None
    rows = json.loads(bench.read_text()).get("inference") or []
    rows = [r for r in rows if isinstance(r.get("latency_ms"), dict)]
    for variant in ("fast", "eager"):
        for row in rows:
            if row.get("variant") == variant and list(row.get("size") or []) == list(size):
                return _finite(row["latency_ms"].get("median"))
    return None


def read_job(run_dir: Path, size: Sequence[int]) -> JobResult:
    """One job's row; a job without summary.json (failed or still running) keeps its overrides."""
    hydra_dir = run_dir / ".hydra"
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    result = JobResult(job=run_dir.name, run_dir=run_dir, overrides=overrides)
    config_file = hydra_dir / "config.yaml"
    summary_file = run_dir / "summary.json"
    summary: dict[str, Any] = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if not summary:
        result.status = "no summary.json (failed or running)"
    if config_file.is_file():
        result.config = OmegaConf.load(config_file)
        model = OmegaConf.to_container(result.config.get("model") or {}, resolve=True)
        assert isinstance(model, dict)
        try:
            classes = num_classes_of(result.config, summary)
            result.params, result.macs = model_cost(
                {str(k): v for k, v in model.items()}, classes, size
            )
        except (ValueError, TypeError) as err:
            result.status = f"cannot build the model: {err}"
    elif result.status == "ok":
        result.status = "no .hydra/config.yaml"
    result.miou_best = _finite(summary.get("val/mIoU_best"))
    result.miou_last = _finite((summary.get("metrics") or {}).get("val/mIoU"))
    result.checkpoint = summary.get("checkpoint")
    latency = recorded_latency(run_dir, summary, size)
    if latency is not None:
        result.latency_ms, result.latency_source = latency, "recorded"
    return result


def measure_latency(
    result: JobResult, size: Sequence[int], device: str = "cpu", repeats: int = 5
) -> None:
    """Median wall time of one forward pass (batch 1) of the job's network, BN-folded, at ``size``.

    Weights do not change the time (denormals are flushed), so the network is built from the config.
    """
    from cgnet.inference import optimize

    if result.config is None:
        return
    torch.set_flush_denormal(True)
    model = OmegaConf.to_container(result.config.model, resolve=True)
    assert isinstance(model, dict)
    classes = num_classes_of(result.config, {"checkpoint": result.checkpoint})
    dev = torch.device(device)
    net = optimize(CGNet(classes, **{str(k): v for k, v in model.items()}).eval(), device=dev.type)
    x = torch.randn(1, 3, int(size[0]), int(size[1]), device=dev)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):  # the first call warms up
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            net(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i:
                times.append((time.perf_counter() - start) * 1e3)
    result.latency_ms = statistics.median(times)
    result.latency_source = f"measured ({device}, median of {repeats})"


# ------------------------------------------------------------------------------------- overrides
def split_overrides(results: Sequence[JobResult]) -> tuple[list[str], list[str]]:
    """(swept keys, common overrides): keys whose value differs between jobs, and the rest."""
    per_job = [dict(o.split("=", 1) if "=" in o else (o, "") for o in r.overrides) for r in results]
    keys: list[str] = []
    for overrides in per_job:
        keys += [k for k in overrides if k not in keys]
    swept = [k for k in keys if len({o.get(k) for o in per_job}) > 1]
    common = [f"{k}={per_job[0][k]}" if per_job[0][k] else k for k in keys if k not in swept]
    return swept, common


def swept_values(result: JobResult, swept: Sequence[str]) -> dict[str, str]:
    overrides = dict(o.split("=", 1) if "=" in o else (o, "") for o in result.overrides)
    return {k: overrides.get(k, "") for k in swept}


def label(result: JobResult, swept: Sequence[str]) -> str:
    """Short name of a job for tables and plot points: its swept overrides, else its number."""
    values = swept_values(result, swept)
    return (
        " ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items() if v) or f"job {result.job}"
    )


# ------------------------------------------------------------------------------------- writing
def _fmt(value: float | int | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def best_job(results: Sequence[JobResult]) -> JobResult | None:
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
                    _fmt(r.params, "d"),
                    _fmt(r.macs, "d"),
                    _fmt(r.gmacs, ".4f"),
                    _fmt(r.miou_best, ".6f"),
                    _fmt(r.miou_last, ".6f"),
                    _fmt(r.latency_ms, ".3f"),
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
            _fmt(r.params, ","),
            _fmt(r.gmacs, ".3f"),
            _fmt(r.miou_best, ".4f"),
            _fmt(r.miou_last, ".4f"),
            _fmt(r.latency_ms, ".1f"),
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
            _fmt(r.params, ","),
            _fmt(r.gmacs, ".3f"),
            _fmt(r.miou_best, ".4f"),
            _fmt(r.miou_last, ".4f"),
            _fmt(r.latency_ms, ".1f"),
            r.status,
            style="bold green" if r is best else None,
        )
    return table


# ------------------------------------------------------------------------------------- entry point
def build_report(
    sweep_dir: Path,
    out_dir: Path | None = None,
    size: Sequence[int] = DEFAULT_SIZE,
    latency: bool = False,
    device: str = "cpu",
    repeats: int = 5,
) -> tuple[list[JobResult], dict[str, Path]]:
    """Read every job, write report.csv / report.md / report.png; returns the rows and the files."""
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"no job folders (with .hydra/) in {sweep_dir}")
    results = [read_job(job, size) for job in jobs]
    if latency:
        for r in results:
            if r.latency_ms is None:
                measure_latency(r, size, device, repeats)
    swept, common = split_overrides(results)
    out_dir = out_dir or sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": write_csv(results, swept, out_dir / "report.csv"),
        "png": plot(results, swept, size, out_dir / "report.png"),
    }
    files["md"] = out_dir / "report.md"
    files["md"].write_text(markdown(results, swept, common, size, sweep_dir, files["png"].name))
    console.print(rich_table(results, swept, size))
    return results, files


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cgnet.report",
        description="Compare the jobs of a multirun: report.md, report.csv and report.png.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (logs/train/multiruns/...)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: sweep_dir)"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=list(DEFAULT_SIZE),
        metavar=("H", "W"),
        help="input size for multiply-adds and latency (default: 1024 2048)",
    )
    parser.add_argument(
        "--latency", action="store_true", help="measure latency where none is recorded"
    )
    parser.add_argument("--device", default="cpu", help="device for --latency (cpu, cuda)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes for --latency")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: exit 0 with the files written, 2 with one line when the folder is not a sweep."""
    args = parse_args(argv)
    if not args.sweep_dir.is_dir():
        console.print(f"[bold red]error:[/] no such folder: {args.sweep_dir}")
        return 2
    if min(args.size) < 1 or args.repeats < 1:
        console.print("[bold red]error:[/] --size and --repeats must be positive")
        return 2
    try:
        _, files = build_report(
            args.sweep_dir, args.out, args.size, args.latency, args.device, args.repeats
        )
    except FileNotFoundError as err:
        console.print(f"[bold red]error:[/] {err}")
        return 2
    for kind in ("md", "csv", "png"):
        console.print(f"wrote {files[kind]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
