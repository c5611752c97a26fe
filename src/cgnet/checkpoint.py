"""Build a CGNet from any checkpoint a user may hold, for eval, predict, benchmark and export.

A checkpoint of this project carries its own hyper-parameters (classes, M, N, switches), so it needs
nothing else. Foreign weights (the authors', mmseg's, sssegmentation's, a plain state dict) carry only
tensors: the network is built from the model config given on the command line and the class count of
the dataset, then filled strictly by :func:`cgnet.models.load_weights`.

Every file is read by :func:`read_checkpoint` (defined in :mod:`cgnet.models.serialization`, so the
network package needs nothing from here): tensors and plain data only, unless the user opts in with
``trust_checkpoint=true`` to a file whose pickle would run code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgnet.errors import ConfigError
from cgnet.models import CGNet
from cgnet.models.serialization import OPT_IN, read_checkpoint
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


def hyper_parameters(checkpoint: Any) -> dict[str, Any]:
    """A project checkpoint's hyper-parameters ({} for foreign weights)."""
    found = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    return dict(found or {})


def load_network(
    path: str | Path,
    num_classes: int | None = None,
    model: Mapping[str, Any] | None = None,
    *,
    trust: bool = False,
    checkpoint: Any = None,
) -> LoadedNetwork:
    """CGNet in eval mode from a project checkpoint (self-describing) or foreign weights.

    For a project checkpoint ``num_classes`` is checked against the saved one (a mismatch with the
    dataset is an error, not a silent misuse); for foreign weights it and ``model`` define the network.
    ``trust`` lets a file whose pickle runs code load (the user's ``trust_checkpoint=true``);
    ``checkpoint`` is ``path`` already read with :func:`read_checkpoint`, so it is not read twice.

    Raises:
        CheckpointError: the file is missing, unreadable, or would run code without ``trust``.
        ConfigError: the classes of the checkpoint and the data differ, or bare weights come without
            a class count.
    """
    blob = read_checkpoint(path, trust=trust) if checkpoint is None else checkpoint
    hparams = hyper_parameters(blob)
    if "num_classes" in hparams:
        saved = int(hparams["num_classes"])
        if num_classes is not None and num_classes != saved:
            raise ConfigError(
                f"checkpoint {path} was trained for {saved} classes but the data has {num_classes}: "
                "pick the matching data config"
            )
        net = CGNet(saved, **dict(hparams.get("model") or {}))
    else:
        if num_classes is None:
            raise ConfigError(f"{path} holds bare weights: give the number of classes (data=...)")
        net = CGNet(num_classes, **dict(model or {}))
    report = load_weights(net, blob, strict=True)
    return LoadedNetwork(net.eval(), str(path), report.format, hparams)


__all__ = ["OPT_IN", "LoadedNetwork", "hyper_parameters", "load_network", "read_checkpoint"]
