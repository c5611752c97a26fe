"""Shared fixtures: the authors' reference artefacts (tests/fixtures/reference) and small helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "fixtures" / "reference"
REFERENCE_FILES = ("cgnet_official_camvid_m3n21.pth", "official_camvid_logits.pt")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The authors' CamVid weights and their code's logits, committed with the tests: a missing file
    is a broken checkout, so it fails every test that needs it instead of skipping them."""
    missing = [name for name in REFERENCE_FILES if not (REFERENCE / name).is_file()]
    if missing:
        pytest.fail(
            f"reference artefacts missing from {REFERENCE}: {', '.join(missing)}", pytrace=False
        )
    return REFERENCE


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny inputs gain nothing from a second thread, and on a busy machine OpenMP's barriers make
    every op wait for a descheduled thread; one thread keeps these tests quick and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
