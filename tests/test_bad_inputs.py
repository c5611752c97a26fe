"""Every mistake a user makes on the command line is one line naming the key or file, exit status 2.

Each case runs the real command in a fresh process, as a user would type it. The table spans every
entry point: typos in keys, group options and values, wrong types, impossible devices and splits,
missing and corrupt files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_cli, tiny_data_overrides

pytestmark = pytest.mark.slow

# (command, arguments, text the one line must contain); {corrupt}, {missing}, {root}, {images}
# are filled in per test. `quick` arguments keep the cases that get past validation small.
CASES: list[tuple[str, str, str]] = [
    ("cgnet.train", "model.M=abc", "model.M"),
    ("cgnet.train", "model.MM=3", "did you mean model.M?"),
    ("cgnet.train", "model.redisual=local", "did you mean model.residual?"),
    ("cgnet.train", "+model.redisual=local", "did you mean 'model.residual'?"),
    ("cgnet.train", "data=citiscapes", "did you mean data=cityscapes?"),
    ("cgnet.train", "data.batch_size=-2", "data.batch_size=-2"),
    ("cgnet.train", "data.num_workers=-1", "data.num_workers=-1"),
    ("cgnet.train", "optimizer.lr=fast", "optimizer.lr"),
    ("cgnet.train", "model.N=0", "N must be an integer >= 1"),
    ("cgnet.train", "trainer.devices=4096 trainer.accelerator=cpu", "trainer.devices=4096"),
    ("cgnet.train", "ckpt_path={corrupt}", "corrupt.ckpt"),
    ("cgnet.train", "ckpt_path={missing}", "missing.ckpt"),
    ("cgnet.train", "pretrained.path={corrupt}", "corrupt.ckpt"),
    ("cgnet.train", "data=cityscapes data.root={missing}", "missing.ckpt"),
    ("cgnet.train", "-m model.NN=1,2", "did you mean model.N?"),
    ("cgnet.eval", "ckpt_path={corrupt}", "corrupt.ckpt"),
    ("cgnet.eval", "", "ckpt_path: required"),
    ("cgnet.eval", "ckpt_path={weights} device=gpu", "device=gpu"),
    ("cgnet.eval", "ckpt_path={weights} data=camvid data.root={camvid} split=validation", "split"),
    ("cgnet.eval", "ckpt_path={weights} +tta.flipp=true", "did you mean 'tta.flip'?"),
    ("cgnet.eval", "ckpt_path={weights} tta.scales=[0]", "tta.scales"),
    ("cgnet.eval", "ckpt_path={weights} fast=maybe", "fast"),
    ("cgnet.eval", "ckpt_path={weights} precision=fp8", "precision"),
    (
        "cgnet.eval",
        "ckpt_path={weights} device=cpu precision=fp16",
        "precision=fp16: half precision",
    ),
    ("cgnet.predict", "ckpt_path={weights} device=cpu precision=bf16", "precision=bf16"),
    ("cgnet.eval", "ckpt_path={weights} data=camvid", "data.root"),
    ("cgnet.predict", "ckpt_path={weights} input={missing}", "missing.ckpt"),
    ("cgnet.predict", "ckpt_path={weights} formats=[jpeg]", "formats"),
    ("cgnet.predict", "ckpt_path={missing} input={camvid}", "missing.ckpt"),
    ("cgnet.export", "", "ckpt_path: required"),
    ("cgnet.export", "ckpt_path={weights} format=tflite", "format"),
    ("cgnet.export", "ckpt_path={corrupt}", "corrupt.ckpt"),
    ("cgnet.benchmark", "repeats=zero", "repeats"),
    ("cgnet.benchmark", "variants=[tensorrt]", "tensorrt"),
    ("cgnet.models.summary", "model.M=abc", "model.M"),
    ("cgnet.models.summary", "size=[0,10]", "size"),
    ("cgnet.data.check", "num_workers=-1", "num_workers"),
    ("cgnet.report", "{missing}", "missing.ckpt"),
    ("cgnet.data.benchmark", "--size 0 10", "--size"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("bad")
    corrupt = base / "corrupt.ckpt"
    corrupt.write_bytes(b"this is not a checkpoint\n" * 4)
    from cgnet.data import generate_camvid

    camvid = generate_camvid(
        base / "camvid", num_train=1, num_val=1, num_test=1, image_size=(32, 48), seed=0
    )
    weights = Path(__file__).parent / "fixtures" / "reference" / "cgnet_official_camvid_m3n21.pth"
    return {
        "corrupt": str(corrupt),
        "missing": str(base / "missing.ckpt"),
        "weights": str(weights),
        "camvid": str(camvid),
        "base": str(base),
    }


@pytest.mark.parametrize(
    ("command", "args", "expected"), CASES, ids=[f"{c} {a}" for c, a, _ in CASES]
)
def test_mistake_is_one_line_and_exit_2(
    command: str, args: str, expected: str, files: dict[str, str], tmp_path: Path
) -> None:
    argv = [a.format(**files) for a in args.split()]
    keys = {a.lstrip("+").split("=")[0] for a in argv}
    if command == "cgnet.train" and "data" not in keys:  # tiny scenes: quick past validation
        tiny = [*tiny_data_overrides(tmp_path / "data"), "data.crop_size=[64,64]"]
        argv += [a for a in tiny if a.split("=")[0] not in keys]
    done = run_cli(command, argv, cwd=tmp_path, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert 1 <= len(lines) <= 3, done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # a run that failed before doing anything leaves no run folder behind
    assert not list((tmp_path / "logs").glob("*/runs/*")), list((tmp_path / "logs").rglob("*"))
