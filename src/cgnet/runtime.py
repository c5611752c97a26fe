"""Process-wide switches and device choice: set once, by the entry layer, before any work starts.

Each switch here changes the whole process (or every thread it later starts), so none of them is
flipped from inside a library function: :func:`configure_process` runs at the start of every
``python -m cgnet.*`` command, and scripts or notebooks call it themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import warnings

import torch

from cgnet.errors import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_state = {"reused": False, "configured": False}

# Lightning's chatter that says nothing about the user's run.
_LIGHTNING_NOISE = (
    "💡 Tip",  # "try installing litlogger / litmodels" product notes
    "Trainer already configured with model summary callbacks",
)


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LIGHTNING_NOISE)


def flush_denormals() -> None:
    """Treat subnormal floats as zero in every CPU kernel.

    Trained CGNet weights and Adam's moments hold many subnormals, which make CPU kernels 10-40x
    slower; the flag reaches torch's worker threads only if set before the pool starts.
    """
    torch.set_flush_denormal(True)


def reuse_cpu_memory() -> bool:
    """Keep freed large buffers in glibc's heap instead of returning them to the kernel.

    glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh mmaps, so every
    full-resolution forward faults in its activations page by page again (~920k faults, most of
    eager's time at 1024x2048 on the 2-core machine). Raising the thresholds makes steady-state
    inference and training reuse the same memory. Returns False where libc is not glibc.
    """
    if _state["reused"]:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _state["reused"] = ok
    return ok


def quiet_libraries() -> None:
    """Silence notes that are about the libraries rather than the user's run.

    albumentations checks PyPI for a newer version on import (a network call and a warning offline);
    Lightning prints product tips and a note on every run that carries our own summary callback;
    a few dependencies emit DeprecationWarnings naming files inside the virtualenv.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningNoise())
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # torch's pytree deprecation, raised from inside Lightning on every fit
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def configure_process(*, reuse_memory: bool = True) -> None:
    """Every switch a cgnet command needs, once per process (idempotent)."""
    if _state["configured"]:
        return
    flush_denormals()
    if reuse_memory:
        reuse_cpu_memory()
    quiet_libraries()
    _state["configured"] = True


def pick_device(name: str | torch.device = "auto", *, key: str = "device") -> torch.device:
    """``auto`` is CUDA when there is one; an explicit device the machine lacks is a ConfigError
    naming ``key``, never a silent fallback. Accepts ``gpu`` as a synonym of ``cuda``."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "gpu" or text.startswith("gpu:"):
        text = "cuda" + text[3:]
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"{key}={name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"{key}={name}: this machine has no CUDA GPU (use {key}=cpu or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{key}={name}: this machine has {count} GPU(s) (cuda:0..{count - 1})"
            )
    elif device.type != "cpu":
        raise ConfigError(f"{key}={name}: expected auto, cpu, cuda or cuda:N")
    return device
