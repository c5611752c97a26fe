"""SegmentationModule's own choices: input normalisation, memory format, the CPU training path."""

from __future__ import annotations

import pytest
import torch

from cgnet.models.space_to_batch import DilatedDepthwiseConv2d
from cgnet.module import SegmentationModule
from cgnet.normalization import OFFICIAL_MEAN


def channels_last_batch(n: int = 2, h: int = 24, w: int = 32) -> torch.Tensor:
    """uint8 RGB as collate delivers it: NCHW shape, channels-last strides."""
    hwc = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8)
    return hwc.permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("setting", "expect_channels_last"), [(None, False), (True, True), (False, False)]
)
def test_normalize_gives_the_network_its_memory_format(
    setting: bool | None, expect_channels_last: bool
) -> None:
    module = SegmentationModule(3, model={"M": 1, "N": 1}, channels_last=setting)
    images = channels_last_batch()
    assert images.is_contiguous(memory_format=torch.channels_last)
    x = module.normalize(images)
    assert module.channels_last is expect_channels_last  # None: GPUs only, and this is a CPU
    fmt = torch.channels_last if expect_channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt)
    mean = torch.tensor(OFFICIAL_MEAN).view(1, 3, 1, 1)
    expected = images.float() - mean  # the authors' input: RGB minus their mean, std 1
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("enabled", [True, False])
def test_space_to_batch_is_a_module_setting(enabled: bool) -> None:
    module = SegmentationModule(3, model={"M": 2, "N": 2}, space_to_batch=enabled)
    f_surs = [m for m in module.net.modules() if isinstance(m, DilatedDepthwiseConv2d)]
    assert f_surs and all(m.space_to_batch is enabled for m in f_surs)
    keys = set(SegmentationModule(3, model={"M": 2, "N": 2}).state_dict())
    assert set(module.state_dict()) == keys  # checkpoints are the same either way


class _NoLen(torch.nn.Module):
    """Stands in for torch.compile's wrapper, which refuses truth tests as it has no len()."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def __len__(self) -> int:
        raise TypeError(f"{type(self.net).__name__} does not support len()")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compile_runs_the_compiled_network(
    mode: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[str | None] = []

    def fake_compile(net: torch.nn.Module, mode: str | None = None) -> _NoLen:
        modes.append(mode)
        return _NoLen(net)

    monkeypatch.setattr(torch, "compile", fake_compile)
    module = SegmentationModule(3, model={"M": 1, "N": 1}, compile=True, compile_mode=mode)
    logits = module(channels_last_batch())
    assert logits.shape == (2, 3, 24, 32)
    assert isinstance(module._compiled, _NoLen) and module._compiled.calls == 1
    assert modes == [mode]
