"""The fused C++ CPU kernels against eager PyTorch, their build, and optimize()'s choice of them.

Tolerance: float32 against float32 eager ops, 1e-5 relative plus 1e-5 of the output's scale: the
kernels sum the same terms in another order (and may contract them into FMAs).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cgnet.inference import cpu_kernels, fold_network, optimize
from cgnet.inference.fast import FastCGBlock, FoldedConv, Join
from cgnet.inference.predictor import class_map
from cgnet.models import CGNet
from helpers import CG_BLOCKS, joint_reference, randomize_statistics, run_cli

CL = torch.channels_last


def close(got: Tensor, expected: Tensor) -> None:
    scale = max(float(expected.abs().max()), 1.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


pytestmark = pytest.mark.usefixtures("kernel_cache")


@pytest.fixture
def fresh_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty cache and forgotten build results, restored afterwards."""
    monkeypatch.setenv("CGNET_CACHE_DIR", str(tmp_path))
    cpu_kernels.library.cache_clear()
    cpu_kernels.unavailable_reason.cache_clear()
    cpu_kernels._warn_once.cache_clear()
    yield tmp_path
    cpu_kernels.library.cache_clear()
    cpu_kernels.unavailable_reason.cache_clear()


# (batch, channels, height, width, f_sur dilation): channels off the 8-wide vectors, planes narrower
# than the dilation, single rows and columns
SHAPES = [
    (2, 8, 9, 13, 2),
    (1, 16, 17, 33, 4),
    (2, 12, 5, 3, 4),
    (1, 5, 1, 1, 2),
    (1, 64, 12, 20, 4),
    (1, 3, 7, 2, 1),
]


@pytest.mark.parametrize("activation", ["prelu", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cg_joint_matches_eager(shape: tuple[int, ...], activation: str) -> None:
    n, c, h, w, dilation = shape
    gen = torch.Generator().manual_seed(sum(shape))
    y = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=CL)
    w_loc, w_sur = (torch.randn(c, 1, 3, 3, generator=gen) for _ in range(2))
    b_loc, b_sur = (torch.randn(c, generator=gen) for _ in range(2))
    slope = torch.randn(2 * c, generator=gen) * 0.4 if activation == "prelu" else None
    expected = joint_reference(y, w_loc, b_loc, w_sur, b_sur, slope, dilation)

    got, sums = cpu_kernels.cg_joint(y, w_loc, b_loc, w_sur, b_sur, slope, dilation, with_sums=True)
    assert got.is_contiguous(memory_format=CL)
    close(got, expected)
    assert sums is not None
    close(sums, expected.sum(dim=(2, 3)))
    plain, none = cpu_kernels.cg_joint(y.contiguous(), w_loc, b_loc, w_sur, b_sur, slope, dilation)
    assert none is None
    torch.testing.assert_close(plain, got, rtol=0, atol=0)


def test_cg_joint_sums_do_not_depend_on_the_thread_count() -> None:
    y = torch.randn(1, 16, 32, 40).contiguous(memory_format=CL)
    args = (torch.randn(16, 1, 3, 3), torch.randn(16), torch.randn(16, 1, 3, 3), torch.randn(16))
    slope = torch.rand(32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one = cpu_kernels.cg_joint(y, *args, slope, 2, with_sums=True)
        torch.set_num_threads(max(threads, 2))
        _, many = cpu_kernels.cg_joint(y, *args, slope, 2, with_sums=True)
    finally:
        torch.set_num_threads(threads)
    assert one is not None and many is not None
    assert torch.equal(one, many)


@pytest.mark.parametrize("activation", ["prelu", "relu"])
@pytest.mark.parametrize("channels", [(32, 3), (64, 64, 3), (5,), (128, 128)], ids=str)
def test_join_matches_eager(channels: tuple[int, ...], activation: str) -> None:
    gen = torch.Generator().manual_seed(len(channels))
    parts = [torch.randn(2, c, 6, 9, generator=gen).contiguous(memory_format=CL) for c in channels]
    total = sum(channels)
    scale, shift = torch.randn(total, generator=gen), torch.randn(total, generator=gen)
    slope = torch.randn(total, generator=gen) * 0.4 if activation == "prelu" else None
    joint = torch.cat(parts, 1) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    expected = F.relu(joint) if slope is None else F.prelu(joint, slope)
    got = cpu_kernels.join(parts, scale, shift, slope)
    assert got.is_contiguous(memory_format=CL)
    close(got, expected)


@pytest.mark.parametrize("activation", ["prelu", "relu"])
def test_activate_in_place(activation: str) -> None:
    x = torch.randn(2, 11, 5, 7).contiguous(memory_format=CL)
    slope = torch.randn(11) * 0.4 if activation == "prelu" else None
    expected = F.relu(x) if slope is None else F.prelu(x, slope)
    got = cpu_kernels.activate_(x, slope)
    assert got.data_ptr() == x.data_ptr()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="channels-last"):
        cpu_kernels.activate_(torch.randn(1, 11, 5, 7), slope)


@pytest.mark.parametrize(
    ("size", "out"),
    [
        ((16, 32), (128, 256)),
        ((7, 5), (20, 13)),
        ((13, 17), (5, 6)),
        ((9, 9), (9, 9)),
        ((1, 3), (4, 1)),
    ],
    ids=str,
)
def test_resize_matches_torch_bilinear(size: tuple[int, int], out: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size).contiguous(memory_format=CL)
    expected = F.interpolate(x, size=out, mode="bilinear", align_corners=False)
    got = cpu_kernels.resize_bilinear(x, out)
    assert got.is_contiguous(memory_format=CL)  # as torch's, so the class argmax stays fast
    close(got, expected)
    close(cpu_kernels.resize_bilinear(x.contiguous(), out), expected)


@pytest.mark.parametrize("classes", [1, 2, 11, 19, 256])
def test_class_argmax_matches_torch(classes: int) -> None:
    gen = torch.Generator().manual_seed(classes)
    # integer scores: many ties, which torch resolves to the first maximum; 3x13 pixels leave a tail
    logits = torch.randint(0, 4, (2, classes, 3, 13), generator=gen).float()
    logits[0, -1, 0, :5] = float("nan")  # a NaN counts as the largest, as in torch.argmax
    logits[1, :, 2, 3] = float("nan")
    expected = logits.argmax(1).to(torch.uint8)
    for layout in (torch.contiguous_format, CL):
        got = cpu_kernels.class_argmax(logits.contiguous(memory_format=layout))
        assert got.dtype == torch.uint8 and torch.equal(got, expected)
    wide = torch.randn(1, 7, 64, 96, generator=gen).contiguous(memory_format=CL)
    assert torch.equal(cpu_kernels.class_argmax(wide), wide.argmax(1).to(torch.uint8))


def torch_prelu_grads(grad: Tensor, x: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    x, slope = x.clone().requires_grad_(), slope.clone().requires_grad_()
    gx, gs = torch.autograd.grad(F.prelu(x, slope), (x, slope), grad)
    return gx, gs


# pixels off the 8-wide vectors and off the 256-pixel row blocks, one pixel, wide channels
@pytest.mark.parametrize("shape", [(2, 5, 9, 13), (1, 32, 17, 33), (3, 3, 1, 1), (1, 256, 4, 4)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_prelu_backward_matches_torch(shape: tuple[int, ...], layout: str) -> None:
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape)
    x.view(-1)[::7] = 0.0  # x == 0 takes the slope, as torch's x > 0 test does
    x = x.contiguous(memory_format=fmt)
    grad = torch.randn(shape).contiguous(memory_format=fmt)
    slope = torch.rand(shape[1])
    got_x, got_slope = cpu_kernels.prelu_backward(grad, x, slope)
    want_x, want_slope = torch_prelu_grads(grad, x, slope)
    assert torch.equal(got_x, want_x)  # one multiply each: the same bits
    assert got_x.is_contiguous(memory_format=fmt)
    close(got_slope, want_slope)
    # a gradient in the other layout is brought to x's
    other = grad.contiguous(memory_format=torch.contiguous_format if fmt == CL else CL)
    assert torch.equal(cpu_kernels.prelu_backward(other, x, slope)[0], want_x)


def test_prelu_slope_gradient_does_not_depend_on_threads() -> None:
    x, grad = torch.randn(4, 16, 37, 41), torch.randn(4, 16, 37, 41)
    slope = torch.rand(16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_kernels.prelu_backward(grad, x, slope)[1]
        torch.set_num_threads(2)
        two = cpu_kernels.prelu_backward(grad, x, slope)[1]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_class_map_takes_the_kernel_or_torch() -> None:
    logits = torch.randn(2, 5, 9, 11).contiguous(memory_format=CL)
    expected = logits.argmax(1).to(torch.uint8)
    assert torch.equal(class_map(logits), expected)
    assert torch.equal(class_map(logits.double()), expected)  # torch's argmax
    with pytest.raises(ValueError, match="1 to 256 classes"):
        cpu_kernels.class_argmax(torch.randn(1, 257, 2, 2))


def test_bad_tensors_are_refused_by_name() -> None:
    y = torch.randn(1, 8, 4, 4)
    w, b = torch.randn(8, 1, 3, 3), torch.randn(8)
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.cg_joint(y.double(), w, b, w, b, None, 2)
    with pytest.raises(ValueError, match="8 channels"):
        cpu_kernels.cg_joint(y, w, b, w, torch.randn(4), None, 2)
    with pytest.raises(ValueError, match="depthwise 3x3"):
        cpu_kernels.cg_joint(y, torch.randn(8, 1, 5, 5), b, w, b, None, 2)
    with pytest.raises(ValueError, match="PReLU slopes: expected 16"):
        cpu_kernels.cg_joint(y, w, b, w, b, torch.randn(8), 2)
    with pytest.raises(ValueError, match="differ in batch or size"):
        cpu_kernels.join([y, torch.randn(1, 3, 2, 4)], torch.randn(11), torch.randn(11), None)
    with pytest.raises(ValueError, match=r"prelu_backward: grad \(1, 8, 4, 2\) and slope \(8\)"):
        cpu_kernels.prelu_backward(torch.randn(1, 8, 4, 2), y, torch.randn(8))


# --------------------------------------------------------------------------------------------------
# Inside the folded network
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CG_BLOCKS))
def test_fast_block_with_cpu_kernels_matches_eager(name: str) -> None:
    block = randomize_statistics(CG_BLOCKS[name]())
    fast = FastCGBlock(block).to(memory_format=CL)
    x = torch.randn(2, block.conv_in.conv.in_channels, 19, 23).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = block(x)
        fast.kernels = "cpu"
        fast.conv_in.kernels = "cpu"
        got = fast(x)
    close(got, expected)


OPTIONS = [
    {},
    {"activation": "relu", "residual": "local"},
    {"input_injection": False, "use_f_glo": False, "widths": (20, 36, 52), "residual": "none"},
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_optimize_uses_the_cpu_kernels_and_matches_eager(options: dict[str, object]) -> None:
    torch.manual_seed(0)
    network = randomize_statistics(CGNet(19, M=2, N=3, **options))
    x = torch.randn(2, 3, 64, 96) * 50
    fast = optimize(network)
    ops = optimize(network, cpu_kernels=False)
    assert fast.net.kernels == "cpu"
    modules = list(fast.net.modules())
    assert all(m.kernels == "cpu" for m in modules if isinstance(m, (FastCGBlock, Join)))
    activated = [m for m in modules if isinstance(m, FoldedConv) and m.activation]
    assert activated and all(m.kernels == "cpu" for m in activated)  # in-place activations
    assert ops.net.kernels is None
    assert not any(m.kernels for m in ops.net.modules() if isinstance(m, (FastCGBlock, FoldedConv)))
    with torch.inference_mode():
        expected = network(x)
        got = fast(x)
        close(got, expected)
        close(got, ops(x))
        assert torch.equal(got.argmax(1), expected.argmax(1))


def test_optimize_refuses_cpu_kernels_where_they_cannot_run() -> None:
    network = CGNet(5, M=2, N=3)
    with pytest.raises(ValueError, match="channels-last"):
        optimize(network, cpu_kernels=True, channels_last=False)
    with pytest.raises(ValueError, match="no compile"):
        optimize(network, cpu_kernels=True, compile=True)
    assert optimize(network, channels_last=False).net.kernels is None
    assert fold_network(network).kernels is None


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def test_build_is_cached_by_source(fresh_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_kernels.library()
    built = sorted((fresh_build / "kernels").glob("cpu_kernels-*.so"))
    assert len(built) == 1
    cpu_kernels.library.cache_clear()
    cpu_kernels.library()
    assert sorted((fresh_build / "kernels").glob("cpu_kernels-*.so")) == built

    changed = fresh_build / "changed.cpp"
    changed.write_text(cpu_kernels.SOURCE.read_text() + "\n// another version\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", changed)
    cpu_kernels.library.cache_clear()
    cpu_kernels.library()
    assert len(list((fresh_build / "kernels").glob("cpu_kernels-*.so"))) == 2
    assert not list((fresh_build / "kernels").glob(".cpu_kernels-*"))  # no temporary left behind


def test_no_compiler_falls_back_to_torch_ops(
    fresh_build: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cpu_kernels.unavailable_reason() == "no C++ compiler found ($CXX, c++, g++ or clang++)"
    network = CGNet(5, M=2, N=3)
    with caplog.at_level(logging.WARNING, logger="cgnet.inference.cpu_kernels"):
        plain = optimize(network)
        optimize(network)
    assert plain.net.kernels is None
    assert caplog.text.count("fused CPU kernels unavailable (no C++ compiler found") == 1
    with pytest.raises(cpu_kernels.KernelBuildError, match="no C\\+\\+ compiler"):
        optimize(network, cpu_kernels=True)


def test_a_failed_compile_names_the_source(
    fresh_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = fresh_build / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", broken)
    reason = cpu_kernels.unavailable_reason()
    assert reason is not None and "failed on broken.cpp" in reason
    assert not list((fresh_build / "kernels").glob("*"))


def test_an_unwritable_cache_is_named(fresh_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = fresh_build / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CGNET_CACHE_DIR", str(blocker))
    reason = cpu_kernels.unavailable_reason()
    assert reason is not None
    assert (
        reason.startswith(f"cannot write to {blocker / 'kernels'}") and "CGNET_CACHE_DIR" in reason
    )


def test_the_command_builds_ahead_of_time_or_says_why(tmp_path: Path) -> None:
    ready = run_cli(
        "cgnet.inference.cpu_kernels", [], tmp_path, env={"CGNET_CACHE_DIR": str(tmp_path)}
    )
    assert ready.returncode == 0, ready.stderr[-2000:]
    built = list((tmp_path / "kernels").glob("cpu_kernels-*.so"))
    assert len(built) == 1 and ready.stdout.strip() == f"fused CPU kernels ready: {built[0]}"

    broken = run_cli(
        "cgnet.inference.cpu_kernels", [], tmp_path, env={"CXX": "no-such-compiler", "PATH": ""}
    )
    assert broken.returncode == 2
    assert "fused CPU kernels unavailable: no C++ compiler found" in broken.stdout + broken.stderr
