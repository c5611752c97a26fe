"""The fused f_loc + f_sur training op (forward and backward) against eager convolutions.

It runs compiled on a CUDA machine (without TRITON_INTERPRET=1) and under Triton's interpreter on
CPU tensors elsewhere, as tests/test_kernels.py does; ``CGNET_KERNEL_TESTS_DEVICE`` forces the choice.

Tolerances: float32 outputs and input gradients against eager float32, 1e-5 relative (plus 1e-5
absolute), TF32 off on the GPU. Weight gradients are sums over every pixel of the batch, so their
summation order moves them by more: 1e-4 of the largest. float16 and bfloat16 inputs are compared with
a float32 reference computed from the same rounded inputs, so only the output rounding differs:
2e-3 relative for float16, 1e-2 for bfloat16.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import cgnet.models
from cgnet.benchmark import TrainJob, compared_settings
from cgnet.benchmark.settings import TrainThroughputSettings
from cgnet.benchmark.variants import ModelSpec
from cgnet.errors import ConfigError
from cgnet.models import CGNet, use_fused_context
from cgnet.models.blocks import CGBlock, CGDownBlock
from cgnet.module import SegmentationModule
from helpers import KERNEL_ATOL as ATOL
from helpers import KERNEL_DTYPES as DTYPES
from helpers import KERNEL_RTOL as RTOL
from helpers import KERNEL_SHAPES as SHAPES
from helpers import import_triton_kernels, triton_test_device

DEVICE = triton_test_device()  # before triton is first imported


@pytest.fixture(scope="module")
def ck() -> ModuleType:
    """cgnet.models.context_kernels, decorated for the chosen device."""
    return import_triton_kernels("cgnet.models.context_kernels", DEVICE)


@pytest.fixture(autouse=True)
def _exact_float32() -> Iterator[None]:
    """No TF32 on the GPU: cuDNN would round the eager reference's inputs to 10-bit mantissas."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = tf32


def eager_pair(y: Tensor, w_loc: Tensor, w_sur: Tensor, dilation: int) -> Tensor:
    """The two convolutions of a CG block, concatenated, as eager PyTorch runs them."""
    c = y.shape[1]
    loc = F.conv2d(y, w_loc, padding=1, groups=c)
    sur = F.conv2d(y, w_sur, padding=dilation, dilation=dilation, groups=c)
    return torch.cat([loc, sur], 1)


def inputs(
    shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool
) -> tuple[Tensor, Tensor, Tensor, int]:
    b, c, h, w, dilation = shape
    y = torch.randn(b, c, h, w, device=DEVICE).to(dtype)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    w_loc, w_sur = (torch.randn(c, 1, 3, 3, device=DEVICE) for _ in range(2))
    return y.requires_grad_(), w_loc.requires_grad_(), w_sur.requires_grad_(), dilation


def check_against_eager(ck: ModuleType, y: Tensor, w_loc: Tensor, w_sur: Tensor, d: int) -> None:
    """Output and all three gradients of the op against eager float32 on the same inputs."""
    dtype = y.dtype
    out = ck.context_pair(y, w_loc, w_sur, d)
    y32 = y.detach().float().requires_grad_()
    ref = eager_pair(y32, w_loc, w_sur, d)
    assert out.dtype == dtype and out.shape == ref.shape
    assert out.stride() == torch.empty_like(ref, dtype=dtype).stride() or not y.is_contiguous()
    torch.testing.assert_close(out.float(), ref, rtol=RTOL[dtype], atol=ATOL[dtype])
    grad = torch.randn_like(ref).to(dtype)
    got = torch.autograd.grad(out, (y, w_loc, w_sur), grad)
    want = torch.autograd.grad(ref, (y32, w_loc, w_sur), grad.float())
    assert got[0].dtype == dtype and got[0].stride() == y.stride()
    torch.testing.assert_close(got[0].float(), want[0], rtol=RTOL[dtype], atol=ATOL[dtype])
    for g, w in zip(got[1:], want[1:], strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()) + 1e-6)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_eager(
    ck: ModuleType, shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool
) -> None:
    check_against_eager(ck, *inputs(shape, dtype, channels_last))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_gpu_sized_tiles_and_partial_sums(
    ck: ModuleType, monkeypatch: pytest.MonkeyPatch, channels_last: bool
) -> None:
    """Small tiles spread one image over many programs and each weight-gradient program over
    several iterations with a ragged tail, as on the GPU, where tiles are 1024 elements."""
    monkeypatch.setattr(ck, "_tiles", lambda t: (4, 16))
    monkeypatch.setattr(ck, "_PIXELS_PER_WEIGHT_PROGRAM", 48)  # 3 iterations of 16 pixels
    check_against_eager(ck, *inputs((2, 6, 11, 7, 3), torch.float32, channels_last))


def test_strided_views_are_read_in_place(ck: ModuleType) -> None:
    """Every other channel of a larger tensor: neither NCHW- nor channels-last-contiguous."""
    base = torch.randn(2, 12, 9, 10, device=DEVICE)
    y = base[:, ::2].requires_grad_()
    assert not y.is_contiguous() and not y.is_contiguous(memory_format=torch.channels_last)
    w_loc, w_sur = (torch.randn(6, 1, 3, 3, device=DEVICE, requires_grad=True) for _ in range(2))
    out = ck.context_pair(y, w_loc, w_sur, 2)
    torch.testing.assert_close(out, eager_pair(y, w_loc, w_sur, 2), rtol=1e-5, atol=1e-5)


def test_the_gradients_are_deterministic(ck: ModuleType) -> None:
    """No atomics: the same inputs give bit-identical gradients, as trainer.deterministic needs."""
    y, w_loc, w_sur, d = inputs((2, 8, 21, 19, 2), torch.float32, channels_last=True)
    grad = torch.randn(2, 16, 21, 19, device=DEVICE)
    first = torch.autograd.grad(ck.context_pair(y, w_loc, w_sur, d), (y, w_loc, w_sur), grad)
    again = torch.autograd.grad(ck.context_pair(y, w_loc, w_sur, d), (y, w_loc, w_sur), grad)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def test_the_op_passes_torch_library_checks(ck: ModuleType) -> None:
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch, as torch.compile uses."""
    y, w_loc, w_sur, d = inputs((1, 4, 6, 5, 2), torch.float32, channels_last=False)
    torch.library.opcheck(ck.context_pair, (y, w_loc, w_sur, d))


def test_bad_arguments_name_what_was_expected(
    ck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    y = torch.randn(1, 4, 5, 5, device=DEVICE)
    w = torch.randn(4, 1, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"w_sur must be \[4, 1, 3, 3\].*got \[4, 1, 5, 5\]"):
        ck.context_pair(y, w, torch.randn(4, 1, 5, 5, device=DEVICE), 2)
    with pytest.raises(ValueError, match="y must be a 4-d float32/float16/bfloat16 tensor"):
        ck.context_pair(y.to(torch.float64), w, w, 2)
    with pytest.raises(ValueError, match="dilation must be >= 1, got 0"):
        ck.context_pair(y, w, w, 0)
    monkeypatch.setattr(ck, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="runs on CUDA tensors, got cpu"):
        ck.context_pair(y.cpu(), w.cpu(), w.cpu(), 2)


# --------------------------------------------------------------------------------------------------
# in the network
# --------------------------------------------------------------------------------------------------


def small_net() -> CGNet:
    return CGNet(5, M=2, N=2).to(DEVICE)


def forward_backward(net: CGNet, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    net.zero_grad(set_to_none=True)
    logits = net(x)
    (logits.square().mean()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_a_fused_network_trains_like_the_eager_one(ck: ModuleType, channels_last: bool) -> None:
    net = small_net().train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt)
    x = torch.randn(2, 3, 40, 56, device=DEVICE).contiguous(memory_format=fmt)
    blocks = [m for m in net.modules() if isinstance(m, (CGBlock, CGDownBlock))]
    assert use_fused_context(net) == len(blocks) == 2 + 2  # (M - 1) + (N - 1) + 2 CG-Down blocks
    assert all(DEVICE.type in block.fused_on for block in blocks)
    state = torch.get_rng_state()
    fused_logits, fused_grads = forward_backward(net, x)
    assert use_fused_context(net, enabled=False) == len(blocks)
    torch.set_rng_state(state)  # the same dropout masks (none in eval, but train mode draws)
    eager_logits, eager_grads = forward_backward(net, x)
    torch.testing.assert_close(fused_logits, eager_logits, rtol=1e-4, atol=1e-5)
    for name, grad in eager_grads.items():
        tol = 1e-4 * float(grad.abs().max()) + 1e-7
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-3, atol=tol, msg=name)


def test_the_op_is_in_the_graph_only_when_switched_on(ck: ModuleType) -> None:
    """torch.compile sees one opaque node per block (aot_eager: the fake kernel and the
    registered backward, without inductor); tracing for export records plain convolutions."""
    net = small_net().train()
    use_fused_context(net)
    x = torch.randn(1, 3, 24, 32, device=DEVICE)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    out = compiled(x)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    torch.manual_seed(1)
    torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)
    traced = torch.jit.trace(net.eval(), (x,), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "cgnet::context_pair" not in graph and "aten::_convolution" in graph


def test_the_module_switches_it_on_for_gpu_runs_only(
    ck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = SegmentationModule(5, model={"M": 2, "N": 2}, fused_context=True)
    blocks = [m for m in module.net.modules() if isinstance(m, (CGBlock, CGDownBlock))]
    module.setup("fit")  # on the CPU: the plain convolutions, and a log line says so
    assert all(not block.fused_on for block in blocks)
    monkeypatch.setattr(module, "_run_device", lambda: torch.device("cuda"))
    checked: list[tuple[str, torch.dtype]] = []
    monkeypatch.setattr(
        ck, "self_check", lambda device, dtype: checked.append((device.type, dtype))
    )
    module.setup("fit")
    assert all("cuda" in block.fused_on for block in blocks)
    assert checked == [("cuda", torch.float32)]  # outside a Trainer: float32 only
    assert SegmentationModule(5, model={"M": 2, "N": 2}).hparams.fused_context is False


def test_a_gpu_where_the_op_disagrees_with_eager_is_one_config_error(
    ck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = SegmentationModule(5, model={"M": 2, "N": 2}, fused_context=True)
    monkeypatch.setattr(module, "_run_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(ck, "self_check", lambda device, dtype: "its values differ by 3")
    with pytest.raises(
        ConfigError,
        match=r"^module\.fused_context=true: its values differ by 3; train with "
        r"module\.fused_context=false$",
    ):
        module.setup("fit")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_self_check_passes_and_catches_a_wrong_kernel(
    ck: ModuleType, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """The check a GPU training run makes before its first step: it passes on working kernels, and
    names what differs when a kernel computes something else."""
    assert ck.self_check(DEVICE, dtype) is None
    real_backward = ck._backward

    def off_by_one_tap(grad, y, w_loc, w_sur, dilation):  # type: ignore[no-untyped-def]
        grad_y, grad_loc, grad_sur = real_backward(grad, y, w_loc, w_sur, dilation)
        return grad_y, grad_loc, grad_sur.roll(1, dims=-1)

    monkeypatch.setattr(ck, "_backward", off_by_one_tap)
    problem = ck.self_check(DEVICE, dtype)
    assert problem is not None and "f_sur weight gradient differs from eager's" in problem


def test_the_training_benchmark_times_a_fused_setting(ck: ModuleType) -> None:
    tt = TrainThroughputSettings(
        batch=1, crop=(32, 32), steps=1, warmup=0, compile=False, reuse_memory=False
    )
    assert "project + fused f_loc/f_sur" not in compared_settings(tt, DEVICE)
    settings = compared_settings(dataclasses.replace(tt, fused_context=True), DEVICE)
    fused = settings["project + fused f_loc/f_sur"]
    assert fused == {**settings["project settings"], "fused_context": True}
    job = TrainJob(ModelSpec(5, {"M": 2, "N": 2}), str(DEVICE), batch=1, crop=[32, 32], **fused)
    blocks = [m for m in job.forward.modules() if isinstance(m, (CGBlock, CGDownBlock))]
    assert blocks and all(DEVICE.type in block.fused_on for block in blocks)
    assert job.step() > 0
    assert all(p.grad is not None for p in job.forward.parameters())


def test_a_gpu_run_without_triton_is_one_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = SegmentationModule(5, model={"M": 2, "N": 2}, fused_context=True)
    monkeypatch.setattr(module, "_run_device", lambda: torch.device("cuda"))
    monkeypatch.setitem(sys.modules, "cgnet.models.context_kernels", None)  # import fails
    monkeypatch.delattr(cgnet.models, "context_kernels", raising=False)  # even if imported before
    with pytest.raises(ConfigError, match=r"^module\.fused_context=true: .*context_kernels"):
        module.setup("fit")
