"""Small generated trees in both layouts (64x128 images) shared by the data tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cgnet.data import generate_camvid, generate_cityscapes

SIZE = (64, 128)
COUNTS = {"num_train": 6, "num_val": 3, "num_test": 2}
COARSE_COUNT = 3  # Cityscapes train_extra images (gtCoarse labels)


@pytest.fixture(scope="session")
def counts() -> dict[str, int]:
    """Images per split in the generated trees."""
    return {**COUNTS, "num_train_extra": COARSE_COUNT}


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never write to the user's ~/.cache from tests."""
    monkeypatch.setenv("CGNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cgnet-cache"))


@pytest.fixture(scope="session")
def cityscapes_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cityscapes(
        tmp_path_factory.mktemp("trees") / "cityscapes",
        **COUNTS,
        image_size=SIZE,
        num_train_extra=COARSE_COUNT,
    )


@pytest.fixture(scope="session")
def camvid_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_camvid(tmp_path_factory.mktemp("trees") / "camvid", **COUNTS, image_size=SIZE)


@pytest.fixture
def cityscapes_copy(cityscapes_tree: Path, tmp_path: Path) -> Path:
    """A private copy a test may break."""
    return Path(shutil.copytree(cityscapes_tree, tmp_path / "cityscapes"))


@pytest.fixture
def camvid_copy(camvid_tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(camvid_tree, tmp_path / "camvid"))
