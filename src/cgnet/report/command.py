"""The command behind ``python -m cgnet.report``: its arguments, checked, and the whole report.

:func:`main` goes through :func:`cgnet.cli.plain_command`, like every cgnet command: process switches
first (denormals flushed, so measured latency does not depend on the weights), and a mistake in the
arguments is one red line and exit status 2 rather than a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from cgnet.cli import plain_command
from cgnet.errors import ConfigError
from cgnet.report.jobs import DEFAULT_SIZE, JobResult, measure_latency, read_job, sweep_jobs
from cgnet.report.overrides import split_overrides
from cgnet.report.render import console, markdown, plot, rich_table, write_csv
from cgnet.runtime import pick_device


def build_report(
    sweep_dir: Path,
    out_dir: Path | None = None,
    size: Sequence[int] = DEFAULT_SIZE,
    latency: bool = False,
    device: str | torch.device = "cpu",
    repeats: int = 5,
    trust_checkpoint: bool = False,
) -> tuple[list[JobResult], dict[str, Path]]:
    """Read every job, write report.csv / report.md / report.png; returns the rows and the files.

    A folder that is not a sweep raises :class:`cgnet.errors.ConfigError` naming it.
    """
    jobs = sweep_jobs(sweep_dir)
    results = [read_job(job, size, trust=trust_checkpoint) for job in jobs]
    if latency:
        for r in results:
            if r.latency_ms is None:
                measure_latency(r, size, device, repeats, trust=trust_checkpoint)
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
    """The command line; values argparse cannot check are checked in :func:`main`."""
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
    parser.add_argument(
        "--device", default="cpu", help="device for --latency (cpu, cuda, cuda:N, auto)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed passes for --latency")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="also read checkpoints whose pickle runs code (only files you trust)",
    )
    return parser.parse_args(argv)


@plain_command
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: exit 0 with the files written; a folder that is not a sweep or a bad argument is one
    line on stderr and exit status 2 (via :func:`cgnet.cli.plain_command`)."""
    args = parse_args(argv)
    sweep_jobs(args.sweep_dir)  # the folder first: it is the argument most likely mistyped
    if min(args.size) < 1:
        raise ConfigError(
            f"--size: expected two positive integers, got {args.size[0]} {args.size[1]}"
        )
    if args.repeats < 1:
        raise ConfigError(f"--repeats: expected a positive integer, got {args.repeats}")
    device = pick_device(args.device, key="--device") if args.latency else args.device
    _, files = build_report(
        args.sweep_dir,
        args.out,
        args.size,
        args.latency,
        device,
        args.repeats,
        trust_checkpoint=args.trust_checkpoint,
    )
    for kind in ("md", "csv", "png"):
        console.print(f"wrote {files[kind]}")
    return 0
