"""`python -m cgnet.data.prepare data=cityscapes data.root=ROOT output=DIR`: decode a dataset once.

Decoding full-size PNGs dominates a training worker's time; this converts every configured split into
litdata's optimized format (see :mod:`cgnet.data.prepared_format`), so training reads decoded uint8
arrays (``data.prepared=DIR``) instead. Each split is written into ``DIR/<split>.partial`` and renamed
when complete; ``manifest.json`` comes last. A rerun after an interrupt keeps the finished splits and
redoes the unfinished one; a folder of another dataset is refused; a finished one is left as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from cgnet.cache import write_json_atomic
from cgnet.cli import hydra_command
from cgnet.config import ConfigError, build_target, check_settings, check_target_node
from cgnet.data.datamodule import SegmentationDataModule
from cgnet.data.errors import DataError
from cgnet.data.layout import Sample
from cgnet.data.prepared_format import (
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    PARTIAL_SUFFIX,
    PROGRESS,
    STAGES,
    encode_sample,
    folder_name,
    luts_hash,
)
from cgnet.data.stats import iter_stats, sum_counts

SPLIT_INFO = "split.json"  # inside each finished split folder: its count and class pixel counts


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def identity(datamodule: SegmentationDataModule, root: Path, stages: list[str]) -> dict[str, Any]:
    """What makes two preparations the same: dataset, source, splits read and the label mapping."""
    cls = type(datamodule)
    return {
        "format_version": FORMAT_VERSION,
        "dataset": datamodule.info.name,
        "datamodule": f"{cls.__module__}.{cls.__qualname__}",
        "source_root": str(root.resolve()),
        "stages": {
            stage: {"split": datamodule.splits[stage], "list_file": datamodule.list_files[stage]}
            for stage in stages
        },
        "label_luts_sha256": luts_hash(datamodule.label_luts),
    }


def _same(manifest: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(manifest.get(key) == value for key, value in wanted.items())


def _describe(found: dict[str, Any]) -> str:
    return f"{found.get('dataset')!r} data from {found.get('source_root')}"


def check_output(output: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The finished manifest when ``output`` already holds this preparation; None when there is work
    to do (an empty or missing folder, or this preparation's unfinished one); DataError otherwise."""
    manifest, progress = output / MANIFEST, output / PROGRESS
    for path in (manifest, progress):
        if not path.is_file():
            continue
        try:
            found = json.loads(path.read_text())
        except ValueError:
            raise DataError(
                f"{path} is not valid JSON; delete {output} and prepare again"
            ) from None
        if not _same(found, wanted):
            state = "prepared" if path == manifest else "a partly prepared copy of"
            raise DataError(
                f"{output} holds {state} {_describe(found)} ({path.name}), not "
                f"{_describe(wanted)} with these splits: choose another output or delete it"
            )
        return found if path == manifest else None
    if output.is_dir() and any(output.iterdir()):
        raise DataError(
            f"output {output} is not empty and holds no {MANIFEST}: choose an empty or new folder"
        )
    return None


def pixel_counts(
    datamodule: SegmentationDataModule, samples: list[Sample], workers: int
) -> list[int]:
    """Per-class pixel counts of a split (for data.class_weights=computed without the PNG tree)."""
    counts = sum_counts(
        iter_stats(samples, datamodule.label_luts, check_images=False, num_workers=workers)
    )
    return [int(v) for v in counts[: datamodule.num_classes]]


def write_split(
    datamodule: SegmentationDataModule,
    samples: list[Sample],
    folder: Path,
    *,
    workers: int,
    chunk_bytes: str | int,
    compression: str | None,
) -> dict[str, Any]:
    """One split into ``folder.partial`` with litdata.optimize, then renamed to ``folder``."""
    from litdata import optimize

    partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted attempt restarts cleanly
    counts = pixel_counts(datamodule, samples, workers)  # also checks every label first
    luts = datamodule.label_luts
    inputs = [
        (
            s.id,
            str(s.image),
            None if s.label is None else str(s.label),
            None if s.label is None else luts[s.label_format],
        )
        for s in samples
    ]
    optimize(
        fn=encode_sample,
        inputs=inputs,
        output_dir=str(partial.resolve()),
        num_workers=max(1, min(workers, len(inputs))),
        chunk_bytes=chunk_bytes,
        compression=compression,
        reorder_files=False,
        keep_data_ordered=True,  # stored order = the split's order (validation batches match)
        start_method="fork",  # workers start in milliseconds (spawn re-imports torch: seconds)
    )
    if not (partial / INDEX).is_file():
        raise DataError(f"litdata wrote no {partial / INDEX}; the preparation of {folder} failed")
    info = {"count": len(samples), "pixel_counts": counts}
    write_json_atomic(partial / SPLIT_INFO, info)
    partial.rename(folder)
    return info


def prepare(
    datamodule: SegmentationDataModule,
    output: Path,
    *,
    stages: list[str],
    num_workers: int,
    chunk_bytes: str | int = "64MB",
    compression: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Prepare ``stages`` of ``datamodule`` into ``output``; returns the manifest."""
    console = console or Console()
    if hasattr(datamodule, "generate"):
        datamodule.generate()  # synthetic data: make it first, like training would
    root = datamodule.resolve_root()
    wanted = identity(datamodule, root, stages)
    if (finished := check_output(output, wanted)) is not None:
        console.print(f"{output} already holds this prepared data ({MANIFEST}); nothing to do")
        return finished
    samples = {stage: datamodule.samples(stage) for stage in stages}  # DataError before writing
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / PROGRESS, wanted)
    entries: list[dict[str, Any]] = []
    for stage in stages:
        split, list_file = datamodule.splits[stage], datamodule.list_files[stage]
        name = folder_name(split, list_file)
        folder = output / name
        if any(e["folder"] == name for e in entries):
            continue  # two stages read the same split: one copy
        if (folder / SPLIT_INFO).is_file() and (folder / INDEX).is_file():
            console.print(f"{stage}: {name} already written (resumed)")
            info = json.loads((folder / SPLIT_INFO).read_text())
        else:
            shutil.rmtree(folder, ignore_errors=True)
            start = time.perf_counter()
            console.print(f"{stage}: writing {len(samples[stage])} samples of {split} to {folder}")
            info = write_split(
                datamodule,
                samples[stage],
                folder,
                workers=num_workers,
                chunk_bytes=chunk_bytes,
                compression=compression,
            )
            console.print(f"{stage}: done in {time.perf_counter() - start:.1f} s")
        entries.append(
            {"split": split, "list_file": list_file, "folder": name, **info},
        )
    import litdata

    manifest = {
        **wanted,
        "splits": entries,
        "class_names": list(datamodule.class_names),
        "num_classes": datamodule.num_classes,
        "stored": {"image": "uint8 [H, W, 3] RGB", "mask": "uint8 [H, W] trainIds, 255 ignore"},
        "compression": compression,
        "cgnet_version": _version("cgnet"),
        "litdata_version": litdata.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(output / MANIFEST, manifest)
    (output / PROGRESS).unlink()
    total = sum(e["count"] for e in entries)
    console.print(f"[bold green]prepared {total} samples into {output}[/]")
    return manifest


@dataclass(frozen=True, kw_only=True)
class PrepareSettings:
    """conf/prepare.yaml's own keys."""

    output: str
    stages: list[str]
    num_workers: int | None
    chunk_bytes: str | int
    compression: str | None


def validate(cfg: DictConfig) -> None:
    check_settings(cfg, PrepareSettings, groups=("data", "paths"))
    check_target_node(cfg.data, "data")
    if "://" in str(cfg.output):
        raise ConfigError(
            f"output={cfg.output}: expected a local folder (upload it afterwards, e.g. "
            "`aws s3 sync DIR s3://bucket/prefix`)"
        )
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown or not cfg.stages:
        raise ConfigError(f"stages={list(cfg.stages)}: expected a non-empty subset of {STAGES}")
    if cfg.num_workers is not None and cfg.num_workers < 1:
        raise ConfigError(f"num_workers: expected >= 1 or null, got {cfg.num_workers}")
    if cfg.data.get("prepared"):
        raise ConfigError("data.prepared is where training reads prepared data; use output=DIR")


def run(cfg: DictConfig) -> dict[str, Any]:
    datamodule: SegmentationDataModule = build_target(cfg.data, "data")
    workers = cfg.num_workers or max(1, datamodule.num_workers)
    return prepare(
        datamodule,
        Path(cfg.output).expanduser(),
        stages=list(cfg.stages),
        num_workers=int(workers),
        chunk_bytes=cfg.chunk_bytes,
        compression=cfg.compression,
        console=Console(soft_wrap=True),
    )


main = hydra_command("prepare", validate=validate)(run)


if __name__ == "__main__":
    from cgnet.data.prepare import main as _main

    _main()
