"""Build a CGNet from any checkpoint a user may hold, for eval, predict, benchmark and export.

A checkpoint of this project carries its own hyper-parameters (classes, M, N, switches), so it needs
nothing else. Foreign weights (the authors', mmseg's, sssegmentation's, a plain state dict) carry only
tensors: the network is built from the model config given on the command line and the class count of
the dataset, then filled strictly by :func:`cgnet.models.load_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cgnet.models import CGNet
from cgnet.models.weights import load_weights


@dataclass
class LoadedNetwork:
    """A network in eval mode plus what is known about how it was trained."""

    net: CGNet
    source: str
    format: str
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> tuple[float, ...] | None:
        return tuple(self.hparams["mean"]) if "mean" in self.hparams else None

    @property
    def std(self) -> tuple[float, ...] | None:
        return tuple(self.hparams["std"]) if "std" in self.hparams else None


def read_checkpoint(path: str | Path) -> Any:
    """torch.load on CPU with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None


def load_network(
    path: str | Path,
    num_classes: int | None = None,
    model: Mapping[str, Any] | None = None,
) -> LoadedNetwork:
    """CGNet in eval mode from a project checkpoint (self-describing) or foreign weights.

    For a project checkpoint ``num_classes`` is checked against the saved one (a mismatch with the
    dataset is an error, not a silent misuse); for foreign weights it and ``model`` define the network.
    """
    blob = read_checkpoint(path)
    hparams = dict(blob.get("hyper_parameters") or {}) if isinstance(blob, Mapping) else {}
    if "num_classes" in hparams:
        saved = int(hparams["num_classes"])
        if num_classes is not None and num_classes != saved:
            raise ValueError(
                f"checkpoint {path} was trained for {saved} classes but the data has {num_classes}: "
                "pick the matching data config"
            )
        net = CGNet(saved, **dict(hparams.get("model") or {}))
    else:
        if num_classes is None:
            raise ValueError(f"{path} holds bare weights: give the number of classes (data=...)")
        net = CGNet(num_classes, **dict(model or {}))
    report = load_weights(net, blob, strict=True)
    return LoadedNetwork(net.eval(), str(path), report.format, hparams)
