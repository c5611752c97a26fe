"""PReLU trained on the CPU through the one-pass C++ backward, against torch's PReLU."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cgnet.inference import cpu_kernels
from cgnet.models import CGNet, use_cpu_prelu
from cgnet.models.blocks import PReLU
from cgnet.module import SegmentationModule

pytestmark = pytest.mark.usefixtures("kernel_cache")


@pytest.fixture
def no_kernels(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine where the C++ kernels cannot be built."""
    for cached in (cpu_kernels.unavailable_reason, cpu_kernels._warn_once):
        cached.cache_clear()
    monkeypatch.setattr(cpu_kernels, "library", _no_library)
    yield
    for cached in (cpu_kernels.unavailable_reason, cpu_kernels._warn_once):
        cached.cache_clear()


def _no_library() -> None:
    raise cpu_kernels.KernelBuildError("no C++ compiler found ($CXX, c++, g++ or clang++)")


def step(net: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    net.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout mask in both runs
    logits = net(x)
    logits.square().mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_a_network_trains_the_same_with_the_fast_backward(channels_last: bool) -> None:
    net = CGNet(5, M=2, N=2).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt)
    x = torch.randn(2, 3, 48, 64).contiguous(memory_format=fmt)
    prelus = [m for m in net.modules() if isinstance(m, PReLU)]
    assert use_cpu_prelu(net) == len(prelus) > 0
    with torch.autograd.profiler.profile() as prof:
        fast_logits, fast_grads = step(net, x)
    assert any(e.name == "cgnet::prelu_backward" for e in prof.function_events)
    assert use_cpu_prelu(net, enabled=False) == 0
    logits, grads = step(net, x)
    assert torch.equal(fast_logits, logits)  # the forward is torch's own
    for name, grad in grads.items():
        tol = 1e-5 * float(grad.abs().max()) + 1e-7
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=tol, msg=name)


def test_inference_and_tracing_use_torchs_prelu() -> None:
    net = CGNet(5, M=2, N=2).eval()
    use_cpu_prelu(net)
    x = torch.randn(1, 3, 32, 32)
    with torch.autograd.profiler.profile() as prof, torch.no_grad():
        net(x)
    assert not any(e.name.startswith("cgnet::prelu") for e in prof.function_events)
    graph = str(torch.jit.trace(net, (x,), check_trace=False).inlined_graph)
    assert "cgnet::prelu" not in graph and "aten::prelu" in graph


def test_the_op_passes_torch_library_checks() -> None:
    import cgnet.models.cpu_prelu as cpu_prelu

    x = torch.randn(2, 4, 5, 3, requires_grad=True)
    torch.library.opcheck(cpu_prelu.prelu, (x, torch.rand(4, requires_grad=True)))


def test_without_kernels_torchs_prelu_trains_and_says_why_once(
    no_kernels: None, caplog: pytest.LogCaptureFixture
) -> None:
    net = CGNet(5, M=2, N=2).train()
    with caplog.at_level(logging.WARNING, logger="cgnet.inference.cpu_kernels"):
        assert use_cpu_prelu(net) == 0
        assert use_cpu_prelu(net) == 0
    assert caplog.text.count("fused CPU kernels unavailable (no C++ compiler found") == 1
    assert not any(m.cpu_backward for m in net.modules() if isinstance(m, PReLU))
    net(torch.randn(1, 3, 32, 32)).sum().backward()


def test_the_module_switches_it_on_for_cpu_runs(tmp_path: Path) -> None:
    module = SegmentationModule(5, model={"M": 2, "N": 2})
    prelus = [m for m in module.net.modules() if isinstance(m, PReLU)]
    assert not any(p.cpu_backward for p in prelus)  # building (or loading) compiles nothing
    module.setup("fit")
    assert all(p.cpu_backward for p in prelus)
    off = SegmentationModule(5, model={"M": 2, "N": 2}, cpu_prelu=False)
    off.setup("fit")
    assert not any(m.cpu_backward for m in off.net.modules() if isinstance(m, PReLU))


def test_compiled_training_keeps_the_op() -> None:
    """torch.compile sees one opaque node per PReLU (aot_eager: the fake kernel and the registered
    backward, without inductor), and the gradients are the eager op's."""
    net = CGNet(5, M=2, N=2).train()
    use_cpu_prelu(net)
    x = torch.randn(2, 3, 32, 48)
    logits, grads = step(net, x)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    compiled_logits, compiled_grads = step(compiled, x)
    torch.testing.assert_close(compiled_logits, logits)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[f"_orig_mod.{name}"], grad, msg=name)
