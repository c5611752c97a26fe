"""The fused Triton CG-block kernels against eager PyTorch.

On a CUDA machine (without TRITON_INTERPRET=1) they run compiled on the GPU; elsewhere on CPU tensors
under Triton's interpreter, which this module switches on before the kernels are imported.
``CGNET_KERNEL_TESTS_DEVICE=cuda`` (or ``cpu``) forces the choice.

Tolerances: float32 outputs against eager float32 ops, 1e-5 relative (plus 1e-5 absolute), with TF32
off on the GPU. float16 and bfloat16 outputs are compared with a float32 reference computed from the
same low-precision inputs, so only the output rounding (and summation order) differs: 2e-3 relative
for float16, 1e-2 for bfloat16 (the rounding alone is 2**-11 and 2**-8). f_glo's sums and gate are
float32 whatever the input dtype.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from types import ModuleType
from typing import TypeVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import cgnet.inference
from cgnet.inference import fold_network, optimize
from cgnet.inference.autotune import AutoTuned, Candidate, candidates
from cgnet.inference.fast import FastCGBlock, FastFGlo, Join
from cgnet.models import CGNet
from cgnet.models.blocks import CGBlock, FGlo
from helpers import (
    CG_BLOCKS,
    import_triton_kernels,
    joint_reference,
    randomize_statistics,
    triton_test_device,
)
from helpers import KERNEL_ATOL as ATOL
from helpers import KERNEL_DTYPES as DTYPES
from helpers import KERNEL_RTOL as RTOL
from helpers import KERNEL_SHAPES as SHAPES

DEVICE = triton_test_device()  # before the kernels are imported

M = TypeVar("M", bound=nn.Module)


@pytest.fixture(scope="module")
def kernels() -> ModuleType:
    """cgnet.inference.kernels, decorated for the chosen device."""
    return import_triton_kernels("cgnet.inference.kernels", DEVICE)


@pytest.fixture(autouse=True)
def _one_thread_exact_float32() -> Iterator[None]:
    """One CPU thread (the interpreter runs numpy on one core; tiny eager references gain nothing
    from a second), and no TF32 on the GPU: cuDNN's convolutions would otherwise round their inputs
    to 10-bit mantissas, and the eager reference would be off by 1e-3 instead of 1e-6."""
    threads = torch.get_num_threads()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.set_num_threads(threads)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def poisoned(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An output buffer full of NaN: an element a kernel forgets to write fails the comparison."""
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def close(got: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(
        got.float(), expected.float(), rtol=RTOL[dtype], atol=ATOL[dtype], equal_nan=False
    )


# --------------------------------------------------------------------------------------------------
# f_loc + f_sur + f_joi
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cg_joint_matches_eager(
    kernels: ModuleType, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    b, c, h, w, dilation = shape
    y = torch.randn(b, c, h, w, device=DEVICE).to(dtype)
    w_loc, w_sur = (torch.randn(c, 1, 3, 3, device=DEVICE) for _ in range(2))
    b_loc, b_sur = (torch.randn(c, device=DEVICE) for _ in range(2))
    slope = torch.randn(2 * c, device=DEVICE) * 0.4
    out = poisoned((b, 2 * c, h, w), dtype)
    got, sums = kernels.cg_joint(
        y, w_loc, b_loc, w_sur, b_sur, slope, dilation, with_sums=True, out=out
    )
    expected = joint_reference(y, w_loc, b_loc, w_sur, b_sur, slope, dilation)
    assert got is out and got.dtype == dtype
    close(got, expected, dtype)
    # f_glo's sums are taken in float32 before the output is rounded, whatever the dtype
    assert sums is not None and sums.dtype == torch.float32
    torch.testing.assert_close(sums, expected.sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)


def test_cg_joint_relu_without_sums_and_tiles(kernels: ModuleType) -> None:
    """The ReLU ablation (no slopes), no pooling, and planes spread over several programs."""
    b, c, h, w, dilation = 2, 4, 37, 41, 2
    y = torch.randn(b, c, h, w, device=DEVICE)
    w_loc, w_sur = (torch.randn(c, 1, 3, 3, device=DEVICE) for _ in range(2))
    b_loc, b_sur = (torch.randn(c, device=DEVICE) for _ in range(2))
    out = poisoned((b, 2 * c, h, w), torch.float32)
    got, sums = kernels.cg_joint(y, w_loc, b_loc, w_sur, b_sur, None, dilation, out=out, block=256)
    assert sums is None
    close(got, joint_reference(y, w_loc, b_loc, w_sur, b_sur, None, dilation), torch.float32)


def test_cg_joint_many_tiles(kernels: ModuleType) -> None:
    """Planes wider than a tile row and taller than a tile: ragged tiles along both axes, with the
    f_glo sums gathered from every tile."""
    b, c, h, w, dilation = 1, 4, 300, 260, 4
    y = torch.randn(b, c, h, w, device=DEVICE)
    w_loc, w_sur = (torch.randn(c, 1, 3, 3, device=DEVICE) for _ in range(2))
    b_loc, b_sur = (torch.randn(c, device=DEVICE) for _ in range(2))
    slope = torch.rand(2 * c, device=DEVICE)
    got, sums = kernels.cg_joint(
        y, w_loc, b_loc, w_sur, b_sur, slope, dilation, with_sums=True, block=4096
    )
    expected = joint_reference(y, w_loc, b_loc, w_sur, b_sur, slope, dilation)
    close(got, expected, torch.float32)
    assert sums is not None
    torch.testing.assert_close(sums, expected.sum(dim=(2, 3)), rtol=1e-5, atol=1e-2)


def test_cg_joint_one_shared_slope(kernels: ModuleType) -> None:
    c = 6
    y = torch.randn(1, c, 7, 5, device=DEVICE)
    w_loc, w_sur = (torch.randn(c, 1, 3, 3, device=DEVICE) for _ in range(2))
    b_loc, b_sur = (torch.randn(c, device=DEVICE) for _ in range(2))
    slope = torch.tensor([0.25], device=DEVICE)
    got, _ = kernels.cg_joint(y, w_loc, b_loc, w_sur, b_sur, slope, 3)
    expected = joint_reference(y, w_loc, b_loc, w_sur, b_sur, slope.expand(2 * c), 3)
    close(got, expected, torch.float32)


# --------------------------------------------------------------------------------------------------
# f_glo
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "reduction"), [(64, 8), (24, 8), (128, 16)])
def test_fglo_gate_matches_fast_fglo(kernels: ModuleType, channels: int, reduction: int) -> None:
    fglo = FastFGlo(FGlo(channels, reduction)).to(DEVICE)
    y = torch.randn(3, channels, 5, 7, device=DEVICE)
    gate = kernels.fglo_gate(y.sum(dim=(2, 3)), 1 / 35, fglo.w1, fglo.b1, fglo.w2, fglo.b2)
    torch.testing.assert_close(gate, fglo.weights(y)[:, :, 0, 0], rtol=1e-5, atol=1e-6)
    # already-averaged input: scale 1
    means = kernels.fglo_gate(y.mean(dim=(2, 3)), 1.0, fglo.w1, fglo.b1, fglo.w2, fglo.b2)
    torch.testing.assert_close(means, gate, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no_residual"])
def test_gate_residual_matches_addcmul(
    kernels: ModuleType, dtype: torch.dtype, residual: bool
) -> None:
    b, c, h, w = 2, 24, 11, 19
    y = torch.randn(b, c, h, w, device=DEVICE).to(dtype)
    x = torch.randn(b, c, h, w, device=DEVICE).to(dtype) if residual else None
    gate = torch.rand(b, c, device=DEVICE)
    out = poisoned((b, c, h, w), dtype)
    got = kernels.gate_residual(y, gate, x, out=out)
    expected = y.float() * gate[:, :, None, None]
    if x is not None:
        expected = expected + x.float()
    assert got is out
    close(got, expected, dtype)


def test_gate_residual_promotes_like_addcmul(kernels: ModuleType) -> None:
    """Under autocast conv_in hands back bfloat16 while the residual may still be float32."""
    y = torch.randn(1, 8, 6, 10, device=DEVICE).bfloat16()
    x = torch.randn(1, 8, 6, 10, device=DEVICE)
    gate = torch.rand(1, 8, device=DEVICE)
    got = kernels.gate_residual(y, gate, x)
    assert got.dtype == torch.float32
    close(got, torch.addcmul(x, y.float(), gate[:, :, None, None]), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["prelu", "relu"])
def test_join_matches_cat_affine_activation(
    kernels: ModuleType, dtype: torch.dtype, activation: str
) -> None:
    """A join's parts (here stage 2's: CG blocks, CG-Down, the 3-channel input injection)."""
    parts = [torch.randn(2, c, 9, 14, device=DEVICE).to(dtype) for c in (16, 16, 3)]
    scale, shift = torch.randn(35, device=DEVICE), torch.randn(35, device=DEVICE)
    slope = torch.randn(35, device=DEVICE) * 0.4 if activation == "prelu" else None
    joint = torch.cat([p.float() for p in parts], 1) * scale[:, None, None] + shift[:, None, None]
    expected = F.relu(joint) if slope is None else F.prelu(joint, slope)
    got = kernels.join(parts, scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1), slope)
    assert got.dtype == dtype and got.shape == expected.shape
    close(got, expected, dtype)


def test_bad_arguments(kernels: ModuleType) -> None:
    y = torch.randn(1, 4, 5, 5, device=DEVICE)
    w3, b = torch.randn(4, 1, 3, 3, device=DEVICE), torch.randn(4, device=DEVICE)
    with pytest.raises(ValueError, match="3x3 kernels"):
        kernels.cg_joint(y, w3[:2], b, w3, b, None, 2)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        kernels.cg_joint(y.double(), w3, b, w3, b, None, 2)
    with pytest.raises(ValueError, match="out must be"):
        kernels.cg_joint(y, w3, b, w3, b, None, 2, out=torch.empty_like(y))
    with pytest.raises(ValueError, match="gate must be"):
        kernels.gate_residual(y, torch.rand(1, 3, device=DEVICE))
    with pytest.raises(ValueError, match="do not fit"):
        kernels.fglo_gate(torch.rand(1, 4, device=DEVICE), 1.0, w3, b, w3, b)
    with pytest.raises(ValueError, match="differ in batch or size"):
        kernels.join([y, y[:, :, :4]], torch.rand(8, device=DEVICE), b, None)
    with pytest.raises(ValueError, match="must have 8 channels"):
        kernels.join([y, y], b, b, None)


def test_cpu_tensors_need_the_interpreter(
    kernels: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.check_device(torch.device("cpu"))
    kernels.check_device(torch.device("cuda"))


# --------------------------------------------------------------------------------------------------
# Dense convolutions + bias + activation
# --------------------------------------------------------------------------------------------------

# (cin, cout, kernel, stride, padding, dilation, height, width): CGNet's own dense convolutions (the
# stem's first and later 3x3s, a CG-Down's strided 3x3 on a join, conv_in and reduce 1x1s, the
# classifier's 19 outputs), a dilated 3x3 with more channels than one tile, and a 1x1 plane.
CONV_SHAPES = [
    (3, 32, 3, 2, 1, 1, 37, 53),
    (32, 32, 3, 1, 1, 1, 20, 30),
    (35, 64, 3, 2, 1, 1, 17, 19),
    (128, 64, 1, 1, 0, 1, 9, 13),
    (256, 19, 1, 1, 0, 1, 8, 8),
    (20, 72, 3, 1, 2, 2, 11, 9),
    (8, 16, 3, 2, 1, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv_act_matches_eager(
    kernels: ModuleType, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    cin, cout, k, stride, padding, dilation, h, w = shape
    x = torch.randn(2, cin, h, w, device=DEVICE).to(dtype)
    weight = (torch.randn(cout, cin, k, k, device=DEVICE) / (cin * k * k) ** 0.5).to(dtype)
    bias = torch.randn(cout, device=DEVICE)
    slope = torch.rand(cout, device=DEVICE) * 0.5
    got = kernels.conv_act(
        x, weight, bias, slope, stride=stride, padding=padding, dilation=dilation
    )
    expected = F.conv2d(x.float(), weight.float(), bias, stride, padding, dilation)
    assert got.dtype == dtype
    close(got, F.prelu(expected, slope), dtype)


def test_conv_act_relu_plain_and_shared_slope(kernels: ModuleType) -> None:
    """The ReLU ablation (no slopes), a convolution without activation (the classifier, CG-Down's
    reduce), one shared PReLU slope, and float32 weights for a half-precision input."""
    x = torch.randn(1, 12, 10, 14, device=DEVICE)
    weight = torch.randn(24, 12, 3, 3, device=DEVICE) / 6
    bias = torch.randn(24, device=DEVICE)
    expected = F.conv2d(x, weight, bias, 1, 1)
    close(kernels.conv_act(x, weight, bias, None, padding=1), F.relu(expected), torch.float32)
    plain = kernels.conv_act(x, weight, bias, torch.ones(24), padding=1, activation=False)
    close(plain, expected, torch.float32)
    shared = kernels.conv_act(x, weight, bias, torch.tensor([0.1], device=DEVICE), padding=1)
    close(shared, F.prelu(expected, torch.tensor([0.1], device=DEVICE)), torch.float32)
    half = kernels.conv_act(x.half(), weight, bias, None, padding=1)
    expected_half = F.conv2d(x.half().float(), weight.half().float(), bias, 1, 1)
    close(half, F.relu(expected_half), torch.float16)


def test_conv_act_rejects_mismatched_weights(kernels: ModuleType) -> None:
    x = torch.randn(1, 8, 5, 5, device=DEVICE)
    with pytest.raises(ValueError, match=r"conv_act: weight must be \[COUT, 8, KH, KW\]"):
        kernels.conv_act(x, torch.randn(4, 6, 3, 3), torch.zeros(4), None)
    with pytest.raises(ValueError, match="conv_act: bias must have 4 channels"):
        kernels.conv_act(x, torch.randn(4, 8, 1, 1), torch.zeros(5), None)


# --------------------------------------------------------------------------------------------------
# The seam between two CG blocks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape", [(2, 64, 9, 13, 32), (1, 128, 5, 7, 64), (2, 20, 1, 1, 10), (1, 96, 4, 6, 80)], ids=str
)
def test_block_seam_matches_gate_residual_then_conv_in(
    kernels: ModuleType, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    """One block's gate + residual and the next block's conv_in in one pass, against the separate
    kernels' reference: eager f_glo, ``x + y * gate`` rounded to the dtype, then conv + PReLU."""
    n, c, h, w, co = shape
    hid = max(1, c // 16)
    y = torch.randn(n, c, h, w, device=DEVICE).to(dtype)
    x = torch.randn(n, c, h, w, device=DEVICE).to(dtype)
    sums = y.float().sum(dim=(2, 3))
    fglo = (
        torch.randn(hid, c, device=DEVICE) / c**0.5,
        torch.randn(hid, device=DEVICE),
        torch.randn(c, hid, device=DEVICE) / hid**0.5,
        torch.randn(c, device=DEVICE),
    )
    weight = (torch.randn(co, c, 1, 1, device=DEVICE) / c**0.5).to(dtype)
    bias, slope = torch.randn(co, device=DEVICE), torch.rand(co, device=DEVICE) * 0.5
    next_sums = poisoned((n, 2 * co), torch.float32)
    out, h_out = kernels.block_seam(y, sums, x, fglo, (weight, bias, slope), next_sums)
    w1, b1, w2, b2 = fglo
    gate = torch.sigmoid(F.linear(F.relu(F.linear(sums / (h * w), w1, b1)), w2, b2))
    expected_out = (x.float() + y.float() * gate[:, :, None, None]).to(dtype)
    # conv_in reads out as the kernel rounded it (one ulp apart at most from the reference's)
    expected_h = F.prelu(F.conv2d(out.float(), weight.float(), bias), slope)
    assert out.dtype == h_out.dtype == dtype
    close(out, expected_out, dtype)
    close(h_out, expected_h, dtype)
    assert torch.equal(next_sums, torch.zeros_like(next_sums))


def test_block_seam_relu_and_bad_shapes(kernels: ModuleType) -> None:
    y, x = torch.randn(1, 32, 6, 6, device=DEVICE), torch.randn(1, 32, 6, 6, device=DEVICE)
    sums = y.sum(dim=(2, 3))
    fglo = (torch.randn(2, 32), torch.zeros(2), torch.randn(32, 2), torch.zeros(32))
    weight, bias = torch.randn(16, 32, 1, 1, device=DEVICE), torch.randn(16, device=DEVICE)
    out, h_out = kernels.block_seam(y, sums, x, fglo, (weight, bias, None), torch.empty(1, 32))
    close(h_out, F.relu(F.conv2d(out, weight, bias)), torch.float32)
    with pytest.raises(ValueError, match="block_seam: conv_in must be a 1x1 over 32 channels"):
        kernels.block_seam(
            y, sums, x, fglo, (torch.randn(16, 32, 3, 3), bias, None), torch.empty(1, 32)
        )
    with pytest.raises(ValueError, match=r"block_seam: sums must be \[1, 32\]"):
        kernels.block_seam(y, sums[:, :8], x, fglo, (weight, bias, None), torch.empty(1, 32))
    with pytest.raises(ValueError, match="cg_joint: sums must be a contiguous float32"):
        kernels.cg_joint(
            y, *(torch.randn(32, 1, 3, 3), torch.zeros(32)) * 2, None, 2,
            with_sums=True, sums=torch.zeros(1, 8),
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# FastCGBlock and FastCGNet
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CG_BLOCKS))
def test_fast_block_kernels_match_eager(kernels: ModuleType, name: str) -> None:
    block = randomize_statistics(CG_BLOCKS[name]())
    fast = FastCGBlock(block).to(DEVICE)
    channels = block.conv_in.conv.in_channels
    x = torch.randn(2, channels, 19, 23, device=DEVICE)
    with torch.no_grad():
        expected = fast(x)
        fast.kernels = "triton"
        got = fast(x)
    assert got.shape == expected.shape
    close(got, expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fast_block_kernels_in_low_precision(kernels: ModuleType, dtype: torch.dtype) -> None:
    """A whole CG block in half precision against the float32 eager block on the same (rounded)
    weights and input: conv_in's output is rounded too, hence a looser bound than the kernels'."""
    fast = FastCGBlock(randomize_statistics(CGBlock(32, 2, 8))).to(DEVICE, dtype)
    x = torch.randn(2, 32, 13, 17, device=DEVICE).to(dtype)
    with torch.no_grad():
        expected = fast.float()(x.float())
        fast.to(dtype).kernels = "triton"
        got = fast(x)
    assert got.dtype == dtype
    scale = float(expected.abs().max())
    torch.testing.assert_close(
        got.float(), expected, rtol=4 * RTOL[dtype], atol=4 * RTOL[dtype] * scale
    )


def test_kernel_params_follow_their_sources(kernels: ModuleType) -> None:
    """The float32 copies the kernels read are remade when a weight changes in place or the block
    changes dtype, so the fused path never runs on stale weights."""
    fast = FastCGBlock(randomize_statistics(CGBlock(16, 2, 8))).to(DEVICE)
    x = torch.randn(1, 16, 9, 11, device=DEVICE)
    with torch.no_grad():
        fast.kernels = "triton"
        before = fast(x)
        fast.f_loc.bias.add_(0.5)
        fast.f_glo.b2.sub_(1.0)
        got = fast(x)
        fast.kernels = None
        expected = fast(x)
    assert not torch.allclose(got, before)
    close(got, expected, torch.float32)
    fast.to(torch.bfloat16).kernels = "triton"
    with torch.no_grad():
        rounded = fast(x.bfloat16())
    assert rounded.dtype == torch.bfloat16
    torch.testing.assert_close(rounded.float(), expected, rtol=0.05, atol=0.05)


def test_kernels_run_on_a_network_built_in_inference_mode(kernels: ModuleType) -> None:
    """The tuner and the predictor build their forms inside ``torch.inference_mode()``, whose
    tensors keep no version counter: the fused path must not need one."""
    model = randomize_statistics(CGNet(5, M=2, N=3))
    x = torch.randn(1, 3, 32, 48, device=DEVICE)
    with torch.inference_mode():
        net = fold_network(model).to(DEVICE)
        expected = net(x)
        got = net.use_kernels(convs=True)(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_the_tuner_checks_and_times_the_triton_forms(kernels: ModuleType) -> None:
    """The tuner as the benchmark and the predictor run it (inside inference mode), over every form
    that needs no CUDA graph, the Triton ones included: none is rejected, all are timed, and the
    winner's logits are eager's."""
    model = randomize_statistics(CGNet(5, M=2, N=3))
    auto = AutoTuned(model, DEVICE, kernels=True, warmup=0, repeats=1)
    auto.forms = [form for form in candidates("fp32", kernels=True) if not form.cuda_graphs]
    auto.forms.append(Candidate(True, "fp32", False, False, kernels=True, conv_kernels=True))
    x = torch.randn(1, 3, 32, 48, device=DEVICE)
    with torch.inference_mode():
        got = auto(x)
        expected = model.to(DEVICE).eval()(x)
    key = tuple(x.shape)
    assert auto.rejected[key] == {}
    assert all(ms > 0 for ms in auto.timings[key].values()), auto.timings[key]
    assert "folded fp32 NCHW triton convs" in auto.timings[key]
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)


class _CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched inside it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


# aten ops that launch device work (views, metadata and the interpreter's own copies do not)
_DEVICE_OPS = {
    "convolution", "_prelu_kernel", "zeros", "mean", "avg_pool2d", "upsample_bilinear2d",
    "_to_copy", "cat", "add", "mul", "addcmul", "sigmoid", "relu", "linear", "addmm", "prelu",
}  # fmt: skip


class _CountedKernel:
    """A Triton kernel that counts its launches."""

    def __init__(self, kernel: object, name: str, counts: Counter[str]) -> None:
        self.kernel, self.name, self.counts = kernel, name, counts

    def __getitem__(self, grid: object):  # type: ignore[no-untyped-def]
        launch = self.kernel[grid]  # type: ignore[index]

        def counted(*args: object, **kwargs: object) -> object:
            self.counts[self.name] += 1
            return launch(*args, **kwargs)

        return counted


def _launches(monkeypatch: pytest.MonkeyPatch, kernels: ModuleType, net: nn.Module) -> Counter[str]:
    """Device launches of one forward: each Triton kernel's, and each aten op that runs device work."""
    counts: Counter[str] = Counter()
    for name in dir(kernels):
        if name.startswith("_") and name.endswith("_kernel"):
            monkeypatch.setattr(kernels, name, _CountedKernel(getattr(kernels, name), name, counts))
    x = torch.randn(1, 3, 64, 96, device=DEVICE)
    with torch.no_grad(), _CountOps() as ops:
        net(x)
    counts.update({op: n for op, n in ops.counts.items() if op in _DEVICE_OPS})
    monkeypatch.undo()
    return counts


def test_chained_stages_launch_less_than_half_as_often(
    kernels: ModuleType, network: CGNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Launches per forward of the default network (M=3, N=21), the figures docs/benchmarks.md
    quotes: each one is a node of the CUDA graph, with its own start-up gap on the GPU."""
    net = fold_network(network).to(DEVICE)
    blocks = _launches(monkeypatch, kernels, net.use_kernels())
    chained = _launches(monkeypatch, kernels, net.use_kernels(convs=True))
    assert sum(blocks.values()) == 163, blocks
    assert sum(chained.values()) == 76, chained
    # stage 3's 20 CG blocks: 6 launches each, against 2 each plus the stage's ends
    assert blocks["_prelu_kernel"] == 27 and blocks["zeros"] == 22
    assert chained["_block_seam_kernel"] == 19 + 1 and chained["zeros"] == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_kernels_convert_no_weights(
    kernels: ModuleType, network: CGNet, dtype: torch.dtype
) -> None:
    """A half-precision network's fused path converts no weight to float32 per call: on the GPU each
    conversion is a launch (and a CUDA-graph node) of its own, about 225 per forward of CGNet."""
    net = fold_network(network).use_kernels().to(DEVICE, dtype)
    x = torch.randn(1, 3, 32, 48, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        net(x)
        with _CountOps() as ops:
            out = net(x)
    # the only conversion: the small logits to float32, before they are upsampled
    assert out.dtype == torch.float32
    assert ops.counts["convolution"] > 0  # the counter sees the network's ops
    assert ops.counts["_to_copy"] == 1, ops.counts


@pytest.fixture(scope="module")
def network() -> CGNet:
    """The default M=3, N=21 CGNet with random BatchNorm statistics."""
    torch.manual_seed(0)
    return randomize_statistics(CGNet(19))


def test_fast_cgnet_kernels_match_eager(kernels: ModuleType, network: CGNet) -> None:
    net = fold_network(network).to(DEVICE)
    x = torch.randn(1, 3, 64, 96, device=DEVICE)
    with torch.no_grad():
        expected = net(x)
        got = net.use_kernels()(x)
        fused = [m for m in net.modules() if isinstance(m, (FastCGBlock, Join))]
        assert len(fused) == 2 + 2 + 20 + 3 and all(m.kernels == "triton" for m in fused)
        again = net.use_kernels(None)(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_fast_cgnet_conv_kernels_leave_no_torch_convolution(
    kernels: ModuleType, network: CGNet
) -> None:
    """With ``convs`` every convolution and activation of the network runs in a Triton kernel (no
    cuDNN convolution, no separate PReLU pass is dispatched), the stages' blocks are chained through
    their seams, and the logits match eager."""
    net = fold_network(network).to(DEVICE)
    x = torch.randn(1, 3, 64, 96, device=DEVICE)
    with torch.no_grad():
        expected = net(x)
        net.use_kernels(convs=True)
        with _CountOps() as ops:
            got = net(x)
    assert ops.counts["convolution"] == 0 and ops.counts["_prelu_kernel"] == 0, ops.counts
    # chained stages: only each stage's first block zeroes its own f_glo sums (2, not 22)
    assert net.stage2.chained and net.stage3.chained and ops.counts["zeros"] == 2, ops.counts
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(ValueError, match="convs=True needs the triton backend"):
        net.use_kernels(None, convs=True)
    with pytest.raises(ValueError, match="add kernels=True"):
        optimize(network, device=DEVICE, conv_kernels=True)


@pytest.mark.parametrize(
    "ablation",
    [{"residual": "local"}, {"use_f_glo": False}, {"activation": "relu"}, {"M": 2, "N": 2}],
    ids=str,
)
def test_conv_kernels_on_ablations(kernels: ModuleType, ablation: dict[str, object]) -> None:
    """Ablated networks: blocks that cannot be chained (local residual, no f_glo) run one by one,
    the ReLU ablation and one-block stages chain or not as they can, and all match eager."""
    torch.manual_seed(0)
    model = randomize_statistics(CGNet(7, **{"M": 3, "N": 4, **ablation}))  # type: ignore[arg-type]
    net = fold_network(model).to(DEVICE)
    x = torch.randn(1, 3, 48, 64, device=DEVICE)
    with torch.no_grad():
        expected = net(x)
        got = net.use_kernels(convs=True)(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_optimize_with_kernels(kernels: ModuleType, network: CGNet) -> None:
    x = torch.randn(1, 3, 64, 96, device=DEVICE)
    with pytest.raises(ValueError, match="alternatives"):
        optimize(network, device=DEVICE, kernels=True, compile=True)
    with pytest.raises(ValueError, match="NCHW"):
        optimize(network, device=DEVICE, kernels=True, channels_last=True)
    with torch.no_grad():
        expected = optimize(network, device=DEVICE, channels_last=False)(x)
        fused = optimize(network, device=DEVICE, kernels=True)
        got = fused(x)
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)
        convs = optimize(network, device=DEVICE, kernels=True, conv_kernels=True)
        torch.testing.assert_close(convs(x), expected, rtol=1e-4, atol=1e-4 * scale)
        if DEVICE.type == "cuda":
            graphs = optimize(network, device=DEVICE, kernels=True, cuda_graphs=True)
            torch.testing.assert_close(graphs(x), got, rtol=1e-5, atol=1e-5 * scale)
            convs = optimize(
                network, device=DEVICE, kernels=True, conv_kernels=True, cuda_graphs=True
            )
            torch.testing.assert_close(convs(x), expected, rtol=1e-4, atol=1e-4 * scale)
            # a random network's logits are close together: half precision moves a few argmaxes
            for dtype, least in ((torch.float16, 0.99), (torch.bfloat16, 0.97)):
                half = optimize(
                    network, device=DEVICE, kernels=True, conv_kernels=True, dtype=dtype
                )(x)
                assert half.dtype == torch.float32
                agree = float((half.argmax(1) == expected.argmax(1)).float().mean())
                assert agree >= least, (dtype, agree)
            bf16 = optimize(network, device=DEVICE, kernels=True, bf16=True)(x)
            assert float((bf16.argmax(1) == expected.argmax(1)).float().mean()) >= 0.95


# --------------------------------------------------------------------------------------------------
# Triton stays optional
# --------------------------------------------------------------------------------------------------


def test_missing_triton_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "cgnet.inference.kernels", raising=False)
    monkeypatch.delattr(cgnet.inference, "kernels", raising=False)
    with pytest.raises(ImportError, match="pip install triton"):
        importlib.import_module("cgnet.inference.kernels")
    net = fold_network(CGNet(5, 1, 1))
    with pytest.raises(ImportError, match="pip install triton"):
        net.use_kernels()


def test_cgnet_never_imports_triton() -> None:
    code = (
        "import sys, torch, cgnet.inference, cgnet.models\n"
        "net = cgnet.inference.optimize(cgnet.models.CGNet(5, 1, 1))\n"
        "net(torch.randn(1, 3, 16, 16))\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
