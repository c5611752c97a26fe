"""Reading a sweep: one :class:`JobResult` per job folder, with its model's cost and its latency.

A job folder is what Hydra and ``cgnet.train`` leave: ``.hydra/overrides.yaml``, ``.hydra/config.yaml``
and ``summary.json``. Parameters and multiply-adds come from the job's model config (built on the meta
device, so any size is free), not from its training crop, so every job is compared at one size.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cgnet.checkpoint import read_checkpoint
from cgnet.errors import CheckpointError, ConfigError
from cgnet.models import CGNet
from cgnet.models.summary import summarize

DEFAULT_SIZE = (1024, 2048)
_MULTIRUN_HINT = "give a multirun folder: logs/train/multiruns/<date>_<id>"


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
        """Multiply-adds in billions, the unit tables and plots show."""
        return None if self.macs is None else self.macs / 1e9


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


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """:func:`find_jobs`, with a one-line :class:`ConfigError` naming the folder when it is no sweep."""
    if not sweep_dir.exists():
        raise ConfigError(f"sweep_dir: no such folder: {sweep_dir} ({_MULTIRUN_HINT})")
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep_dir: {sweep_dir} is a file, not a folder ({_MULTIRUN_HINT})")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise ConfigError(
            f"sweep_dir: {sweep_dir} holds no job folders with summary.json/.hydra "
            "(is it a multirun folder?)"
        )
    return jobs


def _finite(value: Any) -> float | None:
    """A number for the table, or None: NaN and junk in a summary mean "unknown", not a score."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def num_classes_of(config: DictConfig, summary: dict[str, Any], *, trust: bool = False) -> int:
    """Classes of the job's dataset: its DataModule's class list, else its checkpoint's.

    ``trust`` lets the checkpoint's pickle run code (only for files the user trusts).
    """
    target = OmegaConf.select(config, "data._target_")
    if target:
        try:
            from hydra.utils import get_class

            return int(get_class(target).info.num_classes)
        except Exception:  # a DataModule this install lacks: fall back on the checkpoint
            pass
    checkpoint = summary.get("checkpoint")
    if checkpoint and Path(checkpoint).is_file():
        blob = read_checkpoint(checkpoint, trust=trust, opt_in="--trust-checkpoint")
        return int(blob["hyper_parameters"]["num_classes"])
    raise ValueError("cannot tell the number of classes (no data._target_, no checkpoint)")


_COST_CACHE: dict[str, tuple[int, int]] = {}


def model_cost(
    model_kwargs: dict[str, Any], num_classes: int, size: Sequence[int]
) -> tuple[int, int]:
    """(parameters, multiply-adds) of CGNet(num_classes, **model_kwargs) at ``size``; cached, since
    the jobs of a sweep often share a model."""
    key = json.dumps([model_kwargs, num_classes, list(size)], sort_keys=True, default=str)
    if key not in _COST_CACHE:
        net = CGNet(num_classes, **model_kwargs)
        cost = summarize(net, size)
        _COST_CACHE[key] = (cost.total_params, cost.total_macs)
    return _COST_CACHE[key]


def _model_kwargs(config: DictConfig) -> dict[str, Any]:
    """The job's ``model`` config as CGNet's keyword arguments."""
    model = OmegaConf.to_container(config.get("model") or {}, resolve=True)
    assert isinstance(model, dict)
    return {str(k): v for k, v in model.items()}


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


def read_job(run_dir: Path, size: Sequence[int], *, trust: bool = False) -> JobResult:
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
        loaded = OmegaConf.load(config_file)
        assert isinstance(loaded, DictConfig)
        result.config = loaded
        try:
            classes = num_classes_of(loaded, summary, trust=trust)
            result.params, result.macs = model_cost(_model_kwargs(loaded), classes, size)
        except CheckpointError:
            raise  # a file that would run code stops the report: never a table cell
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
    result: JobResult,
    size: Sequence[int],
    device: str | torch.device = "cpu",
    repeats: int = 5,
    *,
    trust: bool = False,
) -> None:
    """Median wall time of one forward pass (batch 1) of the job's network, BN-folded, at ``size``.

    Weights do not change the time (the entry point flushes denormals), so the network is built from
    the config.
    """
    from cgnet.inference import optimize

    if result.config is None:
        return
    classes = num_classes_of(result.config, {"checkpoint": result.checkpoint}, trust=trust)
    dev = torch.device(device)
    net = optimize(CGNet(classes, **_model_kwargs(result.config)).eval(), device=dev.type)
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
