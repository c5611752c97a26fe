"""`python -m cgnet.benchmark`: CGNet's speed, measured honestly, for every inference variant side by side.

For each input size it reports parameters, multiply-adds, latency (median and quartiles over repeats,
after warm-up), fps, peak memory, and each variant's ratio over eager and its max logit difference and
argmax agreement against eager. Repeats run round-robin over the variants, so load from anything else
on the machine falls on all of them alike. On CUDA every call is timed twice, with and without a device
synchronisation, as the official README did (only the synchronised figure is the real latency).
Training throughput (images/s) compares plain eager with the project's training-step settings.

Examples:
    python -m cgnet.benchmark                                   # defaults: 1024x2048 and 512x1024
    python -m cgnet.benchmark sizes=[[256,512]] repeats=3 variants=[eager,fast]
    python -m cgnet.benchmark ckpt_path=best.ckpt device=cuda variants=[eager,fast,compile,cuda_graphs,bf16]

The pieces: :mod:`~cgnet.benchmark.settings` (the config's schema and checks),
:mod:`~cgnet.benchmark.variants` (what is compared), :mod:`~cgnet.benchmark.measure` (how a call is
timed), :mod:`~cgnet.benchmark.worker` (a job in its own process), :mod:`~cgnet.benchmark.inference`
and :mod:`~cgnet.benchmark.training` (the two jobs), :mod:`~cgnet.benchmark.tables` (rich and Markdown tables) and
:mod:`~cgnet.benchmark.command` (the command).
"""

from cgnet.benchmark.command import machine, main, measure_all, model_spec, report, run
from cgnet.benchmark.inference import InferenceJob, benchmark_inference
from cgnet.benchmark.measure import Latency, compare, peak_memory, synchronize
from cgnet.benchmark.settings import (
    BenchmarkSettings,
    TrainThroughputSettings,
    load_settings,
    validate,
)
from cgnet.benchmark.tables import render, render_markdown
from cgnet.benchmark.training import TrainJob, benchmark_training, compared_settings
from cgnet.benchmark.variants import (
    GPU_ONLY_VARIANTS,
    VARIANT_HELP,
    ModelSpec,
    OnnxRuntimeForward,
    build_variant,
)
from cgnet.benchmark.worker import Worker

__all__ = [
    "GPU_ONLY_VARIANTS",
    "VARIANT_HELP",
    "BenchmarkSettings",
    "InferenceJob",
    "Latency",
    "ModelSpec",
    "OnnxRuntimeForward",
    "TrainJob",
    "TrainThroughputSettings",
    "Worker",
    "benchmark_inference",
    "benchmark_training",
    "build_variant",
    "compare",
    "compared_settings",
    "load_settings",
    "machine",
    "main",
    "measure_all",
    "model_spec",
    "peak_memory",
    "render",
    "render_markdown",
    "report",
    "run",
    "synchronize",
    "validate",
]
