"""GPU inference picks its form by measurement: the candidates, and tuning itself (run on the CPU
with the wall clock; on CUDA the same code times with CUDA events)."""

from __future__ import annotations

import pytest
import torch

from cgnet.inference.autotune import AutoTuned, build, candidates, tuned
from cgnet.models import CGNet
from helpers import randomize_statistics


def test_candidates_cover_layouts_graphs_kernels_and_eager() -> None:
    names = [c.name for c in candidates("fp32", kernels=True)]
    assert "eager fp32 NCHW" in names  # the baseline: the tuned form is never slower than eager
    for layout in ("NCHW", "NHWC"):
        assert f"folded fp32 {layout}" in names and f"folded fp32 {layout} graphs" in names
    assert "folded fp32 NCHW triton graphs" in names and "folded fp32 NHWC triton" not in names
    # Triton's dense convolutions only inside a CUDA graph, where Triton's launches pay
    assert [n for n in names if "convs" in n] == ["folded fp32 NCHW triton convs graphs"]
    half = [c.name for c in candidates("fp16", kernels=False)]
    assert all(" fp16 " in n for n in half) and not any("eager" in n for n in half)
    cpu = [c.name for c in candidates("fp32", cuda=False)]
    assert not any("graphs" in n or "triton" in n for n in cpu)


@pytest.mark.parametrize("form", candidates("fp32", cuda=False), ids=lambda c: c.name)
def test_every_cpu_form_computes_the_same_logits(form) -> None:
    net = randomize_statistics(CGNet(5, M=2, N=3))
    x = torch.randn(1, 3, 48, 64)
    expected = net(x)
    got = build(net, form, torch.device("cpu"))(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_tuning_keeps_the_fastest_form_per_shape_and_its_logits_are_exact() -> None:
    net = randomize_statistics(CGNet(5, M=2, N=3))
    auto = AutoTuned(net, torch.device("cpu"), warmup=1, repeats=2)
    for shape in ((1, 3, 32, 48), (2, 3, 40, 40)):
        x = torch.randn(shape)
        torch.testing.assert_close(auto(x), net(x), rtol=1e-4, atol=1e-4)
        timings = auto.timings[shape]
        assert set(timings) == {c.name for c in auto.forms}
        assert auto.choices[shape] == min(timings, key=timings.get)
    assert len(auto.choices) == 2
    assert net.training is False and next(net.parameters()).device.type == "cpu"


def test_half_precision_is_refused_off_cuda() -> None:
    with pytest.raises(ValueError, match="fp16 inference is offered on CUDA only"):
        tuned(CGNet(3, M=1, N=1), "cpu", "fp16")
