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
import os
import platform
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
from cgnet.models import CGNet
from cgnet.models.summary import summarize

# Piped output would get rich's 80-column default and squeezed columns; give the tables room.
console = Console(width=None if sys.stdout.isatty() else 180)

CPU_VARIANTS = ("eager", "fast", "compile", "onnxruntime")
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
    """Peak memory of the enclosed calls above what was in use before, in MiB.

    CUDA: the caching allocator's peak. CPU: the resident set's high-water mark after trimming the
    heap and resetting the mark (Linux ``clear_refs``), which also sees memory outside torch
    (onnxruntime, oneDNN scratch pads).
    """
    out: dict[str, float | None] = {"peak_mib": None}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        synchronize(device)
        out["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
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


def time_round_robin(
    forwards: dict[str, Forward],
    x: Tensor,
    *,
    warmup: int,
    repeats: int,
    device: torch.device,
) -> dict[str, Latency]:
    """Warm every variant up, then time ``repeats`` rounds, each calling every variant once."""
    timings = {name: Latency() for name in forwards}
    with torch.inference_mode():
        for fn in forwards.values():
            for _ in range(warmup):
                fn(x)
            synchronize(device)
        for _ in range(repeats):
            for name, fn in forwards.items():
                synchronize(device)
                start = time.perf_counter()
                fn(x)
                returned = time.perf_counter()
                synchronize(device)
                done = time.perf_counter()
                timings[name].synced_ms.append((done - start) * 1e3)
                if device.type == "cuda":
                    timings[name].unsynced_ms.append((returned - start) * 1e3)
    return timings


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
# Variants
# --------------------------------------------------------------------------------------------------


class OnnxRuntimeForward:
    """The BN-folded network exported to ONNX and run by onnxruntime (CPU, or CUDA if it has it)."""

    def __init__(self, net: CGNet, device: torch.device, workdir: Path) -> None:
        import onnxruntime as ort

        from cgnet.export import INPUT_NAME, deployable, export_onnx

        path = export_onnx(deployable(net), workdir / "cgnet.onnx")
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


def build_variant(name: str, net: CGNet, device: torch.device, workdir: Path) -> Forward:
    """One inference variant of ``net`` as a callable (normalised float NCHW -> logits)."""
    if name in GPU_ONLY_VARIANTS and device.type != "cuda":
        raise ValueError(f"variant {name!r} needs a CUDA device")
    if name == "eager":
        return net.to(device).eval()
    if name == "fast":
        return optimize(net, device=device)
    if name == "compile":
        return optimize(net, device=device, compile=True)
    if name == "cuda_graphs":
        return optimize(net, device=device, cuda_graphs=True)
    if name == "compile_cuda_graphs":
        return optimize(net, device=device, compile=True, cuda_graphs=True)
    if name == "bf16":
        return optimize(net, device=device, bf16=True)
    if name == "onnxruntime":
        return OnnxRuntimeForward(net, device, workdir)
    known = (*CPU_VARIANTS, *GPU_ONLY_VARIANTS)
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(known)}")


def benchmark_inference(
    net: CGNet,
    *,
    sizes: Sequence[Sequence[int]],
    batch: int,
    variants: Sequence[str],
    device: torch.device,
    warmup: int,
    repeats: int,
    seed: int = 0,
    input_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Every variant at every size: latency, fps, peak memory, setup time, agreement with eager.

    Inputs are ``input_scale`` times a standard normal: 50 for trained weights (the spread of RGB
    minus the mean, which they were trained on), 1 for a random initialisation (unit-variance init).
    """
    if "eager" not in variants:
        variants = ["eager", *variants]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cgnet-bench-") as tmp:
        forwards: dict[str, Forward] = {}
        skipped: dict[str, str] = {}
        for name in variants:
            try:
                forwards[name] = build_variant(name, net, device, Path(tmp))
            except (ImportError, RuntimeError, ValueError) as err:
                skipped[name] = str(err)
        for size in sizes:
            height, width = (int(v) for v in size)
            gen = torch.Generator().manual_seed(seed)
            x = (torch.randn(batch, 3, height, width, generator=gen) * input_scale).to(device)
            first: dict[str, dict[str, Any]] = {}
            outputs: dict[str, Tensor] = {}
            for name, fn in forwards.items():
                with torch.inference_mode():
                    start = time.perf_counter()
                    out = fn(x)  # first call: compiles / plans / allocates
                    synchronize(device)
                    first_s = time.perf_counter() - start
                    with peak_memory(device) as memory:
                        out = fn(x)
                outputs[name] = out.float().cpu()
                first[name] = {"first_call_s": first_s, "peak_memory_mib": memory["peak_mib"]}
                del out
            timings = time_round_robin(forwards, x, warmup=warmup, repeats=repeats, device=device)
            eager_median = Latency.stats(timings["eager"].synced_ms)["median"]
            for name in forwards:
                synced = Latency.stats(timings[name].synced_ms)
                row = {
                    "variant": name,
                    "size": [height, width],
                    "batch": batch,
                    "latency_ms": synced,
                    "latency_unsynced_ms": Latency.stats(timings[name].unsynced_ms) or None,
                    "fps": batch * 1e3 / synced["median"],
                    "ratio_over_eager": synced["median"] / eager_median,
                    "speedup_over_eager": eager_median / synced["median"],
                    **first[name],
                    **compare(outputs[name], outputs["eager"]),
                }
                rows.append(row)
            for name, reason in skipped.items():
                rows.append({"variant": name, "size": [height, width], "skipped": reason})
            outputs.clear()
    return rows


# --------------------------------------------------------------------------------------------------
# Training throughput
# --------------------------------------------------------------------------------------------------


def train_throughput(
    model_kwargs: dict[str, Any],
    num_classes: int,
    *,
    device: torch.device,
    batch: int,
    crop: Sequence[int],
    steps: int,
    warmup: int,
    channels_last: bool,
    compile: bool,
    seed: int = 0,
) -> dict[str, Any]:
    """Images per second of full training steps (normalise, forward, CE loss, backward, Adam).

    The step is the one :class:`cgnet.module.SegmentationModule` runs, without Lightning's loop, so
    the figure is the network's and the optimiser's, not the logger's.
    """
    torch.manual_seed(seed)
    net = CGNet(num_classes, **model_kwargs).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    forward: Callable[[Tensor], Tensor] = torch.compile(net) if compile else net  # type: ignore[assignment]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-4)
    mean = torch.tensor([72.39, 82.91, 73.16], device=device).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    height, width = (int(v) for v in crop)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (batch, height, width), generator=gen)
    masks[:, :8] = 255  # some ignored pixels, as real labels have
    images, masks = images.to(device), masks.to(device)

    def step() -> None:
        x = (images.float() - mean).contiguous(memory_format=fmt)
        loss = F.cross_entropy(forward(x), masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    synchronize(device)
    first_s = time.perf_counter() - start
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "channels_last": channels_last,
        "compile": compile,
        "batch": batch,
        "crop": [height, width],
        "step_ms": Latency.stats([t * 1e3 for t in times]),
        "images_per_s": batch / median,
        "first_step_s": first_s,
    }


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


def load_model(cfg: DictConfig) -> tuple[CGNet, str]:
    """The configured network: from ``ckpt_path`` (any format) or randomly initialised."""
    model_kwargs = plain(cfg.model)
    check_arguments(model_kwargs, CGNet, "model", skip=("num_classes",))
    if cfg.get("ckpt_path"):
        try:
            loaded = load_network(cfg.ckpt_path, int(cfg.num_classes), model_kwargs)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(str(err)) from None
        return loaded.net.eval(), f"{loaded.format} weights from {loaded.source}"
    torch.manual_seed(int(cfg.seed))
    return CGNet(int(cfg.num_classes), **model_kwargs).eval(), "random initialisation"


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole benchmark as one JSON-able dict."""
    device = pick_device(str(cfg.device))
    known = (*CPU_VARIANTS, *GPU_ONLY_VARIANTS)
    unknown = [v for v in cfg.variants if v not in known]
    if unknown:
        raise ConfigError(f"variants: unknown {unknown}; known: {', '.join(known)}")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if device.type == "cpu" and cfg.reuse_memory:
        reuse_cpu_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    net, source = load_model(cfg)
    sizes = [[int(v) for v in size] for size in cfg.sizes]
    summaries = {f"{h}x{w}": summarize(net, (h, w), int(cfg.batch)) for h, w in sizes}
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python -m cgnet.benchmark", *sys.argv[1:]]),
        "machine": machine(),
        "device": str(device),
        "reuse_memory": bool(cfg.reuse_memory) and device.type == "cpu",
        "model": {
            "source": source,
            "num_classes": net.num_classes,
            "M": net.M,
            "N": net.N,
            "parameters": sum(p.numel() for p in net.parameters()),
            "multiply_adds": {k: s.total_macs for k, s in summaries.items()},
        },
        "inference": benchmark_inference(
            net,
            sizes=sizes,
            batch=int(cfg.batch),
            variants=list(cfg.variants),
            device=device,
            warmup=int(cfg.warmup),
            repeats=int(cfg.repeats),
            seed=int(cfg.seed),
            input_scale=50.0 if cfg.get("ckpt_path") else 1.0,
        ),
    }
    tt = cfg.get("train_throughput")
    if tt and tt.get("enabled", True):
        common = {
            "device": device,
            "batch": int(tt.batch),
            "crop": list(tt.crop),
            "steps": int(tt.steps),
            "warmup": int(tt.warmup),
        }
        kwargs = plain(cfg.model)
        result["training"] = [
            {
                "setting": "plain eager",
                **train_throughput(
                    kwargs, net.num_classes, channels_last=False, compile=False, **common
                ),
            },
            {
                "setting": "project default",
                **train_throughput(
                    kwargs,
                    net.num_classes,
                    channels_last=bool(tt.channels_last),
                    compile=bool(tt.compile),
                    **common,
                ),
            },
        ]
        base = result["training"][0]["images_per_s"]
        for row in result["training"]:
            row["speedup_over_eager"] = row["images_per_s"] / base
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


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
    for column in ("fps", "x eager", "peak MiB", "max |diff|", "argmax =", "1st call s"):
        table.add_column(column, justify="right")
    for row in result["inference"]:
        key = f"{row['size'][0]}x{row['size'][1]}"
        if "skipped" in row:
            table.add_row(key, row["variant"], *(["-"] * 4), f"skipped: {row['skipped'][:60]}")
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
        cells += [
            f"{row['fps']:.2f}",
            f"{row['speedup_over_eager']:.2f}",
            _fmt(row["peak_memory_mib"], ".0f"),
            f"{row['max_abs_diff']:.1e}",
            f"{row['argmax_agreement']:.4%}",
            f"{row['first_call_s']:.1f}",
        ]
        table.add_row(*cells)
    tables = [table]
    if result.get("training"):
        train = Table(title="training throughput (normalise + forward + CE + backward + Adam)")
        for column in ("setting", "channels_last", "compile", "batch x crop", "median ms/step"):
            train.add_column(column)
        train.add_column("images/s", justify="right")
        train.add_column("x eager", justify="right")
        for row in result["training"]:
            train.add_row(
                row["setting"],
                str(row["channels_last"]),
                str(row["compile"]),
                f"{row['batch']} x {row['crop'][0]}x{row['crop'][1]}",
                f"{row['step_ms']['median']:.0f}",
                f"{row['images_per_s']:.2f}",
                f"{row['speedup_over_eager']:.2f}",
            )
        tables.append(train)
    return tables


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


if __name__ == "__main__":
    main()
