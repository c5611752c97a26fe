"""Fused CPU kernels for the folded network's memory-bound chains, built once per machine.

On the CPU the folded network's convolutions run near the cores' FMA peak; what is left is memory
traffic. A CG block's f_loc + f_sur + f_joi (bias, activation) + concatenation + f_glo's pooling sums
become one pass (:func:`cg_joint`), and a join's concatenation + BatchNorm + activation another
(:func:`join`); the convolutions' activations run in place (:func:`activate_`), and the logits'
upsample (:func:`resize_bilinear`) and class argmax (:func:`class_argmax`) use every thread, where
torch's ran on one or took the slow reduction. docs/benchmarks.md has what each saves.

The C++ source ships with the package (``csrc/cpu_kernels.cpp``: no Python or torch headers) and is
compiled on first use with the machine's C++ compiler (``$CXX``, else ``c++`` / ``g++`` /
``clang++``; ``-O3 -march=native -fopenmp``, about a second) into the cgnet cache, keyed by source,
compiler and CPU. Without a compiler the kernels are unavailable and :func:`cgnet.inference.optimize`
keeps torch's ops: :func:`unavailable_reason` says why. ``python -m cgnet.inference.cpu_kernels``
builds them ahead of time (a container image, a cluster's login node) and prints where they are, or
why they cannot be built (exit status 2).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor
from torch.profiler import record_function

from cgnet.cache import cache_dir

log = logging.getLogger(__name__)

__all__ = [
    "SOURCE",
    "activate_",
    "available_or_warn",
    "cg_joint",
    "class_argmax",
    "join",
    "library",
    "prelu_backward",
    "resize_bilinear",
    "unavailable_reason",
]

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
# activation codes of the C++ source
_RELU, _PRELU = 1, 2

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES: dict[str, list[type]] = {
    "cgnet_cg_joint": [_P, _P, _P, _P, _P, _P, _P, _P, _INT, _I64, _I64, _I64, _I64, _I64, _INT],
    "cgnet_join": [_P, _P, _I64, _P, _P, _P, _P, _INT, _I64, _I64, _INT],
    "cgnet_activate_inplace": [_P, _P, _INT, _I64, _I64, _INT],
    "cgnet_resize_bilinear": [_P, _P, _P, *[_I64] * 6, *[_P] * 8, _INT],
    "cgnet_class_argmax": [_P, _P, _I64, _I64, _INT],
    "cgnet_prelu_backward_planes": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _INT],
    "cgnet_prelu_backward_rows": [_P, _P, _P, _P, _P, _I64, _I64, _INT],
}


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled or loaded on this machine."""


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++")):
        if path := shutil.which(name):
            return path
    raise KernelBuildError("no C++ compiler found ($CXX, c++, g++ or clang++)")


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU model and feature flags (Linux), else the arch."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if ":" in line}
    return platform.machine() + "".join(lines.get(key, "") for key in wanted)


def _build(compiler: str) -> Path:
    """Compile the source into the cache (atomically: concurrent builders never load half a file)."""
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelBuildError(f"{compiler} --version failed: {error}") from error
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), compiler, version, *FLAGS, _cpu_identity()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"cpu_kernels-{key}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cpu_kernels-", suffix=".so", dir=target.parent)
    except OSError as error:
        raise KernelBuildError(
            f"cannot write to {target.parent} ({error.strerror}); set CGNET_CACHE_DIR to a "
            "writable folder"
        ) from error
    os.close(fd)
    try:
        command = [compiler, *FLAGS, str(SOURCE), "-o", tmp]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["(no output)"]
            first_error = next((line for line in lines if "error" in line), lines[-1])
            raise KernelBuildError(f"{compiler} failed on {SOURCE.name}: {first_error.strip()}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelBuildError(f"{compiler} could not build {SOURCE.name}: {error}") from error
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernels (built on the first call of the process, or found in the cache).

    Raises:
        KernelBuildError: no compiler, or the source does not compile or load here.
    """
    path = _build(_compiler())
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        raise KernelBuildError(f"cannot load {path}: {error}") from error
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib


@functools.cache
def unavailable_reason() -> str | None:
    """None when the kernels build and load here, else why not (one line)."""
    try:
        library()
    except KernelBuildError as error:
        return str(error)
    return None


def available_or_warn() -> bool:
    """Whether the kernels are at hand; if not, says why once per process (torch's ops run instead)."""
    reason = unavailable_reason()
    if reason is not None:
        _warn_once(reason)
    return reason is None


@functools.cache
def _warn_once(reason: str) -> None:
    log.warning("fused CPU kernels unavailable (%s); using torch's ops", reason)


def _check(x: Tensor, name: str) -> None:
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        raise ValueError(
            f"{name}: the CPU kernels take 4-d float32 CPU tensors, got {x.dtype} {tuple(x.shape)} on {x.device}"
        )


def _channels_last(x: Tensor, name: str) -> Tensor:
    _check(x, name)
    return x.contiguous(memory_format=torch.channels_last)


def _activation(slope: Tensor | None, channels: int) -> tuple[int, Tensor | None]:
    """The activation code and contiguous slopes (None = ReLU, the paper's ablation)."""
    if slope is None:
        return _RELU, None
    slope = slope.detach().float().contiguous()
    if slope.numel() != channels:
        raise ValueError(f"PReLU slopes: expected {channels}, got {slope.numel()}")
    return _PRELU, slope


def _taps(weight: Tensor) -> Tensor:
    """A depthwise weight [C, 1, 3, 3] as [9, C], tap-major."""
    if weight.dim() != 4 or weight.shape[1:] != (1, 3, 3):
        raise ValueError(f"depthwise 3x3 weight expected, got {tuple(weight.shape)}")
    return weight.detach().float().reshape(weight.shape[0], 9).t().contiguous()


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def cg_joint(
    y: Tensor,
    loc_weight: Tensor,
    loc_bias: Tensor,
    sur_weight: Tensor,
    sur_bias: Tensor,
    slope: Tensor | None,
    dilation: int,
    *,
    with_sums: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``act(cat([f_loc(y), f_sur(y)]))`` (channels-last [N, 2C, H, W]) and, with ``with_sums``, its
    per-channel sums over H and W ([N, 2C], float32) for f_glo's global average pooling.

    f_loc / f_sur are 3x3 depthwise convolutions (dilation 1 / ``dilation``, zero padding to keep the
    size) with f_joi's BatchNorm folded into their biases; ``slope`` is f_joi's PReLU (2C slopes)
    or None for ReLU.
    """
    y = _channels_last(y, "cg_joint input")
    n, c, h, w = y.shape
    act, slope = _activation(slope, 2 * c)
    loc_taps, sur_taps = _taps(loc_weight), _taps(sur_weight)
    loc_bias, sur_bias = (
        loc_bias.detach().float().contiguous(),
        sur_bias.detach().float().contiguous(),
    )
    if (
        loc_taps.shape[1] != c
        or sur_taps.shape[1] != c
        or loc_bias.numel() != c
        or sur_bias.numel() != c
    ):
        raise ValueError(f"cg_joint: weights and biases must have {c} channels, like the input")
    out = torch.empty(n, 2 * c, h, w, memory_format=torch.channels_last)
    row_sums = torch.empty(n, h, 2 * c) if with_sums else None
    with record_function("cgnet::cg_joint"):
        library().cgnet_cg_joint(
            y.data_ptr(), out.data_ptr(), _ptr(row_sums), loc_taps.data_ptr(), loc_bias.data_ptr(),
            sur_taps.data_ptr(), sur_bias.data_ptr(), _ptr(slope), act, n, h, w, c, int(dilation),
            torch.get_num_threads(),
        )  # fmt: skip
    return out, None if row_sums is None else row_sums.sum(dim=1)


def join(parts: list[Tensor], scale: Tensor, shift: Tensor, slope: Tensor | None) -> Tensor:
    """``act(cat(parts) * scale + shift)`` channels-last, in one pass (a join's BatchNorm + PReLU,
    or ReLU when ``slope`` is None)."""
    parts = [_channels_last(p, f"join part {i}") for i, p in enumerate(parts)]
    n, _, h, w = parts[0].shape
    if any(p.shape[0] != n or p.shape[2:] != (h, w) for p in parts):
        raise ValueError(f"join: parts differ in batch or size: {[tuple(p.shape) for p in parts]}")
    channels = [p.shape[1] for p in parts]
    total = sum(channels)
    scale, shift = (
        scale.detach().float().reshape(-1).contiguous(),
        shift.detach().float().reshape(-1).contiguous(),
    )
    if scale.numel() != total or shift.numel() != total:
        raise ValueError(f"join: scale and shift must have {total} channels")
    act, slope = _activation(slope, total)
    out = torch.empty(n, total, h, w, memory_format=torch.channels_last)
    pointers = (ctypes.c_void_p * len(parts))(*(p.data_ptr() for p in parts))
    counts = (ctypes.c_int64 * len(parts))(*channels)
    with record_function("cgnet::join"):
        library().cgnet_join(
            pointers, counts, len(parts), out.data_ptr(), scale.data_ptr(), shift.data_ptr(),
            _ptr(slope), act, n * h * w, total, torch.get_num_threads(),
        )  # fmt: skip
    return out


def activate_(x: Tensor, slope: Tensor | None) -> Tensor:
    """PReLU (ReLU when ``slope`` is None) of a channels-last tensor, in place; returns ``x``."""
    _check(x, "activate_")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("activate_: works in place, so x must already be channels-last contiguous")
    n, c, h, w = x.shape
    act, slope = _activation(slope, c)
    library().cgnet_activate_inplace(
        x.data_ptr(), _ptr(slope), act, n * h * w, c, torch.get_num_threads()
    )
    return x


def prelu_backward(grad: Tensor, x: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    """PReLU's gradients with respect to ``x`` and ``slope`` in one pass (training on the CPU).

    ``x`` NCHW or channels-last; ``grad`` is brought to ``x``'s layout; the input gradient comes
    back in it. The slope's gradient is summed in a fixed order, whatever the thread count.
    """
    _check(x, "prelu_backward")
    _check(grad, "prelu_backward")
    n, c, h, w = x.shape
    if grad.shape != x.shape or slope.numel() != c:
        raise ValueError(
            f"prelu_backward: grad {tuple(grad.shape)} and slope ({slope.numel()}) must match "
            f"x {tuple(x.shape)}"
        )
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, grad = x.contiguous(memory_format=fmt), grad.contiguous(memory_format=fmt)
    _, slope32 = _activation(slope, c)
    grad_x = torch.empty_like(x)
    threads = torch.get_num_threads()
    if channels_last:
        partial = torch.empty(-(-n * h * w // 256), c)
        library().cgnet_prelu_backward_rows(
            x.data_ptr(), grad.data_ptr(), slope32.data_ptr(), grad_x.data_ptr(),
            partial.data_ptr(), n * h * w, c, threads,
        )  # fmt: skip
    else:
        partial = torch.empty(n, c)
        library().cgnet_prelu_backward_planes(
            x.data_ptr(), grad.data_ptr(), slope32.data_ptr(), grad_x.data_ptr(),
            partial.data_ptr(), n, c, h * w, threads,
        )  # fmt: skip
    return grad_x, partial.sum(0).to(slope.dtype)


def _linear_taps(size: int, out_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and weights along one axis, as torch's bilinear (align_corners=False) computes
    them in float32: two neighbours, the left one clamped to the edge."""
    if size == out_size:
        index = torch.arange(out_size)
        return index, index, torch.ones(out_size), torch.zeros(out_size)
    scale = torch.tensor(size, dtype=torch.float32) / out_size
    src = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp_min(0)
    first = src.floor().long().clamp_max(size - 1)
    weight1 = (src - first.float()).clamp(0, 1)
    second = torch.where(first < size - 1, first + 1, first)
    return first, second, 1 - weight1, weight1


@functools.lru_cache(maxsize=16)
def _resize_taps(h: int, w: int, out_h: int, out_w: int) -> tuple[Tensor, ...]:
    return (*_linear_taps(w, out_w), *_linear_taps(h, out_h))


def resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` of a 4-d float32 CPU tensor,
    returned channels-last (as torch returns it for channels-last input): the final upsample of the
    logits, on every thread."""
    x = _channels_last(x, "resize_bilinear input")
    n, c, h, w = x.shape
    out_h, out_w = int(size[0]), int(size[1])
    rows = torch.empty(n, h, out_w, c)
    out = torch.empty(n, c, out_h, out_w, memory_format=torch.channels_last)
    taps = _resize_taps(h, w, out_h, out_w)
    with record_function("cgnet::resize_bilinear"):
        library().cgnet_resize_bilinear(
            x.data_ptr(), rows.data_ptr(), out.data_ptr(), n, h, w, out_h, out_w, c,
            *(t.data_ptr() for t in taps), torch.get_num_threads(),
        )  # fmt: skip
    return out


def class_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(1).to(torch.uint8)`` of channels-last float32 CPU logits [N, C, H, W] with at
    most 256 classes, in one pass on every thread (torch's took 42 ms against 3.9 ms for 11
    classes at 1024x2048 on 2 threads)."""
    x = _channels_last(logits, "class_argmax input")
    n, c, h, w = x.shape
    if not 1 <= c <= 256:
        raise ValueError(f"class_argmax: 1 to 256 classes fit in uint8, got {c}")
    out = torch.empty(n, h, w, dtype=torch.uint8)
    with record_function("cgnet::class_argmax"):
        library().cgnet_class_argmax(
            x.data_ptr(), out.data_ptr(), n * h * w, c, torch.get_num_threads()
        )
    return out


def main() -> None:
    reason = unavailable_reason()
    if reason is not None:
        from cgnet.cli import fail

        fail(KernelBuildError(reason), "fused CPU kernels unavailable")
    print(f"fused CPU kernels ready: {library()._name}")


if __name__ == "__main__":
    main()
