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

- :mod:`cgnet.report.jobs`: reading job folders (:class:`JobResult`, model cost, latency);
- :mod:`cgnet.report.overrides`: which overrides tell the jobs apart, and job labels;
- :mod:`cgnet.report.render`: the CSV, the Markdown page, the plot and the console table;
- :mod:`cgnet.report.command`: :func:`build_report` and the command line (:func:`main`).

Examples::

    python -m cgnet.report logs/train/multiruns/2026-01-01_12-00-00_ab12cd
    python -m cgnet.report SWEEP --size 512 1024 --latency --device cuda
"""

from cgnet.report.command import build_report, main, parse_args
from cgnet.report.jobs import (
    DEFAULT_SIZE,
    JobResult,
    find_jobs,
    measure_latency,
    model_cost,
    num_classes_of,
    read_job,
    recorded_latency,
    sweep_jobs,
)
from cgnet.report.overrides import label, split_overrides, swept_values
from cgnet.report.render import best_job, markdown, plot, rich_table, write_csv

__all__ = [
    "DEFAULT_SIZE",
    "JobResult",
    "best_job",
    "build_report",
    "find_jobs",
    "label",
    "main",
    "markdown",
    "measure_latency",
    "model_cost",
    "num_classes_of",
    "parse_args",
    "plot",
    "read_job",
    "recorded_latency",
    "rich_table",
    "split_overrides",
    "sweep_jobs",
    "swept_values",
    "write_csv",
]
