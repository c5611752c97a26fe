"""Finding image/label pairs on disk: the Cityscapes and CamVid layouts and the official list files.

Discovery only lists directories (cheap, done at setup); decoding and value checks happen when a
sample is loaded. Problems are collected rather than raised one at a time, so `cgnet.data.check` can
report all of them and a DataModule can fail with the complete list.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cgnet.data.errors import DataError

# How a label file's values are to be read (see cgnet.data.labels for the lookup tables).
CITYSCAPES_LABEL_IDS = "cityscapes_labelIds"
CITYSCAPES_TRAIN_IDS = "cityscapes_labelTrainIds"
CAMVID_IDS = "camvid"

CS_IMAGE_SUFFIX = "_leftImg8bit.png"
CS_TRAIN_ID_SUFFIX = "_labelTrainIds.png"
# train_extra (19,998 images) only has coarse polygons; every other split is read from gtFine.
CS_COARSE_SPLITS = ("train_extra",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

CITYSCAPES_LAYOUT = (
    "ROOT/leftImg8bit/{split}/CITY/CITY_SEQ_FRAME_leftImg8bit.png paired with "
    "ROOT/{annotation}/{split}/CITY/CITY_SEQ_FRAME_{annotation}_labelIds.png "
    "(or _{annotation}_labelTrainIds.png)"
)
CAMVID_LAYOUT = "ROOT/{split}/NAME.png paired with ROOT/{split}annot/NAME.png (ids 0..11)"
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class Sample:
    """One image and its label file (None when the split has no ground truth, e.g. Cityscapes test)."""

    id: str
    image: Path
    label: Path | None
    label_format: str


@dataclass
class SplitScan:
    """The pairs found for one split and every problem met while looking for them."""

    split: str
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def extend(self, other: SplitScan) -> None:
        self.samples.extend(other.samples)
        self.problems.extend(other.problems)

    def require(self) -> list[Sample]:
        """The samples, or a DataError listing every problem (the first few) if there was any."""
        if self.problems:
            shown = self.problems[:MAX_LISTED_PROBLEMS]
            more = len(self.problems) - len(shown)
            lines = "\n  ".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")
            raise DataError(f"split '{self.split}': {len(self.problems)} problem(s):\n  {lines}")
        return self.samples


def _files(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_file())


def _subdirs(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _missing_root(root: Path, layout: str) -> str | None:
    if not root.is_dir():
        return f"dataset root {root} does not exist or is not a directory; expected {layout}"
    return None


def joined_splits(split: str) -> list[str] | None:
    """The parts of a joined split ("train+train_extra"; "trainval" = "train+val"), else None."""
    if split == "trainval":
        return ["train", "val"]
    if "+" in split:
        parts = [part.strip() for part in split.split("+")]
        if not all(parts):
            raise DataError(f"split {split!r}: expected names joined by '+', e.g. 'train+val'")
        return parts
    return None


def _scan_joined(
    scan: Callable[[Path, str], SplitScan], root: Path, split: str, parts: list[str]
) -> SplitScan:
    joined = SplitScan(split)
    for part in parts:
        joined.extend(scan(root, part))
    return joined


def cityscapes_annotation(split: str) -> str:
    """The annotation folder a Cityscapes split is read from: gtCoarse for train_extra, else gtFine."""
    return "gtCoarse" if split in CS_COARSE_SPLITS else "gtFine"


def _package_hint(split: str, kind: str) -> str:
    """The download that holds a coarse split's files, which the fine packages do not include."""
    if split not in CS_COARSE_SPLITS:
        return ""
    package = "leftImg8bit_trainextra.zip" if kind == "images" else "gtCoarse.zip"
    return f" (from the Cityscapes package {package})"


def scan_cityscapes(root: Path, split: str) -> SplitScan:
    """Pairs of leftImg8bit/SPLIT/CITY/*_leftImg8bit.png and their labels.

    Labels come from gtFine, except train_extra's from gtCoarse (its only annotation). Splits join
    with '+' ("train+train_extra" is the usual coarse pre-training set; "trainval" = "train+val").
    A *_labelTrainIds.png beside the labelIds file is preferred (no mapping needed); _color and
    _instanceIds files are never labels. The test split may lack labels entirely (no ground truth).
    """
    if parts := joined_splits(split):
        return _scan_joined(scan_cityscapes, root, split, parts)
    annotation = cityscapes_annotation(split)
    layout = CITYSCAPES_LAYOUT.format(split=split, annotation=annotation)
    label_suffix = f"_{annotation}_labelIds.png"
    train_id_suffix = f"_{annotation}{CS_TRAIN_ID_SUFFIX}"
    scan = SplitScan(split)
    if problem := _missing_root(root, layout):
        scan.problems.append(problem)
        return scan
    image_dir = root / "leftImg8bit" / split
    label_dir = root / annotation / split
    if not image_dir.is_dir():
        scan.problems.append(
            f"missing split directory {image_dir}; expected {layout}{_package_hint(split, 'images')}"
        )
        return scan
    has_labels = label_dir.is_dir()
    if not has_labels and split != "test":
        scan.problems.append(
            f"missing label directory {label_dir}; expected {layout}{_package_hint(split, 'labels')}"
        )
        return scan
    image_cities = _subdirs(image_dir)
    label_cities = _subdirs(label_dir) if has_labels else []
    for city in image_cities:
        images = {
            name[: -len(CS_IMAGE_SUFFIX)]: image_dir / city / name
            for name in _files(image_dir / city)
            if name.endswith(CS_IMAGE_SUFFIX)
        }
        labels: dict[str, tuple[Path, str]] = {}
        if has_labels and (label_dir / city).is_dir():
            names = _files(label_dir / city)
            for name in names:
                if name.endswith(label_suffix):
                    labels[name[: -len(label_suffix)]] = (
                        label_dir / city / name,
                        CITYSCAPES_LABEL_IDS,
                    )
            for name in names:  # second pass: labelTrainIds win over labelIds
                if name.endswith(train_id_suffix):
                    labels[name[: -len(train_id_suffix)]] = (
                        label_dir / city / name,
                        CITYSCAPES_TRAIN_IDS,
                    )
        for stem, image in images.items():
            if stem in labels:
                label, fmt = labels[stem]
                scan.samples.append(Sample(stem, image, label, fmt))
            elif has_labels:
                expected = label_dir / city / f"{stem}{label_suffix}"
                scan.problems.append(f"image {image} has no label: expected {expected}")
            else:
                scan.samples.append(Sample(stem, image, None, CITYSCAPES_LABEL_IDS))
        for stem, (label, _) in labels.items():
            if stem not in images:
                expected = image_dir / city / f"{stem}{CS_IMAGE_SUFFIX}"
                scan.problems.append(f"label {label} has no image: expected {expected}")
    for city in sorted(set(label_cities) - set(image_cities)):
        for name in _files(label_dir / city):
            if name.endswith((label_suffix, train_id_suffix)):
                scan.problems.append(
                    f"label {label_dir / city / name} has no image: expected a folder {image_dir / city}"
                )
    if not scan.samples and not scan.problems:
        scan.problems.append(f"no *{CS_IMAGE_SUFFIX} images under {image_dir}; expected {layout}")
    return scan


def scan_camvid(root: Path, split: str) -> SplitScan:
    """Pairs of SPLIT/NAME.png and SPLITannot/NAME.png (SegNet tutorial layout); '+' joins splits."""
    if parts := joined_splits(split):
        return _scan_joined(scan_camvid, root, split, parts)
    scan = SplitScan(split)
    if problem := _missing_root(root, CAMVID_LAYOUT.format(split=split)):
        scan.problems.append(problem)
        return scan
    image_dir, label_dir = root / split, root / f"{split}annot"
    for directory in (image_dir, label_dir):
        if not directory.is_dir():
            scan.problems.append(
                f"missing split directory {directory}; expected {CAMVID_LAYOUT.format(split=split)}"
            )
    if scan.problems:
        return scan
    images = {
        Path(n).stem: image_dir / n
        for n in _files(image_dir)
        if n.lower().endswith(IMAGE_EXTENSIONS)
    }
    labels = {Path(n).stem: label_dir / n for n in _files(label_dir) if n.lower().endswith(".png")}
    for stem, image in images.items():
        if stem in labels:
            scan.samples.append(Sample(stem, image, labels[stem], CAMVID_IDS))
        else:
            scan.problems.append(
                f"image {image} has no label: expected {label_dir / (stem + '.png')}"
            )
    for stem, label in labels.items():
        if stem not in images:
            scan.problems.append(
                f"label {label} has no image: expected {image_dir / (stem + '.png')}"
            )
    if not scan.samples and not scan.problems:
        scan.problems.append(
            f"no images under {image_dir}; expected {CAMVID_LAYOUT.format(split=split)}"
        )
    return scan


def cityscapes_label_format(label: Path) -> str:
    """gtFine and gtCoarse share the label ids: only labelIds vs labelTrainIds matters."""
    return CITYSCAPES_TRAIN_IDS if label.name.endswith(CS_TRAIN_ID_SUFFIX) else CITYSCAPES_LABEL_IDS


def cityscapes_sample_id(image: Path) -> str:
    name = image.name
    return name[: -len(CS_IMAGE_SUFFIX)] if name.endswith(CS_IMAGE_SUFFIX) else image.stem


def read_list_file(
    root: Path,
    list_file: Path,
    split: str,
    *,
    sample_id: Callable[[Path], str],
    label_format: Callable[[Path], str],
) -> SplitScan:
    """The official list format: one "image label" pair per line, paths relative to root.

    A line with only an image means that image has no ground truth (its mask is all ignore).
    """
    scan = SplitScan(split)
    if not list_file.is_file():
        scan.problems.append(f"list file {list_file} does not exist (expected 'image label' lines)")
        return scan
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2:
            scan.problems.append(
                f"{list_file}:{number}: expected 'image label', got {len(parts)} fields: {line!r}"
            )
            continue
        image = _resolve(root, parts[0])
        label = _resolve(root, parts[1]) if len(parts) == 2 else None
        if not image.is_file():
            scan.problems.append(f"{list_file}:{number}: image {image} does not exist")
            continue
        if label is not None and not label.is_file():
            scan.problems.append(
                f"{list_file}:{number}: image {image} has no label: {label} does not exist"
            )
            continue
        fmt = label_format(label) if label is not None else label_format(image)
        scan.samples.append(Sample(sample_id(image), image, label, fmt))
    if not scan.samples and not scan.problems:
        scan.problems.append(f"list file {list_file} lists no images")
    return scan


def _resolve(root: Path, entry: str) -> Path:
    path = Path(entry)
    return path if path.is_absolute() else root / path
