"""`python -m cgnet.data.benchmark`: training-pipeline throughput (decode + augment + collate).

Generates a few full-size (2048x1024) Cityscapes-layout PNGs into a temp folder, then measures
1. each stage in this process (image decode, label decode + id mapping, augmentation, collation),
   giving images/s for one worker, and
2. real DataLoaders with 1..N workers, images/s in total and per worker,
for the training pipeline at the chosen crop (default 512x1024, the mmseg/sssegmentation recipe).
A GPU step must never wait for these numbers: workers x images/s per worker has to exceed what the
model consumes (``--gpu-rate IMG_PER_S`` says which worker counts do).

``--prepared`` also converts the PNGs with :mod:`cgnet.data.prepare` and measures, in the same run, the
read cost per image and the DataLoaders over the prepared data. ``--augment-on device`` (CUDA only)
times the loaders with workers that read, draw and cut each crop's source window, the GPU warping
and colouring each batch, as ``data.augment_on=device`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset, Subset

from cgnet.cli import plain_command
from cgnet.config import ConfigError
from cgnet.data.collate import collate
from cgnet.data.datamodule import CityscapesDataModule
from cgnet.data.dataset import SegmentationDataset
from cgnet.data.device_augment import DeviceAugment, WindowCut, params_from_batch
from cgnet.data.io import map_label, read_image, read_label_raw
from cgnet.data.prepared import PreparedSplit
from cgnet.data.synthetic import generate_cityscapes
from cgnet.data.workers import seed_worker


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cgnet.data.benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--crop", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0))
    parser.add_argument("--photometric", action="store_true", help="add photometric distortion")
    parser.add_argument("--cat-max-ratio", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=8, help="distinct PNGs to generate")
    parser.add_argument("--samples", type=int, default=64, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="default: 1..cores")
    parser.add_argument(
        "--root", type=Path, default=None, help="reuse/keep the generated PNGs here"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--prepared", action="store_true", help="also measure prepared (litdata) data"
    )
    parser.add_argument(
        "--augment-on",
        choices=("cpu", "device"),
        default="cpu",
        help="device: workers read and cut each crop's window; the GPU warps it (needs CUDA)",
    )
    parser.add_argument(
        "--gpu-rate",
        type=float,
        default=None,
        metavar="IMG_PER_S",
        help="images/s the model consumes: say which loaders feed it",
    )
    return parser.parse_args(argv)


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds per call (CPU time is robust to other load on the machine)."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls), statistics.median(cpus)


def stage_times(
    datamodule: CityscapesDataModule, samples: int, batch_size: int
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) milliseconds per image for each stage, in this process (= one worker)."""
    dataset = datamodule.dataset("train")
    sample, n = dataset.samples[0], len(dataset)
    assert sample.label is not None and dataset.transform is not None
    lut, label_path, transform = dataset.luts[sample.label_format], sample.label, dataset.transform
    image, mask = dataset.load(0)
    raw = read_label_raw(label_path)
    items = [dataset[i % n] for i in range(batch_size)]
    repeats = max(samples // 4, 5)
    stages = {
        "decode image": _time(lambda: read_image(sample.image), repeats),
        "decode label": _time(lambda: read_label_raw(label_path), repeats),
        "map + check ids": _time(lambda: map_label(raw, lut, label_path), repeats),
        "augment": _time(lambda: transform(image=image, mask=mask), samples),
        "collate": tuple(t / batch_size for t in _time(lambda: collate(items), repeats)),
    }
    stages["end to end"] = tuple(
        a + b for a, b in zip(_time(lambda: dataset[0], repeats), stages["collate"], strict=True)
    )
    return {k: (w * 1000, c * 1000) for k, (w, c) in stages.items()}


def loader_throughput(
    dataset: Dataset[dict[str, Any]],
    workers: int,
    samples: int,
    batch_size: int,
    device_augment: DeviceAugment | None = None,
) -> float:
    """Images/s through a real DataLoader (after a warm-up batch per worker)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=seed_worker,
        persistent_workers=workers > 0,
        pin_memory=device_augment is not None,  # as training does on CUDA
    )
    # at least two batches per worker after the warm-up, or many workers measure their start-up
    batches = max(samples // batch_size, 2 * workers, 1)
    seen, start = 0, 0.0
    iterator = iter(_cycle(loader))
    for _ in range(max(workers, 1)):  # warm-up: workers started, first batches in flight
        _consume(next(iterator), device_augment)
    start = time.perf_counter()
    for _ in range(batches):
        seen += _consume(next(iterator), device_augment)
    return seen / (time.perf_counter() - start)


def _consume(batch: dict[str, Any], device_augment: DeviceAugment | None) -> int:
    """A batch as training takes it: with device augmentation, the workers' windows moved to the
    GPU and warped there as the DataModule's transfer hooks do."""
    if device_augment is not None:
        sizes, params = params_from_batch(batch["augment"])
        image = batch["image"].to("cuda", non_blocking=True)
        mask = batch["mask"].to("cuda", non_blocking=True).long()  # as on_after_batch_transfer
        device_augment.apply(image, mask, sizes, params)
        torch.cuda.synchronize()
    return int(batch["image"].shape[0])


def read_times(
    png: SegmentationDataset, prepared: PreparedSplit, repeats: int
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) milliseconds to read one image + mask, as workers hand them to augmentation."""
    n = len(prepared)  # the PNG list may repeat its files
    counter = iter(range(10**9))
    times = {
        "PNG tree": _time(lambda: png.load(next(counter) % n), repeats),
        "prepared": _time(lambda: prepared.reader.get_raw(next(counter) % n), repeats),
    }
    return {k: (w * 1000, c * 1000) for k, (w, c) in times.items()}


def fed(rates: dict[int, float], gpu_rate: float) -> dict[str, Any]:
    """Whether a loader feeds a model that consumes ``gpu_rate`` images/s, and with how few workers."""
    enough = [w for w, v in rates.items() if v >= gpu_rate]
    return {"fed": bool(enough), "fewest_workers": min(enough) if enough else None}


def _cycle(loader: DataLoader[Any]):  # type: ignore[no-untyped-def]
    while True:
        yield from loader


def check_args(args: argparse.Namespace) -> None:
    """Impossible sizes and counts are one line naming the option, before anything is generated."""
    for option, values in (("--size", args.size), ("--crop", args.crop)):
        if min(values) < 1:
            raise ConfigError(f"{option}: expected two positive integers H W, got {list(values)}")
    if not 0 < args.scale_range[0] <= args.scale_range[1]:
        raise ConfigError(f"--scale-range: expected 0 < lo <= hi, got {list(args.scale_range)}")
    for option, value in (
        ("--images", args.images),
        ("--samples", args.samples),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{option}: expected a positive integer, got {value}")
    if args.workers is not None and min(args.workers) < 0:
        raise ConfigError(f"--workers: expected counts >= 0, got {args.workers}")
    if args.augment_on == "device" and not torch.cuda.is_available():
        raise ConfigError("--augment-on device: needs CUDA (no GPU is visible)")
    if args.gpu_rate is not None and args.gpu_rate <= 0:
        raise ConfigError(f"--gpu-rate: expected images/s > 0, got {args.gpu_rate}")


@plain_command
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_args(args)
    console = Console()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # one core per worker; set before any fork (in a worker it can deadlock)
    cores = os.cpu_count() or 1
    workers = args.workers or list(range(1, cores + 1))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "cityscapes"
        start = time.perf_counter()
        generate_cityscapes(
            root, num_train=args.images, num_val=0, num_test=0, image_size=args.size
        )
        console.print(
            f"inputs: {args.images} PNGs {args.size[1]}x{args.size[0]} in {root} ({time.perf_counter() - start:.1f} s)"
        )
        datamodule = CityscapesDataModule(
            root=str(root),
            batch_size=args.batch_size,
            num_workers=0,
            crop_size=args.crop,
            scale_range=args.scale_range,
            photometric=args.photometric,
            cat_max_ratio=args.cat_max_ratio,
        )
        stages = stage_times(datamodule, args.samples, args.batch_size)
        dataset = datamodule.dataset("train")
        assert isinstance(dataset, SegmentationDataset)
        files = len(dataset)
        device_augment = None
        if args.augment_on == "device":  # workers decode, draw and cut; the GPU warps and colours
            device_augment = DeviceAugment(**datamodule.augmentation(), seed=0)
            dataset = SegmentationDataset(dataset.samples, dataset.luts, WindowCut(device_augment))
        # Repeat the few files so every measurement reads `samples` images.
        repeat = max(1, -(-args.samples * 2 // files))
        dataset.samples = dataset.samples * repeat
        loaders = {
            w: loader_throughput(dataset, w, args.samples, args.batch_size, device_augment)
            for w in workers
        }
        prepared: dict[str, Any] = {}
        if args.prepared:
            prepared = measure_prepared(
                datamodule, Path(tmp) / "prepared", args, workers, repeat, device_augment, console
            )
    wall_ms, cpu_ms = stages["end to end"]
    results: dict[str, Any] = {
        "input": f"{args.size[1]}x{args.size[0]} PNG",
        "crop": list(args.crop),
        "photometric": args.photometric,
        "cat_max_ratio": args.cat_max_ratio,
        "stage_ms_per_image": {
            k: {"wall": round(w, 2), "cpu": round(c, 2)} for k, (w, c) in stages.items()
        },
        "images_per_s_one_core": round(1000 / cpu_ms, 2),
        "images_per_s_one_process_wall": round(1000 / wall_ms, 2),
        "dataloader_images_per_s": {str(w): round(v, 2) for w, v in loaders.items()},
        "augment_on": args.augment_on,
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }
    table = Table(title="training pipeline, per image")
    for column in ("stage", "wall ms", "CPU ms"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, (wall, cpu) in stages.items():
        table.add_row(stage, f"{wall:.1f}", f"{cpu:.1f}")
    console.print(table)
    console.print(
        f"one worker: {1000 / cpu_ms:.1f} images/s per core of CPU time "
        f"({1000 / wall_ms:.1f} by the wall clock; load average {results['load_average'][0]})"
    )
    loader_table = Table(
        title=f"DataLoader, batch {args.batch_size}, crop {args.crop[0]}x{args.crop[1]}"
    )
    for column in ("workers", "images/s", "images/s per worker"):
        loader_table.add_column(column, justify="right")
    for w, value in loaders.items():
        loader_table.add_row(str(w), f"{value:.1f}", f"{value / max(w, 1):.1f}")
    console.print(loader_table)
    if prepared:
        results["prepared"] = prepared
        show_prepared(console, prepared, loaders, args)
    if args.gpu_rate is not None:
        results["gpu_rate"] = args.gpu_rate
        results["fed"] = {"PNG tree": fed(loaders, args.gpu_rate)}
        if prepared:
            rates = {int(w): v for w, v in prepared["dataloader_images_per_s"].items()}
            results["fed"]["prepared"] = fed(rates, args.gpu_rate)
        for source, verdict in results["fed"].items():
            text = (
                f"fed with {verdict['fewest_workers']} worker(s)"
                if verdict["fed"]
                else "NOT fed by any worker count measured"
            )
            console.print(f"{source}: a model consuming {args.gpu_rate:g} images/s is {text}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


def measure_prepared(
    datamodule: CityscapesDataModule,
    output: Path,
    args: argparse.Namespace,
    workers: list[int],
    repeat: int,
    device_augment: DeviceAugment | None,
    console: Console,
) -> dict[str, Any]:
    """Prepare the generated PNGs and time reading them and the DataLoaders over them."""
    from cgnet.data.prepare import prepare

    start = time.perf_counter()
    prepare(datamodule, output, stages=["train"], num_workers=max(1, max(workers)), console=console)
    seconds = time.perf_counter() - start
    reading = type(datamodule)(**{**_settings(datamodule), "prepared": str(output)})
    split = reading.dataset("train")
    assert isinstance(split, PreparedSplit)
    png = datamodule.dataset("train")
    assert isinstance(png, SegmentationDataset)
    reads = read_times(png, split, max(args.samples // 2, 5))
    if device_augment is not None:
        split.augment = WindowCut(device_augment)  # workers read, draw and cut
    repeated = Subset(split, list(range(len(split))) * repeat)
    rates = {
        w: loader_throughput(repeated, w, args.samples, args.batch_size, device_augment)
        for w in workers
    }
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return {
        "prepare_seconds": round(seconds, 2),
        "bytes_per_image": size // max(len(split), 1),
        "read_ms_per_image": {
            k: {"wall": round(w, 2), "cpu": round(c, 2)} for k, (w, c) in reads.items()
        },
        "dataloader_images_per_s": {str(w): round(v, 2) for w, v in rates.items()},
    }


def _settings(datamodule: CityscapesDataModule) -> dict[str, Any]:
    return {
        "root": datamodule.root,
        "batch_size": datamodule.batch_size,
        "num_workers": 0,
        "crop_size": datamodule.crop_size,
        "scale_range": datamodule.scale_range,
        "photometric": datamodule.photometric,
        "cat_max_ratio": datamodule.cat_max_ratio,
        "augment_on": datamodule.augment_on,
    }


def show_prepared(
    console: Console, prepared: dict[str, Any], png: dict[int, float], args: argparse.Namespace
) -> None:
    reads = Table(title="reading one image + mask (before augmentation)")
    for column in ("source", "wall ms", "CPU ms"):
        reads.add_column(column, justify="left" if column == "source" else "right")
    for source, ms in prepared["read_ms_per_image"].items():
        reads.add_row(source, f"{ms['wall']:.1f}", f"{ms['cpu']:.1f}")
    console.print(reads)
    where = "GPU" if args.augment_on == "device" else "CPU"
    table = Table(title=f"DataLoader images/s, PNG tree vs prepared (augmentation on the {where})")
    for column in ("workers", "PNG tree", "prepared", "x"):
        table.add_column(column, justify="right")
    for w, value in png.items():
        other = prepared["dataloader_images_per_s"][str(w)]
        table.add_row(str(w), f"{value:.1f}", f"{other:.1f}", f"{other / value:.1f}")
    console.print(table)
    console.print(
        f"prepared in {prepared['prepare_seconds']:.1f} s, "
        f"{prepared['bytes_per_image'] / 2**20:.1f} MiB per image on disk"
    )


if __name__ == "__main__":
    main()
