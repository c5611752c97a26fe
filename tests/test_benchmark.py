"""The benchmark command's figures are complete and its variants agree with eager (no timing asserts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from cgnet.benchmark import (
    Latency,
    TrainThroughputSettings,
    load_settings,
    render,
    render_markdown,
    run,
    validate,
)
from cgnet.config import ConfigError
from cgnet.errors import UserError
from helpers import compose_config, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = [
    "sizes=[[64,96],[45,61]]",
    "model.M=2",
    "model.N=3",
    "num_classes=5",
    "warmup=1",
    "repeats=2",
    "train_throughput.batch=2",
    "train_throughput.crop=[32,48]",
    "train_throughput.steps=1",
    "train_throughput.warmup=0",
    "device=cpu",
    "isolate=false",
    "threads=1",
]


def compose_benchmark(*overrides: str, hydra: bool = False) -> DictConfig:
    with initialize_config_module(config_module="cgnet.conf", version_base="1.3"):
        return compose(
            config_name="benchmark", overrides=list(overrides), return_hydra_config=hydra
        )


def test_defaults_are_the_documented_settings() -> None:
    cfg = compose_benchmark(hydra=True)
    assert cfg.sizes == [[1024, 2048], [512, 1024]] and cfg.batch == 1
    assert list(cfg.variants) == ["eager", "fast", "compile", "onnxruntime"]
    assert cfg.train_throughput.batch == 8 and list(cfg.train_throughput.crop) == [360, 480]
    assert cfg.hydra.output_subdir is None


def test_benchmark_reports_every_variant_and_training(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    result = run(
        compose_benchmark(*TINY, "variants=[eager,fast,fast_ops,onnxruntime,bf16]", "profile=true")
    )
    assert result["model"]["parameters"] > 0
    assert set(result["model"]["multiply_adds"]) == {"64x96", "45x61"}
    rows = {(r["variant"], tuple(r["size"])): r for r in result["inference"]}
    for size in ((64, 96), (45, 61)):
        assert "needs a CUDA device" in rows[("bf16", size)]["skipped"]
        for variant in ("eager", "fast", "fast_ops", "onnxruntime"):
            row = rows[(variant, size)]
            assert row["max_abs_diff"] <= 1e-4 and row["argmax_agreement"] >= 0.9999
            lat = row["latency_ms"]
            assert 0 < lat["min"] <= lat["q1"] <= lat["median"] <= lat["q3"] <= lat["max"]
            assert row["fps"] == pytest.approx(1e3 / lat["median"])
            assert row["latency_unsynced_ms"] is None  # CPU calls are synchronous
        assert rows[("eager", size)]["speedup_over_eager"] == 1.0
        ops = [op["op"] for op in rows[("fast", size)]["profile"]]
        assert "aten::mkldnn_convolution" in ops and "aten::native_batch_norm" not in ops
        # the fused C++ kernels replace the concatenations, and show up under their own names
        assert "cgnet::cg_joint" in ops and "cgnet::join" in ops and "aten::cat" not in ops
        assert "aten::cat" in [op["op"] for op in rows[("fast_ops", size)]["profile"]]
        assert "aten::native_batch_norm" in [op["op"] for op in rows[("eager", size)]["profile"]]
        assert rows[("onnxruntime", size)]["profile"] == []
    training = result["training"]
    assert [r["setting"] for r in training] == ["plain eager", "project settings"]
    assert training[0]["space_to_batch"] is False and training[1]["space_to_batch"] is True
    assert training[0]["channels_last"] is False and training[1]["channels_last"] is False  # CPU
    assert all(r["images_per_s"] > 0 for r in training)
    profiled = [r for r in result["inference"] if r.get("profile")]
    assert len(profiled) == 6  # eager, fast, fast_ops at both sizes; onnxruntime has no torch ops
    for row in training:  # a step's profile names the backward pass too
        assert any("Backward" in op["op"] or "backward" in op["op"] for op in row["profile"])
    # inference + training tables, then one per profile (6 inference, 2 training)
    assert len(render(result)) == 2 + len(profiled) + len(training)
    markdown = render_markdown(result)
    assert "| 64x96 | fast |" in markdown and "| plain eager |" in markdown
    assert result["machine"]["threads"] == 1 and ", 1 threads," in markdown  # the workers' count
    assert result["command"].split()[:3] == ["python", "-m", "cgnet.benchmark"]
    json.dumps(result)  # the file the command writes


def test_a_failing_profiler_keeps_the_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    from cgnet.benchmark.inference import InferenceJob

    def refuse(self: InferenceJob, top: int = 12) -> list:
        raise RuntimeError("CUPTI is busy")

    monkeypatch.setattr(InferenceJob, "profile", refuse)
    overrides = (
        "variants=[eager,fast]",
        "profile=true",
        "isolate=false",
        "train_throughput.enabled=false",
    )
    result = run(compose_benchmark(*TINY, *overrides))
    for row in result["inference"]:
        assert row["profile"] == [] and row["profile_error"] == "RuntimeError: CUPTI is busy"
        assert row["latency_ms"]["median"] > 0


def test_unknown_variant_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tensorrt"):
        run(compose_benchmark(*TINY, "variants=[eager,tensorrt]"))


def test_latency_stats() -> None:
    stats = Latency.stats([4.0, 1.0, 3.0, 2.0, 5.0])
    assert stats["median"] == 3.0 and stats["min"] == 1.0 and stats["max"] == 5.0
    assert stats["q1"] <= stats["median"] <= stats["q3"]
    assert Latency.stats([]) == {}


def test_isolated_workers_give_the_same_outputs() -> None:
    # each variant in its own spawned process, as the command runs by default
    cfg = compose_benchmark(
        *TINY,
        "isolate=true",
        "variants=[fast]",
        "sizes=[[40,56]]",
        "train_throughput.enabled=false",
    )
    result = run(cfg)
    assert result["isolated_processes"] is True and "training" not in result
    fast = next(r for r in result["inference"] if r["variant"] == "fast")
    assert fast["max_abs_diff"] <= 1e-4 and fast["argmax_agreement"] >= 0.9999
    if fast["process_peak_mib"] is not None:  # Linux: the worker's own resident peak
        assert (
            fast["process_peak_mib"] > 50
            and 0 <= fast["peak_memory_mib"] < fast["process_peak_mib"]
        )


def test_settings_are_typed() -> None:
    settings = load_settings(compose_config("benchmark", []))
    assert settings.sizes == [(1024, 2048), (512, 1024)] and settings.trust_checkpoint is False
    assert isinstance(settings.train_throughput, TrainThroughputSettings)
    assert settings.train_throughput.crop == (360, 480) and settings.threads is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+train_throughput.stepz=3", "train_throughput.stepz: unknown key"),
        ("+variantz=[eager]", "variantz: unknown key"),
        ("+model.MM=3", "model.MM: unknown key"),
        ("repeats=many", "repeats: expected int, got str 'many'"),
        ("repeats=0", "repeats: expected a positive int, got 0"),
        ("variants=[eager,tensorrt]", "variants: unknown ['tensorrt']"),
        ("sizes=[[256]]", "sizes: expected a list of [H, W] of positive ints, got [[256]]"),
        ("sizes=[256,512]", "sizes: expected a list of [H, W] of positive ints, got [256, 512]"),
        ("sizes=[[0,512]]", "sizes: expected a list of [H, W] of positive ints, got [[0, 512]]"),
        ("sizes=[[256,w]]", "sizes: expected a list of [H, W]"),
        ("sizes=[]", "sizes: expected a list of [H, W]"),
        ("train_throughput.crop=[360]", "train_throughput.crop: expected [H, W] of positive ints"),
        ("device=tpu", "device=tpu: expected auto, cpu, cuda or cuda:N"),
        ("threads=0", "threads: expected a positive int, got 0"),
        ("threads=two", "threads: expected int | None"),
    ],
)
def test_validate_names_the_bad_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config("benchmark", [override]))


def test_bf16_training_needs_a_gpu() -> None:
    cfg = compose_config("benchmark", ["device=cpu", "train_throughput.bf16=true"])
    with pytest.raises(ConfigError, match=r"train_throughput\.bf16: .*CUDA only"):
        validate(cfg)
    cfg = compose_config(
        "benchmark",
        ["device=cpu", "train_throughput.bf16=true", "train_throughput.enabled=false"],
    )
    validate(cfg)  # not measured, so not refused


def test_the_fused_training_op_is_timed_on_gpus_only() -> None:
    cfg = compose_config("benchmark", ["device=cpu", "train_throughput.fused_context=true"])
    with pytest.raises(ConfigError, match=r"train_throughput\.fused_context: .*CUDA only"):
        validate(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_names_the_device_key() -> None:
    with pytest.raises(ConfigError, match="device=cuda: this machine has no CUDA GPU"):
        validate(compose_config("benchmark", ["device=cuda"]))


def test_command_refuses_a_bad_value_in_one_line(tmp_path: Path) -> None:
    result = run_cli("cgnet.benchmark", ["repeats=zero"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == "config error: repeats: expected int, got str 'zero'"
    assert not (tmp_path / "benchmark.json").exists()


def test_checkpoint_weights_are_measured(tmp_path: Path) -> None:
    weights = Path(__file__).parent / "fixtures" / "reference" / "cgnet_official_camvid_m3n21.pth"
    tiny = [*TINY, "model.M=3", "model.N=21", "num_classes=11", "train_throughput.enabled=false"]
    result = run(compose_benchmark(*tiny, f"ckpt_path={weights}", "variants=[fast]"))
    assert "weights from" in result["model"]["source"] and result["model"]["num_classes"] == 11
    fast = next(r for r in result["inference"] if r["variant"] == "fast")
    assert fast["max_abs_diff"] <= 1e-2 and fast["argmax_agreement"] >= 0.999
    with pytest.raises(UserError, match=r"missing\.pth"):
        run(compose_benchmark(*tiny, f"ckpt_path={tmp_path / 'missing.pth'}"))
