"""Reading prepared data (``data.prepared=DIR_OR_URL``): checked manifests, datasets, loaders.

Training streams a split with litdata's StreamingDataset/StreamingDataLoader: each DDP rank reads a
disjoint shard, and the loader's state_dict (saved by Lightning in every checkpoint) resumes an
interrupted epoch where it stopped. Validation, test and predict read the same files by index through
a plain DataLoader, so Lightning's distributed sampler covers every sample on any number of ranks
(litdata would drop the remainder). An s3:// location is streamed into the project's cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from cgnet.cache import cache_dir
from cgnet.data.device_augment import WindowCut
from cgnet.data.errors import DataError
from cgnet.data.prepared_format import (
    INDEX,
    MANIFEST,
    SplitEntry,
    check_manifest,
    find_entry,
    luts_hash,
)
from cgnet.data.transforms import augment_sample, reseed

if TYPE_CHECKING:
    from cgnet.data.prepared_stream import PreparedStreamingDataset

REMOTE_PREFIXES = ("s3://",)


def is_remote(location: str) -> bool:
    return location.startswith(REMOTE_PREFIXES)


def _join(location: str, *parts: str) -> str:
    return (
        "/".join([location.rstrip("/"), *parts])
        if is_remote(location)
        else str(Path(location, *parts))
    )


def stream_cache(location: str) -> Path:
    """Where the chunks of a remote location are cached: one folder per URL."""
    digest = hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:12]
    return cache_dir() / "prepared" / digest


def _download(url: str, target: Path) -> None:
    """One file from object storage (boto3 through litdata, so the same AWS_* settings apply)."""
    from litdata.streaming.downloader import get_downloader

    target.parent.mkdir(parents=True, exist_ok=True)
    downloader = get_downloader(url.rsplit("/", 1)[0], str(target.parent), [])
    try:
        downloader.download_file(url, str(target))
    except Exception as error:  # botocore's errors are many; all mean "not readable"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot read {url}: {reason}") from None


def read_json(location: str, *parts: str) -> tuple[dict[str, Any], str]:
    """A JSON file of a prepared location (local or remote) and the name to report it by."""
    where = _join(location, *parts)
    if is_remote(location):
        with tempfile.TemporaryDirectory(dir=_tmp_parent()) as tmp:
            target = Path(tmp) / parts[-1]
            _download(where, target)
            text = target.read_text()
    else:
        path = Path(where)
        if not path.is_file():
            raise DataError(_missing(path))
        text = path.read_text()
    try:
        return json.loads(text), where
    except ValueError:
        raise DataError(f"{where} is not valid JSON (truncated?); prepare the data again") from None


def _tmp_parent() -> str:
    path = cache_dir() / "prepared"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _missing(path: Path) -> str:
    if path.name == MANIFEST:
        return (
            f"{path} does not exist: {path.parent} is not finished prepared data; run "
            "python -m cgnet.data.prepare (it resumes an interrupted run)"
        )
    return f"{path} does not exist: the prepared data is incomplete; prepare it again"


def check_chunks(folder: Path) -> None:
    """A local split folder: index.json present and every chunk it lists complete."""
    index_path = folder / INDEX
    if not index_path.is_file():
        raise DataError(_missing(index_path))
    try:
        index = json.loads(index_path.read_text())
        chunks = index["chunks"]
    except (ValueError, KeyError):
        raise DataError(f"{index_path} is not a litdata index; prepare the data again") from None
    for chunk in chunks:
        path = folder / chunk["filename"]
        if not path.is_file():
            raise DataError(_missing(path))
        size, expected = path.stat().st_size, chunk.get("chunk_bytes")
        if expected is not None and size < expected:
            raise DataError(
                f"chunk {path} is truncated ({size} of {expected} bytes); prepare the data again"
            )


class PreparedData:
    """A prepared location checked against a DataModule's dataset and label mapping."""

    def __init__(self, location: str, dataset: str, luts: Mapping[str, np.ndarray]) -> None:
        self.location = location if is_remote(location) else str(Path(location).expanduser())
        self.manifest, where = read_json(self.location, MANIFEST)
        check_manifest(self.manifest, where, dataset, luts_hash(luts))

    def split(self, split: str, list_file: str | None) -> SplitEntry:
        """The entry of a split, its files checked (local) or its index fetched (remote)."""
        entry = find_entry(self.manifest, _join(self.location, MANIFEST), split, list_file)
        if is_remote(self.location):
            read_json(self.location, entry.folder, INDEX)  # a missing index is one line here
        else:
            check_chunks(Path(self.location, entry.folder))
        return entry

    def input_dir(self, entry: SplitEntry) -> Any:
        """litdata's input_dir for a split: the folder itself, or the URL with a cache folder."""
        from litdata.streaming.resolver import Dir

        if not is_remote(self.location):
            return str(Path(self.location, entry.folder).resolve())
        cache = stream_cache(self.location) / entry.folder
        cache.mkdir(parents=True, exist_ok=True)
        return Dir(path=str(cache), url=_join(self.location, entry.folder))


def to_sample(item: Mapping[str, Any], augment: A.Compose | WindowCut | None) -> dict[str, Any]:
    """A stored item as SegmentationDataset returns it: `image` uint8 [3, H, W], `mask` uint8, `id`."""
    image, mask = item["image"], item["mask"]
    extra: dict[str, Any] = {}
    if augment is not None:
        image, mask, extra = augment_sample(augment, image, mask)
    if not image.flags.writeable:  # a view of the chunk: the batch copies it anyway
        image, mask = np.array(image), np.array(mask)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
        "mask": torch.from_numpy(np.ascontiguousarray(mask)),
        "id": item["id"],
        **extra,
    }


class PreparedSplit(Dataset[dict[str, Any]]):
    """One prepared split read by index (validation, test, predict; and the source of training's
    stream). Each process opens its own reader on first use, so forked workers never share one."""

    def __init__(
        self, data: PreparedData, entry: SplitEntry, augment: A.Compose | WindowCut | None = None
    ) -> None:
        self.data, self.entry, self.augment = data, entry, augment
        self._reader: PreparedStreamingDataset | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.entry.count

    @property
    def reader(self) -> PreparedStreamingDataset:
        if self._reader is None or self._pid != os.getpid():
            self._reader = self.streaming(shuffle=False, drop_last=False, seed=0, augment=False)
            self._pid = os.getpid()
        return self._reader

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return to_sample(self.reader.get_raw(index), self.augment)

    def reseed(self, seed: int) -> None:
        if self.augment is not None:
            reseed(self.augment, seed)

    @cached_property
    def first_size(self) -> tuple[int, int]:
        """(H, W) of the split's first image (the crop check reads it like the PNG path does)."""
        item = self.reader.get_raw(0)
        return int(item["height"]), int(item["width"])

    def streaming(
        self, *, shuffle: bool, drop_last: bool, seed: int, augment: bool = True
    ) -> PreparedStreamingDataset:
        """A fresh PreparedStreamingDataset over this split (ranks detected when it is created)."""
        from cgnet.data.prepared_stream import PreparedStreamingDataset

        dataset = PreparedStreamingDataset(
            input_dir=self.data.input_dir(self.entry),
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
        )
        dataset.augment = self.augment if augment else None
        return dataset
