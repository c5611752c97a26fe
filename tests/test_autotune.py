"""GPU inference picks its form by measurement: the candidates, and tuning itself (run on the CPU
with the wall clock; on CUDA the same code times with CUDA events)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import cgnet.inference.autotune as autotune
from cgnet.inference.autotune import AutoTuned, build, candidates, disagreement, tuned
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


class _Wrong(nn.Module):
    """A form that answers at once and wrongly: what a miscompiled kernel would look like."""

    def __init__(self, num_classes: int, fill: float) -> None:
        super().__init__()
        self.num_classes, self.fill = num_classes, fill

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[2:])
        logits[:, -1] = self.fill
        return logits


@pytest.mark.parametrize("fill", [1.0, float("nan")], ids=["wrong argmax", "not finite"])
def test_a_fast_form_with_wrong_logits_is_rejected(
    monkeypatch: pytest.MonkeyPatch, fill: float
) -> None:
    """The fastest form loses when its logits disagree with float32 eager, and the tuner says why."""
    net = randomize_statistics(CGNet(5, M=2, N=3))
    broken = candidates("fp32", cuda=False)[0].name
    real_build = autotune.build

    def build_with_a_broken_form(model, form, device):  # type: ignore[no-untyped-def]
        return _Wrong(5, fill) if form.name == broken else real_build(model, form, device)

    monkeypatch.setattr(autotune, "build", build_with_a_broken_form)
    auto = AutoTuned(net, torch.device("cpu"), warmup=0, repeats=1)
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(auto(x), net(x), rtol=1e-4, atol=1e-4)
    key = tuple(x.shape)
    assert auto.choices[key] != broken
    assert "argmax differs from float32 eager on" in auto.rejected[key][broken]
    assert set(auto.rejected[key]) == {broken}


def test_disagreement_counts_moved_pixels_and_refuses_non_finite_logits() -> None:
    reference = torch.zeros(1, 3, 2, 2)
    reference[:, 0] = 1.0
    moved = reference.clone()
    moved[0, 2, 0, 0] = 5.0  # one pixel of four now says class 2
    assert disagreement(reference, reference) == 0.0
    assert disagreement(moved, reference) == 0.25
    assert disagreement(torch.full_like(reference, float("inf")), reference) == 1.0
    assert disagreement(reference[:, :2], reference) == 1.0
