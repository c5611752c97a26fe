"""The training app end to end on generated street scenes: configs, fit, resume, multirun, DDP."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cgnet.config import ConfigError
from cgnet.models import CGNet, export_weights
from cgnet.module import SegmentationModule
from cgnet.train import build_module, build_trainer, load_pretrained, report, run, validate
from helpers import compose_config, read_metrics, read_summary, run_cli, tiny_overrides

CONF = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic") / "cityscapes"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("CGNET_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "override",
    [f"model={o}" for o in group_options("model")]
    + [f"data={o}" for o in group_options("data")]
    + [f"optimizer={o}" for o in group_options("optimizer")]
    + [f"scheduler={o}" for o in group_options("scheduler")]
    + [f"trainer={o}" for o in group_options("trainer")]
    + [f"callbacks={o}" for o in group_options("callbacks")]
    + [f"logger={o}" for o in group_options("logger")]
    + [f"experiment={o}" for o in group_options("experiment")],
)
def test_every_config_composes_validates_and_instantiates(override: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [override, f"paths.log_dir={tmp_path}"], tmp_path / "run")
    validate(cfg)
    instantiate(cfg.data)
    for group in ("callbacks", "logger"):
        for node in (cfg.get(group) or {}).values():
            if node:
                instantiate(node)
    wants_gpu = cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available()
    if wants_gpu or cfg.trainer.devices > (os.cpu_count() or 1):
        with pytest.raises(ConfigError, match=r"trainer\.devices="):
            build_trainer(cfg)  # the recipe asks for more than this machine has: one clear line
    else:
        assert build_trainer(cfg) is not None
    module = SegmentationModule(19, model=OmegaConf.to_container(cfg.model))
    assert module.net.num_classes == 19


def test_hparams_search_composes(tmp_path: Path) -> None:
    cfg = compose_config("train", ["hparams_search=depth_ablation"], tmp_path)
    assert cfg.hydra.sweeper.params["model.N"] == "9,15,21"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.M=0", "model: CGNet: M must be an integer >= 1"),
        ("model.residual=both", "model.residual: expected"),
        ("optimizer.lr=fast", "optimizer.lr: expected float"),
        ("data.batch_size=2.5", "data.batch_size: expected int"),
        ("trainer.max_epochs=ten", "trainer.max_epochs: expected"),
    ],
)
def test_bad_values_are_one_clear_error(override: str, message: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [override], tmp_path)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(cfg)


def test_fast_dev_run(data_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path), "trainer.fast_dev_run=true"]
    summary = run(compose_config("train", overrides, tmp_path / "run"))
    assert "val/mIoU" in summary["metrics"] and "train/loss_step" in summary["metrics"]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_train_saves_checkpoints_and_resumes_at_the_saved_step(
    data_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first = run(compose_config("train", tiny_overrides(data_root, tmp_path), run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert Path(first["checkpoint"]) == run_dir / "checkpoints" / "best.ckpt"
    assert last.is_file() and (run_dir / "preview.png").is_file()
    assert math.isfinite(first["val/mIoU_best"]) and 0 <= first["val/mIoU_best"] <= 1
    steps_per_epoch = torch.load(last, weights_only=False)["global_step"]
    assert steps_per_epoch == 2  # 8 images, batch 4, drop_last

    first_rows = read_metrics(run_dir)
    more = [*tiny_overrides(data_root, tmp_path), "trainer.max_epochs=2", "ckpt_path=last"]
    run(compose_config("train", more, run_dir))
    resumed = torch.load(last, weights_only=False)
    rows = read_metrics(run_dir)  # the curves before the resume are kept, each step logged once
    loss_steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert loss_steps == [0, 1, 2, 3]
    assert [r["epoch"] for r in rows if r.get("val/mIoU")] == ["0", "1"]
    assert len(rows) > len(first_rows) > 0
    assert resumed["global_step"] == 2 * steps_per_epoch
    assert resumed["epoch"] == 1
    sched = resumed["lr_schedulers"][0]
    assert sched["last_epoch"] == 2 * steps_per_epoch  # poly schedule continued, not restarted

    module = SegmentationModule.load_from_checkpoint(last)  # no Hydra needed
    assert module.hparams.model["N"] == 2 and module.net.num_classes == 19


def test_a_run_without_validation_says_so_and_names_last_ckpt(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path), "trainer.check_val_every_n_epoch=2"]
    summary = run(compose_config("train", overrides, tmp_path / "run"))
    assert math.isnan(summary["val/mIoU_best"]) and "checkpoint" not in summary
    assert summary["last_checkpoint"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    report(summary)
    out = " ".join(capsys.readouterr().out.split())
    assert "no validation ran" in out and "trainer.check_val_every_n_epoch" in out
    assert "final val mIoU" not in out
    assert f"checkpoint:{summary['last_checkpoint']}" in "".join(out.split())  # however rich wraps


def test_pretrained_weights_start_a_new_run(data_root: Path, tmp_path: Path) -> None:
    """Weights of another class count (the authors' format) load everywhere but the classifier;
    the run starts at step 0 with those weights, unlike a resume."""
    source = CGNet(11, M=2, N=2)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    weights = tmp_path / "camvid_official.pth"
    torch.save(export_weights(source, "official"), weights)
    overrides = [*tiny_overrides(data_root, tmp_path), f"pretrained.path={weights}"]
    cfg = compose_config("train", overrides, tmp_path / "strict")
    validate(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    module = build_module(cfg, datamodule)
    with pytest.raises(ConfigError, match=r"(?s)11 classes, model has 19.*skip_classifier=true"):
        load_pretrained(cfg, module)

    overrides.append("pretrained.skip_classifier=true")
    cfg = compose_config("train", overrides, tmp_path / "skip")
    module = build_module(cfg, datamodule)
    classifier = module.net.classifier.weight.clone()
    load_pretrained(cfg, module)
    theirs, ours = source.state_dict(), module.net.state_dict()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours if not k.startswith("classifier."))
    assert torch.equal(module.net.classifier.weight, classifier)

    eps = compose_config("train", [*overrides, "model.bn_eps=1e-5"], tmp_path / "eps")
    with pytest.raises(
        ConfigError, match=r"BatchNorm eps 0\.001 \(official format\).*bn_eps=0\.001"
    ):
        load_pretrained(eps, build_module(eps, datamodule))

    summary = run(compose_config("train", [*overrides, "trainer.max_epochs=1"], tmp_path / "run"))
    last = torch.load(summary["last_checkpoint"], weights_only=False)
    assert last["global_step"] == 2  # a new run: two steps of 8 images in batches of 4
    trained = last["state_dict"]["net.stem.0.conv.weight"]
    start = theirs["stem.0.conv.weight"]  # N(0, 1) values; two Adam steps move each by <= ~2e-3
    fresh = CGNet(19, M=2, N=2).state_dict()["stem.0.conv.weight"]
    assert (trained - start).abs().max() < 0.01 < (trained - fresh).abs().max()


def test_pretrained_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pretrained\.path: no file at .*nothing\.pth"):
        validate(compose_config("train", [f"pretrained.path={tmp_path / 'nothing.pth'}"], tmp_path))
    (tmp_path / "w.pth").write_bytes(b"")
    both = [f"pretrained.path={tmp_path / 'w.pth'}", f"ckpt_path={tmp_path / 'w.pth'}"]
    with pytest.raises(ConfigError, match=r"pretrained\.path and ckpt_path are both set"):
        validate(compose_config("train", both, tmp_path))


def test_missing_resume_checkpoint_is_a_clear_error(data_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path), "ckpt_path=last"]
    with pytest.raises(ConfigError, match=r"no checkpoint at .*last\.ckpt"):
        run(compose_config("train", overrides, tmp_path / "run"))


def test_cli_typo_exits_with_one_line(tmp_path: Path) -> None:
    result = run_cli("cgnet.train", ["model.N=abc", f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "model.N: expected int, got str 'abc'" in result.stderr  # one line, on stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_two_job_multirun_gets_two_folders(devices: int, data_root: Path, tmp_path: Path) -> None:
    """With 2 processes per job too: re-launched DDP ranks would each re-run the sweep,
    so a local multirun spawns them, and still makes one sweep folder."""
    args = ["-m", *tiny_overrides(data_root, tmp_path), "model.N=2,3", f"trainer.devices={devices}"]
    result = run_cli("cgnet.train", [*args, "preview=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"], result.stdout[-3000:] + result.stderr[-3000:]
    for job, n in zip(jobs, (2, 3), strict=True):
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert n == OmegaConf.load(job / ".hydra" / "config.yaml").model.N
        summary = read_summary(job)
        assert math.isfinite(summary["val/mIoU_best"])
        assert summary["checkpoint"] == str(job / "checkpoints" / "best.ckpt")
    assert ("-> ddp_spawn" in result.stdout + result.stderr) == (devices > 1)
    assert "💡 Tip" not in result.stdout + result.stderr  # Lightning's product notes are filtered


@pytest.mark.slow
def test_ddp_two_cpu_processes_score_like_one(data_root: Path, tmp_path: Path) -> None:
    """Validation of one checkpoint with 2 gloo ranks equals 1 process: the confusion matrix syncs."""
    base = tiny_overrides(data_root, tmp_path)
    run(compose_config("train", base, tmp_path / "fit"))
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    scores = {}
    for devices in (1, 2):
        run_dir = tmp_path / f"validate{devices}"
        args = [
            *base,
            "train=false",
            f"ckpt_path={ckpt}",
            f"trainer.devices={devices}",
            f"trainer.strategy={'ddp' if devices > 1 else 'auto'}",
            f"hydra.run.dir={run_dir}",
            "preview=false",
        ]
        result = run_cli("cgnet.train", args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        scores[devices] = read_summary(run_dir)["metrics"]
    assert scores[1]["val/mIoU"] == pytest.approx(scores[2]["val/mIoU"], abs=1e-6)
    assert scores[1]["val/pixel_accuracy"] == pytest.approx(
        scores[2]["val/pixel_accuracy"], abs=1e-6
    )


@pytest.mark.slow
def test_ddp_channels_last_trains_without_stride_or_sync_warnings(
    data_root: Path, tmp_path: Path
) -> None:
    """Two gloo ranks, channels-last as on GPUs: the parameters take their layout before DDP wraps
    them (no 'Grad strides do not match bucket view strides'), and epoch-level logs are synced."""
    args = [
        *tiny_overrides(data_root, tmp_path),
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "module.channels_last=true",
        "preview=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run_cli("cgnet.train", args, cwd=tmp_path, env={"PYTHONWARNINGS": "default"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "distributed_backend=gloo" in output  # two processes really ran
    assert "Grad strides do not match" not in output
    assert "sync_dist=True" not in output
