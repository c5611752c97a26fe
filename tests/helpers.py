"""Tiny training settings and Hydra composition for tests that run the real entry points."""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from cgnet.models.blocks import CGBlock, CGDownBlock

REPO = Path(__file__).resolve().parents[1]
M = TypeVar("M", bound=nn.Module)

# The Triton kernels' tests: dtypes, tolerances against a float32 reference computed from the same
# rounded inputs (so only the output rounding differs: 2**-11 for float16, 2**-8 for bfloat16), and
# (batch, channels, height, width, f_sur dilation) shapes: odd sizes, planes smaller than the dilation.
KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
KERNEL_ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
KERNEL_SHAPES = [(2, 8, 9, 13, 2), (2, 16, 17, 33, 4), (1, 32, 3, 5, 4), (2, 12, 1, 1, 2)]


def triton_test_device() -> torch.device:
    """Where the Triton kernels' tests run: CUDA when there is a GPU and TRITON_INTERPRET is not 1,
    else the CPU under the interpreter (switched on here, since triton.jit picks the interpreter
    when it decorates). ``CGNET_KERNEL_TESTS_DEVICE=cuda|cpu`` forces the choice."""
    forced = os.environ.get("CGNET_KERNEL_TESTS_DEVICE")
    if forced:
        device = torch.device(forced)
    elif torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    return device


def import_triton_kernels(name: str, device: torch.device) -> ModuleType:
    """A module of Triton kernels, checked to be decorated for ``device`` (compiled for CUDA, the
    interpreter for the CPU). Missing triton fails on Linux, where the dev extra installs it."""
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("CGNET_KERNEL_TESTS_DEVICE=cuda but torch sees no GPU", pytrace=False)
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        if sys.platform == "linux":
            pytest.fail(f"triton is missing from the dev environment: {error}", pytrace=False)
        pytest.skip(f"no triton on {sys.platform}")
    if module.INTERPRETED is not (device.type == "cpu"):
        pytest.fail(
            f"{name} was imported with INTERPRETED={module.INTERPRETED} for tests on {device}; "
            "run these tests with TRITON_INTERPRET set accordingly",
            pytrace=False,
        )
    return module


def randomize_statistics(module: M, seed: int = 1) -> M:
    """Non-trivial BN statistics and affine parameters, and PReLU slopes of both signs, in eval mode,
    so that a wrong fold (mean/var swapped, eps dropped, halves crossed) shows up in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.3)
        elif isinstance(m, nn.PReLU):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen) * 0.4)
    return module.eval()


def joint_reference(
    y: Tensor,
    w_loc: Tensor,
    b_loc: Tensor,
    w_sur: Tensor,
    b_sur: Tensor,
    slope: Tensor | None,
    dilation: int,
) -> Tensor:
    """f_joi(cat(f_loc(y), f_sur(y))) with eager float32 ops."""
    y = y.float()
    c = y.shape[1]
    loc = F.conv2d(y, w_loc, b_loc, padding=1, groups=c)
    sur = F.conv2d(y, w_sur, b_sur, padding=dilation, dilation=dilation, groups=c)
    joint = torch.cat([loc, sur], 1)
    return F.relu(joint) if slope is None else F.prelu(joint, slope)


# One of each kind of CG block the network builds, small: for the fused kernels' block tests.
CG_BLOCKS = {
    "cg_global": lambda: CGBlock(32, 2, 8),
    "cg_local": lambda: CGBlock(32, 4, 8, residual="local"),
    "cg_none_relu": lambda: CGBlock(16, 2, 4, residual="none", activation="relu"),
    "cg_no_fglo": lambda: CGBlock(16, 4, 4, use_f_glo=False),
    "cg_down": lambda: CGDownBlock(35, 32, 2, 8),
    "cg_down_no_fglo": lambda: CGDownBlock(16, 16, 4, 8, use_f_glo=False),
}


def tiny_data_overrides(root: Path) -> list[str]:
    """8/4/2 generated 64x128 street scenes, read in the test process (no loader workers)."""
    return [
        f"data.root={root}",
        "data.num_train=8",
        "data.num_val=4",
        "data.num_test=2",
        "data.image_size=[64,128]",
        "data.val_batch_size=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
    ]


def tiny_overrides(root: Path, log_dir: Path) -> list[str]:
    """A CGNet with M=2, N=2 on the tiny scenes: seconds per epoch on a CPU."""
    return [
        *tiny_data_overrides(root),
        "data.crop_size=[64,64]",
        "data.batch_size=4",
        "model.M=2",
        "model.N=2",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.log_dir={log_dir}",
    ]


def compose_config(
    config_name: str, overrides: list[str], output_dir: Path | None = None
) -> DictConfig:
    """Compose a config as the CLI would, with Hydra's runtime set so ${hydra:...} resolves."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="cgnet.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_cli(
    module: str,
    args: list[str],
    cwd: Path,
    timeout: int = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` as a user would, from ``cwd``; W&B is off unless ``env``
    (set on top of this process's environment) says otherwise."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's csv/metrics.csv (the default logger's curves)."""
    with (run_dir / "csv" / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())
