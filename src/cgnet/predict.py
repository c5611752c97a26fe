"""`python -m cgnet.predict ckpt_path=CKPT input=PATH|split=...`: label maps, colour pictures, submissions.

Each format goes to its own folder under predictions/ (cityscapesscripts finds a prediction by globbing
``city_seq_frame*.png``, so formats must not share a folder). Inputs are never overwritten.

Decoding, the network and PNG encoding overlap: input files are decoded in worker processes and
stacked into batches of equal-size images, and the outputs are encoded by a pool of threads while
the next batch runs (a GPU finishes a Cityscapes frame in a few milliseconds, while decoding it and
encoding a few PNGs takes a hundred or more).
"""

from __future__ import annotations

import os
import zipfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from cgnet.cli import hydra_command
from cgnet.config import ConfigError, plain
from cgnet.data.labels import DatasetInfo, train_id_to_label_id_lut
from cgnet.inference.loading import (
    TestTimeSettings,
    build_predictor,
    check_test_time,
    load_checkpoint_and_data,
)
from cgnet.runtime import pick_device
from cgnet.visualize import colorize

console = Console(soft_wrap=True)

FORMATS = ("trainids", "labelids", "color", "overlay")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"


@dataclass(kw_only=True)
class PredictSettings(TestTimeSettings):
    """conf/predict.yaml's own keys."""

    input: str | None
    formats: list[str]
    output_dir: str | None
    submission: bool
    overlay_alpha: float
    batch_size: int | None = None
    workers: int | None = None


def validate(cfg: DictConfig) -> None:
    check_test_time(cfg, PredictSettings)
    for key, least in (("batch_size", 1), ("workers", 0)):  # their types: check_test_time
        value = cfg.get(key)
        if value is not None and value < least:
            raise ConfigError(f"{key}: expected null or an integer >= {least}, got {value!r}")
    formats = list(plain(cfg.formats) or [])
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"formats: expected some of {list(FORMATS)}, got {formats}")
    if not 0.0 <= float(cfg.overlay_alpha) <= 1.0:
        raise ConfigError(f"overlay_alpha: expected a value in [0, 1], got {cfg.overlay_alpha}")
    if cfg.input:
        list_images(Path(cfg.input))


def image_id(path: Path) -> str:
    """File stem, minus Cityscapes' _leftImg8bit, so outputs carry the benchmark's city_seq_frame id."""
    stem = path.stem
    return stem[: -len(CITYSCAPES_IMAGE_SUFFIX)] if stem.endswith(CITYSCAPES_IMAGE_SUFFIX) else stem


def list_images(input_path: Path) -> list[Path]:
    """One image, or every image under a folder (sorted, recursive)."""
    if input_path.is_file():
        return [input_path]
    if input_path.is_dir():
        files = sorted(p for p in input_path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"input: no images ({', '.join(IMAGE_SUFFIXES)}) under {input_path}")
        return files
    raise ConfigError(f"input: {input_path} is neither an image file nor a folder")


def loader_settings(cfg: DictConfig) -> tuple[int, int]:
    """(batch_size, workers): null picks 8 images per batch on CUDA (1 on the CPU, where a batch
    runs no faster per image) and half the cores, at most 8, for decoding and for encoding."""
    batch_size = cfg.get("batch_size")
    if batch_size is None:
        batch_size = 8 if pick_device(cfg.device).type == "cuda" else 1
    workers = cfg.get("workers")
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 2) // 2))
    return int(batch_size), int(workers)


class ImageFiles(Dataset):
    """Input files decoded to RGB; an unreadable one comes back as None, to be reported by the main
    process in one line (an exception raised in a loader worker would arrive wrapped in a traceback)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Path, np.ndarray | None]:
        path = self.files[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return path, None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _as_is(sample: Any) -> Any:
    return sample


def file_batches(
    files: list[Path], batch_size: int = 1, workers: int = 0
) -> Iterator[tuple[list[str], np.ndarray]]:
    """The files in order, decoded by ``workers`` processes, as batches of up to ``batch_size``
    consecutive images of one size."""
    loader = DataLoader(ImageFiles(files), batch_size=None, num_workers=workers, collate_fn=_as_is)
    ids: list[str] = []
    images: list[np.ndarray] = []
    for path, image in loader:
        if image is None:
            raise ConfigError(f"input: cannot read image {path} (unreadable or not an image)")
        if images and (len(images) == batch_size or image.shape != images[0].shape):
            yield ids, np.stack(images)
            ids, images = [], []
        ids.append(image_id(path))
        images.append(image)
    if images:
        yield ids, np.stack(images)


def split_batches(datamodule: Any) -> Iterator[tuple[list[str], np.ndarray]]:
    for batch in datamodule.val_dataloader():
        yield list(batch["id"]), batch["image"].permute(0, 2, 3, 1).numpy()


class PredictionWriter:
    """Writes each requested format of one prediction into predictions/<format>/."""

    def __init__(
        self, root: Path, formats: list[str], info: DatasetInfo, alpha: float, inputs: list[Path]
    ) -> None:
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown or not formats:
            raise ConfigError(f"formats: expected some of {list(FORMATS)}, got {formats}")
        self.root, self.formats, self.info, self.alpha = root, formats, info, alpha
        self.to_label_id = train_id_to_label_id_lut(info)
        self.written: dict[str, list[Path]] = {f: [] for f in formats}
        resolved_inputs = {p.resolve() for p in inputs}
        self._inputs = resolved_inputs
        for fmt in formats:
            (root / fmt).mkdir(parents=True, exist_ok=True)

    def _write(self, fmt: str, name: str, array: np.ndarray) -> Path:
        path = self.root / fmt / name
        if path.resolve() in self._inputs:
            raise ConfigError(f"output_dir: writing {path} would overwrite an input image")
        if array.ndim == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(path), array):
            raise OSError(f"could not write {path}")
        return path

    def encode(self, sample_id: str, image: np.ndarray, pred: np.ndarray) -> dict[str, Path]:
        """Write every format of one prediction; safe to run in several threads at once."""
        paths = {}
        if "trainids" in self.formats:
            paths["trainids"] = self._write("trainids", f"{sample_id}_trainIds.png", pred)
        if "labelids" in self.formats:
            label_ids = self.to_label_id[pred]
            paths["labelids"] = self._write("labelids", f"{sample_id}_labelIds.png", label_ids)
        colour = colorize(pred, self.info.palette, self.info.ignore_index)
        if "color" in self.formats:
            paths["color"] = self._write("color", f"{sample_id}_color.png", colour)
        if "overlay" in self.formats:
            blend = cv2.addWeighted(image, 1 - self.alpha, colour, self.alpha, 0)
            paths["overlay"] = self._write("overlay", f"{sample_id}_overlay.png", blend)
        return paths

    def record(self, paths: dict[str, Path]) -> None:
        """Note one prediction's files (called in input order, so ``written`` keeps that order)."""
        for fmt, path in paths.items():
            self.written[fmt].append(path)


def write_submission(files: list[Path], path: Path) -> Path:
    """The zip the Cityscapes server takes: one labelIds PNG per image, flat."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, arcname=file.name)
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    formats = list(plain(cfg.formats) or [])
    if cfg.submission and "labelids" not in formats:
        formats.append("labelids")
    inputs = list_images(Path(cfg.input)) if cfg.input else []
    loaded, datamodule = load_checkpoint_and_data(cfg, read_split=not inputs)
    predictor = build_predictor(cfg, loaded, datamodule)
    output_dir = Path(cfg.output_dir or Path(HydraConfig.get().runtime.output_dir) / "predictions")
    writer = PredictionWriter(output_dir, formats, datamodule.info, cfg.overlay_alpha, inputs)
    batch_size, workers = loader_settings(cfg)
    batches = file_batches(inputs, batch_size, workers) if inputs else split_batches(datamodule)
    total = len(inputs) if inputs else len(datamodule.val_dataloader().dataset)
    pending: deque[Future[dict[str, Path]]] = deque()
    with (
        Progress(console=console, transient=True) as progress,
        ThreadPoolExecutor(max(1, workers), thread_name_prefix="cgnet-encode") as encoders,
    ):
        task = progress.add_task("predicting", total=total)
        for ids, images in batches:
            preds = predictor(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
            for sample_id, image, pred in zip(ids, images, preds.cpu().numpy(), strict=True):
                pending.append(encoders.submit(writer.encode, sample_id, image, pred))
            while len(pending) > 2 * max(1, workers):  # bounded: predictions wait in memory
                writer.record(pending.popleft().result())
                progress.advance(task)
        while pending:
            writer.record(pending.popleft().result())
            progress.advance(task)
    summary: dict[str, Any] = {"output_dir": str(output_dir), "count": total}
    for fmt, files in writer.written.items():
        console.print(f"{fmt}: {len(files)} files in {output_dir / fmt}")
    if cfg.submission:
        archive = write_submission(writer.written["labelids"], output_dir / "submission.zip")
        summary["submission"] = str(archive)
        console.print(f"Cityscapes submission archive: {archive}")
    return summary


main = hydra_command("predict", validate=validate)(run)


if __name__ == "__main__":
    from cgnet.predict import main as _main

    _main()
