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
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch import Tensor

from cgnet.checkpoint import load_network
from cgnet.config import ConfigError, check_arguments, plain
from cgnet.inference import optimize, reuse_cpu_memory
from cgnet.models import CGNet, use_space_to_batch
from cgnet.models.summary import summarize

# Piped output would get rich's 80-column default and squeezed columns; give the tables room.
console = Console(width=None if sys.stdout.isatty() else 180)

GPU_ONLY_VARIANTS = ("cuda_graphs", "compile_cuda_graphs", "bf16")
Forward = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one; an explicit `cuda` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available (use device=cpu or auto)")
    return device


def synchronize(device: torch.device) -> None:
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
    base = _rss_bytes("VmRSS")
    yield out
    peak = _rss_bytes("VmHWM")
    if reset and base is not None and peak is not None:
        out["peak_mib"] = max(peak - base, 0) / 2**20
    if before is not None and peak is not None:
        out["process_peak_mib"] = max(before, peak) / 2**20


@dataclass
class Latency:
    """Per-call latencies of one variant at one size, in milliseconds."""

    synced_ms: list[float] = field(default_factory=list)
    unsynced_ms: list[float] = field(default_factory=list)

    @staticmethod
    def stats(values: Sequence[float]) -> dict[str, float]:
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


# --------------------------------------------------------------------------------------------------
# Variants and the jobs that run them
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
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


@dataclass(frozen=True)
class ModelSpec:
    """How every worker builds the same network: from a checkpoint, or seeded random init."""

    num_classes: int
    model: dict[str, Any]
    ckpt_path: str | None = None
    seed: int = 0

    def build(self) -> CGNet:
        if self.ckpt_path:
            return load_network(self.ckpt_path, self.num_classes, self.model).net.eval()
        torch.manual_seed(self.seed)
        return CGNet(self.num_classes, **self.model).eval()


class OnnxRuntimeForward:
    """The BN-folded network exported to ONNX and run by onnxruntime (CPU, or CUDA if it has it)."""

    def __init__(self, net: CGNet, device: torch.device, workdir: Path) -> None:
        import onnxruntime as ort

        from cgnet.export import INPUT_NAME, deployable, export_onnx

        path = export_onnx(deployable(net), workdir / f"cgnet-{os.getpid()}.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = INPUT_NAME
        self.device = device

    def __call__(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(out).to(self.device)


VARIANT_HELP = {
    "eager": "the CGNet module as trained, NCHW, glibc's default allocator",
    "eager_reuse": "eager + cgnet.inference.reuse_cpu_memory (isolates the allocator's share)",
    "folded": "BatchNorms folded, NCHW (isolates the folding's share)",
    "fast": "cgnet.inference.optimize(net): folded + channels_last + heap reuse",
    "compile": "optimize(net, compile=True): the fast path through torch.compile (freezing)",
    "onnxruntime": "the folded network exported to ONNX, run by onnxruntime",
    "cuda_graphs": "optimize(net, cuda_graphs=True) (GPU)",
    "compile_cuda_graphs": "optimize(net, compile=True, cuda_graphs=True) (GPU)",
    "bf16": "optimize(net, bf16=True): bfloat16 autocast (GPU)",
}


def build_variant(name: str, net: CGNet, device: torch.device, workdir: Path) -> Forward:
    """One inference variant of ``net`` as a callable (normalised float NCHW -> logits)."""
    if name not in VARIANT_HELP:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANT_HELP)}")
    if name in GPU_ONLY_VARIANTS and device.type != "cuda":
        raise ValueError(f"variant {name!r} needs a CUDA device")
    if name in ("eager", "eager_reuse"):
        if name == "eager_reuse" and device.type == "cpu":
            reuse_cpu_memory()
        return net.to(device).eval()
    if name == "folded":
        return optimize(net, device=device, channels_last=False)
    if name == "onnxruntime":
        return OnnxRuntimeForward(net, device, workdir)
    return optimize(
        net,
        device=device,
        compile=name in ("compile", "compile_cuda_graphs"),
        cuda_graphs=name in ("cuda_graphs", "compile_cuda_graphs"),
        bf16=name == "bf16",
    )


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
        return {
            "first_call_s": first_s,
            "peak_memory_mib": memory["peak_mib"],
            "process_peak_mib": memory["process_peak_mib"],
            "output": str(path),
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
        from torch.profiler import ProfilerActivity, profile

        assert self.x is not None, "prepare() first"
        if isinstance(self.fn, OnnxRuntimeForward):
            return []  # its kernels are invisible to torch.profiler
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with _quiet_stderr(), torch.inference_mode(), profile(activities=activities) as prof:
            self.fn(self.x)
            synchronize(self.device)
        events = prof.key_averages()
        key = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
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


class TrainJob:
    """Full training steps (normalise, forward, CE loss, backward, Adam) at one setting.

    The step is the one :class:`cgnet.module.SegmentationModule` runs, without Lightning's loop, so
    the figure is the network's and the optimiser's, not the logger's.
    """

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        *,
        batch: int,
        crop: Sequence[int],
        channels_last: bool,
        compile: bool,
        reuse_memory: bool,
        space_to_batch: bool = False,
        bf16: bool = False,
    ) -> None:
        self.device = torch.device(device)
        if bf16 and self.device.type != "cuda":
            raise ValueError("bf16-mixed training is measured on CUDA only")
        self.bf16 = bf16
        if reuse_memory and self.device.type == "cpu":
            reuse_cpu_memory()
        torch.manual_seed(spec.seed)
        net = CGNet(spec.num_classes, **spec.model).to(self.device).train()
        use_space_to_batch(net, space_to_batch)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(memory_format=self.fmt)
        self.forward: Callable[[Tensor], Tensor] = torch.compile(net) if compile else net  # type: ignore[assignment]
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-4)
        self.mean = torch.tensor([72.39, 82.91, 73.16], device=self.device).view(1, 3, 1, 1)
        gen = torch.Generator().manual_seed(spec.seed)
        height, width = (int(v) for v in crop)
        images = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
        masks = torch.randint(0, spec.num_classes, (batch, height, width), generator=gen)
        masks[:, :8] = 255  # some ignored pixels, as real labels have
        self.images, self.masks = images.to(self.device), masks.to(self.device)

    def step(self) -> float:
        """One timed training step in milliseconds."""
        synchronize(self.device)
        start = time.perf_counter()
        x = (self.images.float() - self.mean).contiguous(memory_format=self.fmt)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.forward(x).float(), self.masks, ignore_index=255)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        synchronize(self.device)
        return (time.perf_counter() - start) * 1e3


def _serve(conn: Any, kind: str, kwargs: dict[str, Any], threads: int | None) -> None:
    """Worker process: build the job, then answer (method, args) requests until told to stop."""
    torch.set_flush_denormal(True)  # before any torch op, so the thread pool inherits it
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    try:
        job: Any = InferenceJob(**kwargs) if kind == "inference" else TrainJob(**kwargs)
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ok", None))
    while True:
        try:
            method, args = conn.recv()
        except EOFError:  # the parent went away
            return
        if method == "stop":
            return
        try:
            conn.send(("ok", getattr(job, method)(*args)))
        except Exception as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))


class Worker:
    """A job in its own process (``isolate=True``) or in this one, behind the same interface.

    Own processes keep process-wide settings (heap reuse, compiled code, onnxruntime's arena) from
    flattering or penalising the other variants, and make peak memory a per-variant figure.
    """

    def __init__(
        self, kind: str, kwargs: dict[str, Any], *, isolate: bool, threads: int | None
    ) -> None:
        self.process: Any = None
        self.job: Any = None
        if not isolate:
            if threads:
                torch.set_num_threads(threads)
            torch.backends.cudnn.benchmark = True
            self.job = InferenceJob(**kwargs) if kind == "inference" else TrainJob(**kwargs)
            return
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, kind, kwargs, threads), daemon=True
        )
        self.process.start()
        child.close()
        self._answer()

    def _answer(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError("benchmark worker died (out of memory?)") from None
        if status == "error":
            raise RuntimeError(value)
        return value

    def request(self, method: str, *args: Any) -> Any:
        if self.job is not None:
            return getattr(self.job, method)(*args)
        self.conn.send((method, args))
        return self._answer()

    def close(self) -> None:
        if self.process is not None and self.process.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(("stop", ()))
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.terminate()
        self.job = None


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
                    workers[name] = Worker("inference", kwargs, isolate=isolate, threads=threads)
                except (ImportError, RuntimeError, ValueError) as err:
                    if name == "eager":
                        raise
                    skipped[name] = str(err)
            for size in sizes:
                height, width = (int(v) for v in size)
                args = ([height, width], batch, spec.seed, input_scale, warmup)
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
                profiles = (
                    {name: w.request("profile") for name, w in workers.items()} if profile else {}
                )
                reference = torch.load(prepared["eager"]["output"])
                eager_median = Latency.stats(timings["eager"].synced_ms)["median"]
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
                        rows[-1]["profile"] = profiles[name]
                    del output
                for name, reason in skipped.items():
                    rows.append({"variant": name, "size": [height, width], "skipped": reason})
        finally:
            for worker in workers.values():
                worker.close()
    return rows


def benchmark_training(
    spec: ModelSpec,
    *,
    device: torch.device,
    batch: int,
    crop: Sequence[int],
    steps: int,
    warmup: int,
    settings: dict[str, dict[str, bool]],
    isolate: bool = True,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Images per second of each training-step setting, steps timed round-robin."""
    workers: dict[str, Worker] = {}
    rows = []
    try:
        for name, setting in settings.items():
            kwargs = {"spec": spec, "device": str(device), "batch": batch, "crop": list(crop)}
            workers[name] = Worker("train", {**kwargs, **setting}, isolate=isolate, threads=threads)
        first = {name: w.request("step") / 1e3 for name, w in workers.items()}
        for worker in workers.values():
            for _ in range(warmup):
                worker.request("step")
        times: dict[str, list[float]] = {name: [] for name in workers}
        for _ in range(steps):
            for name, worker in workers.items():
                times[name].append(worker.request("step"))
    finally:
        for worker in workers.values():
            worker.close()
    for name, setting in settings.items():
        stats = Latency.stats(times[name])
        rows.append(
            {
                "setting": name,
                **setting,
                "batch": batch,
                "crop": [int(v) for v in crop],
                "step_ms": stats,
                "images_per_s": batch * 1e3 / stats["median"],
                "first_step_s": first[name],
            }
        )
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup_over_eager"] = row["images_per_s"] / base
    return rows


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
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


def model_spec(cfg: DictConfig) -> tuple[ModelSpec, CGNet, str]:
    """The configured network (checked here, once, with clear errors) and how workers rebuild it."""
    model_kwargs = plain(cfg.model)
    check_arguments(model_kwargs, CGNet, "model", skip=("num_classes",))
    spec = ModelSpec(int(cfg.num_classes), model_kwargs, cfg.get("ckpt_path"), int(cfg.seed))
    if spec.ckpt_path:
        try:
            loaded = load_network(spec.ckpt_path, spec.num_classes, model_kwargs)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(str(err)) from None
        return spec, loaded.net, f"{loaded.format} weights from {loaded.source}"
    return spec, spec.build(), "random initialisation"


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole benchmark as one JSON-able dict."""
    device = pick_device(str(cfg.device))
    unknown = [v for v in cfg.variants if v not in VARIANT_HELP]
    if unknown:
        raise ConfigError(f"variants: unknown {unknown}; known: {', '.join(VARIANT_HELP)}")
    threads = int(cfg.threads) if cfg.get("threads") else None
    spec, net, source = model_spec(cfg)
    sizes = [[int(v) for v in size] for size in cfg.sizes]
    summaries = {f"{h}x{w}": summarize(net, (h, w), int(cfg.batch)) for h, w in sizes}
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python -m cgnet.benchmark", *sys.argv[1:]]),
        "machine": machine(),
        "device": str(device),
        "isolated_processes": bool(cfg.isolate),
        "variants": {name: VARIANT_HELP[name] for name in dict.fromkeys(["eager", *cfg.variants])},
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
            batch=int(cfg.batch),
            variants=list(cfg.variants),
            device=device,
            warmup=int(cfg.warmup),
            repeats=int(cfg.repeats),
            input_scale=50.0 if spec.ckpt_path else 1.0,
            isolate=bool(cfg.isolate),
            threads=threads,
            profile=bool(cfg.get("profile", False)),
        ),
    }
    tt = cfg.get("train_throughput")
    if tt and tt.get("enabled", True):
        plain_eager = {
            "channels_last": False,
            "compile": False,
            "reuse_memory": False,
            "space_to_batch": False,
        }
        channels_last = tt.get("channels_last")  # null: as SegmentationModule, GPUs only
        project = {
            "channels_last": device.type == "cuda"
            if channels_last is None
            else bool(channels_last),
            "compile": bool(tt.compile),
            "reuse_memory": bool(tt.reuse_memory),
            "space_to_batch": bool(tt.get("space_to_batch", True)),
            "bf16": bool(tt.get("bf16", False)),
        }
        result["training"] = benchmark_training(
            spec,
            device=device,
            batch=int(tt.batch),
            crop=[int(v) for v in tt.crop],
            steps=int(tt.steps),
            warmup=int(tt.warmup),
            settings={"plain eager": plain_eager, "project settings": project},
            isolate=bool(cfg.isolate),
            threads=threads,
        )
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _outcome_cells(row: dict[str, Any]) -> list[str]:
    """Throughput, memory and agreement cells, shared by the terminal and the Markdown tables."""
    return [
        f"{row['fps']:.2f}",
        f"{row['speedup_over_eager']:.2f}",
        f"{row['page_faults_per_call']:,}",
        _fmt(row["peak_memory_mib"], ".0f"),
        _fmt(row["process_peak_mib"], ".0f"),
        f"{row['max_abs_diff']:.1e}",
        f"{row['argmax_agreement']:.4%}",
    ]


def render(result: dict[str, Any]) -> list[Table]:
    """Rich tables: one for inference (all sizes), one for training throughput."""
    model = result["model"]
    cuda = result["device"].startswith("cuda")
    title = (
        f"CGNet M={model['M']} N={model['N']}, {model['num_classes']} classes, "
        f"{model['parameters']:,} parameters ({model['source']}) on {result['device']}"
    )
    table = Table(title=title)
    for column in ("size", "variant", "GMACs", "median ms", "q1-q3 ms", "min-max ms"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    if cuda:
        table.add_column("no-sync ms", justify="right")
    columns = (
        "fps",
        "x eager",
        "faults",
        "call MiB",
        "process MiB",
        "max |diff|",
        "argmax =",
        "1st call s",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in result["inference"]:
        key = f"{row['size'][0]}x{row['size'][1]}"
        if "skipped" in row:
            table.add_row(key, f"{row['variant']} (skipped: {row['skipped'][:70]})")
            continue
        lat = row["latency_ms"]
        cells = [
            key,
            row["variant"],
            f"{model['multiply_adds'][key] / 1e9:.2f}",
            f"{lat['median']:.1f}",
            f"{lat['q1']:.1f}-{lat['q3']:.1f}",
            f"{lat['min']:.1f}-{lat['max']:.1f}",
        ]
        if cuda:
            unsynced = row.get("latency_unsynced_ms") or {}
            cells.append(_fmt(unsynced.get("median"), ".1f"))
        cells += [*_outcome_cells(row), f"{row['first_call_s']:.1f}"]
        table.add_row(*cells)
    tables = [table]
    for row in result["inference"]:
        if row.get("profile"):
            size = f"{row['size'][0]}x{row['size'][1]}"
            prof = Table(title=f"where {row['variant']} spends one call at {size} (self time)")
            for column in ("op", "ms", "share", "calls"):
                prof.add_column(column, justify="left" if column == "op" else "right")
            for op in row["profile"]:
                prof.add_row(
                    op["op"][:70], f"{op['ms']:.1f}", f"{op['share']:.1%}", str(op["calls"])
                )
            tables.append(prof)
    if result.get("training"):
        train = Table(title="training throughput (normalise + forward + CE + backward + Adam)")
        columns = (
            "setting",
            "channels_last",
            "space_to_batch",
            "compile",
            "reuse_memory",
            "bf16",
            "batch x crop",
        )
        for column in columns:
            train.add_column(column)
        train.add_column("ms/step", justify="right")
        train.add_column("images/s", justify="right")
        train.add_column("x eager", justify="right")
        for row in result["training"]:
            train.add_row(
                row["setting"],
                str(row["channels_last"]),
                str(row.get("space_to_batch", False)),
                str(row["compile"]),
                str(row["reuse_memory"]),
                str(row.get("bf16", False)),
                f"{row['batch']} x {row['crop'][0]}x{row['crop'][1]}",
                f"{row['step_ms']['median']:.0f}",
                f"{row['images_per_s']:.2f}",
                f"{row['speedup_over_eager']:.2f}",
            )
        tables.append(train)
    return tables


def render_markdown(result: dict[str, Any]) -> str:
    """The figures as Markdown tables, with the command, machine and date, for docs/benchmarks.md."""
    machine_info = result["machine"]
    lines = [
        f"`{result['command']}`",
        "",
        f"{result['date']}; {machine_info.get('cpu', '?')}, {machine_info['threads']} threads, "
        f"torch {machine_info['torch']}, onnxruntime {machine_info.get('onnxruntime', '-')}; "
        f"{result['model']['source']}; each variant in its own process: "
        f"{result['isolated_processes']}.",
        "",
    ]
    cuda = result["device"].startswith("cuda")
    head = "| size | variant | median ms | q1-q3 ms | min ms |"
    head += " no-sync ms |" if cuda else ""
    head += " fps | x eager | faults/call | call MiB | process MiB | max abs diff | argmax agree |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for row in result["inference"]:
        size = f"{row['size'][0]}x{row['size'][1]}"
        if "skipped" in row:
            lines.append(f"| {size} | {row['variant']} (skipped: {row['skipped']}) |")
            continue
        lat = row["latency_ms"]
        cells = [size, row["variant"], f"{lat['median']:.0f}", f"{lat['q1']:.0f}-{lat['q3']:.0f}"]
        cells.append(f"{lat['min']:.0f}")
        if cuda:
            cells.append(_fmt((row.get("latency_unsynced_ms") or {}).get("median"), ".1f"))
        cells += _outcome_cells(row)
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("training"):
        lines += [
            "",
            "| training setting | channels_last | space_to_batch | compile | reuse_memory | bf16"
            " | batch x crop | ms/step | q1-q3 ms | images/s | x eager |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["training"]:
            lines.append(
                f"| {row['setting']} | {row['channels_last']} | "
                f"{row.get('space_to_batch', False)} | {row['compile']} | "
                f"{row['reuse_memory']} | {row.get('bf16', False)} | "
                f"{row['batch']} x {row['crop'][0]}x{row['crop'][1]} | "
                f"{row['step_ms']['median']:.0f} | "
                f"{row['step_ms']['q1']:.0f}-{row['step_ms']['q3']:.0f} | "
                f"{row['images_per_s']:.2f} | "
                f"{row['speedup_over_eager']:.2f} |"
            )
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="pkg://cgnet.conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: measure, print the tables, write the JSON."""
    # Before any torch op: the authors' weights hold subnormal floats (10-40x slower CPU kernels).
    torch.set_flush_denormal(True)
    try:
        result = run(cfg)
    except ConfigError as err:
        console.print(f"[red]config error:[/red] {err}")
        sys.exit(2)
    for table in render(result):
        console.print(table)
    if cfg.get("output"):
        path = Path(cfg.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {path}")
    if cfg.get("markdown"):
        path = Path(cfg.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_markdown(result))
        console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
