"""notebooks/inspect_predictions.ipynb: committed clean, and executed end to end on a tiny trained run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import run_cli, tiny_overrides

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inspect_predictions.ipynb"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """A one-epoch run on generated street scenes: (run folder, the data overrides it used)."""
    tmp = tmp_path_factory.mktemp("notebook")
    overrides = [*tiny_overrides(tmp / "data" / "cityscapes", tmp / "logs"), "preview=false"]
    args = [*overrides, f"hydra.run.dir={tmp / 'run'}"]  # the CLI, so .hydra/config.yaml is written
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CGNET_CACHE_DIR", str(tmp / "cache"))
        result = run_cli("cgnet.train", args, cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    yield tmp / "run", [o for o in overrides if o.startswith("data.")]


def execute(
    workdir: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> nbformat.NotebookNode:
    """Run the notebook in a fresh kernel (which inherits this environment) from ``workdir``."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figures
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("CGNET_CACHE_DIR", str(workdir / "cache"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    """(all printed text, number of PNG figures)."""
    text, figures = [], 0
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif out.output_type == "display_data" and "image/png" in out.data:
                figures += 1
    return "".join(text), figures


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    first = code[0].source
    for name in ("CGNET_RUN", "CGNET_SPLIT", "CGNET_DATA"):
        assert name in first, f"{name} is not a parameter of the first code cell"


@pytest.mark.slow
def test_notebook_on_a_run_folder(
    tiny_run: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = tiny_run
    notebook = execute(tmp_path, {"CGNET_RUN": str(run_dir), "CGNET_SPLIT": "val"}, monkeypatch)
    text, figures = outputs(notebook)
    assert figures == 4, text  # examples grid, IoU bars, confusion matrix, lowest-IoU grid
    assert f"checkpoint: {run_dir / 'checkpoints' / 'best.ckpt'}" in text
    assert "split 'val', 4 images" in text and "4 images: mIoU" in text
    assert "synthburg" in text  # the lowest-IoU list names images


@pytest.mark.slow
def test_notebook_on_a_bare_checkpoint_and_another_split(
    tiny_run: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, data_overrides = tiny_run
    checkpoint = (
        tmp_path / "model.ckpt"
    )  # away from its run folder: the data config comes from DATA
    shutil.copy(run_dir / "checkpoints" / "best.ckpt", checkpoint)
    env = {
        "CGNET_RUN": str(checkpoint),
        "CGNET_DATA": "synthetic",
        "CGNET_DATA_OVERRIDES": " ".join(data_overrides),
        "CGNET_SPLIT": "test",
        "CGNET_NUM_WORST": "1",
    }
    notebook = execute(tmp_path, env, monkeypatch)
    text, figures = outputs(notebook)
    assert figures == 4, text
    assert "split 'test', 2 images" in text
    assert os.path.basename(checkpoint) in text
