"""Inference latency: every variant at every size, timed round-robin, compared with eager.

Repeats run round-robin over the variants, so load from anything else on the machine falls on all of
them alike. On CUDA every call is timed twice, with and without a device synchronisation, as the
official README did (only the synchronised figure is the real latency).
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cgnet.benchmark.measure import (
    Latency,
    compare,
    peak_memory,
    profile_call,
    synchronize,
)
from cgnet.benchmark.variants import ModelSpec, OnnxRuntimeForward, build_variant
from cgnet.benchmark.worker import Worker, request_profile


class InferenceJob:
    """One variant's side of the benchmark: prepares an input size, then times single calls."""

    def __init__(self, spec: ModelSpec, variant: str, device: str, workdir: str) -> None:
        self.device = torch.device(device)
        self.fn = build_variant(variant, spec.build(), self.device, Path(workdir))
        self.workdir = Path(workdir)
        self.variant = variant
        self.x: Tensor | None = None

    def prepare(
        self, size: Sequence[int], batch: int, seed: int, input_scale: float, warmup: int
    ) -> dict[str, Any]:
        """First call (compiles, plans, allocates), one call under the memory probe, warm-up; the
        output goes to a file so the parent can compare variants without holding them all."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, int(size[0]), int(size[1]), generator=gen) * input_scale
        self.x = x.to(self.device)
        with torch.inference_mode():
            start = time.perf_counter()
            self.fn(self.x)
            synchronize(self.device)
            first_s = time.perf_counter() - start
            with peak_memory(self.device) as memory:
                out = self.fn(self.x)
            path = self.workdir / f"{self.variant}-{size[0]}x{size[1]}.pt"
            torch.save(out.float().cpu().contiguous(), path)
            del out
            for _ in range(warmup):
                self.fn(self.x)
            synchronize(self.device)
        tuned: dict[str, Any] = {}
        choices = getattr(self.fn, "choices", None)  # cgnet.inference.AutoTuned: what it picked
        if choices is not None:
            key = tuple(self.x.shape)
            tuned = {
                "tuned": {
                    "choice": choices[key],
                    "timings_ms": self.fn.timings[key],
                    "rejected": self.fn.rejected[key],
                }
            }
        return {
            "first_call_s": first_s,
            "peak_memory_mib": memory["peak_mib"],
            "process_peak_mib": memory["process_peak_mib"],
            "output": str(path),
            **tuned,
        }

    def call(self) -> tuple[float, float | None, int]:
        """One timed call: milliseconds with and (CUDA only) without device synchronisation, and
        the page faults it took (every fault is a fresh page the kernel had to zero and map)."""
        assert self.x is not None, "prepare() first"
        with torch.inference_mode():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            synchronize(self.device)
            start = time.perf_counter()
            self.fn(self.x)
            returned = time.perf_counter()
            synchronize(self.device)
            done = time.perf_counter()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        unsynced = (returned - start) * 1e3 if self.device.type == "cuda" else None
        return (done - start) * 1e3, unsynced, faults

    def profile(self, top: int = 12) -> list[dict[str, Any]]:
        """Self time per op of one call (torch.profiler), the largest first: where the time goes."""
        assert self.x is not None, "prepare() first"
        if isinstance(self.fn, OnnxRuntimeForward):
            return []  # its kernels are invisible to torch.profiler
        x, fn = self.x, self.fn
        with torch.inference_mode():
            return profile_call(lambda: fn(x), self.device, top)


def _size_rows(
    workers: dict[str, Worker],
    size: Sequence[int],
    *,
    batch: int,
    seed: int,
    input_scale: float,
    warmup: int,
    repeats: int,
    profile: bool,
) -> list[dict[str, Any]]:
    """Every started variant at one input size, one row each."""
    height, width = (int(v) for v in size)
    args = ([height, width], batch, seed, input_scale, warmup)
    prepared = {name: w.request("prepare", *args) for name, w in workers.items()}
    timings = {name: Latency() for name in workers}
    faults: dict[str, list[int]] = {name: [] for name in workers}
    for _ in range(repeats):  # round-robin: background load hits every variant alike
        for name, worker in workers.items():
            synced, unsynced, page_faults = worker.request("call")
            timings[name].synced_ms.append(synced)
            faults[name].append(page_faults)
            if unsynced is not None:
                timings[name].unsynced_ms.append(unsynced)
    profiles = {name: request_profile(w) for name, w in workers.items()} if profile else {}
    reference = torch.load(prepared["eager"]["output"])
    eager_median = Latency.stats(timings["eager"].synced_ms)["median"]
    rows: list[dict[str, Any]] = []
    for name in workers:
        synced_stats = Latency.stats(timings[name].synced_ms)
        info = dict(prepared[name])
        output = torch.load(info.pop("output"))
        rows.append(
            {
                "variant": name,
                "size": [height, width],
                "batch": batch,
                "latency_ms": synced_stats,
                "latency_unsynced_ms": Latency.stats(timings[name].unsynced_ms) or None,
                "fps": batch * 1e3 / synced_stats["median"],
                "ratio_over_eager": synced_stats["median"] / eager_median,
                "speedup_over_eager": eager_median / synced_stats["median"],
                "page_faults_per_call": int(statistics.median(faults[name])),
                **info,
                **compare(output, reference),
            }
        )
        if name in profiles:
            rows[-1]["profile"], error = profiles[name]
            if error:
                rows[-1]["profile_error"] = error
        del output
    return rows


def benchmark_inference(
    spec: ModelSpec,
    *,
    sizes: Sequence[Sequence[int]],
    batch: int,
    variants: Sequence[str],
    device: torch.device,
    warmup: int,
    repeats: int,
    input_scale: float = 1.0,
    isolate: bool = True,
    threads: int | None = None,
    profile: bool = False,
) -> list[dict[str, Any]]:
    """Every variant at every size: latency, fps, peak memory, first-call time, agreement with eager
    (and with ``profile``, each variant's self time per op for one call).

    Inputs are ``input_scale`` times a standard normal: 50 for trained weights (the spread of RGB
    minus the mean, which they were trained on), 1 for a random initialisation (unit-variance init).
    """
    variants = list(dict.fromkeys(["eager", *variants]))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cgnet-bench-") as tmp:
        workers: dict[str, Worker] = {}
        skipped: dict[str, str] = {}
        try:
            for name in variants:
                kwargs = {"spec": spec, "variant": name, "device": str(device), "workdir": tmp}
                try:
                    workers[name] = Worker(InferenceJob, kwargs, isolate=isolate, threads=threads)
                except (ImportError, RuntimeError, ValueError) as err:
                    if name == "eager":
                        raise
                    skipped[name] = str(err)
            for size in sizes:
                rows += _size_rows(
                    workers,
                    size,
                    batch=batch,
                    seed=spec.seed,
                    input_scale=input_scale,
                    warmup=warmup,
                    repeats=repeats,
                    profile=profile,
                )
                height, width = (int(v) for v in size)
                for name, reason in skipped.items():
                    rows.append({"variant": name, "size": [height, width], "skipped": reason})
        finally:
            for worker in workers.values():
                worker.close()
    return rows


__all__ = ["InferenceJob", "benchmark_inference"]
