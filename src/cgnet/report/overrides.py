"""What tells the jobs of a sweep apart: the overrides whose value differs between them.

Tables, the CSV and the plot name a job by these alone; the overrides every job shares are listed
once in the report's header instead of on every row.
"""

from __future__ import annotations

from collections.abc import Sequence

from cgnet.report.jobs import JobResult


def _as_dict(overrides: Sequence[str]) -> dict[str, str]:
    """``key=value`` overrides by key; a bare ``~key`` (deletion) has an empty value."""
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides)


def split_overrides(results: Sequence[JobResult]) -> tuple[list[str], list[str]]:
    """(swept keys, common overrides): keys whose value differs between jobs, and the rest."""
    per_job = [_as_dict(r.overrides) for r in results]
    keys: list[str] = []
    for overrides in per_job:
        keys += [k for k in overrides if k not in keys]
    swept = [k for k in keys if len({o.get(k) for o in per_job}) > 1]
    common = [f"{k}={per_job[0][k]}" if per_job[0][k] else k for k in keys if k not in swept]
    return swept, common


def swept_values(result: JobResult, swept: Sequence[str]) -> dict[str, str]:
    """The job's value of each swept key (empty where the job did not set it)."""
    overrides = _as_dict(result.overrides)
    return {k: overrides.get(k, "") for k in swept}


def label(result: JobResult, swept: Sequence[str]) -> str:
    """Short name of a job for tables and plot points: its swept overrides, else its number."""
    values = swept_values(result, swept)
    return (
        " ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items() if v) or f"job {result.job}"
    )
