"""conf/benchmark.yaml as typed settings, checked before any worker starts or weights are read.

The dataclasses below are the schema: a typo'd key or a value of the wrong type is one line naming
the key (through :func:`cgnet.config.check_settings`), and so is a value of the right type that
cannot work (an unknown variant, a size that is not ``[height, width]``, a device the machine
lacks). The ``model`` group is checked against CGNet's own signature.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from cgnet.benchmark.variants import VARIANT_HELP
from cgnet.config import check_arguments, check_settings, plain
from cgnet.errors import ConfigError
from cgnet.models import CGNet
from cgnet.runtime import pick_device

S = TypeVar("S")


@dataclass(kw_only=True)
class TrainThroughputSettings:
    """``train_throughput``: plain eager against the project's training-step settings."""

    enabled: bool = True
    batch: int
    crop: tuple[int, int]  # height, width
    steps: int  # timed steps per setting, after warmup
    warmup: int
    channels_last: bool | None = None  # None: channels-last on GPUs only, as training does
    space_to_batch: bool = True
    cpu_prelu: bool = True  # PReLU's one-pass C++ backward, CPU only
    compile: bool
    reuse_memory: bool
    bf16: bool = False  # bf16-mixed autocast, CUDA only
    fused_context: bool = False  # also the project's step with the fused f_loc + f_sur op


@dataclass(kw_only=True)
class BenchmarkSettings:
    """The top-level keys of conf/benchmark.yaml (the ``model`` group aside)."""

    num_classes: int
    ckpt_path: str | None = None  # None: seeded random initialisation
    trust_checkpoint: bool = False  # read a checkpoint whose pickle would run code
    sizes: list[tuple[int, int]]  # [[height, width], ...]
    batch: int
    warmup: int
    repeats: int
    variants: list[str]
    device: str
    threads: int | None = None
    isolate: bool
    profile: bool = False
    seed: int
    train_throughput: TrainThroughputSettings | None = None
    output: str | None = None
    markdown: str | None = None


def _build(schema: type[S], values: dict[str, Any], prefix: str) -> S:
    """``schema(**values)``, with a key the config lacks named instead of a TypeError."""
    for spec in dataclasses.fields(schema):  # type: ignore[arg-type]
        required = (
            spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        )
        if required and spec.name not in values:
            raise ConfigError(f"{prefix}{spec.name}: missing (conf/benchmark.yaml sets it)")
    return schema(**values)


def _at_least(key: str, value: int, low: int) -> None:
    """A count the benchmark divides by or loops over: zero or negative would fail much later."""
    if value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ConfigError(f"{key}: expected {kind}, got {value}")


def _is_size(value: Any) -> bool:
    """``[H, W]`` of positive ints."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def _check_sizes(values: dict[str, Any]) -> None:
    """``sizes`` and ``train_throughput.crop`` before the type check, whose generic message
    (``list[tuple[int, int]]``) says less than ``[H, W]`` does."""
    sizes = values.get("sizes")
    if "sizes" in values and not (isinstance(sizes, list) and sizes and all(map(_is_size, sizes))):
        raise ConfigError(f"sizes: expected a list of [H, W] of positive ints, got {sizes!r}")
    tt = values.get("train_throughput")
    if isinstance(tt, dict) and "crop" in tt and not _is_size(tt["crop"]):
        raise ConfigError(
            f"train_throughput.crop: expected [H, W] of positive ints, got {tt['crop']!r}"
        )


def _check_values(settings: BenchmarkSettings) -> None:
    """What the types allow but the benchmark cannot run."""
    _at_least("num_classes", settings.num_classes, 1)
    _at_least("batch", settings.batch, 1)
    _at_least("warmup", settings.warmup, 0)
    _at_least("repeats", settings.repeats, 1)
    unknown = [name for name in settings.variants if name not in VARIANT_HELP]
    if unknown:
        raise ConfigError(f"variants: unknown {unknown}; known: {', '.join(VARIANT_HELP)}")
    device = pick_device(settings.device, key="device")
    if settings.threads is not None:
        _at_least("threads", settings.threads, 1)
    tt = settings.train_throughput
    if tt is None or not tt.enabled:
        return
    _at_least("train_throughput.batch", tt.batch, 1)
    _at_least("train_throughput.steps", tt.steps, 1)
    _at_least("train_throughput.warmup", tt.warmup, 0)
    if tt.bf16 and device.type != "cuda":
        raise ConfigError(
            f"train_throughput.bf16: bf16-mixed training is measured on CUDA only (device={device})"
        )
    if tt.fused_context and device.type != "cuda":
        raise ConfigError(
            "train_throughput.fused_context: the fused f_loc + f_sur op runs on CUDA only "
            f"(device={device})"
        )


def load_settings(cfg: DictConfig) -> BenchmarkSettings:
    """The checked settings of a composed benchmark config; ConfigError names the first bad key."""
    if "hydra" in cfg:  # composed with Hydra's own node, which only resolves inside a Hydra run
        cfg = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
    values = plain(cfg)
    _check_sizes(values)
    check_settings(cfg, BenchmarkSettings, groups=("model", "train_throughput"))
    check_arguments(values.pop("model", None) or {}, CGNet, "model", skip=("num_classes",))
    tt = values.pop("train_throughput", None)
    if tt is not None:
        if not isinstance(tt, dict):
            raise ConfigError(f"train_throughput: expected a mapping or null, got {tt!r}")
        check_arguments(tt, TrainThroughputSettings, "train_throughput")
        tt = _build(TrainThroughputSettings, tt, "train_throughput.")
        tt.crop = (int(tt.crop[0]), int(tt.crop[1]))
    settings = _build(BenchmarkSettings, {**values, "train_throughput": tt}, "")
    settings.sizes = [(int(height), int(width)) for height, width in settings.sizes]
    _check_values(settings)
    return settings


def validate(cfg: DictConfig) -> None:
    """The entry layer's check: the whole config, before the network is built or a worker starts."""
    load_settings(cfg)


__all__ = ["BenchmarkSettings", "TrainThroughputSettings", "load_settings", "validate"]
