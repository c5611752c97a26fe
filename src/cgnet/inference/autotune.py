"""GPU inference that picks its fastest form by measuring, per input shape, on the GPU it runs on.

On CUDA the best layout differs per dtype (PyTorch sends channels-last depthwise convolutions to
cuDNN and NCHW dilated ones to its own kernel), CUDA graphs pay at some sizes and not others, and the
fused Triton kernels exist only where Triton does. Guessing lost: the folded channels-last default
once ran slower than plain eager. :class:`AutoTuned` times every candidate on the first input of
each shape (CUDA events, median of a few calls), keeps the fastest and frees the rest. Plain eager
is always a candidate in float32, so the tuned form is never slower than eager there.

Speed alone would also reward a form that computes the wrong thing (a fused kernel miscompiled by a
new GPU or Triton release, an overflow in half precision). So before a form is timed, its logits on
the same input are checked against the float32 eager network's: non-finite values, or an argmax
that moves on more pixels than its precision explains (:data:`MAX_DISAGREEMENT`), reject it with
one printed line, and the next fastest form wins.

``torch.compile`` is not a candidate: it compiles for tens of seconds per shape and dtype, and
compile + CUDA graphs ran at 158 fps where the fused Triton kernels in a CUDA graph ran at 289 (H200,
1024x2048, batch 1, docs/benchmarks.md). :func:`~cgnet.inference.optimize` still offers it.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from cgnet.inference.fast import optimize
from cgnet.models.cgnet import CGNet

Precision = Literal["fp32", "fp16", "bf16"]
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

__all__ = [
    "DTYPES",
    "MAX_DISAGREEMENT",
    "AutoTuned",
    "Candidate",
    "Precision",
    "candidates",
    "disagreement",
    "tuned",
]

MAX_DISAGREEMENT: dict[str, float] = {"fp32": 0.001, "fp16": 0.01, "bf16": 0.02}
"""The share of pixels whose argmax a form of each precision may move against float32 eager before
the tuner calls it broken. Measured on the authors' CamVid weights at 1024x2048 (H200): TF32 forms
moved 0.006%, fp16 0.012%, bf16 0.068%; a wrong kernel moves most pixels."""


@dataclass(frozen=True)
class Candidate:
    """One exact form of the network: eager or folded, its dtype, layout, graphs and kernels."""

    folded: bool
    precision: Precision
    channels_last: bool
    cuda_graphs: bool
    kernels: bool = False
    conv_kernels: bool = False

    @property
    def name(self) -> str:
        parts = ["folded" if self.folded else "eager", self.precision]
        parts.append("NHWC" if self.channels_last else "NCHW")
        if self.kernels:
            parts.append("triton")
        if self.conv_kernels:
            parts.append("convs")
        if self.cuda_graphs:
            parts.append("graphs")
        return " ".join(parts)


def check_precision(precision: Precision, device: torch.device) -> None:
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"{precision} inference is offered on CUDA only; the CPU runs fp32")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def candidates(
    precision: Precision, *, cuda: bool = True, kernels: bool | None = None
) -> list[Candidate]:
    """Every form worth timing for ``precision``: both layouts, with and without CUDA graphs, the
    fused Triton kernels (NCHW) when Triton is installed, and eager float32 as the baseline.

    Triton's dense convolutions are tried inside CUDA graphs only: launched one by one, the fused
    kernels already lost to their host time at batch 1 on an H200."""
    kernels = cuda and (triton_available() if kernels is None else kernels)
    graph_modes = (False, True) if cuda else (False,)
    forms = [
        Candidate(True, precision, layout, graphs)
        for layout in (False, True)
        for graphs in graph_modes
    ]
    if kernels:
        forms += [Candidate(True, precision, False, graphs, kernels=True) for graphs in graph_modes]
        if cuda:
            forms.append(Candidate(True, precision, False, True, kernels=True, conv_kernels=True))
    if precision == "fp32":
        forms.append(Candidate(False, "fp32", False, False))
    return forms


def build(model: CGNet, form: Candidate, device: torch.device) -> nn.Module:
    """The module for one candidate form (its own copy of the weights)."""
    if not form.folded:
        return _Eager(model, device)
    return optimize(
        model,
        device=device,
        channels_last=form.channels_last,
        cuda_graphs=form.cuda_graphs,
        kernels=form.kernels,
        conv_kernels=form.conv_kernels,
        dtype=DTYPES[form.precision],
    )


class _Eager(nn.Module):
    """The network as trained (a copy, so tuning never moves or changes the caller's model)."""

    def __init__(self, model: CGNet, device: torch.device) -> None:
        super().__init__()
        self.net = copy.deepcopy(model).to(device).eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def disagreement(logits: Tensor, reference: Tensor) -> float:
    """The share of pixels whose argmax differs from ``reference``'s (1.0 for non-finite logits or
    another shape)."""
    if logits.shape != reference.shape or not bool(torch.isfinite(logits).all()):
        return 1.0
    return float((logits.argmax(1) != reference.argmax(1)).float().mean())


def time_call(
    fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int
) -> float:
    """Median milliseconds of ``fn``: CUDA events on the current stream, else the wall clock."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


class AutoTuned(nn.Module):
    """Float NCHW in, float32 logits out, through the fastest candidate for each input shape.

    Meant for CUDA; on the CPU it times the graph-free forms with the wall clock (for tests; the
    CPU's choice is fixed and documented, see :func:`tuned`).

    ``choices`` maps each tuned shape to the winner's name, ``timings`` to every candidate's
    median milliseconds (NaN when it did not run or was rejected) and ``rejected`` to why a form
    was skipped, so a benchmark or a log can say what ran.
    """

    def __init__(
        self,
        model: CGNet,
        device: torch.device,
        precision: Precision = "fp32",
        *,
        kernels: bool | None = None,
        warmup: int = 3,
        repeats: int = 10,
    ) -> None:
        super().__init__()
        check_precision(precision, device)
        self.model = model.eval()
        self.device = device
        self.precision = precision
        self.forms = candidates(precision, cuda=device.type == "cuda", kernels=kernels)
        self.warmup, self.repeats = warmup, repeats
        self.num_classes = model.num_classes
        self._best: dict[tuple[int, ...], nn.Module] = {}
        self.choices: dict[tuple[int, ...], str] = {}
        self.timings: dict[tuple[int, ...], dict[str, float]] = {}
        self.rejected: dict[tuple[int, ...], dict[str, str]] = {}

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        key = tuple(x.shape)
        if key not in self._best:
            self._best[key] = self._tune(x)
        return self._best[key](x)

    def _tune(self, x: Tensor) -> nn.Module:
        key = tuple(x.shape)
        reference = _Eager(self.model, self.device)(x)
        allowed = MAX_DISAGREEMENT[self.precision]
        timings: dict[str, float] = {}
        rejected: dict[str, str] = {}
        best: tuple[float, str, nn.Module] | None = None
        for form in self.forms:
            ms = float("nan")
            try:
                module = build(self.model, form, self.device)
                moved = disagreement(module(x), reference)
                if moved > allowed:
                    reason = (
                        f"argmax differs from float32 eager on {100 * moved:.3f}% of pixels "
                        f"(allowed {100 * allowed:g}%)"
                    )
                else:
                    reason = None
                    ms = time_call(
                        lambda m=module: m(x), self.device, warmup=self.warmup, repeats=self.repeats
                    )
            except Exception as error:  # a form this GPU or stack cannot run is simply skipped
                reason = f"{type(error).__name__}: {error}"
            if reason is not None:
                timings[form.name] = float("nan")
                rejected[form.name] = reason
                print(f"autotune: skipping {form.name}: {reason}")
                continue
            timings[form.name] = ms
            if best is None or ms < best[0]:
                best = (ms, form.name, module)
            else:
                del module
        if best is None:
            raise RuntimeError(f"no inference form ran correctly on this device: {rejected}")
        self.timings[key] = timings
        self.rejected[key] = rejected
        self.choices[key] = best[1]
        del reference
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return best[2]


def tuned(model: CGNet, device: str | torch.device, precision: Precision = "fp32") -> nn.Module:
    """The fastest form of ``model`` for ``device``: measured on CUDA (:class:`AutoTuned`); on the
    CPU the folded channels-last network with the fused C++ kernels (:func:`optimize`, measured once
    in docs/benchmarks.md)."""
    device = torch.device(device)
    if device.type == "cuda":
        return AutoTuned(model, device, precision)
    check_precision(precision, device)
    return optimize(model, device=device)
