"""f_loc + f_sur as one Triton op with its own backward, for training CG blocks on GPUs.

Eager training runs a CG block's two channel-wise 3x3 convolutions (f_loc, dilation 1, and f_sur,
dilation d) of the same input as two convolutions and a concatenation, forward and backward: the
input is read twice, the joint features are written twice (once per branch, once concatenated), and
the backward reads the joint gradient once per branch and adds the two input gradients in one more
pass. On an H200 the dilated channel-wise convolutions were already the largest item of an
inference profile (27-35% of the device time); whether this op pays in training is what
``scripts/gpu_checks.sh`` measures. Here the pair is three launches:

- forward: one pass reads each input tile once and writes f_loc and f_sur straight into their halves
  of the ``[B, 2C, H, W]`` joint features;
- input gradient: one pass gathers both branches' gradients through their flipped taps;
- weight gradients: one launch whose programs each take one of the nine taps (of both branches)
  over a chunk of pixels, accumulating products elementwise and reducing once, into per-program
  partial sums that torch adds up in a fixed order, so the result is deterministic (no atomics).

The op is registered with ``torch.library`` (``cgnet::context_pair``), so ``torch.compile`` treats it
as one opaque node with a known output shape and autograd calls its backward. Any strides work
(NCHW and channels-last tiles are chosen per layout); inputs may be float32, float16 or bfloat16
(autocast's output of the previous convolution), every sum is float32, the weights and their
gradients stay in the weights' dtype. Kernels run on CUDA tensors, or on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1`` before this module is imported), which is how the CPU tests run.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError(
        "the fused f_loc/f_sur training op needs Triton: `pip install triton` (on Linux it ships "
        "with CUDA builds of torch)"
    ) from error

__all__ = ["INTERPRETED", "context_pair", "runs_on", "self_check"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TILE = 1024  # elements per program on the GPU
_PIXELS_PER_WEIGHT_PROGRAM = 8192  # pixels each weight-gradient program sums before its partial


@triton.jit
def _tile(C, H, W, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # This program's tile: its image, channels (and which exist), the pixels that exist, and their
    # rows and columns (a BLOCK_C x BLOCK_HW grid of indices).
    b = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_ok = cs < C
    inside = c_ok[:, None] & (offs < H * W)[None, :]
    return b, cs, c_ok, inside, (offs // W)[None, :], (offs % W)[None, :]


@triton.jit
def _shifted(base, h, w, dh, dw, inside, H, W, s_h, s_w):
    # The plane at (h + dh, w + dw) in float32, zero outside it (the convolutions' zero padding).
    hh = h + dh
    ww = w + dw
    ok = inside & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    return tl.load(base + hh * s_h + ww * s_w, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _forward_kernel(
    y_ptr,
    w_loc_ptr,
    w_sur_ptr,
    out_ptr,
    C,
    H,
    W,
    DIL,
    y_sb,
    y_sc,
    y_sh,
    y_sw,
    o_sb,
    o_sc,
    o_sh,
    o_sw,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    # One program: BLOCK_C channels x BLOCK_HW pixels of one image. Each input tap is read once
    # for both branches (the centre tap is shared); f_loc goes to channel c, f_sur to C + c.
    b, cs, c_ok, inside, h, w = _tile(C, H, W, BLOCK_C, BLOCK_HW)
    src = y_ptr + b * y_sb + cs.to(tl.int64)[:, None] * y_sc
    loc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    sur = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for i in tl.static_range(3):
        for j in tl.static_range(3):
            tap = i * 3 + j
            w_loc = tl.load(w_loc_ptr + cs * 9 + tap, mask=c_ok, other=0.0).to(tl.float32)
            w_sur = tl.load(w_sur_ptr + cs * 9 + tap, mask=c_ok, other=0.0).to(tl.float32)
            v = _shifted(src, h, w, i - 1, j - 1, inside, H, W, y_sh, y_sw)
            loc += v * w_loc[:, None]
            if tap != 4:
                v = _shifted(src, h, w, (i - 1) * DIL, (j - 1) * DIL, inside, H, W, y_sh, y_sw)
            sur += v * w_sur[:, None]
    dst = out_ptr + b * o_sb + cs.to(tl.int64)[:, None] * o_sc + h * o_sh + w * o_sw
    tl.store(dst, loc.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(dst + C * o_sc, sur.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _input_grad_kernel(
    g_ptr,
    w_loc_ptr,
    w_sur_ptr,
    gy_ptr,
    C,
    H,
    W,
    DIL,
    g_sb,
    g_sc,
    g_sh,
    g_sw,
    y_sb,
    y_sc,
    y_sh,
    y_sw,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    # The transposed convolutions of both branches in one pass: input pixel p collects the joint
    # gradient at p - offset(tap) times the tap's weight, from f_loc's half and from f_sur's.
    b, cs, c_ok, inside, h, w = _tile(C, H, W, BLOCK_C, BLOCK_HW)
    g_loc = g_ptr + b * g_sb + cs.to(tl.int64)[:, None] * g_sc
    g_sur = g_loc + C * g_sc
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for i in tl.static_range(3):
        for j in tl.static_range(3):
            tap = i * 3 + j
            w_loc = tl.load(w_loc_ptr + cs * 9 + tap, mask=c_ok, other=0.0).to(tl.float32)
            w_sur = tl.load(w_sur_ptr + cs * 9 + tap, mask=c_ok, other=0.0).to(tl.float32)
            v = _shifted(g_loc, h, w, 1 - i, 1 - j, inside, H, W, g_sh, g_sw)
            acc += v * w_loc[:, None]
            v = _shifted(g_sur, h, w, (1 - i) * DIL, (1 - j) * DIL, inside, H, W, g_sh, g_sw)
            acc += v * w_sur[:, None]
    dst = gy_ptr + b * y_sb + cs.to(tl.int64)[:, None] * y_sc + h * y_sh + w * y_sw
    tl.store(dst, acc.to(gy_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _weight_grad_kernel(
    g_ptr,
    y_ptr,
    partial_ptr,
    C,
    H,
    W,
    DIL,
    ITERS,
    g_sb,
    g_sc,
    g_sh,
    g_sw,
    y_sb,
    y_sc,
    y_sh,
    y_sw,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    # Tap t of channel c: the sum over pixels p of grad[c, p] * y[c, p + offset(t)]. A program takes
    # one tap of both branches over ITERS tiles of one image, accumulates the products elementwise
    # and reduces them once at the end into its own row of partial sums. The nine taps of a chunk
    # are neighbouring programs, so their repeated reads of the same tiles mostly hit the cache.
    tap = tl.program_id(0) % 9
    chunk = tl.program_id(0) // 9
    i = tap // 3 - 1
    j = tap % 3 - 1
    b = tl.program_id(1)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    g_loc = g_ptr + b.to(tl.int64) * g_sb + cs.to(tl.int64)[:, None] * g_sc
    g_sur = g_loc + C * g_sc
    src = y_ptr + b.to(tl.int64) * y_sb + cs.to(tl.int64)[:, None] * y_sc
    acc_loc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    acc_sur = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for it in range(0, ITERS):
        offs = (chunk * ITERS + it) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        inside = c_ok[:, None] & (offs < H * W)[None, :]
        h = (offs // W)[None, :]
        w = (offs % W)[None, :]
        acc_loc += _shifted(g_loc, h, w, 0, 0, inside, H, W, g_sh, g_sw) * _shifted(
            src, h, w, i, j, inside, H, W, y_sh, y_sw
        )
        acc_sur += _shifted(g_sur, h, w, 0, 0, inside, H, W, g_sh, g_sw) * _shifted(
            src, h, w, i * DIL, j * DIL, inside, H, W, y_sh, y_sw
        )
    row = (b * (tl.num_programs(0) // 9) + chunk).to(tl.int64) * (2 * C * 9)
    dst = partial_ptr + row + cs * 9 + tap
    tl.store(dst, tl.sum(acc_loc, axis=1), mask=c_ok)
    tl.store(dst + C * 9, tl.sum(acc_sur, axis=1), mask=c_ok)


# --------------------------------------------------------------------------------------------------
# launch helpers
# --------------------------------------------------------------------------------------------------


def runs_on(device: torch.device) -> bool:
    """Whether the op can run on ``device``: CUDA, or the CPU under the interpreter."""
    return device.type == "cuda" or (INTERPRETED and device.type == "cpu")


def _check(y: Tensor, w_loc: Tensor, w_sur: Tensor, dilation: int) -> None:
    if y.dim() != 4 or y.dtype not in _DTYPES:
        raise ValueError(
            f"context_pair: y must be a 4-d float32/float16/bfloat16 tensor, got "
            f"{tuple(y.shape)} {y.dtype}"
        )
    c = y.shape[1]
    for name, weight in (("w_loc", w_loc), ("w_sur", w_sur)):
        if tuple(weight.shape) != (c, 1, 3, 3):
            raise ValueError(
                f"context_pair: {name} must be [{c}, 1, 3, 3] (a channel-wise 3x3 convolution of "
                f"y's {c} channels), got {list(weight.shape)}"
            )
    if dilation < 1:
        raise ValueError(f"context_pair: dilation must be >= 1, got {dilation}")
    if not runs_on(y.device):
        raise RuntimeError(
            f"context_pair runs on CUDA tensors, got {y.device.type}; on the CPU only under "
            "Triton's interpreter (TRITON_INTERPRET=1 before cgnet.models.context_kernels is imported)"
        )


def _joint_like(y: Tensor) -> Tensor:
    """The joint features' buffer: twice y's channels, in y's memory format."""
    b, c, h, w = y.shape
    channels_last = not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((b, 2 * c, h, w), dtype=y.dtype, device=y.device, memory_format=fmt)


def _tiles(t: Tensor) -> tuple[int, int]:
    """(channels, pixels) per program, powers of two: along the pixels for NCHW, mostly along the
    channels for channels-last, so neighbouring lanes read neighbouring addresses. The interpreter
    runs each program as a few numpy passes, so there one program takes every channel."""
    c, hw = t.shape[1], t.shape[2] * t.shape[3]
    if INTERPRETED:
        block_c = triton.next_power_of_2(c)
        return block_c, triton.next_power_of_2(max(1, min(hw, (1 << 16) // block_c)))
    block_c = min(triton.next_power_of_2(c), 64) if t.stride(1) == 1 and c > 1 else 1
    return block_c, triton.next_power_of_2(max(1, min(hw, _TILE // block_c)))


def _taps(weight: Tensor) -> Tensor:
    """A [C, 1, 3, 3] weight as the kernels read it: C x 9 contiguous values."""
    return weight.detach().reshape(weight.shape[0], 9).contiguous()


def _forward(y: Tensor, w_loc: Tensor, w_sur: Tensor, dilation: int) -> Tensor:
    _check(y, w_loc, w_sur, dilation)
    out = _joint_like(y)
    b, c, h, w = y.shape
    if out.numel() == 0:
        return out
    block_c, block_hw = _tiles(y)
    grid = (triton.cdiv(h * w, block_hw), b, triton.cdiv(c, block_c))
    _forward_kernel[grid](
        y, _taps(w_loc), _taps(w_sur), out, c, h, w, dilation,
        *y.stride(), *out.stride(), BLOCK_C=block_c, BLOCK_HW=block_hw,
    )  # fmt: skip
    return out


def _backward(
    grad: Tensor, y: Tensor, w_loc: Tensor, w_sur: Tensor, dilation: int
) -> tuple[Tensor, Tensor, Tensor]:
    _check(y, w_loc, w_sur, dilation)
    b, c, h, w = y.shape
    if tuple(grad.shape) != (b, 2 * c, h, w):
        raise ValueError(
            f"context_pair backward: grad must be {[b, 2 * c, h, w]}, got {list(grad.shape)}"
        )
    grad_y = torch.empty_like(y)
    if y.numel() == 0:
        return grad_y, torch.zeros_like(w_loc), torch.zeros_like(w_sur)
    wl, ws = _taps(w_loc), _taps(w_sur)
    block_c, block_hw = _tiles(y)
    grid = (triton.cdiv(h * w, block_hw), b, triton.cdiv(c, block_c))
    _input_grad_kernel[grid](
        grad, wl, ws, grad_y, c, h, w, dilation,
        *grad.stride(), *grad_y.stride(), BLOCK_C=block_c, BLOCK_HW=block_hw,
    )  # fmt: skip
    # no more iterations than the plane has tiles
    iters = min(max(1, _PIXELS_PER_WEIGHT_PROGRAM // block_hw), triton.cdiv(h * w, block_hw))
    chunks = triton.cdiv(h * w, block_hw * iters)
    partial = torch.empty((b * chunks, 2, c, 9), dtype=torch.float32, device=y.device)
    _weight_grad_kernel[(9 * chunks, b, triton.cdiv(c, block_c))](
        grad, y, partial, c, h, w, dilation, iters,
        *grad.stride(), *y.stride(), BLOCK_C=block_c, BLOCK_HW=block_hw,
    )  # fmt: skip
    # two sums, not views of one: a custom op's outputs must not share storage
    grad_loc = partial[:, 0].sum(0).reshape_as(w_loc).to(w_loc.dtype)
    grad_sur = partial[:, 1].sum(0).reshape_as(w_sur).to(w_sur.dtype)
    return grad_y, grad_loc, grad_sur


# --------------------------------------------------------------------------------------------------
# the registered op
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("cgnet::context_pair", mutates_args=())
def context_pair(y: Tensor, w_loc: Tensor, w_sur: Tensor, dilation: int) -> Tensor:
    """``cat([conv(y, w_loc, pad 1), conv(y, w_sur, pad d, dilation d)], 1)``, channel-wise."""
    return _forward(y, w_loc, w_sur, dilation)


@context_pair.register_fake
def _(y: Tensor, w_loc: Tensor, w_sur: Tensor, dilation: int) -> Tensor:
    return _joint_like(y)


@torch.library.custom_op("cgnet::context_pair_backward", mutates_args=())
def context_pair_backward(
    grad: Tensor, y: Tensor, w_loc: Tensor, w_sur: Tensor, dilation: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of :func:`context_pair` with respect to y, w_loc and w_sur."""
    return _backward(grad, y, w_loc, w_sur, dilation)


@context_pair_backward.register_fake
def _(
    grad: Tensor, y: Tensor, w_loc: Tensor, w_sur: Tensor, dilation: int
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(y), torch.empty_like(w_loc), torch.empty_like(w_sur)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    y, w_loc, w_sur, dilation = inputs
    ctx.save_for_backward(y, w_loc, w_sur)
    ctx.dilation = dilation  # type: ignore[attr-defined]


def _autograd_backward(
    ctx: torch.autograd.function.FunctionCtx, grad: Tensor
) -> tuple[Tensor, Tensor, Tensor, None]:
    y, w_loc, w_sur = ctx.saved_tensors  # type: ignore[attr-defined]
    grad_y, grad_loc, grad_sur = context_pair_backward(grad, y, w_loc, w_sur, ctx.dilation)  # type: ignore[attr-defined]
    return grad_y, grad_loc, grad_sur, None


context_pair.register_autograd(_autograd_backward, setup_context=_setup_context)


def self_check(device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
    """Run the op forward and backward once on a small input on ``device``, NCHW and channels-last,
    against float64 eager convolutions on the CPU; None when all three gradients and the values
    agree, else which one differs and by how much.

    The kernels are tested under Triton's interpreter, but a GPU or a Triton release they never ran
    on could still compile them wrongly; a training run checks here before its first step rather
    than learn it from a diverging loss.
    """
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    c, dilation = 24, 2
    y = torch.randn(2, c, 13, 17, generator=gen, dtype=torch.float64)
    w_loc, w_sur = (torch.randn(c, 1, 3, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    grad = torch.randn(2, 2 * c, 13, 17, generator=gen, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (y.clone(), w_loc.clone(), w_sur.clone())]
    loc = F.conv2d(inputs[0], inputs[1], padding=1, groups=c)
    sur = F.conv2d(inputs[0], inputs[2], padding=dilation, dilation=dilation, groups=c)
    expected = torch.cat([loc, sur], 1)
    expected.backward(grad)
    references = (expected.detach(), *(t.grad for t in inputs))
    tolerance = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    for layout in (torch.contiguous_format, torch.channels_last):
        y_dev = y.to(device, dtype).contiguous(memory_format=layout).requires_grad_()
        weights = [w.to(device, torch.float32).requires_grad_() for w in (w_loc, w_sur)]
        out = context_pair(y_dev, *weights, dilation)
        out.backward(grad.to(device, dtype))
        got = (out, y_dev.grad, *(w.grad for w in weights))
        names = ("values", "input gradient", "f_loc weight gradient", "f_sur weight gradient")
        for name, value, reference in zip(names, got, references, strict=True):
            assert value is not None and reference is not None
            error = float((value.detach().double().cpu() - reference).abs().max())
            scale = float(reference.abs().max())
            if not error <= tolerance * scale:  # also catches NaN
                return (
                    f"the fused f_loc + f_sur op's {name} differs from eager's by {error:.3g} "
                    f"(largest value {scale:.3g}, {layout}, {dtype}) on {device}"
                )
    return None


INTERPRETED: bool = not isinstance(_forward_kernel, triton.runtime.JITFunction)
"""Whether triton was imported under ``TRITON_INTERPRET=1`` (the kernels run on CPU tensors)."""
