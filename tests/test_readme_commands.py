"""Every eval, predict, export, benchmark, report and summary command of README.md, run as written.

The commands are read from the README's code blocks, so the README cannot drift from what works; only
its placeholders are replaced (CKPT, ROOT, path/to/images, <sweep>, the authors' weights file). They run
from a fresh folder holding one tiny sweep, as a user who just trained would run them.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from cgnet.data import generate_camvid
from helpers import REPO, run_cli, tiny_overrides

COMMANDS = ("eval", "predict", "export", "benchmark", "report", "models.summary")
LINE = re.compile(rf"^python -m cgnet\.({'|'.join(re.escape(c) for c in COMMANDS)})(\s.*)?$")

pytestmark = pytest.mark.slow


def readme_commands() -> list[tuple[str, str]]:
    """(module, argument string) of every listed command in README.md's bash blocks."""
    text = (REPO / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            match = LINE.match(line)
            if match:
                found.append((f"cgnet.{match.group(1)}", (match.group(2) or "").strip()))
    return found


def test_the_readme_shows_every_command() -> None:
    shown = {module for module, _ in readme_commands()}
    assert shown == {f"cgnet.{c}" for c in COMMANDS}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh folder with a two-job sweep on tiny generated Cityscapes scenes (logs/ inside it),
    a tiny CamVid tree and the authors' CamVid weights beside it."""
    cwd = tmp_path_factory.mktemp("user")
    root = cwd / "cityscapes"
    overrides = [o for o in tiny_overrides(root, cwd / "logs") if not o.startswith("paths.")]
    done = run_cli("cgnet.train", ["-m", "model.N=1,2", *overrides], cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = next((cwd / "logs" / "train" / "multiruns").iterdir())
    camvid = generate_camvid(
        cwd / "camvid", num_train=2, num_val=2, num_test=2, image_size=(64, 96), seed=1
    )
    weights = cwd / "cgnet_official_camvid_m3n21.pth"
    shutil.copy(REPO / "tests" / "fixtures" / "reference" / weights.name, weights)
    return {
        "cwd": cwd,
        "root": root,
        "camvid": camvid,
        "ckpt": sweep / "0" / "checkpoints" / "last.ckpt",
        "sweep": sweep,
        "images": root / "leftImg8bit" / "val",
    }


def substitute(args: str, paths: dict[str, Path]) -> list[str]:
    """The README's placeholders -> this test's files; nothing else changes."""
    root = paths["camvid"] if "data=camvid" in args else paths["root"]
    args = args.replace("CKPT", str(paths["ckpt"])).replace("ROOT", str(root))
    args = args.replace("path/to/images", str(paths["images"]))
    args = args.replace(
        "logs/train/multiruns/<sweep>", str(paths["sweep"].relative_to(paths["cwd"]))
    )
    return shlex.split(args)


@pytest.mark.parametrize(
    ("module", "args"), readme_commands(), ids=[f"{m} {a}" for m, a in readme_commands()]
)
def test_readme_command_runs_as_written(module: str, args: str, workdir: dict[str, Path]) -> None:
    env = {"CITYSCAPES_DATASET": str(workdir["root"])}  # the commands without data.root use it
    done = run_cli(module, substitute(args, workdir), cwd=workdir["cwd"], timeout=600, env=env)
    assert done.returncode == 0, f"{module} {args}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    if module == "cgnet.eval":
        assert list((workdir["cwd"] / "logs" / "eval" / "runs").glob("*/metrics.json"))
    if module == "cgnet.predict":
        assert list((workdir["cwd"] / "logs" / "predict" / "runs").glob("*/predictions/*/*.png"))
    if module == "cgnet.export":
        suffix = ".onnx" if "format=onnx" in args else ".torchscript.pt"
        assert workdir["ckpt"].with_name(workdir["ckpt"].stem + suffix).is_file()
    if module == "cgnet.report":
        assert (workdir["sweep"] / "report.md").is_file()
    if module == "cgnet.models.summary":
        assert "27.05" in done.stdout  # the paper's multiply-adds at 1024x2048 (19 classes)
