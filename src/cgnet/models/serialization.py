"""The one reader of checkpoint files: tensors and plain data only, unless the user trusts the file.

``torch.load(weights_only=False)`` runs whatever the pickle inside the file asks for, so a ``.pth``
downloaded from anywhere could run code the moment it is opened. Every checkpoint this project reads
(its own Lightning checkpoints, the authors', mmseg's, sssegmentation's, plain state dicts) goes
through :func:`read_checkpoint`, which loads with ``weights_only=True`` plus a short allow-list and
refuses anything else with a :class:`cgnet.errors.CheckpointError` naming the file, what its pickle
would call and the opt-in (``trust_checkpoint=true``) that loads it in full.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgnet.errors import CheckpointError

OPT_IN = "trust_checkpoint=true"
"""The switch that lets a command load a file whose pickle needs more than data (Hydra commands)."""

_NUMPY_NAMES = ("numpy._core.multiarray", "numpy.core.multiarray")  # NumPy 2 and NumPy 1 pickles


def _numpy_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """NumPy scalars and arrays as data (mmcv-era mmseg checkpoints keep e.g. ``best_score`` as a
    numpy float in ``meta``); rebuilding them constructs values, it calls nothing else."""
    core = getattr(np, "_core", None) or np.core  # NumPy 2 moved numpy.core to numpy._core
    multiarray = core.multiarray
    found: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [np.ndarray, np.dtype]
    for module in _NUMPY_NAMES:
        found += [
            (multiarray.scalar, f"{module}.scalar"),
            (multiarray._reconstruct, f"{module}._reconstruct"),
        ]
    # a rebuilt dtype is an instance of its DType class, which the unpickler must allow to build
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25
    found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes else []
    return found


SAFE_GLOBALS = _numpy_globals()
"""What ``weights_only=True`` may build beyond torch's own tensors and containers. Our Lightning
checkpoints need nothing more (hyper-parameters are plain containers, RNG states are tensors, see
:mod:`cgnet.rng`); nor do the authors' ``{'epoch', 'model'}``, sssegmentation's ``{'model',
'optimizer', 'cur_epoch', ...}`` or mmseg's ``{'meta', 'state_dict', 'optimizer'}`` files beyond the
numpy values their ``meta`` may hold."""

_REFUSED = re.compile(r"GLOBAL (\S+?)(?: was not| whose module)")
# the weights-only unpickler's words for a pickle that builds or calls something it does not allow
_BUILDS_OBJECTS = re.compile(r"Unsupported global|is blocked|Can only (build|create)|call reduce")


def _offending_globals(path: Path, err: Exception) -> list[str]:
    """What the file's pickle would call or build: all of it for zip checkpoints, else the first."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy (pre-zip) format: only the unpickler's message names it
        found = []
    if not found:
        found = [m if "." in m else f"builtins.{m}" for m in _REFUSED.findall(str(err))]
    return sorted(set(found))


def _first_sentence(err: BaseException, limit: int = 160) -> str:
    """The cause in a few words; for the weights-only unpickler, its own error, not its advice."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = text.split(". ")[0].rstrip(".")
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(names: list[str], shown: int = 6) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def read_checkpoint(
    path: str | os.PathLike[str], *, trust: bool = False, opt_in: str = OPT_IN
) -> Any:
    """The object ``torch.save`` wrote to ``path``, on the CPU, without running code from the file.

    Args:
        path: a ``.ckpt`` / ``.pth`` / ``.pt`` file.
        trust: load with ``weights_only=False``: the file's pickle may run any code, so only for
            files whose source the user trusts (and says so).
        opt_in: how the user says so, named in the refusal (``--trust-checkpoint`` for argparse).

    Raises:
        CheckpointError: a missing, unreadable or truncated file, or (without ``trust``) one whose
            pickle needs more than tensors and plain data; one line naming the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        names = [] if trust else _offending_globals(path, err)
        if names or (not trust and _BUILDS_OBJECTS.search(str(err))):
            raise CheckpointError(
                f"checkpoint {path} would run code from its pickle "
                f"({_listing(names) or 'objects beyond tensors and data'}) and was not loaded; "
                f"if you trust where the file came from, load it with {opt_in}"
            ) from None
        raise CheckpointError(_unreadable(path, err)) from None
    except Exception as err:  # truncated zip, not a torch file at all, unreadable
        raise CheckpointError(_unreadable(path, err)) from None


def _unreadable(path: Path, err: BaseException) -> str:
    return (
        f"cannot read checkpoint {path}: not a PyTorch checkpoint, or a truncated or damaged one "
        f"({_first_sentence(err)})"
    )


__all__ = ["OPT_IN", "SAFE_GLOBALS", "read_checkpoint"]
