"""How one call is measured: device synchronisation, peak memory, latency statistics, agreement.

Kept apart from the variants and workers so every job (inference or training, in this process or an
isolated one) times and compares the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels, so a timer stops when the work is done, not when it is queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes(field_name: str) -> int | None:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM); None where there is no procfs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Give freed heap memory back to the kernel, so the next call's growth is visible in the RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Peak memory of the enclosed calls, in MiB: ``peak_mib`` above what was in use before, and
    ``process_peak_mib``, the whole process's peak so far (libraries, weights, compiler, arenas).

    CUDA: the caching allocator's peak (``process_peak_mib``: its reserved peak). CPU: the resident
    set's high-water mark after trimming the heap and resetting the mark (Linux ``clear_refs``),
    which also sees memory outside torch (oneDNN scratch pads; onnxruntime's arena only while it
    grows, since it keeps what it took on its first call).
    """
    out: dict[str, float | None] = {"peak_mib": None, "process_peak_mib": None}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        synchronize(device)
        out["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        out["process_peak_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
        return
    before = _rss_bytes("VmHWM")
    _trim_heap()
    reset = False
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    base_rss = _rss_bytes("VmRSS")
    yield out
    peak = _rss_bytes("VmHWM")
    if reset and base_rss is not None and peak is not None:
        out["peak_mib"] = max(peak - base_rss, 0) / 2**20
    if before is not None and peak is not None:
        out["process_peak_mib"] = max(before, peak) / 2**20


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's native start/stop lines) for a moment."""
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass
class Latency:
    """Per-call latencies of one variant at one size, in milliseconds."""

    synced_ms: list[float] = field(default_factory=list)
    unsynced_ms: list[float] = field(default_factory=list)

    @staticmethod
    def stats(values: Sequence[float]) -> dict[str, float]:
        """Median, quartiles and extremes: the spread says how far to trust the median."""
        if not values:
            return {}
        ordered = sorted(values)
        q1, _, q3 = (
            statistics.quantiles(ordered, n=4, method="inclusive")
            if len(ordered) > 1
            else ordered * 3
        )
        return {
            "median": statistics.median(ordered),
            "q1": q1,
            "q3": q3,
            "min": ordered[0],
            "max": ordered[-1],
        }


def compare(output: Tensor, reference: Tensor) -> dict[str, float]:
    """Max |logit difference| and argmax agreement of a variant against eager."""
    output, reference = output.float(), reference.float()
    diff = float((output - reference).abs().max())
    return {
        "max_abs_diff": diff,
        "max_rel_diff": diff / max(float(reference.abs().max()), 1e-12),
        "argmax_agreement": float((output.argmax(1) == reference.argmax(1)).float().mean()),
    }


def profile_call(
    fn: Callable[[], object], device: torch.device, top: int = 12
) -> list[dict[str, Any]]:
    """Self time per op of one ``fn()`` (torch.profiler; device time on CUDA), largest first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with quiet_stderr(), profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [
        {
            "op": e.key,
            "ms": getattr(e, key) / 1e3,
            "share": getattr(e, key) / total,
            "calls": e.count,
        }
        for e in rows
    ]


__all__ = ["Latency", "compare", "peak_memory", "profile_call", "quiet_stderr", "synchronize"]
