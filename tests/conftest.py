"""Shared fixtures: the authors' reference artefacts (tests/fixtures/reference) and small helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported, and other tests import it (torch.compile
# does): set it before any test runs, so the fused-kernel tests find the interpreter on a machine
# without a GPU whichever test file a worker ran first.
_KERNEL_DEVICE = os.environ.get("CGNET_KERNEL_TESTS_DEVICE")
if (_KERNEL_DEVICE or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "fixtures" / "reference"
REFERENCE_FILES = ("cgnet_official_camvid_m3n21.pth", "official_camvid_logits.pt")


@pytest.fixture
def kernel_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C++ kernels build into (or are found in) one cache of this test session, not the user's."""
    monkeypatch.setenv("CGNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel-cache"))


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
