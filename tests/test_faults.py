"""Fault tests: kills and resumes, non-finite losses, reproducibility (docs/faults.md)."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from cgnet.train import run
from helpers import compose_config, read_metrics, run_cli, tiny_overrides

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic") / "cityscapes"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CGNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )


def deterministic(root: Path, log_dir: Path) -> list[str]:
    # One non-persistent worker: each epoch's augmentations are seeded from the global torch RNG,
    # which the checkpoint carries (cgnet.rng), so a resumed epoch draws what the original would.
    return [
        *tiny_overrides(root, log_dir),
        "trainer.deterministic=true",
        "trainer.max_epochs=3",
        "data.num_workers=1",
        "data.persistent_workers=false",
        "preview=false",
    ]


def fault(record: Path, step: int | None) -> list[str]:
    return [
        "+callbacks.fault._target_=fault_callbacks.KillAtStep",
        f"+callbacks.fault.record={record}",
        f"+callbacks.fault.step={'null' if step is None else step}",
    ]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(
    data_root: Path, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    result = run_cli(
        "cgnet.train", [*deterministic(data_root, tmp_path), f"hydra.run.dir={full}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    record = tmp_path / "starts.json"
    args = [*deterministic(data_root, tmp_path), f"hydra.run.dir={killed}"]
    # 2 steps per epoch: step 5 is the middle of the third epoch; last.ckpt is from the end of the second.
    result = run_cli("cgnet.train", [*args, *fault(record, 5)], tmp_path)
    assert result.returncode == -signal.SIGKILL
    saved = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert saved == 4

    result = run_cli("cgnet.train", [*args, *fault(record, None), "ckpt_path=last"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(record.read_text()) == [0, 4]  # the resumed fit started at the saved step
    a, b = (
        weights(full / "checkpoints" / "last.ckpt"),
        weights(killed / "checkpoints" / "last.ckpt"),
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the curves too: what was logged before the kill is kept, and each step appears once
    assert losses(killed) == losses(full) and len(losses(full)) == 6


def losses(run_dir: Path) -> list[tuple[str, str]]:
    """(step, train/loss_step) rows of a run's metrics.csv."""
    return [
        (r["step"], r["train/loss_step"]) for r in read_metrics(run_dir) if r.get("train/loss_step")
    ]


@pytest.mark.slow
def test_step_checkpoints_lose_at_most_n_steps(data_root: Path, tmp_path: Path) -> None:
    run_dir, record = tmp_path / "run", tmp_path / "starts.json"
    args = [
        *deterministic(data_root, tmp_path),
        f"hydra.run.dir={run_dir}",
        "callbacks.model_checkpoint.every_n_train_steps=1",
    ]
    result = run_cli("cgnet.train", [*args, *fault(record, 3)], tmp_path)
    assert result.returncode == -signal.SIGKILL
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3  # mid-epoch, nothing lost
    result = run_cli("cgnet.train", [*args, *fault(record, None), "ckpt_path=last"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(record.read_text()) == [0, 3]


def test_nan_loss_stops_naming_step_and_files(data_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path), "optimizer.lr=1e30", "trainer.max_epochs=2"]
    with pytest.raises(FloatingPointError, match=r"non-finite .* at step \d+ \(batch: synth\w+"):
        run(compose_config("train", overrides, tmp_path / "run"))


def test_nan_loss_can_skip_batches(data_root: Path, tmp_path: Path) -> None:
    overrides = [
        *tiny_overrides(data_root, tmp_path),
        "optimizer.lr=1e30",
        "trainer.max_epochs=2",
        "module.on_nonfinite=skip",
    ]
    summary = run(compose_config("train", overrides, tmp_path / "run"))
    assert summary["output_dir"]  # finished instead of training on garbage or crashing


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nan_read_every_n_steps_names_the_first_bad_step(
    policy: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The GPU setting (flags kept on the device, read every N steps) on the CPU: raise and skip
    both name the first non-finite step and its batch."""
    overrides = [
        *tiny_overrides(data_root, tmp_path),
        "optimizer.lr=1e30",
        "data.batch_size=2",  # 4 steps in the epoch: read after step 2, then at the epoch's end
        "module.nonfinite_check_every=3",
        f"module.on_nonfinite={policy}",
        "preview=false",
    ]
    first = r"non-finite .* at step 1 \(batch: synth\w+"
    if policy == "raise":
        with pytest.raises(FloatingPointError, match=first):
            run(compose_config("train", overrides, tmp_path / "run"))
        return
    summary = run(compose_config("train", overrides, tmp_path / "run"))
    assert summary["output_dir"]
    out = capsys.readouterr().out
    assert re.search(r"skipping: " + first + r".*\); 2 such steps since the last check", out)


def test_same_seed_same_metrics(data_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path), "trainer.max_epochs=2", "preview=false"]
    first = run(compose_config("train", overrides, tmp_path / "a"))
    second = run(compose_config("train", overrides, tmp_path / "b"))
    assert first["metrics"] == second["metrics"]
    a = weights(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = weights(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_crop_larger_than_the_scaled_images_is_one_line(data_root: Path, tmp_path: Path) -> None:
    args = [
        *tiny_overrides(data_root, tmp_path),
        "data.crop_size=[64,512]",
        "data.scale_range=[0.5,2.0]",
    ]
    result = run_cli("cgnet.train", args, cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "data error: data.crop_size=[64, 512] is larger than the training images" in result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_broken_data_is_one_line_before_training(data_root: Path, tmp_path: Path) -> None:
    import shutil

    root = Path(shutil.copytree(data_root, tmp_path / "broken")) if data_root.exists() else None
    if root is None:  # the module fixture's tree is generated by the first test that trains
        run(
            compose_config(
                "train",
                [*tiny_overrides(data_root, tmp_path), "trainer.fast_dev_run=true"],
                tmp_path / "r",
            )
        )
        root = Path(shutil.copytree(data_root, tmp_path / "broken"))
    label = next((root / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))
    label.write_bytes(label.read_bytes()[:100])  # truncated PNG
    args = [*tiny_overrides(root, tmp_path), "data.num_workers=0"]
    result = run_cli("cgnet.train", args, cwd=tmp_path)
    assert result.returncode == 2
    assert "data error:" in result.stderr and label.name in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
