"""Shared fixtures: paths to the authors' reference artefacts and small helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "cgnet_official_camvid_m3n21.pth").exists():
        pytest.skip(f"authors' reference artefacts not found in {REFERENCE}")
    return REFERENCE


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny inputs gain nothing from a second thread, and on a busy machine OpenMP's barriers make
    every op wait for a descheduled thread; one thread keeps these tests quick and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
