"""Bundled street scenes written in the real on-disk layouts, so `data=synthetic` trains through the
exact code path real Cityscapes (or CamVid) uses.

Generation is deterministic (image i of a split depends only on the seed, the split and i), happens
once per setting, and is atomic: files go to a hidden temp folder that is renamed into place after a
marker file recording the settings is written. An interrupted run therefore leaves no folder that
looks finished, and two processes racing to generate the same data both end up using one copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import labels as _cs_labels

from cgnet.cache import cache_dir
from cgnet.data.errors import DataError
from cgnet.data.layout import cityscapes_annotation
from cgnet.data.scene import Scene, render_street_scene

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when scenes change, so caches of the old look are not reused
MARKER = "cgnet_synthetic.json"
SPLITS = ("train", "val", "test", "train_extra")
CITIES = {
    "train": ("synthtown", "synthville"),
    "val": ("synthburg",),
    "test": ("synthdorf",),
    "train_extra": ("synthstadt",),
}

Layout = Literal["cityscapes", "camvid"]


@dataclass(frozen=True)
class SyntheticSettings:
    """Everything the generated files depend on; its hash names the default cache folder."""

    layout: Layout
    num_train: int
    num_val: int
    num_test: int
    image_size: tuple[int, int]
    seed: int
    num_train_extra: int = 0
    version: int = GENERATOR_VERSION

    def __post_init__(self) -> None:
        if min(self.counts().values()) < 0:
            counts = ", ".join(f"num_{split}={n}" for split, n in self.counts().items())
            raise ValueError(f"image counts must be >= 0, got {counts}")
        if self.num_train_extra and self.layout != "cityscapes":
            raise ValueError(
                f"num_train_extra={self.num_train_extra}: only the Cityscapes layout has a "
                "train_extra split (coarse labels); use 0 for CamVid"
            )

    def counts(self) -> dict[str, int]:
        return {
            "train": self.num_train,
            "val": self.num_val,
            "test": self.num_test,
            "train_extra": self.num_train_extra,
        }

    def as_json(self) -> dict[str, object]:
        payload = asdict(self)
        payload["image_size"] = list(self.image_size)
        if not self.num_train_extra:  # caches generated before train_extra existed stay valid
            del payload["num_train_extra"]
        return payload

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()[:12]


def make_settings(
    layout: Layout,
    num_train: int,
    num_val: int,
    num_test: int,
    image_size: Sequence[int],
    seed: int,
    num_train_extra: int = 0,
) -> SyntheticSettings:
    if len(image_size) != 2:
        raise ValueError(f"image_size must be [H, W], got {list(image_size)}")
    size = (int(image_size[0]), int(image_size[1]))
    return SyntheticSettings(
        layout, int(num_train), int(num_val), int(num_test), size, int(seed), int(num_train_extra)
    )


def default_root(settings: SyntheticSettings) -> Path:
    """~/.cache/cgnet/synthetic-<layout>-<hash of the settings> (see cgnet.cache.cache_dir)."""
    return cache_dir() / f"synthetic-{settings.layout}-{settings.digest()}"


def is_complete(root: Path, settings: SyntheticSettings) -> bool:
    """True when root holds a finished generation with exactly these settings."""
    marker = root / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("settings") == settings.as_json()
    except ValueError:
        return False


def scene_for(settings: SyntheticSettings, split: str, index: int) -> Scene:
    rng = np.random.default_rng([settings.seed, SPLITS.index(split), index])
    return render_street_scene(rng, *settings.image_size)


# --- writers: one per layout ------------------------------------------------------------------

_CS_COLOURS = np.zeros((256, 3), np.uint8)
for _label in _cs_labels:
    if _label.id >= 0:
        _CS_COLOURS[_label.id] = _label.color

# Cityscapes labelIds -> CamVid ids; everything unmapped (unlabeled border, ego vehicle) is void 11.
_TO_CAMVID = np.full(256, 11, np.uint8)
for _cs_id, _camvid_id in {23: 0, 11: 1, 17: 2, 7: 3, 8: 4, 21: 5, 20: 6, 26: 8, 24: 9}.items():
    _TO_CAMVID[_cs_id] = _camvid_id


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buffer.tobytes())


def coarsen(label_ids: np.ndarray, margin: int) -> np.ndarray:
    """Labels the way gtCoarse draws them: regions shrunk away from every boundary, the band between
    them unlabeled (id 0), and objects thinner than the band gone, as annotators' rough polygons do."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    uniform = cv2.erode(label_ids, kernel) == cv2.dilate(label_ids, kernel)
    return np.where(uniform, label_ids, 0).astype(np.uint8)


def _write_cityscapes(root: Path, split: str, index: int, scene: Scene) -> None:
    cities = CITIES[split]
    city = cities[index % len(cities)]
    stem = f"{city}_000000_{index:06d}"
    annotation = cityscapes_annotation(split)
    image_dir = root / "leftImg8bit" / split / city
    label_dir = root / annotation / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    _write_png(image_dir / f"{stem}_leftImg8bit.png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    labels = scene.label_ids
    if annotation == "gtCoarse":
        labels = coarsen(labels, margin=max(2, labels.shape[0] // 48))
    _write_png(label_dir / f"{stem}_{annotation}_labelIds.png", labels)
    # Written like the real dataset has them, so tests prove the loader never takes them as labels.
    colour = _CS_COLOURS[labels]
    _write_png(
        label_dir / f"{stem}_{annotation}_color.png", cv2.cvtColor(colour, cv2.COLOR_RGB2BGR)
    )
    _write_png(label_dir / f"{stem}_{annotation}_instanceIds.png", scene.instance_ids)


def _write_camvid(root: Path, split: str, index: int, scene: Scene) -> None:
    stem = f"synth{SPLITS.index(split)}_{index:06d}"
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    _write_png(root / split / f"{stem}.png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    _write_png(root / f"{split}annot" / f"{stem}.png", cv2.LUT(scene.label_ids, _TO_CAMVID))


_WRITERS: dict[str, Callable[[Path, str, int, Scene], None]] = {
    "cityscapes": _write_cityscapes,
    "camvid": _write_camvid,
}


# --- generation -------------------------------------------------------------------------------


def generate(settings: SyntheticSettings, root: Path | None = None) -> Path:
    """Make sure a complete dataset with these settings exists at root (default: the cache folder).

    Returns at once when it is already there; fails with DataError when root holds something else.
    """
    root = Path(root).expanduser() if root is not None else default_root(settings)
    if is_complete(root, settings):
        return root
    _refuse_foreign(root, settings)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    total = sum(settings.counts().values())
    log.info("generating %d synthetic %s images into %s", total, settings.layout, root)
    start = time.perf_counter()
    try:
        write = _WRITERS[settings.layout]
        for split, count in settings.counts().items():
            for index in range(count):
                write(tmp, split, index, scene_for(settings, split, index))
        tmp.mkdir(parents=True, exist_ok=True)
        seconds = time.perf_counter() - start
        marker = {"settings": settings.as_json(), "generated_in_s": round(seconds, 2)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        _move_into_place(tmp, root, settings)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _refuse_foreign(root: Path, settings: SyntheticSettings) -> None:
    if not root.exists():
        return
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # an empty folder (e.g. made by a user) is fine to fill
        return
    marker = root / MARKER
    if marker.is_file():
        raise DataError(
            f"{root} holds synthetic data generated with other settings ({marker}); expected "
            f"{settings.as_json()}. Delete it or choose another data.root"
        )
    raise DataError(
        f"{root} exists but is not a complete synthetic dataset (no {MARKER}); delete it or choose "
        "another data.root"
    )


def _move_into_place(tmp: Path, root: Path, settings: SyntheticSettings) -> None:
    try:
        os.rename(tmp, root)
    except OSError:
        if is_complete(root, settings):  # another process finished first: use its copy
            return
        raise


def generate_cityscapes(
    root: str | Path | None = None,
    num_train: int = 300,
    num_val: int = 50,
    num_test: int = 10,
    image_size: Sequence[int] = (256, 512),
    seed: int = 0,
    num_train_extra: int = 0,
) -> Path:
    """Synthetic scenes in the Cityscapes layout (leftImg8bit + gtFine labelIds/color/instanceIds;
    train_extra with gtCoarse labels when num_train_extra > 0)."""
    settings = make_settings(
        "cityscapes", num_train, num_val, num_test, image_size, seed, num_train_extra
    )
    return generate(settings, Path(root) if root is not None else None)


def generate_camvid(
    root: str | Path | None = None,
    num_train: int = 300,
    num_val: int = 50,
    num_test: int = 10,
    image_size: Sequence[int] = (256, 512),
    seed: int = 0,
) -> Path:
    """Synthetic scenes in the CamVid SegNet layout (SPLIT/ + SPLITannot/, ids 0..10, void 11)."""
    settings = make_settings("camvid", num_train, num_val, num_test, image_size, seed)
    return generate(settings, Path(root) if root is not None else None)
