"""The benchmark as one job: measure every variant (and training), print the tables, write the files.

:func:`run` only measures and returns the JSON-able result, so tests and notebooks can call it
without printing or writing anything; :func:`report` is what the command runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from cgnet.benchmark.inference import benchmark_inference
from cgnet.benchmark.settings import BenchmarkSettings, load_settings, validate
from cgnet.benchmark.tables import render, render_markdown
from cgnet.benchmark.training import benchmark_training, compared_settings
from cgnet.benchmark.variants import VARIANT_HELP, ModelSpec
from cgnet.checkpoint import load_network
from cgnet.cli import hydra_command
from cgnet.config import plain
from cgnet.errors import ConfigError, UserError
from cgnet.models import CGNet
from cgnet.models.summary import summarize
from cgnet.runtime import pick_device

# Piped output would get rich's 80-column default and squeezed columns; give the tables room.
console = Console(width=None if sys.stdout.isatty() else 180)


def machine(threads: int | None = None) -> dict[str, Any]:
    """What the figures were measured on; ``threads`` is what the workers run with (None: torch's
    default here)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads or torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def model_spec(
    settings: BenchmarkSettings, model_kwargs: dict[str, Any]
) -> tuple[ModelSpec, CGNet, str]:
    """The configured network, loaded once here (so a bad checkpoint fails before any worker
    starts), and how workers rebuild it."""
    spec = ModelSpec(
        settings.num_classes,
        model_kwargs,
        settings.ckpt_path,
        settings.seed,
        trust=settings.trust_checkpoint,
    )
    if not spec.ckpt_path:
        return spec, spec.build(), "random initialisation"
    try:
        loaded = load_network(
            spec.ckpt_path, spec.num_classes, model_kwargs, trust=settings.trust_checkpoint
        )
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    return spec, loaded.net, f"{loaded.format} weights from {loaded.source}"


def measure_all(settings: BenchmarkSettings, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The whole benchmark of checked settings as one JSON-able dict."""
    device = pick_device(settings.device, key="device")
    spec, net, source = model_spec(settings, model_kwargs)
    sizes = [list(size) for size in settings.sizes]
    summaries = {f"{h}x{w}": summarize(net, (h, w), settings.batch) for h, w in sizes}
    variants = list(settings.variants)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python -m cgnet.benchmark", *sys.argv[1:]]),
        "machine": machine(settings.threads),
        "device": str(device),
        "isolated_processes": settings.isolate,
        "variants": {name: VARIANT_HELP[name] for name in dict.fromkeys(["eager", *variants])},
        "model": {
            "source": source,
            "num_classes": net.num_classes,
            "M": net.M,
            "N": net.N,
            "parameters": sum(p.numel() for p in net.parameters()),
            "multiply_adds": {k: s.total_macs for k, s in summaries.items()},
        },
        "inference": benchmark_inference(
            spec,
            sizes=sizes,
            batch=settings.batch,
            variants=variants,
            device=device,
            warmup=settings.warmup,
            repeats=settings.repeats,
            input_scale=50.0 if spec.ckpt_path else 1.0,
            isolate=settings.isolate,
            threads=settings.threads,
            profile=settings.profile,
        ),
    }
    tt = settings.train_throughput
    if tt is not None and tt.enabled:
        result["training"] = benchmark_training(
            spec,
            device=device,
            batch=tt.batch,
            crop=list(tt.crop),
            steps=tt.steps,
            warmup=tt.warmup,
            settings=compared_settings(tt, device),
            isolate=settings.isolate,
            threads=settings.threads,
            profile=settings.profile,
        )
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole benchmark of a composed config, checked first (a ConfigError names the key)."""
    return measure_all(load_settings(cfg), plain(cfg.model) or {})


def _write(path_text: str, text: str) -> None:
    """Write a result file (its folder too) and say where, so the user finds it."""
    path = Path(path_text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    console.print(f"wrote {path}")


def report(cfg: DictConfig) -> dict[str, Any]:
    """Measure, print the tables, write the JSON (``output``) and Markdown (``markdown``) files."""
    settings = load_settings(cfg)
    result = measure_all(settings, plain(cfg.model) or {})
    for table in render(result):
        console.print(table)
    if settings.output:
        _write(settings.output, json.dumps(result, indent=2) + "\n")
    if settings.markdown:
        _write(settings.markdown, render_markdown(result))
    return result


main = hydra_command("benchmark", validate=validate)(report)


__all__ = ["machine", "main", "measure_all", "model_spec", "report", "run"]
